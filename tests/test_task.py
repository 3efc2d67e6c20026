"""The synthetic review task: gold reward, grammar, labels, builders, tokenizer and model config."""

import math
import random
import statistics

import pytest

from unified_rlhf import task
from unified_rlhf.data import check_row

# ----------------------------------------------------------------------------------------------
# Gold reward


def reward(completion, prompt="the film was"):
    return task.gold_reward(prompt, completion)


def test_reward_orders_positive_neutral_negative():
    positive = reward("superb , and i loved the music .")
    neutral = reward("long . it runs about two hours .")
    negative = reward("dull , and the acting was awful .")
    assert positive > 0.9 and negative < 0.1
    assert neutral == 0.5
    assert reward("superb .") > reward("good .") > neutral > reward("slow .") > reward("awful .")


def test_negation_flips_and_dampens():
    assert reward("not good .") < 0.5 < reward("not awful .")
    assert reward("bad .") < reward("not good .")  # "not good" is milder than "bad"
    assert reward("never boring .") > 0.5
    assert reward("a film without a single dull scene .") > 0.5
    # The negation ends at punctuation and is used up by one sentiment word.
    assert reward("not . good .") == reward("good .")
    assert reward("not dull and boring .") < 0.5


def test_negation_and_intensity_carry_over_from_the_prompt():
    assert task.gold_reward("the plot was not", "dull at all .") > 0.5
    assert task.gold_reward("the plot was very", "good .") == reward("very good .")
    # Sentiment words of the prompt itself are not scored.
    assert task.gold_reward("i loved the superb", "ending .") == 0.5


def test_intensifiers_and_but():
    assert reward("very good .") > reward("good .") > reward("fairly good .") > 0.5
    assert reward("a bit dull .") > reward("dull .")
    assert reward("very very very very good .") == reward("extremely good .")  # capped chain
    assert reward("good , but dull .") < 0.5 < reward("dull , but superb .")
    # The score before "but" is halved: 3 * 0.5 - 2 = -0.5.
    assert task.sentiment_score("the film was", "superb , but dull .") == pytest.approx(-0.5)


def test_reward_range_and_unknown_words():
    assert reward("the zorblax was quixotic !") == 0.5
    assert reward("") == 0.5 and task.gold_reward("", "") == 0.5
    assert reward("<|endoftext|> <pad> <unk> 42 ... ??") == 0.5
    assert reward("GOOD .") == reward("good .")  # case-insensitive
    assert 0.0 <= reward(" awful" * 5000) < 1e-6 and reward(" superb" * 5000) == 1.0  # no overflow
    rng = random.Random(0)
    words = task.vocabulary() + ["xyz", "!", "not", "very"]
    for _ in range(300):
        value = reward(" ".join(rng.choices(words, k=rng.randint(0, 40))))
        assert 0.0 <= value <= 1.0 and math.isfinite(value)


def test_reward_is_fast():
    import time

    rows = task.sft_corpus(2000, seed=0)
    start = time.perf_counter()
    for row in rows:
        task.gold_reward(row["prompt"], row["completion"])
    assert 2000 / (time.perf_counter() - start) > 5000  # calls per second


# ----------------------------------------------------------------------------------------------
# Grammar and corpus


@pytest.fixture(scope="module")
def corpus():
    return task.sft_corpus(3000, seed=0)


def test_corpus_shape_and_vocabulary(corpus):
    vocabulary = set(task.vocabulary())
    assert len(vocabulary) <= 400
    used = set()
    for row in corpus:
        assert set(row) == {"prompt", "completion"}
        prompt, completion = task.tokenize(row["prompt"]), task.tokenize(row["completion"])
        assert 2 <= len(prompt) <= 6
        assert completion[-1] == "."
        assert task.MIN_WORDS <= sum(t[0].isalnum() for t in completion) <= task.MAX_WORDS
        assert " ".join(prompt) == row["prompt"] and " ".join(completion) == row["completion"]
        sentences = row["completion"][:-2].split(" . ")
        assert len(set(sentences)) == len(sentences)  # no sentence said twice
        used |= set(prompt) | set(completion)
    assert used <= vocabulary
    assert vocabulary <= used  # the SFT corpus alone teaches every word


def test_prompts_carry_no_sentiment():
    for prompt in set(task.prompts(2000, seed=0)):
        assert task.sentiment_score("", prompt) == 0, prompt


