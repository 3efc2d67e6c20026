"""Other architectures than the book's GPT-2: tiny randomly initialised Llama, Qwen2, GPT-NeoX and Gemma-family
models (tied and untied embeddings) give batched log-probs equal to the one-at-a-time reference, sample the
same with left padding as one prompt at a time, satisfy the model-level gradient identity, and train."""

import json
import math

import pytest
import torch
from training_runs import DATA, small

from unified_rlhf import evaluate, verify
from unified_rlhf.data import load_rows, write_jsonl
from unified_rlhf.logprobs import pad_batch, sequence_logprobs, sequence_logprobs_slow
from unified_rlhf.models import load_model, load_tokenizer
from unified_rlhf.trainer import Trainer

ARCHITECTURES = ["llama", "llama_tied", "qwen2", "gpt_neox", "gemma", "gemma2", "gemma3"]
# Gemma 2's eager attention (softcapping rules out sdpa) takes its softmax in float32, where a float64 mask's
# minimum becomes -inf: a left-padded row with every key masked gives NaN, which reaches real tokens as
# 0 * NaN. In float32 its mask stays finite, so Gemma 2 is checked in float32, with float32's tolerances.
DTYPE = {"gemma2": torch.float32}
TOLERANCE = {torch.float64: (1e-10, verify.MODEL_TOLERANCE), torch.float32: (1e-5, 1e-5)}  # log-probs, identity


def tiny_config(arch: str, vocab_size: int = 300):
    """A 2-layer model of the architecture, built from its config (no download), special ids as the book's
    tokenizer has them. Gemma 2 and 3 get a sliding window of 4 so that their local layers are exercised."""
    import transformers as t

    common = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    gqa = dict(num_key_value_heads=1)
    gemma = dict(gqa, head_dim=8)
    configs = {
        "llama": lambda: t.LlamaConfig(**common, **gqa, tie_word_embeddings=False),
        "llama_tied": lambda: t.LlamaConfig(**common, **gqa, tie_word_embeddings=True),
        "qwen2": lambda: t.Qwen2Config(**common, **gqa),
        "gpt_neox": lambda: t.GPTNeoXConfig(**common, rotary_pct=0.5),
        "gemma": lambda: t.GemmaConfig(**common, **gemma),
        "gemma2": lambda: t.Gemma2Config(**common, **gemma, sliding_window=4),
        "gemma3": lambda: t.Gemma3TextConfig(**common, **gemma, sliding_window=4),
    }
    return configs[arch]()


def tiny_model(arch: str, seed: int = 0, dtype=None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).to(dtype or DTYPE.get(arch, torch.float64)).eval()


def test_the_architectures_cover_tied_and_untied_embeddings():
    models = {arch: tiny_model(arch) for arch in ARCHITECTURES}
    tied = {a: m.get_output_embeddings().weight is m.get_input_embeddings().weight for a, m in models.items()}
    assert tied["llama_tied"] and tied["gemma"] and tied["gemma3"] and not tied["llama"] and not tied["qwen2"]
    assert [type(m).__name__ for m in models.values()] == [
        "LlamaForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "GPTNeoXForCausalLM", "GemmaForCausalLM",
        "Gemma2ForCausalLM", "Gemma3ForCausalLM"]


PROMPTS = [[0, 5, 6, 7], [0], [0, 9, 10, 11, 12, 13, 14]]
COMPLETIONS = [[20, 21], [22, 23, 24, 25, 26, 27], [28]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_log_probs_equal_one_at_a_time(arch):
    model = tiny_model(arch)
    slow = torch.tensor([sequence_logprobs_slow(model, p, c) for p, c in zip(PROMPTS, COMPLETIONS)],
                        dtype=torch.float64)
    tolerance = TOLERANCE[model.dtype][0]
    for side in ("left", "right"):
        total, length = sequence_logprobs(model, *pad_batch(PROMPTS, COMPLETIONS, 1, side))
        torch.testing.assert_close(total.double(), slow, rtol=tolerance, atol=tolerance)
        assert length.tolist() == [2, 6, 1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_left_padded_sampling_equals_one_prompt_at_a_time(arch):
    """Greedy samples of a left-padded batch (with the KV cache) are those of each prompt alone."""
    model = tiny_model(arch)
    options = dict(max_new_tokens=8, temperature=0, eos_id=0, pad_id=1)
    batched = evaluate.sample(model, PROMPTS, **options)
    alone = [evaluate.sample(model, [p], **options)[0] for p in PROMPTS]
    assert batched == alone and all(len(c) > 0 for c in batched)


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "reference"])
def test_the_samplers_shortcuts_change_no_token(arch):
    """Sampling computes a prompt shared by several rows once and drops finished rows from the batch: the
    tokens must be those of the plain loop over the whole batch, with the same random draws."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if arch == "reference":  # the book's GPT-2, its own prompts; eos (id 0) ends rows at many lengths
        model, vocab = load_model(DATA / "reference"), 300
    else:  # a vocabulary of 6 tokens: a random model ends about one row in six at each step
        model, vocab = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=6)).eval(), 6
    prompts = [[0, 2, 3], [0], [0, 4, 5, 2, 3]] if vocab == 6 else [[0, 40, 41], [0, 50], [0]]
    rows = [p for p in prompts for _ in range(5)]
    lengths = set()
    for seed in range(3):
        draws = {fast: evaluate._sample_batch(model, rows, 24, 1.5, 0, 1, torch.Generator().manual_seed(seed),
                                              fast=fast) for fast in (True, False)}
        assert draws[True] == draws[False], (arch, seed)
        lengths |= {len(c) for c in draws[True]}
    assert len(lengths) >= 4 and 24 in lengths  # rows did stop at different steps, and some ran to the end


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_the_model_level_gradient_identity_holds(arch, method):
    """verify's check on every parameter: autograd of the loss against sum_i w_i grad l_i."""
    model = tiny_model(arch)
    model.train(False)
    error = verify.model_error(method, model=model)
    assert error <= TOLERANCE[model.dtype][1], (arch, method, error)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = load_rows(DATA / "pairs_train.jsonl", "paired").select(range(16)).to_list()
    return write_jsonl(rows, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", kind="paired")


def saved_model(arch, directory):
    """A tiny model of the architecture with the book's tokenizer, saved as a model directory."""
    tiny_model(arch, dtype=torch.float32).save_pretrained(directory)
    load_tokenizer(DATA / "reference").save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dpo_trains_a_few_steps(arch, tmp_path, pairs_file):
    model_dir = saved_model(arch, tmp_path / "model")
    Trainer(small("dpo", tmp_path / "run", model=str(model_dir), data_file=str(pairs_file), max_steps=3)).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert abs(rows[0]["margin_mean"]) < 1e-5 < abs(rows[-1]["margin_mean"])  # the policy moved off the reference
    before = torch.cat([p.flatten() for p in load_model(str(model_dir)).parameters()])
    after = torch.cat([p.flatten() for p in load_model(str(tmp_path / "run" / "model")).parameters()])
    assert before.shape == after.shape and not torch.equal(before, after)
