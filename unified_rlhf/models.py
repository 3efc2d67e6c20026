"""Loading models and tokenizers, and the one prompt encoder every part of the package uses.

Any Hugging Face causal LM works, by local directory or hub id. The package's sequence convention:

    prompt     = [bos] + tokens(prompt)          (GPT-2-style tokenizers have no bos: eos stands in)
    completion = tokens(" " + completion) + [eos]

Training, sampling, evaluation and the data build all encode prompts with `Encoder.prompt`, so a
prompt is the same token ids wherever it goes.
"""

from __future__ import annotations

from pathlib import Path


def _check_model_path(path: str):
    """A path that is clearly local (./, /, ~, nested, with a suffix, or the default data/reference) must
    exist; anything else may be a hub id."""
    from .data import DEFAULT_MODEL

    local = Path(path)
    if path == DEFAULT_MODEL and not local.exists():
        raise FileNotFoundError(f"model path '{path}' (the default: the book's reference model) does not exist in "
                                f"the working directory {Path.cwd()} nor beside the package; build it with "
                                "`unified-rlhf data build`, or pass --model")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1 or local.suffix):
        raise FileNotFoundError(f"model path '{path}' does not exist")


def check_model_path(path: str):
    """Fail now, naming the path, if `path` is clearly local and missing (see load_model)."""
    _check_model_path(str(path))


def load_model(path: str, reward_head: bool = False, dtype=None, trained_head: bool = False):
    """Any causal LM by local path or hub id; reward_head adds a scalar head (num_labels = 1).
    trained_head: the head must come from the checkpoint (a reward model to score with), not be new:
    a plain language model is refused rather than scoring with a random head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per 1M-parameter load is noise in logs and notebooks
    path = str(path)
    _check_model_path(path)
    try:
        if reward_head:  # the new scalar head is expected to be missing from an LM checkpoint: no report
            verbosity = logging.get_verbosity()
            logging.set_verbosity_error()
            try:
                if not trained_head:
                    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=1, dtype=dtype, output_loading_info=True)
            finally:
                logging.set_verbosity(verbosity)
            if info["missing_keys"]:
                raise ValueError(f"'{path}' is not a trained reward model: its checkpoint has no scalar head "
                                 f"({', '.join(sorted(info['missing_keys']))} would be random). Train one with "
                                 "`unified-rlhf train --method rm` and pass its run's model/ directory")
            return model
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        raise FileNotFoundError(f"model '{path}' is neither a local model directory nor on the hub: {error}") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    path = str(path)
    _check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise FileNotFoundError(f"no tokenizer at '{path}' (not a local directory, not on the hub): {error}") from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer at '{path}' has no eos token: completions could never stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked everywhere, any id will do
    return tokenizer


class Encoder:
    """Text -> token ids in the package's convention: [bos] + prompt, completion + [eos]."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token: completions could never stop")
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.truncated = self.dropped = 0

    def prompt(self, text: str) -> list[int]:
        return [self.bos] + self._encode(text)

    def _encode(self, text: str) -> list[int]:
        # verbose=False: no "indexing errors" warning for a text longer than the model's context; rows
        # are fitted to max_length (fit) and sampling checks the context itself
        return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)

    def prompts(self, texts: list[str]) -> list[list[int]]:
        return [self.prompt(text) for text in texts]

    def completion(self, text: str) -> list[int]:
        return self._encode(" " + text) + [self.eos]

    def decode(self, ids: list[int]) -> str:
        """Completion ids -> text, without eos, padding or other special tokens."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def fit(self, prompt: list[int], completion: list[int]):
        """Cut the completion so prompt + completion <= max_length; None if the prompt alone is too long."""
        if self.max_length is None:
            return completion
        room = self.max_length - len(prompt)
        if room < 1:
            return None
        if len(completion) > room:
            self.truncated += 1
            return completion[:room]
        return completion


__all__ = ["load_model", "load_tokenizer", "Encoder"]
