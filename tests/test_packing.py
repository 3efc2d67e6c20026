"""Packing: the batch's sequences share rows of max_length tokens with a block-diagonal causal mask and positions
restarting per sequence. In float64 it gives the unpacked log-probs and DPO gradients (GPT-2 and a tiny Llama)
to 1e-10, the trainer's inputs for every offline data kind, an exactly resumable run, and far less padding."""

import json

import pytest
import torch
from test_models import tiny_config
from test_trainer import parameters
from training_runs import DATA, small

from unified_rlhf import objectives
from unified_rlhf.advantages import Rollout
from unified_rlhf.data import batch_indices, encode_rows, load_rows
from unified_rlhf.logprobs import (
    block_causal_mask,
    pack_batch,
    pack_bins,
    packed_token_logprobs,
    packing_refusal,
    pad_batch,
    token_logprobs,
)
from unified_rlhf.models import Encoder, load_model, load_tokenizer
from unified_rlhf.trainer import Trainer

EXACT = 1e-10  # relative error in float64


def book_pairs(rows: int, start: int = 0):
    """The book's training pairs `start` ... `start + rows - 1` as (prompts, completions, pad id): chosen
    sequences then rejected ones, as the trainer concatenates them."""
    encoder = Encoder(load_tokenizer(str(DATA / "reference")), 64)
    rows = list(load_rows(DATA / "pairs_train.jsonl", "paired", {}, None))[start:start + rows]
    examples, _ = encode_rows(rows, "paired", encoder, None)
    prompts = [e["prompt"] for e in examples] * 2
    completions = [e["completions"][0] for e in examples] + [e["completions"][1] for e in examples]
    return prompts, completions, encoder.pad


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_bins_are_first_fit_decreasing_within_capacity():
    lengths = [30, 9, 17, 25, 12, 8, 33, 20]
    # longest first, each into the first bin with room: 33 | 30 | 25 | 20, then 17 -> 20's bin, 12 -> 25's,
    # 9 -> 30's, and 8 fits nowhere (rooms 7, 1, 3, 3): a fifth bin
    assert pack_bins(lengths, 40) == [[6], [0, 1], [3, 4], [7, 2], [5]]
    with pytest.raises(ValueError, match="sequence 6 has 33 tokens, more than the capacity of 32"):
        pack_bins(lengths, 32)


