"""Our losses and closed-form weights against independent re-implementations of the same losses,
written the way the reference libraries (TRL, HALOs, the papers' code) write them."""

import pytest
import torch
import torch.nn.functional as F

from unified_rlhf import objectives

N = 64


@pytest.fixture
def paired():
    g = torch.Generator().manual_seed(7)

    def logps():
        return -(torch.rand(N, generator=g, dtype=torch.float64) * 30 + 0.5)

    return {"logp_chosen": logps(), "logp_rejected": logps(), "ref_logp_chosen": logps(),
            "ref_logp_rejected": logps(), "len_chosen": torch.randint(1, 30, (N,), generator=g).double(),
            "len_rejected": torch.randint(1, 30, (N,), generator=g).double()}


def check(name, batch, reference_loss, **hp):
    """Loss values equal; the reference loss's autograd gradient equals our closed-form weights."""
    obj = objectives.get(name)
    policy = objectives.POLICY_VARIABLES[obj.shape]
    leaves = {k: v.clone().requires_grad_(k in policy) for k, v in batch.items()}
    expected = reference_loss(leaves)
    out = obj({k: v.detach() for k, v in batch.items()}, **hp)
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(expected.sum(), [leaves[p] for p in policy])
    for sign, grad, weight in zip((-1, 1), grads, out.weights):
        torch.testing.assert_close(weight, sign * grad, rtol=1e-10, atol=1e-14)


def dpo_logits(b):
    return (b["logp_chosen"] - b["ref_logp_chosen"]) - (b["logp_rejected"] - b["ref_logp_rejected"])


def test_dpo_as_trl_sigmoid(paired):
    check("dpo", paired, lambda b: -F.logsigmoid(0.1 * dpo_logits(b)))


# cDPO as Mitchell's note (2023) and HALOs write it. Not TRL's DPO loss: TRL 1.16's DPOTrainer ignores
# label_smoothing for loss_type="sigmoid", and its loss_type="robust" is rDPO (Chowdhury et al. 2024,
# arXiv 2403.00409), a different objective. CPOTrainer's label-smoothed sigmoid has this form without a
# reference model.
def test_cdpo_as_label_smoothed_sigmoid(paired):
    ls = 0.15
    check("cdpo", paired, lambda b: -F.logsigmoid(0.1 * dpo_logits(b)) * (1 - ls)
          - F.logsigmoid(-0.1 * dpo_logits(b)) * ls, eps=ls)


def test_ipo_as_trl_with_average_log_probs(paired):
    tau = 0.1

    def trl_ipo(b):
        chosen = (b["logp_chosen"] - b["ref_logp_chosen"]) / b["len_chosen"]
        rejected = (b["logp_rejected"] - b["ref_logp_rejected"]) / b["len_rejected"]
        return (chosen - rejected - 1 / (2 * tau)) ** 2

    check("ipo", paired, trl_ipo, length_normalize=True)
    check("ipo", paired, lambda b: (dpo_logits(b) - 1 / (2 * tau)) ** 2)  # the default: the paper's summed form


def test_gpo_hinge_as_trl_hinge(paired):
    check("gpo_hinge", paired, lambda b: torch.relu(1 - 0.1 * dpo_logits(b)))


def test_simpo_as_trl_cpo_simpo(paired):
    beta, gamma = 2.0, 0.5

    def trl_simpo(b):
        logits = b["logp_chosen"] / b["len_chosen"] - b["logp_rejected"] / b["len_rejected"]
        return -F.logsigmoid(beta * (logits - gamma / beta))

    check("simpo", paired, trl_simpo)


def test_orpo_as_trl_odds_ratio(paired):
    lam = 0.1

    def trl_orpo(b):
        chosen, rejected = b["logp_chosen"] / b["len_chosen"], b["logp_rejected"] / b["len_rejected"]
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        return -chosen - lam * F.logsigmoid(log_odds)

    check("orpo", paired, trl_orpo)


