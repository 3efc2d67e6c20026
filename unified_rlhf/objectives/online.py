"""Online objectives: y is sampled from the policy and scored (chapters 3-6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import advantages, checks, trust_region
from .core import ONLINE_TASK, Hook, Objective, objective, register, unclipped


@objective("vpg", shape="single", family="online", data="online", paper="REINFORCE, Williams 1992",
           advantage=advantages.RunningBaseline(decay=0.9),
           task_defaults=dict(lr=2e-4, kl_coef=0.0, batch_size=16, samples_per_prompt=4, max_steps=100),
           sweep=("kl_coef", (0.0, 0.05, 0.2)),
           seed=lambda m, v, **_: (v.reward,),
           seed_note="The seed uses w = r; with a baseline b the weight is r - b, same expectation, "
                     "lower variance.")
def vpg(m, v):
    advantage = v.reward - v.baseline
    return -advantage * v.logp, (advantage,)


def kl_penalized_surrogate(m, v, beta):
    """ratio * A - beta KL(pi_old || pi_theta); KL from samples of pi_old with the k3 estimator
    (ratio - 1) - log ratio, which is >= 0 and has zero gradient at ratio = 1 (Schulman 2020)."""
    log_ratio = v.logp - v.old_logp
    ratio = m.exp(log_ratio)
    kl = ratio - 1 - log_ratio
    loss = m.sum_tokens(-(ratio * v.advantage - beta * kl), v.mask)
    return loss, (ratio * v.advantage - beta * (ratio - 1),)


def adapt_kl_coefficient(beta: float, kl: float, target: float) -> float:
    """PPO's adaptive rule: halve beta when the measured KL is well under target, double it when over."""
    if kl < target / 1.5:
        return beta / 2
    if kl > target * 1.5:
        return beta * 2
    return beta


@dataclass(frozen=True)
class AdaptiveKL(Hook):
    """PPO's adaptive KL coefficient: each step's loss uses the beta adapted after the previous step,
    from KL(pi_old || pi) per token measured after the update (the trainer's `policy_kl_old`)."""

    target: float = 0.01
    reads_update_kl = True

    def hyperparameters(self, state, hp):
        return hp | {"beta": state["kl_beta"]} if "kl_beta" in state else hp

    def after_step(self, objective, state, metrics, hp):
        beta = objective.hyperparameters(**hp)["beta"]
        state["kl_beta"] = metrics["kl_beta"] = adapt_kl_coefficient(beta, metrics["policy_kl_old"], self.target)


register(Objective(
    "ppo_kl_fixed", kl_penalized_surrogate, shape="single", family="online", data="online",
    paper="PPO paper's fixed KL-penalty baseline, Schulman et al. 2017, arXiv 1707.06347",
    defaults={"beta": (1.0, "PPO paper, Table 1 compares fixed beta = 0.3, 1, 3, 10")}, ranges={"beta": "[0, 1e6]"},
    level="token", token_vars=("logp", "old_logp", "advantage"), max_log_ratio=30.0,
    advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK, sweep=("beta", (0.3, 1.0, 3.0)),
    note="The surrogate with a fixed KL penalty, stepped by Adam. The PPO paper's baseline; TRPO (trpo) "
         "takes the same weights at beta = 0 and replaces the penalty with a trust region on the step."))


def trust_region_surrogate(m, v, max_kl):
    """TRPO's surrogate ratio * A: the KL-penalised surrogate at beta = 0. max_kl sets the step (see
    NaturalGradientStep), not the loss, so the weights are ratio * A whatever its value."""
    return kl_penalized_surrogate(m, v, beta=0)


@dataclass(frozen=True)
class NaturalGradientStep(Hook):
    """TRPO's update in place of the optimiser's: the natural gradient by conjugate gradient on
    Fisher-vector products of the exact mean KL(pi_old || pi_theta) over the vocabulary at each sampled
    completion token, scaled to the trust region max_kl, then a backtracking line search
    (trust_region.natural_gradient_step). Constants: OpenAI baselines' TRPO."""

    cg_iterations: int = 10
    damping: float = 0.01
    backtracks: int = 10

    def update(self, trainer, loss, recompute_loss, sequences, hp):
        if trainer.accelerator.num_processes > 1:  # each process would take its own step from its own samples
            raise checks.SettingError("trpo's natural-gradient step runs in one process; launch it without "
                                      f"accelerate's {trainer.accelerator.num_processes} processes")
        max_kl = trainer.objective.hyperparameters(**hp)["max_kl"]
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        with torch.no_grad():
            old, mask = trainer.distributions(sequences)

        def mean_kl():
            new, _ = trainer.distributions(sequences)
            return (old.exp() * (old - new)).sum(-1)[mask].mean()

        # Fisher-vector products differentiate twice; the fused attention kernels have no second derivative
        with sdpa_kernel(SDPBackend.MATH):
            return trust_region.natural_gradient_step(params, loss, recompute_loss, mean_kl, max_kl=max_kl,
                                                      cg_iterations=self.cg_iterations, damping=self.damping,
                                                      backtracks=self.backtracks)

    def validate(self, config):
        if config.update_epochs != 1:
            raise checks.SettingError(f"update_epochs must be 1 for {config.method}: TRPO takes one natural-"
                                      f"gradient step per batch of samples, got {config.update_epochs}")