def test_packed_rows_hold_each_sequence_with_positions_from_zero():
    prompts, completions = [[0, 5, 6], [0], [0, 9]], [[7, 8], [3, 4, 5, 6], [2]]
    packed = pack_batch(prompts, completions, pad_id=1, capacity=8)
    assert packed.input_ids.shape == (2, 8)  # lengths 5, 5, 3: rows 5 + 3 and 5, as wide as the fullest
    for n, (p, c) in enumerate(zip(prompts, completions)):
        row, start, length = packed.rows[n], packed.starts[n], packed.lengths[n]
        assert packed.input_ids[row, start:start + length].tolist() == p + c
        assert packed.position_ids[row, start:start + length].tolist() == list(range(len(p + c)))
        assert packed.completion_mask[row, start:start + length].tolist() == [False] * len(p) + [True] * len(c)
    assert (packed.input_ids[packed.sequence_ids < 0] == 1).all() and packed.completion_mask.sum() == 7
    mask = block_causal_mask(packed.sequence_ids, torch.float64)
    sees = mask[:, 0] == 0
    for row in range(2):  # query i sees key j iff j <= i in the same sequence (padding: one block of its own)
        same = packed.sequence_ids[row, :, None] == packed.sequence_ids[row, None, :]
        assert torch.equal(sees[row], same & torch.ones(8, 8, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="completion 1 is empty"):
        pack_batch([[0], [0]], [[3], []], 1, 8)


def gpt2():
    return load_model(str(DATA / "reference"), dtype=torch.float64)


def llama():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama")).to(torch.float64)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_packed_log_probs_and_dpo_gradients_equal_unpacked(build):
    model = build()
    prompts, completions, pad = book_pairs(12)
    packed = pack_batch(prompts, completions, pad, capacity=64)
    assert packed.input_ids.shape[0] < len(prompts) / 2  # most rows hold several sequences: the mask is at work
    dpo = objectives.get("dpo")
    torch.manual_seed(1)
    reference = -30 + torch.randn(len(prompts), dtype=torch.float64)  # weights far from 1/2 on some rows

    def logprobs_and_gradients(compute):
        model.zero_grad(set_to_none=True)
        tokens, mask = compute()
        chosen, rejected = tokens.sum(-1).chunk(2)
        ref_chosen, ref_rejected = reference.chunk(2)
        batch = {"logp_chosen": chosen, "logp_rejected": rejected, "ref_logp_chosen": ref_chosen,
                 "ref_logp_rejected": ref_rejected}
        dpo(batch, beta=0.5).loss.mean().backward()
        return tokens.detach(), mask, {name: p.grad.clone() for name, p in model.named_parameters()}

    unpacked = logprobs_and_gradients(lambda: token_logprobs(model, *pad_batch(prompts, completions, pad, "right")))
    packed_run = logprobs_and_gradients(lambda: packed_token_logprobs(model, packed))
    assert packed_run[0].shape == unpacked[0].shape and torch.equal(packed_run[1], unpacked[1])
    assert relative_error(packed_run[0], unpacked[0]) <= EXACT
    assert unpacked[2].keys() == packed_run[2].keys()
    for name, grad in unpacked[2].items():
        assert grad.abs().max() > 0, name  # every parameter is reached
        assert relative_error(packed_run[2][name], grad) <= EXACT, name


def test_a_mask_that_lets_sequences_see_each_other_would_be_caught():
    """The equality above is a real check: the same packed rows under a plain causal mask (what a model that
    ignored the block-diagonal mask would compute) differ from the unpacked log-probs."""
    model = gpt2()
    prompts, completions, pad = book_pairs(12)
    packed = pack_batch(prompts, completions, pad, capacity=64)
    leaky = packed._replace(sequence_ids=torch.zeros_like(packed.sequence_ids))
    unpacked, _ = token_logprobs(model, *pad_batch(prompts, completions, pad, "right"))
    assert relative_error(packed_token_logprobs(model, leaky)[0], unpacked) > 1e-3


def test_sliding_window_models_and_flash_kernels_are_refused():
    from transformers import AutoModelForCausalLM

    packed = pack_batch([[0, 5]], [[6]], 1, 8)
    gemma2 = AutoModelForCausalLM.from_config(tiny_config("gemma2"))
    with pytest.raises(ValueError, match="sliding-window"):
        packed_token_logprobs(gemma2, packed)
    flash = llama()
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' does not take"):
        packed_token_logprobs(flash, packed)
    # the trainer's default (packing null) packs exactly the models that are not refused
    assert [packing_refusal(m) is None for m in (gpt2(), llama(), gemma2, flash)] == [True, True, False, False]


def test_the_default_packs_where_the_model_allows_it(tmp_path):
    """packing null: the trainer's forwards are packed on the book's GPT-2 (fewer rows than sequences)."""
    trainer = Trainer(small("dpo", tmp_path / "run", batch_size=8))
    rows = []
    trainer.model.register_forward_pre_hook(lambda _, args, kwargs: rows.append(len(kwargs["input_ids"])),
                                            with_kwargs=True)
    trainer.offline_inputs(list(range(8)))
    assert trainer.config.packing is None and rows == [rows[0]] and rows[0] < 16 / 2


@pytest.mark.parametrize("method", ["dpo", "kto", "sft", "rrhf", "una_score", "crlft"])
def test_the_trainers_packed_inputs_equal_unpacked(method, tmp_path):
    """Every offline data kind (paired, unpaired, sft, ranked, scored, sft_tagged): the objective's inputs agree
    with packing on and off (float32, the trainer's precision on CPU), and only the policy forward is packed."""
    trainer = Trainer(small(method, tmp_path / method, batch_size=8, packing=False))
    indices = batch_indices(0, 8, len(trainer.examples), trainer.config.seed)
    rows = []  # rows of the policy's forwards
    trainer.model.register_forward_pre_hook(lambda _, args, kwargs: rows.append(len(kwargs["input_ids"])),
                                            with_kwargs=True)
    unpacked, _ = trainer.offline_inputs(indices)
    sequences, rows[:] = rows[0], []
    trainer.config.packing = True
    packed, _ = trainer.offline_inputs(indices)
    assert rows[0] < sequences / 2  # several sequences a row
    assert packed.keys() == unpacked.keys()
    for key, value in unpacked.items():
        torch.testing.assert_close(packed[key], value, msg=key)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_the_trainers_packed_online_inputs_equal_unpacked(method, tmp_path):
    """Online, every forward of a step is packed too (the reference's in the rollout, the policy's with gradient),
    and the deferred pi_old log-probs (the update's own forward, detached) equal a forward of their own."""
    trainer = Trainer(small(method, tmp_path / method, batch_size=4, samples_per_prompt=4, packing=False))
    unpacked = trainer.rollout([0, 1, 2, 3])
    inputs = trainer.online_inputs(unpacked, trainer.advantages(unpacked))
    trainer.config.packing = True
    packed = Rollout(**{f: getattr(unpacked, f) for f in ("pairs", "completions", "reward", "mask", "group_size",
                                                            "max_new_tokens")},
                     ref=trainer.logprobs(unpacked.pairs, trainer.reference, per_token=True, packed=True)[0],
                     old=lambda: pytest.fail("the update's forward should supply pi_old"))
    packed_inputs = trainer.online_inputs(packed, trainer.advantages(unpacked))
    torch.testing.assert_close(packed.ref, unpacked.ref)
    torch.testing.assert_close(packed.old, unpacked.old)
    for key, value in inputs.items():
        torch.testing.assert_close(packed_inputs[key], value, msg=key)


def test_a_packed_run_resumes_exactly(tmp_path):
    config = dict(packing=True, checkpoint_every=2)
    Trainer(small("dpo", tmp_path / "straight", max_steps=4, **config)).train()
    Trainer(small("dpo", tmp_path / "split", max_steps=2, **config)).train()
    Trainer(small("dpo", tmp_path / "split", max_steps=4, **config), resume=True).train()
    torch.testing.assert_close(parameters(tmp_path / "split" / "model"), parameters(tmp_path / "straight" / "model"),
                               rtol=0, atol=0)
    assert json.loads((tmp_path / "split" / "config.json").read_text())["packing"] is True
    with pytest.raises(ValueError, match="differs from the saved run in packing"):  # it changes the float sums
        Trainer(small("dpo", tmp_path / "split", max_steps=6, checkpoint_every=2, packing=False), resume=True)


def test_packing_computes_far_fewer_padding_tokens_on_the_books_pairs(tmp_path):
    """Tokens the model computes in the trainer's forward, with and without packing, over 5 batches of 32 pairs."""
    trainer = Trainer(small("simpo", tmp_path / "run", batch_size=32))  # paired, reads no reference
    computed = []
    trainer.model.register_forward_pre_hook(lambda _, args, kwargs: computed.append(kwargs["input_ids"].numel()),
                                            with_kwargs=True)
    fractions = {}
    for packing in (False, True):
        trainer.config.packing, computed[:], useful = packing, [], 0
        for step in range(5):
            indices = batch_indices(step, 32, len(trainer.examples), trainer.config.seed)
            with torch.no_grad():
                batch, _ = trainer.offline_inputs(indices)
            useful += sum(2 * len(trainer.examples[i]["prompt"]) + sum(map(len, trainer.examples[i]["completions"]))
                          for i in indices)
        fractions[packing] = 1 - useful / sum(computed)
    assert fractions[False] > 0.3  # padding to the longest of 64 sequences of 9 to 32 tokens
    assert fractions[True] < fractions[False] / 3