def test_slic_as_halos(paired):
    check("slic", paired, lambda b: torch.clamp(1.0 - (b["logp_chosen"] - b["logp_rejected"]), min=0)
          - 0.1 * b["logp_chosen"])


def test_rrhf_pair(paired):
    def rrhf(b):
        p_chosen, p_rejected = b["logp_chosen"] / b["len_chosen"], b["logp_rejected"] / b["len_rejected"]
        return torch.clamp(p_rejected - p_chosen, min=0) - b["logp_chosen"]

    check("rrhf", paired, rrhf)


def test_reward_model_bradley_terry():
    g = torch.Generator().manual_seed(1)
    batch = {"reward_chosen": torch.randn(N, generator=g, dtype=torch.float64) * 3,
             "reward_rejected": torch.randn(N, generator=g, dtype=torch.float64) * 3}
    check("rm", batch, lambda b: -F.logsigmoid(b["reward_chosen"] - b["reward_rejected"]))
    check("rm", batch, lambda b: -F.logsigmoid(b["reward_chosen"] - b["reward_rejected"])
          + 0.01 * (b["reward_chosen"] + b["reward_rejected"]) ** 2, center=0.01)


def single(seed=2, **extra):
    g = torch.Generator().manual_seed(seed)
    logp = -(torch.rand(N, generator=g, dtype=torch.float64) * 20 + 0.5)
    batch = {"logp": logp, "old_logp": logp + 0.4 * torch.randn(N, generator=g, dtype=torch.float64),
             "ref_logp": -(torch.rand(N, generator=g, dtype=torch.float64) * 20 + 0.5),
             "advantage": torch.randn(N, generator=g, dtype=torch.float64),
             "label": (torch.rand(N, generator=g) < 0.5).double(),
             "z0": torch.rand(N, generator=g, dtype=torch.float64),
             "length": torch.randint(1, 20, (N,), generator=g).double(),
             "score": torch.rand(N, generator=g, dtype=torch.float64)}
    return batch


def test_kto_as_halos():
    beta, lambda_d, lambda_u = 0.1, 1.0, 1.3

    def halos_kto(b):
        rho = b["logp"] - b["ref_logp"]
        desirable = 1 - torch.sigmoid(beta * (rho - b["z0"]))
        undesirable = 1 - torch.sigmoid(beta * (b["z0"] - rho))
        return torch.where(b["label"] > 0, lambda_d * desirable, lambda_u * undesirable)

    batch = single()
    del batch["old_logp"], batch["advantage"], batch["length"], batch["score"]
    check("kto", batch, halos_kto, lambda_u=lambda_u)


def test_ppo_clip_surrogate():
    def ppo(b):
        ratio = torch.exp(b["logp"] - b["old_logp"])
        return -torch.min(ratio * b["advantage"], torch.clamp(ratio, 0.8, 1.2) * b["advantage"])

    batch = {k: v for k, v in single().items() if k in ("logp", "old_logp", "advantage")}
    check("ppo_clip", batch, ppo)


# DeepSeekMath's per-token GRPO loss (TRL's loss_type="grpo" with use_bias_correction_kl=False). TRL 1.16's
# defaults differ: loss_type="dapo", beta=0, and the k3 term multiplied by pi/pi_old.
def test_grpo_per_token_as_deepseekmath():
    g = torch.Generator().manual_seed(5)
    B, T = 6, 7
    mask = torch.arange(T).expand(B, T) < torch.randint(1, T + 1, (B, 1), generator=g)
    logp = -(torch.rand(B, T, generator=g, dtype=torch.float64) * 5 + 0.1)
    batch = {"logp": logp, "old_logp": logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64),
             "ref_logp": logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
             "advantage": torch.randn(B, generator=g, dtype=torch.float64),
             "length": mask.sum(-1).double(), "mask": mask}
    beta = 0.04

    def trl_grpo(b):
        ratio = torch.exp(b["logp"] - b["old_logp"])
        a = b["advantage"].unsqueeze(-1)
        surrogate = torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
        kl = torch.exp(b["ref_logp"] - b["logp"]) - (b["ref_logp"] - b["logp"]) - 1
        per_token = -(surrogate - beta * kl)
        return (per_token * b["mask"]).sum(-1) / b["mask"].sum(-1)

    obj = objectives.get("grpo")
    leaf = batch["logp"].clone().requires_grad_()
    expected = trl_grpo(batch | {"logp": leaf})
    out = obj(batch)
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(out.weights[0] * mask, -grad, rtol=1e-10, atol=1e-14)


