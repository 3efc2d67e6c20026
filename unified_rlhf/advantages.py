"""Advantage estimators: how an online method turns the rewards of its samples into the weights
its loss puts on each log-prob.

An objective's record names its estimator (`Objective.advantage`); the trainer calls it once per
rollout and passes what it returns to the loss as inputs. An estimator is a callable

    estimator(rollout, kl_coef, state) -> dict of loss inputs ("advantage", and any others it defines)

`rollout` holds the samples of one step (rewards, per-token log-probs of the sampling policy and of the
reference, the completion mask, the group size k, the sampler's max_new_tokens); `kl_coef` is the KL
penalty folded into the reward (TrainConfig.kl_coef); `state` is a dict the estimator may keep between
steps (it is saved in checkpoints, so a resumed run continues exactly). An estimator may also define
`validate(config)`, which refuses a TrainConfig it cannot run with (a group of one sample) before the run starts.

The trainer averages the per-sequence losses over the batch, so a normaliser that spans several sequences
(DAPO's tokens of the group, Dr. GRPO's generation budget) reaches the loss as a detached per-sequence
input the estimator returns beside the advantage ("mean_length", "max_completion_length").
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
    old: torch.Tensor  # [N, T] per-token log-probs under the sampling policy (zero off the completion); see below
    ref: torch.Tensor  # [N, T] per-token log-probs under the reference
    mask: torch.Tensor  # [N, T] completion tokens
    group_size: int  # k samples per prompt
    max_new_tokens: int | None = None  # the sampler's budget (TrainConfig.max_new_tokens): no completion is longer

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

    def budget(self, what: str) -> int:
        """max_new_tokens, which `what` needs; a rollout built without it is refused by name."""
        if self.max_new_tokens is None:
            raise ValueError(f"{what} needs the sampler's budget: build the Rollout with max_new_tokens")
        return self.max_new_tokens


# `old` may also be given as a function that computes it: it runs on the first read, and its result is kept. The
# trainer defers that forward this way: the update's own forward (detached) gives these log-probs, and if something
# (an estimator, a callback) reads them before the update, that read runs the update's forward early.
def _read_old(rollout) -> torch.Tensor:
    if not isinstance(rollout._old, torch.Tensor):
        rollout._old = rollout._old()
    return rollout._old


def _write_old(rollout, value) -> None:
    rollout._old = value


Rollout.old = property(_read_old, _write_old)  # after @dataclass, which would take it as the field's default
Rollout.old_computed = property(lambda rollout: isinstance(rollout._old, torch.Tensor))


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


def group_centred(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [P, G] -> r - mean within each group: GRPO's advantage without the std (Dr. GRPO)."""
    if rewards.shape[-1] < 2:
        raise ValueError(f"group centring needs at least 2 samples per prompt, got {rewards.shape[-1]}")
    return rewards - rewards.mean(-1, keepdim=True)


