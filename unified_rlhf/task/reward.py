"""The gold reward: a graded sentiment lexicon read with negation, intensifiers and "but", squashed into [0, 1].

``gold_reward(prompt, completion)`` is the task's exact reward (``sentiment_score`` is its logit times
``REWARD_SCALE``); ``tokenize`` is the same word split the word-level tokenizer makes.
"""

from __future__ import annotations

import math
import re

# Sentiment lexicon. Weights are graded: +3 rave, +2 praise, +1 mild approval, and the mirror
# image for criticism. Words not listed (including any word outside the vocabulary) weigh 0.

POSITIVE_ADJECTIVES = {
    "superb": 3, "brilliant": 3, "outstanding": 3, "wonderful": 3, "excellent": 3, "stunning": 3,
    "flawless": 3, "great": 2, "beautiful": 2, "moving": 2, "gripping": 2, "delightful": 2,
    "charming": 2, "clever": 2, "memorable": 2, "powerful": 2, "lovely": 2, "touching": 2,
    "impressive": 2, "funny": 2, "good": 1, "nice": 1, "fine": 1, "decent": 1, "solid": 1,
    "pleasant": 1, "enjoyable": 1, "fun": 1, "likeable": 1, "sweet": 1,
}  # fmt: skip
NEGATIVE_ADJECTIVES = {
    "awful": -3, "terrible": -3, "dreadful": -3, "horrible": -3, "painful": -3, "unwatchable": -3,
    "dull": -2, "boring": -2, "weak": -2, "clumsy": -2, "tedious": -2, "lazy": -2, "poor": -2,
    "bad": -2, "confusing": -2, "wooden": -2, "shallow": -2, "annoying": -2, "predictable": -1,
    "slow": -1, "uneven": -1, "forgettable": -1, "flat": -1, "bland": -1, "messy": -1, "silly": -1,
}  # fmt: skip
POSITIVE_NOUNS = {"masterpiece": 3, "gem": 3, "triumph": 3, "joy": 2, "treat": 2, "delight": 2, "pleasure": 2}
NEGATIVE_NOUNS = {"disaster": -3, "mess": -2, "bore": -2, "failure": -2, "waste": -2, "letdown": -2}
POSITIVE_ADVERBS = {"beautifully": 2, "well": 1}
NEGATIVE_ADVERBS = {"badly": -2, "poorly": -2}
OTHER_SENTIMENT_WORDS = {
    "loved": 3, "adored": 3, "liked": 2, "enjoyed": 2, "admired": 2, "recommend": 2, "recommended": 2,
    "shines": 2, "favourite": 2, "best": 3, "worth": 1, "special": 1, "laughed": 1,
    "hated": -3, "worst": -3, "disliked": -2, "regret": -2, "avoid": -2, "wasted": -2, "drags": -2,
    "failed": -2, "asleep": -2,
}  # fmt: skip
LEXICON: dict[str, float] = {
    **POSITIVE_ADJECTIVES, **NEGATIVE_ADJECTIVES, **POSITIVE_NOUNS, **NEGATIVE_NOUNS,
    **POSITIVE_ADVERBS, **NEGATIVE_ADVERBS, **OTHER_SENTIMENT_WORDS,
}  # fmt: skip

# Modifiers scale the next sentiment word when they come directly before it ("very very good").
INTENSIFIERS = {
    "very": 1.5, "really": 1.5, "truly": 1.5, "so": 1.5, "highly": 1.5, "totally": 1.5, "real": 1.5,
    "extremely": 2.0, "incredibly": 2.0, "absolutely": 2.0, "quite": 1.25, "pretty": 1.25,
    "total": 1.5, "somewhat": 0.5, "fairly": 0.5, "slightly": 0.5, "bit": 0.5, "little": 0.5,
}  # fmt: skip
MAX_INTENSITY = 2.0  # caps a chain of intensifiers, so "very very very ..." is not a free lunch
NEGATORS = {"not", "never", "no", "nothing", "hardly", "without"}
NEGATION_FACTOR = -0.5  # "not good" is mildly negative, "not awful" mildly positive (flip and dampen)
BUT_FACTOR = 0.5  # "good acting , but a dull plot": what comes after "but" counts more
REWARD_SCALE = 2.0  # gold reward = sigmoid(score / REWARD_SCALE)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks, the same split the word-level tokenizer makes."""
    return _TOKEN.findall(text.lower())


def sentiment_score(prompt: str, completion: str) -> float:
    """Summed lexicon score of the completion (the gold reward's logit, times REWARD_SCALE).

    The prompt and completion are read as one token stream so that a negator or intensifier at the end
    of the prompt ("the plot was not" + "dull at all .") applies to the completion, but only
    sentiment words of the completion are counted. Rules, applied left to right:

    * a sentiment word adds ``weight * intensity``, where intensity is the product of the modifiers
      directly before it (capped at MAX_INTENSITY);
    * after a negator ("not", "never", "no", "nothing", "hardly", "without") the next sentiment word is
      multiplied by NEGATION_FACTOR; the negation ends there, or at punctuation, "and" or "but";
    * "but" halves the score accumulated so far in the completion.
    """
    prompt_tokens, completion_tokens = tokenize(prompt), tokenize(completion)
    start = len(prompt_tokens)
    score, intensity, negated = 0.0, 1.0, False
    for i, token in enumerate(prompt_tokens + completion_tokens):
        if token in INTENSIFIERS:
            intensity = min(intensity * INTENSIFIERS[token], MAX_INTENSITY)
            continue
        if token in NEGATORS:
            negated = True
        elif token in LEXICON:
            value = LEXICON[token] * intensity
            if i >= start:
                score += NEGATION_FACTOR * value if negated else value
            negated = False
        elif token == "but":
            score *= BUT_FACTOR
            negated = False
        elif token == "and" or not token[0].isalnum():
            negated = False
        intensity = 1.0
    return score


def _sigmoid(x: float) -> float:
    # Numerically stable for very long (or adversarial) completions.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def gold_reward(prompt: str, completion: str) -> float:
    """The task's exact reward in [0, 1]: sigmoid(sentiment_score / REWARD_SCALE).

    A review with no sentiment words scores 0.5; "good" alone 0.62, "superb" 0.82, "awful" 0.18.
    Any string is accepted: unknown words weigh 0, so broken policy samples still get a reward.
    """
    return _sigmoid(sentiment_score(prompt, completion) / REWARD_SCALE)
