"""Sampling and policy evaluation on a tiny random GPT-2 with the task's tokenizer."""

import copy
import math

import pytest
import torch

from unified_rlhf import task
from unified_rlhf.evaluate import completion_logprobs, evaluate_policy, sample
from unified_rlhf.models import Encoder

EOS, PAD = task.EOS_ID, task.PAD_ID


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A 1-layer model gains nothing from intra-op threads, and they spin badly (10x slower) when another
    # process holds one of the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [f"{r['prompt']} {r['completion']}" for r in task.sft_corpus(50, seed=0)]
    corpus += task.vocabulary()  # every word the grammar can produce, so decoding never meets <unk>
    return task.train_tokenizer(corpus, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = task.reference_config(len(tokenizer), n_layer=1, n_head=2, n_embd=32)
    return GPT2LMHeadModel(config).eval()


def encode_prompts(tokenizer, prompts):
    return Encoder(tokenizer).prompts(prompts)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return encode_prompts(tokenizer, task.prompts(10, seed=3))


def boost_eos(model, boost: float):
    """A copy of ``model`` whose eos logit is raised by ``boost`` at every position."""
    boosted = copy.deepcopy(model)

    def add_boost(module, inputs, logits):
        logits = logits.clone()
        logits[..., EOS] += boost
        return logits

    boosted.lm_head.register_forward_hook(add_boost)
    return boosted


def greedy_without_cache(model, prompt, max_new_tokens):
    """Oracle: one unpadded sequence, the whole prefix re-run at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item())
            if ids[-1] == EOS:
                break
    return ids[len(prompt) :]


def test_encode_and_decode(tokenizer):
    [ids] = encode_prompts(tokenizer, ["the film was"])
    assert ids[0] == EOS and len(ids) == 4
    assert Encoder(tokenizer).decode(ids[1:] + [EOS]) == "the film was"
    assert Encoder(tokenizer).decode([EOS, PAD]) == ""


def test_sample_is_reproducible(model, prompt_ids):
    first = sample(model, prompt_ids, num_samples=2, max_new_tokens=8, seed=1)
    assert first == sample(model, prompt_ids, num_samples=2, max_new_tokens=8, seed=1)
    assert first != sample(model, prompt_ids, num_samples=2, max_new_tokens=8, seed=2)
    assert len(first) == 2 * len(prompt_ids)


def test_greedy_matches_uncached_decoding(model, prompt_ids):
    # Prompts of different lengths in batches of 3: checks left padding, position ids and the KV cache.
    assert len({len(p) for p in prompt_ids}) > 1
    greedy = sample(model, prompt_ids, max_new_tokens=6, temperature=0, batch_size=3)
    assert greedy == [greedy_without_cache(model, p, 6) for p in prompt_ids]


def test_samples_are_prompt_major(model, prompt_ids):
    one = sample(model, prompt_ids, max_new_tokens=5, temperature=0)
    three = sample(model, prompt_ids, num_samples=3, max_new_tokens=5, temperature=0, batch_size=4)
    assert three == [y for y in one for _ in range(3)]


def test_completions_stop_at_eos_or_max_new_tokens(model, prompt_ids):
    # p(eos) ~ 0.15 per step: some samples stop, others run to the limit.
    completions = sample(boost_eos(model, 4.0), prompt_ids, num_samples=4, max_new_tokens=8, seed=0)
    stopped = [y for y in completions if EOS in y]
    assert 0 < len(stopped) < len(completions)
    for y in completions:
        assert 1 <= len(y) <= 8
        if EOS in y:
            assert y.index(EOS) == len(y) - 1  # eos is included, nothing follows it
        else:
            assert len(y) == 8


def test_sampling_frequencies_follow_the_model(model):
    # Pure sampling at temperature 1: a top-k/top-p filter or a wrong temperature would shift this.
    boosted = boost_eos(model, 4.0)
    with torch.no_grad():
        p_eos = torch.softmax(boosted(input_ids=torch.tensor([[EOS]])).logits[0, -1], -1)[EOS].item()
    n = 4000
    ys = sample(boosted, [[EOS]], num_samples=n, max_new_tokens=1, seed=0, batch_size=1000)
    frequency = sum(y == [EOS] for y in ys) / n
    assert 0.1 < p_eos < 0.3
    assert abs(frequency - p_eos) < 4 * math.sqrt(p_eos * (1 - p_eos) / n)


def test_sample_restores_training_mode_and_checks_length(model, prompt_ids):
    model.train()
    sample(model, prompt_ids[:2], max_new_tokens=2, seed=0)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="positions"):
        sample(model, prompt_ids, max_new_tokens=task.N_POSITIONS)


def test_same_model_has_zero_kl_and_even_win_rate(model, tokenizer):
    prompts = task.prompts(16, seed=5)
    result = evaluate_policy(
        model,
        copy.deepcopy(model),
        tokenizer,
        prompts,
        samples_per_prompt=4,
        max_new_tokens=8,
        seed=0,
        batch_size=16,
    )
    assert result["kl"] == 0.0 and result["kl_stderr"] == 0.0
    assert all(s["log_ratio"] == 0.0 for s in result["samples"])
    assert abs(result["win_rate"] - 0.5) < 0.15
    assert abs(result["gold_reward"] - result["reference_gold_reward"]) < 0.15


def test_eos_boosted_policy_stops_at_once(model, tokenizer):
    prompts = task.prompts(8, seed=6)
    boosted = boost_eos(model, 100.0)
    assert all(y == [EOS] for y in sample(boosted, encode_prompts(tokenizer, prompts), num_samples=3, seed=0))

    result = evaluate_policy(boosted, model, tokenizer, prompts, samples_per_prompt=2, max_new_tokens=8)
    assert result["mean_length"] == 1.0 and result["stop_rate"] == 1.0
    assert result["gold_reward"] == 0.5  # the empty review has no sentiment words
    # KL of a point mass on y = [eos]: E[log 1 - log pi_ref(eos | x)].
    prompt_ids = encode_prompts(tokenizer, prompts)
    ref_logp = completion_logprobs(model, prompt_ids, [[EOS]] * len(prompts), PAD)
    assert result["kl"] == pytest.approx(-ref_logp.mean().item(), abs=1e-4)
    assert result["kl"] > 3.0


def test_evaluate_policy_returns_sane_numbers(model, tokenizer):
    prompts = task.prompts(6, seed=7)
    policy = boost_eos(model, 3.0)
    result = evaluate_policy(
        policy, model, tokenizer, prompts, samples_per_prompt=3, max_new_tokens=10, seed=3, batch_size=5
    )
    for key in (
        "gold_reward",
        "gold_reward_std",
        "reference_gold_reward",
        "win_rate",
        "kl",
        "kl_stderr",
        "mean_length",
        "reference_mean_length",
        "stop_rate",
    ):
        assert math.isfinite(result[key]), key
    for key in ("gold_reward", "reference_gold_reward", "win_rate", "stop_rate"):
        assert 0.0 <= result[key] <= 1.0, key
    assert 1.0 <= result["mean_length"] <= 10.0 and result["num_samples"] == 18
    assert result["kl"] > 0.0  # KL is non-negative; the estimate on 18 samples of a shifted policy too
    assert len(result["samples"]) == len(prompts)
    for s in result["samples"]:
        assert set(s) >= {"prompt", "completion", "reward"} and s["prompt"] in prompts
        assert s["reward"] == task.gold_reward(s["prompt"], s["completion"])
    # Same seed, same numbers.
    again = evaluate_policy(
        policy, model, tokenizer, prompts, samples_per_prompt=3, max_new_tokens=10, seed=3, batch_size=5
    )
    assert again["kl"] == result["kl"] and again["gold_reward"] == result["gold_reward"]
