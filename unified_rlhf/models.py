"""Loading models and tokenizers, and the one prompt encoder every part of the package uses.

Any Hugging Face causal LM works, by local directory or hub id. The package's sequence convention:

    prompt     = [bos] + tokens(prompt)          (GPT-2-style tokenizers have no bos: eos stands in)
    completion = tokens(" " + completion) + [eos]

Training, sampling, evaluation and the data build all encode prompts with `Encoder.prompt`, so a
prompt is the same token ids wherever it goes.

Conversations (lists of {"role", "content"} messages) go through the tokenizer's chat template, as TRL
tokenizes them: the prompt with the generation prompt, the prompt + completion whole, and the completion
is what follows their common prefix. A tokenizer without a template (the book's, GPT-2's) uses
PLAIN_CHAT_TEMPLATE, under which a one-turn conversation gives exactly the tokens of the same text row.

LoRA (the `lora` extra, peft): `add_lora` wraps a model so that only adapters train, and
`AdaptersDisabled` is the same model with its adapters switched off, the reference without a second
copy of the weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

# The package's convention as a chat template: bos, then the message contents separated by spaces, each
# assistant turn closed by eos. It ignores roles: the book's 300-word vocabulary has no role markers.
PLAIN_CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if not loop.first %} {% endif %}"
                       "{{ message['content'] }}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
                       "{% endfor %}")


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


def chat_template(tokenizer) -> str:
    """The tokenizer's own chat template, or PLAIN_CHAT_TEMPLATE when it has none. (Set in code, not saved
    with the tokenizer: the book's reference directory stays byte for byte as `data build` wrote it.)"""
    return getattr(tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class Encoder:
    """Text -> token ids in the package's convention: [bos] + prompt, completion + [eos]; conversations
    through the chat template."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token: completions could never stop")
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.truncated = self.dropped = 0

    def prompt(self, prompt) -> list[int]:
        """A text prompt as [bos] + its tokens; a conversation through the chat template, with the generation
        prompt that opens the assistant's reply (as TRL's trainers tokenize prompts)."""
        if isinstance(prompt, str):
            return [self.bos] + self._encode(prompt)
        return self._encode(self._render(prompt, add_generation_prompt=True))

    def _render(self, messages: list, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=chat_template(self.tokenizer),
                                                  tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, prompt, completions: list) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, completion ids) of a row: text in the package's convention, or a conversation.

        A conversation is tokenized as TRL's trainers do: the prompt (with the generation prompt) and each
        prompt + completion whole; the prompt is their common prefix, so a template that renders the prompt
        alone differently still gives consistent sequences. Unlike TRL, each completion then ends at eos:
        tokens after its last eos (the template's newline after an end-of-turn eos) are dropped, since
        sampling stops at eos and never produces them, and eos is added where the template ends a turn
        with another token."""
        if isinstance(prompt, str):
            return self.prompt(prompt), [self.completion(c) for c in completions]
        prompt_ids = self.prompt(prompt)
        full = [self._encode(self._render(prompt + c)) for c in completions]
        shared = min(_common_prefix(prompt_ids, ids) for ids in full)
        ends = []
        for ids in full:
            completion = ids[shared:]
            if self.eos in completion:
                completion = completion[:len(completion) - completion[::-1].index(self.eos)]
            else:
                completion = completion + [self.eos]
            ends.append(completion)
        return prompt_ids[:shared], ends

    def _encode(self, text: str) -> list[int]:
        # verbose=False: no "indexing errors" warning for a text longer than the model's context; rows
        # are fitted to max_length (fit) and sampling checks the context itself
        return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)

    def prompts(self, texts: list) -> list[list[int]]:
        return [self.prompt(text) for text in texts]

    def completion(self, text: str) -> list[int]:
        """A text completion: tokens(" " + text) + [eos] (a conversation's completion goes through `encode`)."""
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


# ============================================================================================ LoRA
def add_lora(model, r: int, alpha: float = 16.0, dropout: float = 0.0, target_modules: str = "all-linear",
             reward_head: bool = False):
    """The model with LoRA adapters of rank r on `target_modules` ("all-linear", or names separated by
    commas, e.g. "q_proj,v_proj"); only the adapters (and a reward model's scalar head) train."""
    LoraConfig, get_peft_model = _peft("LoraConfig", "get_peft_model")
    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="SEQ_CLS" if reward_head else "CAUSAL_LM")
    with _quiet_peft():
        return get_peft_model(model, config)


def load_lora(model, path, trainable: bool = True):
    """The adapters saved in `path` (by save_pretrained of a LoRA model) on `model`."""
    (PeftModel,) = _peft("PeftModel")
    with _quiet_peft():
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def _peft(*names):
    try:
        import peft
    except ImportError:
        raise ImportError("lora_r needs peft: pip install 'unified-rlhf[lora]' (peft==0.21.2)") from None
    return tuple(getattr(peft, name) for name in names)


@contextlib.contextmanager
def _quiet_peft():
    """peft warns that GPT-2's Conv1D layers store their weights transposed (and handles it), and reads an
    attribute transformers 5 has renamed: not news to a reader."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class AdaptersDisabled:
    """A LoRA model with its adapters switched off: the base model, frozen, without a second copy of its
    weights. Called like a model (always in eval mode and without gradients); `parameters()` and `config`
    are the base model's, so sampling and evaluation take it as a reference policy."""

    def __init__(self, lora_model):
        self.lora_model = lora_model
        self.config = lora_model.config
        self.training = False

    def __call__(self, *args, **kwargs):
        import torch

        model = self.lora_model
        was_training = model.training
        model.eval()  # no dropout in the reference, whatever the policy is doing
        try:
            with torch.no_grad(), model.disable_adapter():
                return model(*args, **kwargs)
        finally:
            model.train(was_training)

    def parameters(self):
        return self.lora_model.parameters()

    def eval(self):  # the reference is always evaluated as in eval mode (see __call__)
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):  # it lives wherever the policy lives
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self


__all__ = ["load_model", "load_tokenizer", "Encoder", "PLAIN_CHAT_TEMPLATE", "chat_template", "add_lora", "load_lora",
           "AdaptersDisabled"]
