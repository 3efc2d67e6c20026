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