register(Objective(
    "trpo", trust_region_surrogate, shape="single", family="online", data="online",
    paper="TRPO, Schulman et al. 2015, arXiv 1502.05477",
    defaults={"max_kl": (0.01, "TRPO paper's delta for its experiments; OpenAI baselines' max_kl")},
    ranges={"max_kl": "(0, 10]"},
    hooks=(NaturalGradientStep(),),
    level="token", token_vars=("logp", "old_logp", "advantage"), max_log_ratio=30.0,
    advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK | {"update_epochs": 1},
    sweep=("max_kl", (0.003, 0.01, 0.03)),
    note="Weights ratio * A (the penalty form's at beta = 0; at the step's start ratio = 1, so w = A). The step "
         "is the natural gradient in a KL trust region with a line search, not Adam's (NaturalGradientStep)."))

register(Objective(
    "ppo_kl", kl_penalized_surrogate, shape="single", family="online", data="online",
    paper="PPO (adaptive KL penalty), Schulman et al. 2017, arXiv 1707.06347",
    defaults={"beta": (1.0, "PPO paper, initial value of the adapted coefficient")},
    ranges={"beta": "[0, inf)"},  # no upper bound: the adaptive rule doubles beta while the KL stays high
    hooks=(AdaptiveKL(target=0.01),),  # PPO paper: d_targ = 0.01
    level="token", token_vars=("logp", "old_logp", "advantage"), max_log_ratio=30.0,
    advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK, sweep=("kl_coef", (0.02, 0.05, 0.2)),
    note="Same loss as ppo_kl_fixed; beta is adapted after each update by adapt_kl_coefficient()."))


@objective("ppo_clip", shape="single", family="online", data="online",
           paper="PPO-clip, Schulman et al. 2017, arXiv 1707.06347",
           defaults={"eps": (0.2, "PPO paper")}, ranges={"eps": "(0, 1)"},
           level="token", token_vars=("logp", "old_logp", "advantage"),
           max_log_ratio=30.0, advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK,
           sweep=("eps", (0.1, 0.2, 0.4)),
           seed=lambda m, v, eps: (m.exp(v.logp - v.old_logp) * v.advantage
                                   * m.step(1 + eps - m.exp(v.logp - v.old_logp)),),
           seed_note="The seed derives one side only: w = ratio*r while ratio < 1+eps. Exactly, the clip "
                     "is active only where it would *raise* the objective: ratio > 1+eps with A > 0 or "
                     "ratio < 1-eps with A < 0; with A < 0 and ratio > 1+eps the gradient stays on. The "
                     "seed also takes the ratio against pi_ref and r for A.")
def ppo_clip(m, v, eps):
    ratio = m.exp(v.logp - v.old_logp)
    surrogate = m.minimum(ratio * v.advantage, m.clip(ratio, 1 - eps, 1 + eps) * v.advantage)
    passes = unclipped(m, ratio, v.advantage, eps)
    # where the clip holds, the weight is 0 even if the ratio overflowed (inf * 0 in floating point)
    return m.sum_tokens(-surrogate, v.mask), (m.gate(ratio * v.advantage * passes, passes),)


@objective("apa", shape="single", family="online", data="online",
           paper="APA, Zhu et al. 2023, arXiv 2306.02231",
           defaults={"lam": (0.1, "official code: 1/lambda = 10")}, ranges={"lam": "[1e-6, 1e6]"},  # divides A
           level="token",
           token_vars=("logp", "old_logp", "advantage"), advantage=advantages.KLShapedReturns(),
           task_defaults=ONLINE_TASK, sweep=("lam", (0.03, 0.1, 0.3)),
           seed=lambda m, v, lam: (v.advantage - (v.logp - v.old_logp),),
           seed_note="The seed writes w = r - log(pi/pi_ref). Exactly w = 2(A/lambda - log(pi/pi_old)): a "
                     "factor 2 and the 1/lambda scale of the target log-ratio.")
def apa(m, v, lam):
    log_ratio = v.logp - v.old_logp
    target = v.advantage / lam  # APA regresses the log-ratio onto A / lambda
    return m.sum_tokens((log_ratio - target) ** 2, v.mask), (2 * (target - log_ratio),)


@objective("rloo", shape="single", family="online", data="online",
           paper="RLOO, Ahmadian et al. 2024, arXiv 2402.14740", advantage=advantages.LeaveOneOut(),
           task_defaults=dict(lr=2e-4, batch_size=32, samples_per_prompt=2, max_steps=100),
           sweep=("kl_coef", (0.02, 0.05, 0.2)),
           note="advantage = leave-one-out advantages of the KL-shaped rewards (advantages.leave_one_out). "
                "For k = 2: w+ = w- = (R+ - R-)/2, exactly a paired objective. Paper: k in {2, 4}, KL "
                "coefficient 0.03-0.05 in the reward (TrainConfig.samples_per_prompt, kl_coef).")
def rloo(m, v):
    return -v.advantage * v.logp, (v.advantage,)
