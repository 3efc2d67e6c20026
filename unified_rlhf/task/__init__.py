"""The book's experimental task: synthetic movie reviews with a known, exact gold reward.

This mirrors the controlled-sentiment experiment of the DPO paper (IMDb prefixes, a sentiment
classifier as the gold reward), but every piece is synthetic and small enough to run on a laptop:

* ``reward``: ``gold_reward(prompt, completion)`` scores a completion with a sentiment lexicon
  (graded word weights, negation, intensifiers, "but") squashed into [0, 1];
* ``grammar``: a generative grammar writes short lowercase reviews over a closed vocabulary (294 words);
  a *prompt* is a short neutral prefix ("the acting was"), a *completion* continues it. ``sft_corpus``
  mixes sentiments so that a model trained on it starts at a mean gold reward of about 0.4, far below
  the ~0.95+ that purely positive reviews reach;
* ``rows``: Bradley-Terry labels, and builders that turn per-prompt groups of scored completions into
  the row formats the methods need (paired, unpaired, ranked, scored, tagged SFT), with TRL's column names;
* ``model``: ``train_tokenizer`` and ``reference_config`` give the word-level tokenizer and the ~1M
  parameter GPT-2 reference model.

Everything random takes a seed or a ``random.Random`` so every dataset is reproducible. The public names
of all four modules are re-exported here: ``from unified_rlhf import task; task.gold_reward(...)``.
"""

from .grammar import (
    CLAUSE_PROMPTS,
    CLOSINGS,
    COUNTABLE_ASPECTS,
    FACTS,
    FILMS,
    MAX_WORDS,
    MIN_WORDS,
    MODIFIERS,
    NEUTRAL_ADJECTIVES,
    NEUTRAL_NOUNS,
    NEUTRAL_PREDICATES,
    PARTICIPLES,
    PLURAL_ASPECTS,
    PREDICATE_PROMPTS,
    SENTIMENTS,
    SFT_MIX,
    SINGULAR_ASPECTS,
    prompt_kind,
    prompts,
    sample_completion,
    sample_prompt,
    sample_review,
    sft_corpus,
    vocabulary,
)
from .model import (
    EOS_ID,
    EOS_TOKEN,
    N_POSITIONS,
    PAD_ID,
    PAD_TOKEN,
    UNK_ID,
    UNK_TOKEN,
    reference_config,
    train_tokenizer,
)
from .reward import (
    BUT_FACTOR,
    INTENSIFIERS,
    LEXICON,
    MAX_INTENSITY,
    NEGATION_FACTOR,
    NEGATIVE_ADJECTIVES,
    NEGATIVE_ADVERBS,
    NEGATIVE_NOUNS,
    NEGATORS,
    OTHER_SENTIMENT_WORDS,
    POSITIVE_ADJECTIVES,
    POSITIVE_ADVERBS,
    POSITIVE_NOUNS,
    REWARD_SCALE,
    gold_reward,
    sentiment_score,
    tokenize,
)
from .rows import (
    BT_TEMPERATURE,
    bradley_terry_label,
    grammar_groups,
    paired_rows,
    ranked_rows,
    score_group,
    scored_rows,
    tagged_sft_rows,
    unpaired_rows,
)

__all__ = [
    # grammar
    "CLAUSE_PROMPTS",
    "CLOSINGS",
    "COUNTABLE_ASPECTS",
    "FACTS",
    "FILMS",
    "MAX_WORDS",
    "MIN_WORDS",
    "MODIFIERS",
    "NEUTRAL_ADJECTIVES",
    "NEUTRAL_NOUNS",
    "NEUTRAL_PREDICATES",
    "PARTICIPLES",
    "PLURAL_ASPECTS",
    "PREDICATE_PROMPTS",
    "SENTIMENTS",
    "SFT_MIX",
    "SINGULAR_ASPECTS",
    "prompt_kind",
    "prompts",
    "sample_completion",
    "sample_prompt",
    "sample_review",
    "sft_corpus",
    "vocabulary",
    # model
    "EOS_ID",
    "EOS_TOKEN",
    "N_POSITIONS",
    "PAD_ID",
    "PAD_TOKEN",
    "UNK_ID",
    "UNK_TOKEN",
    "reference_config",
    "train_tokenizer",
    # reward
    "BUT_FACTOR",
    "INTENSIFIERS",
    "LEXICON",
    "MAX_INTENSITY",
    "NEGATION_FACTOR",
    "NEGATIVE_ADJECTIVES",
    "NEGATIVE_ADVERBS",
    "NEGATIVE_NOUNS",
    "NEGATORS",
    "OTHER_SENTIMENT_WORDS",
    "POSITIVE_ADJECTIVES",
    "POSITIVE_ADVERBS",
    "POSITIVE_NOUNS",
    "REWARD_SCALE",
    "gold_reward",
    "sentiment_score",
    "tokenize",
    # rows
    "BT_TEMPERATURE",
    "bradley_terry_label",
    "grammar_groups",
    "paired_rows",
    "ranked_rows",
    "score_group",
    "scored_rows",
    "tagged_sft_rows",
    "unpaired_rows",
]