def overlong_penalty(length: torch.Tensor, max_new_tokens: int, cache: float) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to max_new_tokens - cache tokens, then
    falling linearly to -1 at max_new_tokens (the paper: a 20,480-token budget, the last 4,096 the cache)."""
    if not 0 < cache <= max_new_tokens:
        raise ValueError(f"the overlong cache must be in (0, max_new_tokens = {max_new_tokens}] tokens, got {cache}")
    return -((length - (max_new_tokens - cache)) / cache).clamp(0.0, 1.0)


def token_mean_length(length: torch.Tensor, group_size: int, over: str, kept: torch.Tensor | None = None):
    """The per-sequence normaliser L of a token-level mean: with every sequence's loss summed over its tokens
    and divided by L, the batch mean the trainer takes is

        over="batch":  sum over the kept sequences' tokens / their number of tokens (TRL's dapo, bnpo);
        over="group":  the mean over the kept groups of each group's sum / its tokens (DAPO's Eq. 8).

    `kept` [P] marks the groups that stay in the batch (all by default); a dropped group's sequences get their
    group's mean length, which matters only for a term it still carries (a KL penalty)."""
    groups = length.view(-1, group_size)
    kept = torch.ones(groups.shape[0], dtype=torch.bool, device=length.device) if kept is None else kept
    share = kept.float().mean().clamp_min(1 / groups.shape[0])  # the kept fraction of the batch's groups
    if over == "group":
        per_group = groups.mean(-1) * torch.where(kept, share, torch.ones_like(share))
    elif over == "batch":
        tokens = (groups * kept[:, None]).sum() if kept.any() else groups.sum()
        per_group = torch.where(kept, tokens / length.numel(), groups.mean(-1))
    else:
        raise ValueError(f"token_mean must be 'group' or 'batch', got {over!r}")
    return per_group[:, None].expand_as(groups).flatten()


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
    KL term in the loss, not in the reward, so kl_coef is not used here). With `token_mean` ("group" or
    "batch") it also returns the normaliser "mean_length" of a token-level loss (token_mean_length)."""

    eps: float = 1e-4
    token_mean: str | None = None

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        out = {"advantage": group_standardised(rollout.grouped(rollout.reward), self.eps).flatten()}
        if self.token_mean is not None:
            out["mean_length"] = token_mean_length(rollout.length, rollout.group_size, self.token_mean)
        return out

    def validate(self, config) -> None:
        _needs_a_group(config, "group-standardised advantages")


@dataclass(frozen=True)
class GroupCentred:
    """Dr. GRPO's advantage: the reward minus its group's mean, not divided by the std; and the sampler's
    budget max_new_tokens as the loss's constant normaliser "max_completion_length" (kl_coef unused)."""

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        budget = rollout.budget("Dr. GRPO's constant normaliser")
        advantage = group_centred(rollout.grouped(rollout.reward)).flatten()
        return {"advantage": advantage, "max_completion_length": torch.full_like(advantage, float(budget))}

    def validate(self, config) -> None:
        _needs_a_group(config, "group-centred advantages")


@dataclass(frozen=True)
class DynamicSampling:
    """DAPO's advantage. The reward plus the soft overlong penalty (overlong_penalty, with a cache of
    `overlong_cache` times max_new_tokens), standardised within each group as GRPO's; then dynamic sampling:
    a group whose shaped rewards are all equal (no signal) is dropped from the batch. The paper samples more
    prompts until the batch is full of kept groups; here a dropped group's advantages are 0 and its tokens
    leave the token-level mean ("mean_length", over each kept group as the paper's Eq. 8, or the batch), so
    the loss is that of a smaller batch of kept groups. Also returns the shaped "reward" and "kept" (0/1 per
    sample), for the reader; the loss reads neither."""

    eps: float = 1e-4
    overlong_cache: float = 0.2  # the paper's 4,096 of its 20,480-token budget
    token_mean: str = "group"

    def __call__(self, rollout: Rollout, kl_coef: float, state: dict) -> dict:
        budget = rollout.budget("DAPO's overlong penalty")
        length = rollout.length
        shaped = rollout.reward + overlong_penalty(length, budget, self.overlong_cache * budget)
        groups = rollout.grouped(shaped)
        kept = groups.amax(-1) > groups.amin(-1)
        advantage = group_standardised(groups, self.eps) * kept[:, None]  # exactly 0, not a rounding residue
        kept_per_sample = kept[:, None].expand_as(groups).flatten().to(shaped.dtype)
        return {"advantage": advantage.flatten(), "reward": shaped, "kept": kept_per_sample,
                "mean_length": token_mean_length(length, rollout.group_size, self.token_mean, kept)}

    def validate(self, config) -> None:
        _needs_a_group(config, "DAPO's group-standardised advantages")
        if not 0 < self.overlong_cache <= 1:
            raise ValueError(f"overlong_cache must be a fraction of max_new_tokens in (0, 1], got "
                             f"{self.overlong_cache}")


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


__all__ = ["Rollout", "RunningBaseline", "LeaveOneOut", "GroupStandardised", "GroupCentred", "DynamicSampling",
           "KLShapedReturns", "leave_one_out", "group_standardised", "group_centred", "overlong_penalty",
           "token_mean_length"]