def test_determinism():
    assert task.sft_corpus(100, seed=3) == task.sft_corpus(100, seed=3)
    assert task.sft_corpus(100, seed=3) != task.sft_corpus(100, seed=4)
    assert task.prompts(50, seed=7) == task.prompts(50, seed=7) != task.prompts(50, seed=8)
    assert task.grammar_groups(5, 3, seed=1) == task.grammar_groups(5, 3, seed=1)


def test_sentiments_score_as_intended():
    rng = random.Random(0)
    means = {
        s: statistics.mean(task.gold_reward(**task.sample_review(rng, s)) for _ in range(500))
        for s in task.SENTIMENTS
    }
    assert means["positive"] > 0.85 and means["negative"] < 0.15 and means["neutral"] == 0.5
    assert 0.35 < means["mixed"] < 0.65
    with pytest.raises(ValueError):
        task.sample_review(rng, "ecstatic")


def test_sample_review_continues_a_given_prompt():
    rng = random.Random(0)
    for prompt in ["the plot was not", "i would not call it", "this movie", "to be honest ,"]:
        rewards = [task.gold_reward(**task.sample_review(rng, "positive", prompt)) for _ in range(100)]
        assert statistics.mean(rewards) > 0.8, prompt  # the prompt's negation was accounted for


def test_sft_corpus_starts_low_with_room_above(corpus):
    rewards = [task.gold_reward(row["prompt"], row["completion"]) for row in corpus]
    assert 0.33 <= statistics.mean(rewards) <= 0.45
    assert sum(r > 0.85 for r in rewards) / len(rewards) > 0.05  # good reviews exist, but are rare
    rng = random.Random(1)
    best = max(task.gold_reward(**task.sample_review(rng, "positive")) for _ in range(300))
    assert best > 0.99


# ----------------------------------------------------------------------------------------------
# Bradley-Terry labels and builders


@pytest.mark.parametrize("gap", [-0.3, -0.1, 0.0, 0.05, 0.2])
def test_bradley_terry_frequency_matches_sigmoid(gap):
    rng = random.Random(0)
    n = 4000
    wins_a = sum(task.bradley_terry_label(0.5 + gap, 0.5, rng) == 0 for _ in range(n))
    expected = 1 / (1 + math.exp(-gap / task.BT_TEMPERATURE))
    assert abs(wins_a / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3


def test_bradley_terry_temperature_zero_is_argmax():
    rng = random.Random(0)
    assert all(task.bradley_terry_label(0.6, 0.4, rng, temperature=0) == 0 for _ in range(100))
    assert all(task.bradley_terry_label(0.4, 0.6, rng, temperature=0) == 1 for _ in range(100))
    ties = [task.bradley_terry_label(0.5, 0.5, rng, temperature=0) for _ in range(1000)]
    assert 400 < sum(ties) < 600


@pytest.fixture(scope="module")
def groups():
    return task.grammar_groups(200, k=4, seed=0)


def test_groups_are_scored_with_the_gold_reward(groups):
    for group in groups:
        assert len(group["completions"]) == len(group["rewards"]) == 4
        assert group["rewards"] == [task.gold_reward(group["prompt"], c) for c in group["completions"]]


def test_paired_rows(groups):
    rows = task.paired_rows(groups, random.Random(0), pairs_per_prompt=2)
    assert len(rows) >= 350
    for row in rows:
        check_row(row, "paired", "paired")
        assert list(row) == ["prompt", "chosen", "rejected"]
    margins = [
        task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"])
        for r in rows
    ]
    informative = [m for m in margins if m != 0]
    agreement = sum(m > 0 for m in informative) / len(informative)
    assert 0.8 < agreement < 0.99  # mostly right, but noisy: labels are sampled, not argmax
    exact = task.paired_rows(groups, random.Random(0), temperature=0)
    assert all(
        task.gold_reward(r["prompt"], r["chosen"]) >= task.gold_reward(r["prompt"], r["rejected"])
        for r in exact
    )
    # Identical completions never make a pair.
    twin = {"prompt": "the film was", "completions": ["good .", "good ."], "rewards": [0.6, 0.6]}
    assert task.paired_rows([twin], random.Random(0)) == []


def test_unpaired_rows(groups):
    rows = task.unpaired_rows(groups, random.Random(0))
    assert len(rows) == 800
    for row in rows:
        check_row(row, "unpaired", "unpaired")
        assert list(row) == ["prompt", "completion", "label"] and type(row["label"]) is bool
    exact = task.unpaired_rows(groups, random.Random(0), threshold=0.7, temperature=0)
    for row in exact:
        assert row["label"] == (task.gold_reward(row["prompt"], row["completion"]) > 0.7)


def test_ranked_scored_and_tagged_rows(groups):
    ranked = task.ranked_rows(groups)
    assert len(ranked) == 200
    for row in ranked:
        check_row(row, "ranked", "ranked")
        assert list(row) == ["prompt", "completions", "rewards"]
    scored = task.scored_rows(groups)
    assert len(scored) == 800
    for row in scored:
        check_row(row, "scored", "scored")
        assert row["score"] == task.gold_reward(row["prompt"], row["completion"])
    tagged = task.tagged_sft_rows(groups, expert_threshold=0.75)
    assert {row["source"] for row in tagged} == {"expert", "suboptimal"}
    for row in tagged:
        check_row(row, "sft_tagged", "tagged")
        is_expert = task.gold_reward(row["prompt"], row["completion"]) >= 0.75
        assert row["source"] == ("expert" if is_expert else "suboptimal")


def test_builders_reject_mismatched_groups():
    bad = {"prompt": "the film was", "completions": ["good .", "bad ."], "rewards": [0.6]}
    for build in (task.ranked_rows, task.scored_rows, task.tagged_sft_rows):
        with pytest.raises(ValueError, match="2 completions but 1 rewards"):
            build([bad])
    with pytest.raises(ValueError):
        task.paired_rows([bad], random.Random(0))


# ----------------------------------------------------------------------------------------------
# Tokenizer and reference model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    out_dir = tmp_path_factory.mktemp("tokenizer")
    task.train_tokenizer([row["prompt"] + " " + row["completion"] for row in corpus], out_dir)
    return out_dir


def test_tokenizer_round_trip_after_reload(tokenizer_dir, corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) == len(task.vocabulary()) + 3
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|endoftext|>", "<|endoftext|>", "<pad>", "<unk>"
    )  # fmt: skip
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (
        task.EOS_ID, task.PAD_ID, task.UNK_ID
    )  # fmt: skip
    assert tokenizer.decode(tokenizer("the film was good .")["input_ids"]) == "the film was good ."
    for row in corpus[:200]:
        text = row["prompt"] + " " + row["completion"]
        ids = tokenizer(text)["input_ids"]
        assert task.UNK_ID not in ids and task.EOS_ID not in ids  # no special tokens added
        assert tokenizer.decode(ids) == text
        # Tokenizing prompt and completion apart gives the same ids as tokenizing the joined text.
        assert tokenizer(row["prompt"])["input_ids"] + tokenizer(row["completion"])["input_ids"] == ids
    assert tokenizer("the film was zorblax!")["input_ids"][-2:] == [task.UNK_ID, task.UNK_ID]
    with_specials = [task.EOS_ID, *tokenizer("good .")["input_ids"], task.EOS_ID]
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == "good ."


