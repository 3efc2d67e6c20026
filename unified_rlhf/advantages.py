"""Advantage estimators: how an online method turns the rewards of its samples into the weights
its loss puts on each log-prob.

An objective's record names its estimator (`Objective.advantage`); the trainer calls it once per
rollout and passes what it returns to the loss as inputs. An estimator is a callable

    estimator(rollout, kl_coef, state) -> dict of loss inputs ("advantage", and any others it defines)

`rollout` holds the samples of one step (rewards, per-token log-probs of the sampling policy and of the
reference, the completion mask, the group size k); `kl_coef` is the KL penalty folded into the reward
(TrainConfig.kl_coef); `state` is a dict the estimator may keep between steps (it is saved in
checkpoints, so a resumed run continues exactly). An estimator may also define `validate(config)`,
which refuses a TrainConfig it cannot run with (a group of one sample) before the run starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """One step's samples: k completions for each of P prompts, prompt-major (N = P * k)."""

    pairs: list  # (prompt ids, completion ids), N of them
    completions: list  # completion ids, N
    reward: torch.Tensor  # [N] reward of each completion (gold or reward model)
    old: torch.Tensor  # [N, T] per-token log-probs under the sampling policy (zero off the completion)
    ref: torch.Tensor  # [N, T] per-token log-probs under the reference
    mask: torch.Tensor  # [N, T] completion tokens
    group_size: int  # k samples per prompt

    @property
    def length(self) -> torch.Tensor:
        return self.mask.sum(-1).float()

    def kl_per_token(self) -> torch.Tensor:
        """log pi_old / pi_ref on each completion token: the sample's KL-to-reference, per token."""
        return (self.old - self.ref) * self.mask.float()

    def shaped_reward(self, kl_coef: float) -> torch.Tensor:
        """r - kl_coef * log(pi/pi_ref)(y), the KL-regularised sequence reward (Ziegler et al. 2019)."""
        return self.reward - kl_coef * self.kl_per_token().sum(-1)

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """[N] -> [P, k]: the samples of each prompt in one row."""
        return values.view(-1, self.group_size)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [P, k] -> A_i = R_i - mean_{j != i} R_j, divided by k (the 1/k of the RLOO loss)."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"leave-one-out needs at least 2 samples per prompt, got group size {k}")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return (rewards - others) / k


def _needs_a_group(config, what: str) -> None:
    if config.samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be at least 2 for {what} (it compares the samples of a "
                         f"prompt with each other), got {config.samples_per_prompt}")


def group_standardised(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards [P, G] -> (r - mean) / (std + eps) within each group; a group of equal rewards gives 0."""
    if rewards.shape[-1] < 2:
        raise ValueError(f"group standardisation needs at least 2 samples per prompt, got {rewards.shape[-1]}")
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


@dataclass(frozen=True)
class RunningBaseline:
    """REINFORCE with a baseline: A = R - b, where b is a running mean of past batches' mean reward
    (b_0 = the first batch's mean, then b <- decay b + (1 - decay) mean R). R is KL-shaped."""

    decay: float = 0.9

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        shaped = rollout.shaped_reward(kl_coef)
        mean = shaped.mean().item()
        baseline = state.get("baseline", mean)
        state["baseline"] = self.decay * baseline + (1 - self.decay) * mean
        return {"reward": shaped, "baseline": torch.full_like(shaped, baseline), "advantage": shaped - baseline}


@dataclass(frozen=True)
class LeaveOneOut:
    """RLOO: each sample's KL-shaped reward against the mean of the other k - 1 samples of its prompt."""

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        shaped = rollout.grouped(rollout.shaped_reward(kl_coef))
        return {"advantage": leave_one_out(shaped).flatten()}

    def validate(self, config) -> None:
        _needs_a_group(config, "leave-one-out advantages")


@dataclass(frozen=True)
class GroupStandardised:
    """GRPO's outcome advantage: the raw reward standardised within the prompt's group (GRPO puts its
    KL term in the loss, not in the reward, so kl_coef is not used here)."""

    eps: float = 1e-4

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        return {"advantage": group_standardised(rollout.grouped(rollout.reward), self.eps).flatten()}

    def validate(self, config) -> None:
        _needs_a_group(config, "group-standardised advantages")


@dataclass(frozen=True)
class KLShapedReturns:
    """Per-token advantages without a critic (PPO family, APA): token rewards -kl_coef log(pi/pi_ref),
    plus the sequence reward on the last completion token (Ziegler et al. 2019); returns-to-go with
    gamma = 1; whitened over the batch's completion tokens when `whiten`."""

    whiten: bool = True

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        mask = rollout.mask.float()
        # columns cover prompt and completion: the last completion token is the last masked column
        last = (torch.arange(mask.shape[-1], device=mask.device) * mask).argmax(-1)
        token_rewards = -kl_coef * rollout.kl_per_token()
        token_rewards[torch.arange(len(rollout.reward)), last] += rollout.reward
        returns = token_rewards.flip(-1).cumsum(-1).flip(-1)
        if self.whiten:
            valid = mask.bool()
            returns = (returns - returns[valid].mean()) / returns[valid].std().clamp_min(1e-6)
        return {"advantage": returns * mask}


__all__ = ["Rollout", "RunningBaseline", "LeaveOneOut", "GroupStandardised", "KLShapedReturns",
           "leave_one_out", "group_standardised"]