def test_apa_squared_regression():
    lam = 0.1
    batch = {k: v for k, v in single().items() if k in ("logp", "old_logp", "advantage")}
    check("apa", batch, lambda b: (b["logp"] - b["old_logp"] - b["advantage"] / lam) ** 2)


def test_una_binary_mse_and_score():
    batch = {k: v for k, v in single().items() if k in ("logp", "ref_logp", "label")}
    check("una", batch, lambda b: (torch.sigmoid(0.01 * (b["logp"] - b["ref_logp"])) - b["label"]) ** 2)
    batch = {k: v for k, v in single().items() if k in ("logp", "ref_logp", "score")}
    check("una_score", batch, lambda b: (torch.sigmoid(0.03 * (b["logp"] - b["ref_logp"])) - b["score"]) ** 2)


def test_unlikelihood_as_welleck_per_token():
    g = torch.Generator().manual_seed(9)
    B, T = 5, 6
    mask = torch.arange(T).expand(B, T) < torch.randint(1, T + 1, (B, 1), generator=g)
    rejected = -(torch.rand(B, T, generator=g, dtype=torch.float64) * 4 + 1e-7)
    batch = {"logp_chosen": -torch.rand(B, dtype=torch.float64) * 10, "logp_rejected": rejected,
             "mask_rejected": mask}

    def welleck(b):
        one_minus_p = torch.clamp(1.0 - b["logp_rejected"].exp(), min=1e-5)
        return -b["logp_chosen"] - (torch.log(one_minus_p) * b["mask_rejected"]).sum(-1)

    obj = objectives.get("unlikelihood")
    leaf = rejected.clone().requires_grad_()
    expected = welleck(batch | {"logp_rejected": leaf})
    out = obj(batch)
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(out.weights[1] * mask, grad, rtol=1e-7, atol=1e-12)


def test_weights_against_hand_written_formulas(paired):
    """The closed-form weights as derived from the papers' losses (ORPO, cDPO, IPO), written out by hand
    and evaluated independently of the package."""
    b = paired
    chosen, rejected = b["logp_chosen"] / b["len_chosen"], b["logp_rejected"] / b["len_rejected"]
    p_chosen, p_rejected = chosen.exp(), rejected.exp()
    z = (chosen - torch.log(1 - p_chosen)) - (rejected - torch.log(1 - p_rejected))
    w_plus, w_minus = objectives.get("orpo").weights(b)
    lam = 0.1
    odds_term = lam * torch.sigmoid(-z) / ((1 - p_chosen) * b["len_chosen"])
    torch.testing.assert_close(w_plus, 1 / b["len_chosen"] + odds_term)
    torch.testing.assert_close(w_minus, lam * torch.sigmoid(-z) / ((1 - p_rejected) * b["len_rejected"]))
    beta, eps = 0.1, 0.1
    w, _ = objectives.get("cdpo").weights(b)
    torch.testing.assert_close(w, beta * ((1 - eps) - torch.sigmoid(beta * dpo_logits(b))))
    w, _ = objectives.get("ipo").weights(b, length_normalize=False)
    torch.testing.assert_close(w, 1 / 0.1 - 2 * dpo_logits(b))
