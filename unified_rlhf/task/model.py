"""The word-level tokenizer and the ~1M parameter GPT-2 reference config (``transformers`` is imported lazily)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<|endoftext|>", "<pad>", "<unk>"
EOS_ID, PAD_ID, UNK_ID = 0, 1, 2  # the trainer puts the special tokens first, in this order
N_POSITIONS = 64  # prompt + completion are at most ~30 tokens; room for bos/eos and a longer policy sample


def train_tokenizer(texts: Iterable[str], out_dir: str | Path):
    """Train a word-level tokenizer on ``texts``, save it to ``out_dir`` and return it.

    Every distinct word and punctuation mark of ``texts`` gets an id; anything else maps to <unk>.
    Pass ``vocabulary()`` among the texts to cover every word the grammar can produce. Like GPT-2's
    tokenizer it adds no special tokens when encoding: the trainer adds <|endoftext|> (bos and eos)
    itself. Decoding joins tokens with spaces, which is how the task's texts are written.
    Reload with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    # Whitespace splits words from punctuation runs; Punctuation then isolates each mark ("?!" -> "?", "!").
    split = [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    backend.pre_tokenizer = pre_tokenizers.Sequence(split)
    trainer = trainers.WordLevelTrainer(special_tokens=[EOS_TOKEN, PAD_TOKEN, UNK_TOKEN], min_frequency=1)
    backend.train_from_iterator(list(texts), trainer=trainer)
    assert [backend.token_to_id(t) for t in (EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)] == [EOS_ID, PAD_ID, UNK_ID]

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=N_POSITIONS,
        clean_up_tokenization_spaces=False,  # keep "good ." as written; the texts are space-separated
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def reference_config(
    vocab_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 160, n_positions: int = N_POSITIONS
):
    """A ``transformers.GPT2Config`` for the reference policy: about 1.3M parameters at ~300 tokens.

    Dropout is off: the objectives compare log-probabilities of the policy and a frozen reference,
    and dropout noise in those log-ratios would be pure variance at this scale.
    """
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
