"""Data rows from scored groups: Bradley-Terry labels, and the paired, unpaired, ranked, scored and tagged
SFT rows (with TRL's column names) that the methods train on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from .grammar import SFT_MIX, sample_completion, sample_prompt
from .reward import _sigmoid, gold_reward

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
