"""The Bradley-Terry reward model: its weights multiply grad r_phi, not grad log pi (chapter 8)."""

from __future__ import annotations

from .core import objective


@objective("rm", shape="reward_model", family="reward model", data="paired",
           task_defaults=dict(lr=1e-3, batch_size=32, max_steps=200),
           paper="Bradley-Terry reward model; Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155",
           defaults={"margin": (0.0, "optional margin (Llama 2); 0 = plain Bradley-Terry"),
                     "center": (0.0, "optional centring term; TRL uses 0.01 when enabled")},
           ranges={"margin": "[0, 1e6]", "center": "[0, 1e6]"},
           seed=lambda m, v, **_: (m.sigmoid(v.reward_rejected - v.reward_chosen),) * 2,
           seed_note="Same as the seed when margin = centring = 0.")
def rm(m, v, margin, center):
    u = v.reward_chosen - v.reward_rejected - margin
    total = v.reward_chosen + v.reward_rejected
    loss = -m.logsigmoid(u) + center * total**2
    return loss, (m.sigmoid(-u) - 2 * center * total, m.sigmoid(-u) + 2 * center * total)
