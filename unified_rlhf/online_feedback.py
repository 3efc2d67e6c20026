"""Preference feedback on the policy's own samples: how a paired or unpaired objective runs online.

Each prompt's k samples (prompt-major, as `Trainer.rollout` returns them) are scored by the gold reward or a
reward model, then turned into what the objective reads:

    pairs    best_worst     the best and the worst sample of each group (online DPO with k = 2: Guo et al.
                            2024, "Direct Language Model Alignment from Online AI Feedback")
             all_pairs      every pair of samples with different rewards, the better one chosen
             bradley_terry  one random pair per group, labelled by a Bradley-Terry coin with
                            P(a > b) = sigmoid((r_a - r_b) / T), the noise model of the book's offline pairs
    labels   group_mean     desirable when the reward is above its group's mean
             threshold      desirable when the reward is above a fixed threshold

Groups whose samples all have the same reward give no pair and no group_mean label: they carry no preference.
"""

from __future__ import annotations

import torch

from .task.rows import BT_TEMPERATURE

PAIR_RULES = ("best_worst", "all_pairs", "bradley_terry")
LABEL_RULES = ("group_mean", "threshold")


def preference_pairs(reward: torch.Tensor, group_size: int, rule: str = "best_worst",
                     generator: torch.Generator | None = None,
                     temperature: float = BT_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): indices into the N = groups x k samples, one entry per pair."""
    if rule not in PAIR_RULES:
        raise ValueError(f"pair rule must be one of {PAIR_RULES}, got {rule!r}")
    groups = reward.detach().double().cpu().view(-1, group_size)
    offset = torch.arange(groups.shape[0]).unsqueeze(-1) * group_size
    if rule == "best_worst":
        decided = groups.max(-1).values > groups.min(-1).values
        chosen = (groups.argmax(-1) + offset.squeeze(-1))[decided]
        rejected = (groups.argmin(-1) + offset.squeeze(-1))[decided]
        return chosen, rejected
    i, j = torch.triu_indices(group_size, group_size, offset=1)
    if rule == "all_pairs":
        better = groups[:, i] > groups[:, j]
        differ = groups[:, i] != groups[:, j]
        chosen = torch.where(better, i, j) + offset
        rejected = torch.where(better, j, i) + offset
        return chosen[differ], rejected[differ]
    # bradley_terry: one random pair of each group, labelled by a coin
    pick = torch.randint(len(i), (groups.shape[0],), generator=generator)
    a, b = i[pick], j[pick]
    rows = torch.arange(groups.shape[0])
    p_a = torch.sigmoid((groups[rows, a] - groups[rows, b]) / temperature)
    a_wins = torch.rand(groups.shape[0], generator=generator, dtype=torch.float64) < p_a
    chosen = torch.where(a_wins, a, b) + offset.squeeze(-1)
    rejected = torch.where(a_wins, b, a) + offset.squeeze(-1)
    return chosen, rejected


def preference_labels(reward: torch.Tensor, group_size: int, rule: str = "group_mean",
                      threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, label): the samples that get a label (1 desirable, 0 undesirable) and their labels."""
    if rule not in LABEL_RULES:
        raise ValueError(f"label rule must be one of {LABEL_RULES}, got {rule!r}")
    reward = reward.detach().double().cpu()
    if rule == "threshold":
        return torch.arange(len(reward)), (reward > threshold).double()
    groups = reward.view(-1, group_size)
    decided = (groups.max(-1).values > groups.min(-1).values).repeat_interleave(group_size)
    labels = (groups > groups.mean(-1, keepdim=True)).double().flatten()
    index = torch.arange(len(reward))[decided]
    return index, labels[decided]
