"""Offline unpaired objectives: KTO and UNA (chapters 14-15)."""

from __future__ import annotations

import torch

from .core import Hook, Objective, objective, register
from .paired import dpo


class KTOReferencePoint(Hook):
    """KTO's z0 from mismatched pairs: each completion with the prompt of the next row (a fixed
    partner), scored by the policy under no gradient and by the reference once (cached)."""

    @staticmethod
    def mismatched(examples, indices):
        n = len(examples)
        return [(examples[(i + 1) % n]["prompt"], examples[i]["completions"][0]) for i in indices]

    def reference_sequences(self, examples):
        return {"mismatched": self.mismatched(examples, range(len(examples)))}

    def offline_inputs(self, trainer, indices, batch):
        with torch.no_grad():
            policy = trainer.logprobs(self.mismatched(trainer.examples, indices))[0]
        reference = trainer.reference_logprobs("mismatched", indices)
        # z0 over the global batch: every process contributes its rows
        z0 = kto_reference_point(trainer.accelerator.gather(policy), trainer.accelerator.gather(reference))
        batch["z0"] = z0.expand_as(batch["logp"])
        return {"z0": z0.item()}

    def online_inputs(self, trainer, rollout, rows, batch):
        # on the policy's own samples: each sample with a prompt of the next group (k samples on)
        n, k = len(rollout.pairs), rollout.group_size
        mismatched = [(rollout.pairs[(i + k) % n][0], rollout.pairs[i][1]) for i in rows]
        with torch.no_grad():
            policy = trainer.logprobs(mismatched)[0]
            reference = trainer.logprobs(mismatched, trainer.reference)[0]
        z0 = kto_reference_point(trainer.accelerator.gather(policy), trainer.accelerator.gather(reference))
        batch["z0"] = z0.expand_as(batch["logp"])
        return {"z0": z0.item()}

    def validate(self, config):
        if config.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for KTO's reference point z0 (estimated from the "
                             f"batch's mismatched pairs), got {config.batch_size}")


@objective("kto", shape="single", family="unpaired", data="unpaired",
           paper="KTO, Ethayarajh et al. 2024, arXiv 2402.01306",
           defaults={"beta": (0.1, "KTO paper"), "lambda_d": (1.0, "KTO paper"), "lambda_u": (1.0, "KTO paper")},
           ranges={"lambda_d": "[0, 1e6]", "lambda_u": "[0, 1e6]"},
           trainer_defaults={"desirable_ratio_range": (1.0, 4 / 3),
                             "source": "KTO paper: keep lambda_D n_D / (lambda_U n_U) in [1, 4/3]"},
           hooks=(KTOReferencePoint(),), sweep=("beta", (0.05, 0.1, 0.5)),
           seed=lambda m, v, **_: (v.label * m.sigmoid(v.reward - v.z0) * m.sigmoid(v.z0 - v.reward),),
           seed_note="The seed writes sigma'(r - E[log ratio]); exactly the implicit reward beta*rho "
                     "replaces r, beta multiplies the whole weight, lambda_D / lambda_U scale it, and "
                     "undesirable samples get the negative weight.",
           note="label = 1 desirable, 0 undesirable. z0 = kto_reference_point(...), detached.")
def kto(m, v, beta, lambda_d, lambda_u):
    u = beta * ((v.logp - v.ref_logp) - v.z0)
    # 1 - sigma(u) is written sigma(-u): the same value without cancellation
    loss = v.label * lambda_d * m.sigmoid(-u) + (1 - v.label) * lambda_u * m.sigmoid(u)
    slope = beta * m.sigmoid(u) * m.sigmoid(-u)
    return loss, ((v.label * lambda_d - (1 - v.label) * lambda_u) * slope,)


def kto_reference_point(mismatched_logp: torch.Tensor, mismatched_ref_logp: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean rho over mismatched (x', y) pairs), detached (KTO paper, HALOs)."""
    if mismatched_logp.numel() < 2:
        raise ValueError("kto: the reference point z0 needs a batch of at least 2 examples (it is estimated "
                         f"from mismatched pairs); got {mismatched_logp.numel()}")
    return (mismatched_logp - mismatched_ref_logp).mean().clamp(min=0).detach()


@objective("una", shape="single", family="unpaired", data="unpaired",
           paper="UNA, Wang et al. 2024, arXiv 2408.15339 (binary feedback)",
           defaults={"beta": (0.01, "UNA paper, binary feedback")}, options={"loss": "mse"},
           ranges={"loss": ("mse", "bce")},
           sweep=("beta", (0.003, 0.01, 0.03)),
           note="Implicit reward r = beta rho, s = sigma(r); loss='mse' (s - label)^2 or 'bce'.")
def una(m, v, beta, loss):
    s = m.sigmoid(beta * (v.logp - v.ref_logp))
    slope = beta * s * m.sigmoid(-beta * (v.logp - v.ref_logp))  # ds/dl
    if loss == "mse":
        return (s - v.label) ** 2, (2 * (v.label - s) * slope,)
    if loss == "bce":
        r = beta * (v.logp - v.ref_logp)
        return -v.label * m.logsigmoid(r) - (1 - v.label) * m.logsigmoid(-r), (beta * (v.label - s),)
    raise ValueError(f"una: option loss must be 'mse' or 'bce', got {loss!r}")


@objective("una_score", shape="single", family="unpaired", data="scored",
           paper="UNA, Wang et al. 2024, arXiv 2408.15339 (score feedback)",
           defaults={"beta": (0.03, "UNA paper, score feedback")}, sweep=("beta", (0.01, 0.03, 0.1)))
def una_score(m, v, beta):
    r = beta * (v.logp - v.ref_logp)
    s = m.sigmoid(r)
    return (s - v.score) ** 2, (2 * beta * (v.score - s) * s * m.sigmoid(-r),)


register(Objective(
    "una_pairwise", dpo, shape="paired", family="paired", data="paired",
    paper="UNA, Wang et al. 2024, arXiv 2408.15339 (pairwise feedback)",
    defaults={"beta": (0.1, "as DPO (UNA's pairwise form is DPO's loss; its beta unverified)")}, same_as="dpo",
    note="UNA's pairwise form is DPO's loss: the same formula function, registered under UNA."))
