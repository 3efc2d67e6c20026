"""GRPO: a clipped surrogate over groups of samples, per token, with a KL pull towards the reference (chapter 6)."""

from __future__ import annotations

from .. import advantages
from .core import objective, unclipped


@objective("grpo", shape="single", family="online", data="online",
           paper="GRPO, DeepSeekMath, Shao et al. 2024, arXiv 2402.03300",
           defaults={"eps": (0.2, "PPO's value and TRL's default; DeepSeekMath gives none"),
                     "beta": (0.04, "DeepSeekMath")},
           ranges={"eps": "(0, 1)", "beta": "[0, 1e6]"},
           level="token", token_vars=("logp", "old_logp", "ref_logp"), max_log_ratio=30.0,
           advantage=advantages.GroupStandardised(eps=1e-4),
           task_defaults=dict(lr=2e-4, batch_size=8, samples_per_prompt=8, kl_coef=0.0, max_steps=100),
           sweep=("beta", (0.0, 0.04, 0.2)),
           note="Per token; 1/|o_i| inside the loss and the batch mean give DeepSeekMath's gradient "
                "coefficient (A + beta (pi_ref/pi - 1)) / (G |o_i|) (their Eq. 21). Paper: G = 64 "
                "(TrainConfig.samples_per_prompt, scaled down for this task).")
def grpo(m, v, eps, beta):
    ratio = m.exp(v.logp - v.old_logp)
    surrogate = m.minimum(ratio * v.advantage, m.clip(ratio, 1 - eps, 1 + eps) * v.advantage)
    kl = m.exp(v.ref_logp - v.logp) - (v.ref_logp - v.logp) - 1  # k3 of KL(pi || pi_ref)
    # (k3's value estimates KL(pi || pi_ref); its gradient on-policy is that of KL(pi_ref || pi), Tang & Munos 2025)
    loss = m.sum_tokens(-(surrogate - beta * kl) / v.length, v.mask)
    kl_pull = beta * (m.exp(v.ref_logp - v.logp) - 1)
    passes = unclipped(m, ratio, v.advantage, eps)
    return loss, ((m.gate(ratio * v.advantage * passes, passes) + kl_pull) / v.length,)