def test_reference_config_builds_a_small_gpt2(tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = task.reference_config(len(tokenizer))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        task.EOS_ID,
        task.EOS_ID,
        task.PAD_ID,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 2_000_000
    ids = torch.tensor([[task.EOS_ID, *tokenizer("the film was good .")["input_ids"]]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


# ----------------------------------------------------------------------------------------------
# Package layout: task/ is split by job, and every submodule stands on its own.

# Each submodule and the sibling submodules it may load (the import graph is a DAG: no cycles).
SUBMODULES = {"reward": set(), "grammar": {"reward"}, "rows": {"grammar", "reward"}, "model": set()}


@pytest.mark.parametrize("name", sorted(SUBMODULES))
def test_each_submodule_imports_alone(name):
    import subprocess
    import sys
    from pathlib import Path

    package = Path(task.__file__).parent
    # A fresh interpreter with empty stand-ins for unified_rlhf and unified_rlhf.task, so the re-exports in
    # task/__init__.py cannot mask an import cycle or a missing import; print the sibling modules it loaded.
    code = f"""
import importlib, sys, types
for pkg, path in (("unified_rlhf", {str(package.parent)!r}), ("unified_rlhf.task", {str(package)!r})):
    sys.modules[pkg] = types.ModuleType(pkg)
    sys.modules[pkg].__path__ = [path]
importlib.import_module("unified_rlhf.task.{name}")
print(" ".join(sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("unified_rlhf.task."))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == SUBMODULES[name] | {name}


def test_package_re_exports_every_public_name():
    import importlib
    import types

    found = set()
    for name in SUBMODULES:
        module = importlib.import_module(f"unified_rlhf.task.{name}")
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or isinstance(value, types.ModuleType):
                continue
            if getattr(value, "__module__", module.__name__) == module.__name__:  # skips imported classes
                assert getattr(task, attribute) is value, (name, attribute)
                found.add(attribute)
    assert found == set(task.__all__)
