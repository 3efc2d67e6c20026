"""The book's experimental task: synthetic movie reviews with a known, exact gold reward.

This mirrors the controlled-sentiment experiment of the DPO paper (IMDb prefixes, a sentiment
classifier as the gold reward), but every piece is synthetic and small enough to run on a laptop:

* a generative grammar writes short lowercase reviews over a closed vocabulary (294 words);
  a *prompt* is a short neutral prefix ("the acting was"), a *completion* continues it;
* ``gold_reward(prompt, completion)`` scores a completion with a sentiment lexicon
  (graded word weights, negation, intensifiers, "but") squashed into [0, 1];
* ``sft_corpus`` mixes sentiments so that a model trained on it starts at a mean gold reward of
  about 0.4, far below the ~0.95+ that purely positive reviews reach;
* builders turn per-prompt groups of scored completions into the row formats the methods need
  (paired, unpaired, ranked, scored, tagged SFT), with TRL's column names;
* ``train_tokenizer`` and ``reference_config`` give the word-level tokenizer and the ~1M parameter
  GPT-2 reference model.

Everything random takes a seed or a ``random.Random`` so every dataset is reproducible.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# The grammar. Prompts are sentiment-free prefixes of three kinds, decided by how they end:
#   predicate: "the acting was", "i found it"     -> the completion starts with a predicate
#   clause:    "i watched this film and", "to be honest ,"  -> it starts with a full clause
#   verb:      "this movie"                        -> it starts with a verb phrase

SINGULAR_ASPECTS = [
    "acting", "plot", "story", "script", "dialogue", "music", "soundtrack", "pacing", "ending", "cast",
    "direction", "camera work", "humour", "romance", "villain", "editing", "opening", "final act",
    "first half", "second half", "lead performance",
]  # fmt: skip
COUNTABLE_ASPECTS = ["plot", "story", "script", "soundtrack", "ending", "cast", "villain", "final act"]
PLURAL_ASPECTS = [
    "characters", "jokes", "effects", "action scenes", "songs", "costumes", "visuals", "performances",
    "twists", "fight scenes",
]  # fmt: skip
FILMS = ["this movie", "the film", "this film", "the movie", "this sequel", "the remake", "this comedy"]
NEUTRAL_ADJECTIVES = ["long", "short", "quiet", "loud", "simple", "dark", "familiar", "typical", "unusual"]
NEUTRAL_NOUNS = ["film", "movie", "story", "drama", "comedy", "thriller", "experience", "ride", "affair"]
PARTICIPLES = ["done", "handled", "made", "crafted", "executed"]
FACTS = [
    "it runs about two hours", "i saw it with my brother", "it is set in a small town",
    "the story follows a young doctor", "it was shot in paris", "it came out last year",
    "i watched it on a sunday", "it is based on a novel", "most of it takes place at night",
    "the film is in black and white", "there are a lot of characters", "i saw it at the cinema",
    "it is a remake of an old film", "the lead is played by a newcomer", "it is mostly set on a train",
]  # fmt: skip
NEUTRAL_PREDICATES = ["about what i expected", "what you would expect", "typical of the genre"]
CLOSINGS = {
    "positive": [
        "i loved it", "i would watch it again", "i would recommend it to anyone", "highly recommended",
        "what a gem", "a real treat", "it is worth seeing", "one of the best films this year",
        "my new favourite", "i laughed a lot", "hardly a dull moment", "not a single boring scene",
        "it works without a single weak scene",
    ],
    "negative": [
        "i would not recommend it", "avoid it", "what a waste of time", "i almost fell asleep",
        "i regret watching it", "one of the worst films this year", "not worth your time",
        "a total letdown", "nothing special", "i wasted two hours", "it failed to keep me awake",
        "no thanks",
    ],
    "neutral": ["make of that what you will", "see it if you want", "i may watch it again someday"],
}  # fmt: skip
CLAUSE_PROMPTS = [
    "i watched this film and", "i saw it last night and", "we rented this movie and",
    "after the first hour ,", "to be honest ,", "i went in blind and", "from start to finish ,",
    "my friends and i agreed that", "i have to say that",
]  # fmt: skip
PREDICATE_PROMPTS = [
    "overall the film was", "this movie is", "the film was", "honestly , it was", "i found it",
    "i would not call it", "it was not", "to me it felt",
]  # fmt: skip
SENTIMENTS = ("positive", "negative", "neutral", "mixed")
# The SFT mix: mostly negative / neutral / mixed, some positive, so the reference policy starts low.
SFT_MIX = {"positive": 0.12, "negative": 0.38, "neutral": 0.28, "mixed": 0.22}
MIN_WORDS, MAX_WORDS = 6, 20  # completion length in words (punctuation not counted)

_POLARITY = {"positive": 1, "negative": -1, "neutral": 0}
_FLIP = {"positive": "negative", "negative": "positive", "neutral": "neutral"}
_CLAUSE_ENDINGS = {"and", ",", "that"}
_PREDICATE_ENDINGS = {"was", "were", "is", "felt", "seemed", "not", "it"}
MODIFIERS = {  # how the grammar intensifies (or softens) an adjective of each sentiment
    "positive": ["very", "really", "truly", "extremely", "incredibly", "absolutely", "quite", "fairly"],
    "negative": ["very", "really", "extremely", "totally", "pretty", "somewhat", "slightly", "a bit",
                 "a little"],
}  # fmt: skip


def _words(polarity: int, table_pos: dict, table_neg: dict) -> list[str]:
    return list(table_pos if polarity > 0 else table_neg)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _adjective_phrase(rng: random.Random, sentiment: str, plain: bool = False) -> str:
    """An adjective phrase; ``plain`` (used right after a negator) means one adjective, no "not"."""
    if sentiment == "neutral":
        return rng.choice(NEUTRAL_ADJECTIVES if plain else NEUTRAL_ADJECTIVES + NEUTRAL_PREDICATES)
    polarity = _POLARITY[sentiment]
    words = _words(polarity, POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES)
    roll = rng.random()
    if roll < 0.3:
        return f"{rng.choice(MODIFIERS[sentiment])} {rng.choice(words)}"
    if plain or roll < 0.6:
        return rng.choice(words)
    if roll < 0.8:
        first, second = rng.sample(words, 2)
        return f"{first} and {second}"
    # A negated opposite: "never boring", "not very good".
    opposite = _words(-polarity, POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES)
    return f"{rng.choice(['not', 'never'])} {rng.choice(['', 'very ', 'really '])}{rng.choice(opposite)}"


def _predicate(rng: random.Random, sentiment: str, plain: bool = False, about_film: bool = False) -> str:
    """What follows "was" or "found it": an adjective phrase or a noun phrase ("a real mess").

    Only the film as a whole can be "a clever thriller"; an aspect gets adjectives or "a real treat".
    """
    roll = rng.random()
    if roll < 0.5 or (sentiment == "neutral" and not about_film):
        return _adjective_phrase(rng, sentiment, plain)
    if sentiment != "neutral" and (roll < 0.7 or not about_film):
        nouns = _words(_POLARITY[sentiment], POSITIVE_NOUNS, NEGATIVE_NOUNS)
        modifiers = ["", "real "] + (["total "] if sentiment == "negative" else [])
        return f"a {rng.choice(modifiers)}{rng.choice(nouns)}"
    if sentiment == "neutral":
        adjective = rng.choice(NEUTRAL_ADJECTIVES)
    else:
        adjective = _adjective_phrase(rng, sentiment, plain=True)
    return _with_article(f"{adjective} {rng.choice(NEUTRAL_NOUNS)}")


def _aspect(rng: random.Random) -> tuple[str, str]:
    """An aspect with its past-tense copula, e.g. ("the plot", "was") or ("the jokes", "were")."""
    if rng.random() < 0.7:
        return f"the {rng.choice(SINGULAR_ASPECTS)}", rng.choice(["was", "was", "felt", "seemed"])
    return f"the {rng.choice(PLURAL_ASPECTS)}", rng.choice(["were", "were", "felt", "seemed"])


def _clause(rng: random.Random, sentiment: str) -> str:
    if sentiment == "neutral":
        if rng.random() < 0.6:
            return rng.choice(FACTS)
        subject, copula = _aspect(rng)
        return f"{subject} {copula} {_predicate(rng, 'neutral')}"
    polarity = _POLARITY[sentiment]
    subject, copula = _aspect(rng)
    roll = rng.random()
    if roll < 0.6:
        return f"{subject} {copula} {_predicate(rng, sentiment)}"
    if roll < 0.8:
        verbs = ["loved", "adored", "liked", "enjoyed", "admired"] if polarity > 0 else ["hated", "disliked"]
        verb = rng.choice(verbs)
        return f"i {verb} {subject}"
    adverb = rng.choice(_words(polarity, POSITIVE_ADVERBS, NEGATIVE_ADVERBS))
    copula = "were" if subject.endswith("s") else "was"  # the plural aspects all end in "s"
    return f"{subject} {copula} {adverb} {rng.choice(PARTICIPLES)}"


def _verb_phrase(rng: random.Random, sentiment: str) -> str:
    if sentiment == "neutral":
        return rng.choice([fact.split(" ", 1)[1] for fact in FACTS if fact.startswith("it ")])
    roll = rng.random()
    if roll < 0.5:
        return f"{rng.choice(['is', 'was'])} {_predicate(rng, sentiment, about_film=True)}"
    if roll < 0.8:
        adjective = _adjective_phrase(rng, sentiment, plain=True)
        if rng.random() < 0.5:
            return f"has {adjective} {rng.choice(PLURAL_ASPECTS)}"
        return "has " + _with_article(f"{adjective} {rng.choice(COUNTABLE_ASPECTS)}")
    return f"{'shines' if sentiment == 'positive' else 'drags'} from start to finish"


def prompt_kind(prompt: str) -> str:
    """Which grammatical slot a prompt leaves open: "clause", "predicate" or "verb"."""
    last = tokenize(prompt)[-1] if prompt.strip() else ","
    if last in _CLAUSE_ENDINGS:
        return "clause"
    return "predicate" if last in _PREDICATE_ENDINGS else "verb"


def sample_prompt(rng: random.Random) -> str:
    """A sentiment-free prompt: a fixed opener, a film ("this movie") or an aspect ("the plot was")."""
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(CLAUSE_PROMPTS)
    if roll < 0.35:
        return rng.choice(PREDICATE_PROMPTS)
    if roll < 0.45:
        return rng.choice(FILMS)
    subject, copula = _aspect(rng)
    if rng.random() < 0.1:
        return f"{subject} {copula} not" if copula in ("was", "were") else f"{subject} {copula}"
    if rng.random() < 0.25 and copula == "was" and len(subject.split()) == 2:
        return f"i thought {subject} was"
    return f"{subject} {copula}"


def _opening(rng: random.Random, prompt: str, sentiment: str) -> str:
    kind = prompt_kind(prompt)
    if kind == "clause":
        return _clause(rng, sentiment)
    if kind == "verb":
        return _verb_phrase(rng, sentiment)
    about_film = not any(f"the {aspect} " in prompt for aspect in SINGULAR_ASPECTS + PLURAL_ASPECTS)
    # A negated prompt ("the plot was not", "i would not call it") flips the opening predicate, which
    # is kept plain so the negation lands on its one sentiment word.
    if NEGATORS & set(tokenize(prompt)):
        at_all = " at all" if tokenize(prompt)[-1] == "not" and sentiment != "neutral" else ""
        return _predicate(rng, _FLIP[sentiment], plain=True, about_film=about_film) + at_all
    return _predicate(rng, sentiment, about_film=about_film)


def _continuation(rng: random.Random, sentiment: str) -> str:
    roll = rng.random()
    if roll < 0.25:
        return ""
    if roll < 0.5:
        return f" , and {_clause(rng, sentiment)}"
    if roll < 0.75:
        return f" . {rng.choice(CLOSINGS[sentiment])}"
    if roll < 0.9:
        return f" . {_clause(rng, sentiment)}"
    return f" , and {_clause(rng, sentiment)} . {rng.choice(CLOSINGS[sentiment])}"


def _count_words(text: str) -> int:
    return sum(token[0].isalnum() for token in tokenize(text))


def sample_completion(rng: random.Random, prompt: str, sentiment: str) -> str:
    """A grammatical completion of ``prompt`` with the given overall sentiment (one of SENTIMENTS)."""
    if sentiment not in SENTIMENTS:
        raise ValueError(f"sentiment must be one of {SENTIMENTS}, got {sentiment!r}")
    while True:  # rejection sampling: length in [MIN_WORDS, MAX_WORDS], no sentence said twice
        if sentiment == "mixed":
            first, second = rng.sample(["positive", "negative"], 2)
            text = f"{_opening(rng, prompt, first)} , but {_clause(rng, second)}"
            if rng.random() < 0.3:
                text += f" . {rng.choice(CLOSINGS[second])}"
        else:
            text = _opening(rng, prompt, sentiment) + _continuation(rng, sentiment)
        text = " ".join(text.split())
        sentences = text.split(" . ")
        if MIN_WORDS <= _count_words(text) <= MAX_WORDS and len(set(sentences)) == len(sentences):
            return text + " ."


def sample_review(rng: random.Random, sentiment: str, prompt: str | None = None) -> dict[str, str]:
    """One review {"prompt", "completion"}; a prompt is drawn unless given."""
    prompt = sample_prompt(rng) if prompt is None else prompt
    return {"prompt": prompt, "completion": sample_completion(rng, prompt, sentiment)}


def sft_corpus(n: int, seed: int = 0, mix: dict[str, float] | None = None) -> list[dict[str, str]]:
    """``n`` reviews {"prompt", "completion"} with sentiments drawn from ``mix`` (default SFT_MIX).

    With the default mix the mean gold reward is about 0.39, and a policy trained on it starts there.
    """
    mix = SFT_MIX if mix is None else mix
    rng = random.Random(seed)
    sentiments = rng.choices(list(mix), weights=list(mix.values()), k=n)
    return [sample_review(rng, sentiment) for sentiment in sentiments]


def prompts(n: int, seed: int = 1) -> list[str]:
    """``n`` prompts for online sampling or evaluation (drawn with replacement from the prompt grammar).

    The prompt space is small (a few hundred strings), so held-out prompts overlap the SFT prompts;
    what is evaluated is the completion, as in the DPO paper's sentiment experiment.
    """
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(n)]


def vocabulary() -> list[str]:
    """Every word and punctuation mark the grammar can produce, sorted."""
    phrases = [
        *LEXICON, *MODIFIERS["positive"], *MODIFIERS["negative"], "real total", *SINGULAR_ASPECTS,
        *PLURAL_ASPECTS, *FILMS, *NEUTRAL_ADJECTIVES, *NEUTRAL_NOUNS, *PARTICIPLES, *FACTS,
        *NEUTRAL_PREDICATES, *CLAUSE_PROMPTS, *PREDICATE_PROMPTS,
        *(closing for closings in CLOSINGS.values() for closing in closings),
        "the a an i was were is not never felt seemed thought and but at all has from start to finish .",
    ]  # fmt: skip
    return sorted({token for phrase in phrases for token in tokenize(phrase)})


# ----------------------------------------------------------------------------------------------
# Preference labels and dataset builders. A *group* is one prompt with several scored completions:
# {"prompt": str, "completions": [str, ...], "rewards": [float, ...]}.

# With rewards in [0, 1], temperature 0.1 makes a 0.1 reward gap a 73/27 coin, a 0.3 gap 95/5, and
# anything above 0.5 near certain: pairs carry information, but close calls stay noisy, as human labels.
BT_TEMPERATURE = 0.1


def bradley_terry_label(
    r_a: float, r_b: float, rng: random.Random, temperature: float = BT_TEMPERATURE
) -> int:
    """Index of the preferred completion (0 for a, 1 for b), with P(a > b) = sigmoid((r_a - r_b) / T).

    ``temperature=0`` labels by the larger reward (a fair coin on ties). One rng draw per call.
    """
    u = rng.random()
    if temperature == 0:
        p_a = 0.5 if r_a == r_b else float(r_a > r_b)
    else:
        p_a = _sigmoid((r_a - r_b) / temperature)
    return 0 if u < p_a else 1


def score_group(prompt: str, completions: Sequence[str]) -> dict:
    """A group scored with the gold reward."""
    return {
        "prompt": prompt,
        "completions": list(completions),
        "rewards": [gold_reward(prompt, c) for c in completions],
    }


def grammar_groups(n_prompts: int, k: int, seed: int = 0, mix: dict[str, float] | None = None) -> list[dict]:
    """Groups of ``k`` grammar completions per prompt, sentiments drawn from ``mix`` (default SFT_MIX).

    A stand-in for sampling the SFT policy: handy for tests and for offline data without a model.
    """
    mix = SFT_MIX if mix is None else mix
    rng = random.Random(seed)
    groups = []
    for _ in range(n_prompts):
        prompt = sample_prompt(rng)
        sentiments = rng.choices(list(mix), weights=list(mix.values()), k=k)
        groups.append(score_group(prompt, [sample_completion(rng, prompt, s) for s in sentiments]))
    return groups


def _checked(group: dict) -> tuple[str, list[str], list[float]]:
    prompt, completions, rewards = group["prompt"], list(group["completions"]), list(group["rewards"])
    if len(completions) != len(rewards):
        raise ValueError(f"group for {prompt!r}: {len(completions)} completions but {len(rewards)} rewards")
    return prompt, completions, rewards


def paired_rows(
    groups: Iterable[dict], rng: random.Random, pairs_per_prompt: int = 1, temperature: float = BT_TEMPERATURE
) -> list[dict]:
    """{"prompt", "chosen", "rejected"} rows: random pairs of distinct completions, Bradley-Terry labelled.

    Groups with fewer than two distinct completions give no pair.
    """
    rows = []
    for group in groups:
        prompt, completions, rewards = _checked(group)
        pairs = [
            (i, j)
            for i in range(len(completions))
            for j in range(i + 1, len(completions))
            if completions[i] != completions[j]
        ]
        for i, j in rng.sample(pairs, min(pairs_per_prompt, len(pairs))):
            winner = bradley_terry_label(rewards[i], rewards[j], rng, temperature)
            chosen, rejected = (i, j) if winner == 0 else (j, i)
            rows.append({"prompt": prompt, "chosen": completions[chosen], "rejected": completions[rejected]})
    return rows


def unpaired_rows(
    groups: Iterable[dict], rng: random.Random, threshold: float = 0.5, temperature: float = BT_TEMPERATURE
) -> list[dict]:
    """{"prompt", "completion", "label"} rows for KTO: one thumbs-up/down per completion.

    The label is a Bradley-Terry comparison against a virtual completion of reward ``threshold``:
    P(desirable) = sigmoid((r - threshold) / T), the same noise model as the paired labels.
    ``temperature=0`` gives label = r > threshold (a coin flip at exactly the threshold).
    """
    rows = []
    for group in groups:
        prompt, completions, rewards = _checked(group)
        for completion, reward in zip(completions, rewards, strict=True):
            desirable = bradley_terry_label(reward, threshold, rng, temperature) == 0
            rows.append({"prompt": prompt, "completion": completion, "label": desirable})
    return rows


def ranked_rows(groups: Iterable[dict]) -> list[dict]:
    """{"prompt", "completions", "rewards"} rows for RRHF (groups with at least two completions)."""
    rows = []
    for group in groups:
        prompt, completions, rewards = _checked(group)
        if len(completions) >= 2:
            rewards = [float(r) for r in rewards]
            rows.append({"prompt": prompt, "completions": completions, "rewards": rewards})
    return rows


def scored_rows(groups: Iterable[dict]) -> list[dict]:
    """{"prompt", "completion", "score"} rows for UNA's score form; score is the reward, in [0, 1]."""
    rows = []
    for group in groups:
        prompt, completions, rewards = _checked(group)
        for completion, reward in zip(completions, rewards, strict=True):
            rows.append({"prompt": prompt, "completion": completion, "score": float(reward)})
    return rows


def tagged_sft_rows(groups: Iterable[dict], expert_threshold: float = 0.75) -> list[dict]:
    """{"prompt", "completion", "source"} rows for C-RLFT (OpenChat).

    ``source`` is the data class: "expert" when the reward is at least ``expert_threshold``, else
    "suboptimal". It stays a separate field; the trainer puts it into the prompt.
    """
    rows = []
    for group in groups:
        prompt, completions, rewards = _checked(group)
        for completion, reward in zip(completions, rewards, strict=True):
            source = "expert" if reward >= expert_threshold else "suboptimal"
            rows.append({"prompt": prompt, "completion": completion, "source": source})
    return rows


# ----------------------------------------------------------------------------------------------
# Tokenizer and reference model.

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
