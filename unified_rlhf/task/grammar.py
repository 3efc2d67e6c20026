"""The review grammar: sentiment-free prompts, completions of a chosen sentiment, and the SFT corpus.

The grammar writes short lowercase reviews over a closed vocabulary (``vocabulary()``). A *prompt* is a
short neutral prefix ("the acting was"), a *completion* continues it with a given sentiment. Everything
random takes a seed or a ``random.Random``, so every corpus is reproducible.
"""

from __future__ import annotations

import random

from .reward import (
    LEXICON,
    NEGATIVE_ADJECTIVES,
    NEGATIVE_ADVERBS,
    NEGATIVE_NOUNS,
    NEGATORS,
    POSITIVE_ADJECTIVES,
    POSITIVE_ADVERBS,
    POSITIVE_NOUNS,
    tokenize,
)

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
