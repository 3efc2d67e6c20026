"""Paired and unpaired objectives on the policy's own samples (TrainConfig.sampling): the rules that turn a
group of scored samples into pairs or labels, and the trainer's batches built from them."""

import json

import pytest
import torch
from training_runs import small

from unified_rlhf import online_feedback
from unified_rlhf.checks import SettingError
from unified_rlhf.trainer import Trainer

REWARDS = torch.tensor([0.2, 0.9, 0.5,   # group 0: best 1, worst 0
                        0.4, 0.4, 0.4,   # group 1: every sample tied, no preference
                        0.7, 0.1, 0.7])  # group 2: best 6 (first of the tie), worst 7


def test_best_worst_takes_each_groups_extremes_and_skips_ties():
    chosen, rejected = online_feedback.preference_pairs(REWARDS, 3, "best_worst")
    assert chosen.tolist() == [1, 6] and rejected.tolist() == [0, 7]


def test_all_pairs_lists_every_decided_pair_better_first():
    chosen, rejected = online_feedback.preference_pairs(REWARDS, 3, "all_pairs")
    pairs = sorted(zip(chosen.tolist(), rejected.tolist()))
    assert pairs == [(1, 0), (1, 2), (2, 0), (6, 7), (8, 7)]
    assert all(REWARDS[c] > REWARDS[r] for c, r in pairs)


def test_bradley_terry_labels_follow_the_coin():
    gap, temperature, groups = 0.1, 0.1, 20_000
    rewards = torch.tensor([0.5 + gap, 0.5]).repeat(groups)  # sample 0 of each group is better by `gap`
    generator = torch.Generator().manual_seed(0)
    chosen, _ = online_feedback.preference_pairs(rewards, 2, "bradley_terry", generator, temperature)
    better_first = (chosen % 2 == 0).double().mean().item()
    expected = torch.sigmoid(torch.tensor(gap / temperature)).item()  # 0.73
    assert abs(better_first - expected) < 0.015  # 3.5 standard errors of a 20,000-draw frequency
    tiny = online_feedback.preference_pairs(rewards[:200], 2, "bradley_terry", generator, temperature=1e-9)[0]
    assert (tiny % 2 == 0).all()  # a cold coin always picks the better sample


def test_labels_by_group_mean_and_by_threshold():
    index, labels = online_feedback.preference_labels(REWARDS, 3, "group_mean")
    assert index.tolist() == [0, 1, 2, 6, 7, 8] and labels.tolist() == [0, 1, 0, 1, 0, 1]
    index, labels = online_feedback.preference_labels(REWARDS, 3, "threshold", threshold=0.45)
    assert index.tolist() == list(range(9)) and labels.tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="label rule must be one of"):
        online_feedback.preference_labels(REWARDS, 3, "median")


def test_online_dpo_batch_is_the_groups_best_against_worst(tmp_path):
    trainer = Trainer(small("dpo", tmp_path / "run", sampling="online", samples_per_prompt=3, max_new_tokens=12))
    rollout = trainer.rollout([0, 1, 2, 3])
    batch, info = trainer.preference_inputs(rollout)
    chosen, rejected = online_feedback.preference_pairs(rollout.reward, 3, "best_worst")
    assert info["feedback_rows"] == len(chosen) > 0
    with torch.no_grad():  # recomputed one side at a time, from the samples themselves
        for side, index in (("chosen", chosen), ("rejected", rejected)):
            sequences = [rollout.pairs[i] for i in index]
            torch.testing.assert_close(batch[f"logp_{side}"].detach(), trainer.logprobs(sequences)[0])
            torch.testing.assert_close(batch[f"ref_logp_{side}"], trainer.logprobs(sequences, trainer.reference)[0])
    assert batch["logp_chosen"].requires_grad


def test_online_kto_gets_its_reference_point_from_other_prompts(tmp_path):
    trainer = Trainer(small("kto", tmp_path / "run", sampling="online", samples_per_prompt=2, max_new_tokens=12))
    batch, info = trainer.preference_inputs(trainer.rollout([0, 1, 2, 3]))
    assert "z0" in batch and batch["z0"].shape == batch["logp"].shape and info["z0"] >= 0.0


@pytest.mark.parametrize("method", ["aot", "bco"])
def test_batch_level_hooks_run_online(method, tmp_path):
    """AOT's ranks and BCO's running reward shift read only the batch, so they work on sampled pairs too."""
    trainer = Trainer(small(method, tmp_path / "run", sampling="online", samples_per_prompt=2, max_new_tokens=8))
    metrics = trainer.train_step()
    assert metrics["feedback_rows"] > 0 and torch.isfinite(torch.tensor(metrics["loss"]))


@pytest.mark.slow
def test_semi_online_samples_from_a_copy_refreshed_on_schedule_and_resumes_exactly(tmp_path):
    options = dict(sampling="semi_online", refresh_every=2, samples_per_prompt=2, max_new_tokens=8,
                   checkpoint_every=3)
    trainer = Trainer(small("dpo", tmp_path / "probe", max_steps=3, **options))

    def weights(model):
        return [p.detach().clone() for p in model.state_dict().values()]

    def equal(model, saved):
        return all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), saved))

    start = weights(trainer.model)
    trainer.train_step()  # step 0 refreshes the copy, then updates the policy
    assert equal(trainer.sampler, start) and not equal(trainer.model, start)
    trainer.train_step()  # step 1 samples from the same copy
    assert equal(trainer.sampler, start)
    after_two = weights(trainer.model)
    trainer.train_step()  # step 2 refreshes first
    assert equal(trainer.sampler, after_two) and not equal(trainer.model, after_two)

    Trainer(small("dpo", tmp_path / "straight", max_steps=5, **options)).train()
    Trainer(small("dpo", tmp_path / "split", max_steps=3, **options)).train()
    Trainer(small("dpo", tmp_path / "split", max_steps=5, **options), resume=True).train()
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "split")]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]


def test_online_sampling_is_refused_where_it_has_no_meaning(tmp_path):
    with pytest.raises(SettingError, match="for paired and unpaired objectives; vpg reads online"):
        small("vpg", tmp_path / "run", sampling="online")
    with pytest.raises(SettingError, match="samples_per_prompt must be at least 2"):
        small("dpo", tmp_path / "run", sampling="online", samples_per_prompt=1)
