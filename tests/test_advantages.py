"""Advantage estimators: the numbers each online method's weights are made of."""

import pytest
import torch

from unified_rlhf import advantages
from unified_rlhf.advantages import Rollout


def rollout(reward, k, old=None, ref=None, mask=None):
    n = len(reward)
    mask = torch.ones(n, 3, dtype=torch.bool) if mask is None else mask
    zeros = torch.zeros(n, 3)
    return Rollout(pairs=[], completions=[], reward=torch.tensor(reward), old=zeros if old is None else old,
                   ref=zeros if ref is None else ref, mask=mask, group_size=k)


def test_leave_one_out_with_two_samples_is_the_paired_form():
    rewards = torch.tensor([[1.5, -0.5], [0.2, 0.7]])
    a = advantages.leave_one_out(rewards)
    half_gap = (rewards[:, 0] - rewards[:, 1]) / 2
    torch.testing.assert_close(a[:, 0], half_gap)  # w+ on the better sample
    torch.testing.assert_close(-a[:, 1], half_gap)  # w- = -w on the other


def test_group_standardised_per_group():
    a = advantages.group_standardised(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    torch.testing.assert_close(a[0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3, rtol=0)
    assert torch.equal(a[1], torch.zeros(3))


@pytest.mark.parametrize("estimator", [advantages.leave_one_out, advantages.group_standardised])
def test_a_group_of_one_is_refused(estimator):
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        estimator(torch.tensor([[1.0], [2.0]]))


def test_running_baseline_keeps_its_state_and_uses_its_decay():
    estimator, state = advantages.RunningBaseline(decay=0.5), {}
    first = estimator(rollout([1.0, 3.0], 2), 0.0, state)
    torch.testing.assert_close(first["advantage"], torch.tensor([-1.0, 1.0]))  # b_0 = the first batch's mean
    assert state["baseline"] == 2.0
    second = estimator(rollout([6.0, 6.0], 2), 0.0, state)
    torch.testing.assert_close(second["baseline"], torch.tensor([2.0, 2.0]))
    assert state["baseline"] == 0.5 * 2.0 + 0.5 * 6.0


def test_kl_penalty_enters_the_shaped_reward():
    old, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -2.0)  # log pi/pi_ref = 1 per token, 3 tokens
    shaped = rollout([1.0, 0.0], 2, old, ref).shaped_reward(0.1)
    torch.testing.assert_close(shaped, torch.tensor([1.0 - 0.3, -0.3]))


def test_shaped_returns_put_the_reward_on_the_last_completion_token():
    mask = torch.tensor([[False, True, True], [True, True, False]])
    out = advantages.KLShapedReturns(whiten=False)(rollout([2.0, 5.0], 2, mask=mask), 0.0, {})
    torch.testing.assert_close(out["advantage"], torch.tensor([[0.0, 2.0, 2.0], [5.0, 5.0, 0.0]]))


# ------------------------------------------------------------------ GRPO's descendants (chapter 7)
def test_group_centred_drops_only_the_std():
    rewards = torch.tensor([[0.2, 0.4, 0.9], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(advantages.group_centred(rewards), rewards - rewards.mean(-1, keepdim=True))
    standardised = advantages.group_standardised(rewards, eps=0.0)[0]
    torch.testing.assert_close(advantages.group_centred(rewards)[0] / rewards[0].std(), standardised)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        advantages.group_centred(torch.tensor([[1.0], [2.0]]))


def test_overlong_penalty_ramps_over_the_cache():
    length = torch.tensor([1.0, 16.0, 17.0, 18.0, 20.0])
    torch.testing.assert_close(advantages.overlong_penalty(length, 20, 4.0),
                               torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    with pytest.raises(ValueError, match="overlong cache must be in"):
        advantages.overlong_penalty(length, 20, 0.0)


@pytest.mark.parametrize("kept", [None, torch.tensor([True, False, True])])
def test_token_mean_length_gives_the_token_means(kept):
    """Each sequence's summed token losses over its normaliser, averaged over the batch as the trainer does,
    is the token mean over the batch, or over each group then over the groups, of the kept groups only."""
    lengths = torch.tensor([3.0, 5.0, 2.0, 7.0, 1.0, 4.0], dtype=torch.float64)  # 3 groups of 2
    keep = (torch.ones(3, dtype=torch.bool) if kept is None else kept).repeat_interleave(2)
    # token t of a sequence has loss t + 1; a dropped group's advantages are 0, so its losses are 0
    sums = torch.tensor([sum(range(1, int(n) + 1)) for n in lengths], dtype=torch.float64) * keep
    by_batch = (sums / advantages.token_mean_length(lengths, 2, "batch", kept)).mean()
    by_group = (sums / advantages.token_mean_length(lengths, 2, "group", kept)).mean()
    torch.testing.assert_close(by_batch, sums.sum() / lengths[keep].sum())
    group_means = sums.view(3, 2).sum(-1) / lengths.view(3, 2).sum(-1)
    torch.testing.assert_close(by_group, group_means[keep.view(3, 2)[:, 0]].mean())
    with pytest.raises(ValueError, match="token_mean must be"):
        advantages.token_mean_length(lengths, 2, "sequence")


def test_dynamic_sampling_drops_groups_without_signal_and_shapes_long_samples():
    mask = torch.arange(10).expand(6, 10) < torch.tensor([3, 10, 4, 4, 9, 2])[:, None]  # 3 groups of 2
    reward = [0.5, 0.5, 0.3, 0.3, 0.1, 0.9]
    sample = rollout(reward, 2, mask=mask)
    sample.old, sample.ref = torch.zeros(6, 10), torch.zeros(6, 10)
    sample.max_new_tokens = 10
    out = advantages.DynamicSampling(overlong_cache=0.2)(sample, 0.0, {})  # the last 2 of 10 tokens: the ramp
    torch.testing.assert_close(out["reward"], torch.tensor([0.5, 0.5 - 1.0, 0.3, 0.3, 0.1 - 0.5, 0.9]))
    # group 1 differs only through the length penalty; group 2 is tied (dropped); group 3 differs
    torch.testing.assert_close(out["kept"], torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(out["advantage"][2:4], torch.zeros(2))  # exactly 0, not a rounding residue
    assert (out["advantage"][[0, 5]] > 0).all() and (out["advantage"][[1, 4]] < 0).all()
    kept_groups = 2 / 3
    torch.testing.assert_close(out["mean_length"], torch.tensor([6.5, 6.5, 4.0, 4.0, 5.5, 5.5]) *
                               torch.tensor([kept_groups] * 2 + [1.0] * 2 + [kept_groups] * 2))


def test_estimators_that_need_the_budget_name_it():
    for estimator in (advantages.GroupCentred(), advantages.DynamicSampling()):
        with pytest.raises(ValueError, match="build the Rollout with max_new_tokens"):
            estimator(rollout([1.0, 0.0], 2), 0.0, {})
    sample = rollout([1.0, 0.0, 0.5, 0.5], 2)
    sample.max_new_tokens = 24
    out = advantages.GroupCentred()(sample, 0.0, {})
    torch.testing.assert_close(out["advantage"], torch.tensor([0.5, -0.5, 0.0, 0.0]))
    torch.testing.assert_close(out["max_completion_length"], torch.full((4,), 24.0))
    standardised = advantages.GroupStandardised(token_mean="batch")(sample, 0.0, {})
    torch.testing.assert_close(standardised["mean_length"], torch.full((4,), 3.0))


def test_the_trainer_hands_its_budget_to_the_estimator(tmp_path):
    from training_runs import small

    from unified_rlhf.trainer import Trainer

    trainer = Trainer(small("dr_grpo", tmp_path / "run", max_new_tokens=6))
    sample = trainer.rollout([0, 1])
    assert sample.max_new_tokens == 6 and max(len(c) for c in sample.completions) <= 6
    estimated = trainer.advantages(sample)
    assert torch.equal(estimated["max_completion_length"], torch.full_like(sample.reward, 6.0))
