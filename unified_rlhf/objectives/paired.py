"""Offline paired objectives (chapters 9-13)."""

from __future__ import annotations

import torch

from .core import Hook, Objective, margin, objective, register


@objective("unlikelihood", shape="paired", family="paired", data="paired",
           paper="Unlikelihood training, Welleck et al. 2019, arXiv 1908.04319",
           defaults={"alpha": (1.0, "paper code"), "kappa": (1e-5, "paper code clamps 1 - p at 1e-5")},
           ranges={"alpha": "[0, 1e6]", "kappa": "(0, 1)"},  # alpha = 0: SFT on y+ alone
           sweep=("alpha", (0.3, 1.0, 3.0)),
           level="token", token_vars=("logp_rejected",),
           seed=lambda m, v, **_: (1, 1),
           seed_note="The seed's w- = 1 is the naive -l(y-) version. Unlikelihood acts per token: "
                     "w-_t = alpha p_t / (1 - p_t), unbounded as p_t -> 1 (clamped at 1 - p = kappa).")
def unlikelihood(m, v, alpha, kappa):
    # -log(1 - p_t) per rejected token, p_t = exp(l_t), with log(1 - p) floored at log(kappa)
    log_one_minus_p = m.maximum(m.log1mexp(v.logp_rejected), m.log(kappa))
    loss = -v.logp_chosen - alpha * m.sum_tokens(log_one_minus_p, v.mask_rejected)
    not_clamped = m.step(-m.expm1(v.logp_rejected) - kappa)
    # = alpha p / (1 - p); 0 where clamped, also at p = 1 exactly (0 / 0 in floating point)
    return loss, (1, m.gate(alpha * not_clamped / m.expm1(-v.logp_rejected), not_clamped))


@objective("dpo", shape="paired", family="paired", data="paired",
           paper="DPO, Rafailov et al. 2023, arXiv 2305.18290",
           defaults={"beta": (0.1, "DPO paper")}, sweep=("beta", (0.05, 0.1, 0.5)),
           seed=lambda m, v, **_: (m.sigmoid(-margin(v)),) * 2,
           seed_note="The seed writes sigma(r_hat- - r_hat+) with r_hat = log(pi/pi_ref): it drops beta "
                     "both as a factor and inside the sigmoid. Exactly w = beta sigma(-beta Delta).")
def dpo(m, v, beta):
    weight = beta * m.sigmoid(-beta * margin(v))
    return -m.logsigmoid(beta * margin(v)), (weight, weight)


@objective("cdpo", shape="paired", family="paired", data="paired",
           paper="conservative DPO (label smoothing), Mitchell 2023; DPO with noisy labels",
           defaults={"beta": (0.1, "DPO paper"), "eps": (0.1, "label-smoothing 0.1-0.2")},
           ranges={"eps": "[0, 0.5]"},
           sweep=("beta", (0.05, 0.1, 0.5)),
           note="The weight is signed: zero at beta Delta = ln((1-eps)/eps), negative beyond.")
def cdpo(m, v, beta, eps):
    u = beta * margin(v)
    weight = beta * ((1 - eps) - m.sigmoid(u))
    return -(1 - eps) * m.logsigmoid(u) - eps * m.logsigmoid(-u), (weight, weight)


@objective("ipo", shape="paired", family="paired", data="paired",
           paper="IPO, Azar et al. 2023, arXiv 2310.12036",
           defaults={"tau": (0.1, "IPO with summed log-ratios, as the DPO authors' repository runs it: a target "
                                  "margin 1/(2 tau) = 5 nats per sequence")},
           options={"length_normalize": False},
           sweep=("tau", (0.01, 0.03, 0.1)),  # summed: target margins of 50, 17 and 5 nats per sequence
           ranges={"tau": "[1e-6, 1e6]"},  # the target is 1/(2 tau)
           note="The default is the paper's margin, of summed log-ratios (its Eq. 17). length_normalize=True "
                "divides each log-ratio by |y| as TRL's DPOTrainer (loss_type='ipo') and HALOs do; TRL 1.16's "
                "source says its authors settled that form with IPO's authors. It makes 1/(2 tau) a per-token "
                "target, so the same tau asks for |y| times the margin: pick tau for the form you use.")
def ipo(m, v, tau, length_normalize):
    n_plus, n_minus = (v.len_chosen, v.len_rejected) if length_normalize else (1, 1)
    delta = (v.logp_chosen - v.ref_logp_chosen) / n_plus - (v.logp_rejected - v.ref_logp_rejected) / n_minus
    pull = 1 / tau - 2 * delta  # signed: pushes back once Delta passes the target 1/(2 tau)
    return (delta - 1 / (2 * tau)) ** 2, (pull / n_plus, pull / n_minus)


@objective("slic", shape="paired", family="paired", data="paired",
           paper="SLiC-HF, Zhao et al. 2023, arXiv 2305.10425",
           defaults={"delta": (1.0, "SLiC-HF paper"), "lam": (0.1, "HALOs (paper value unverified)")},
           ranges={"delta": "[0, 1e6]", "lam": "[0, 1e6]"},
           sweep=("delta", (0.5, 1.0, 2.0)),
           seed=lambda m, v, delta, lam: (1 + m.step(delta - (v.logp_chosen - v.logp_rejected)),
                                          m.step(delta - (v.logp_chosen - v.logp_rejected))),
           seed_note="The seed writes w+ = 1 + w-, w- = 1{pi(y+)/pi(y-) < beta}: a margin in log space "
                     "(log beta = delta) and an SFT weight of 1 where SLiC has lambda. y_sft = y+ here.")
def slic(m, v, delta, lam):
    hinge_active = m.step(delta - (v.logp_chosen - v.logp_rejected))
    loss = m.relu(delta - v.logp_chosen + v.logp_rejected) - lam * v.logp_chosen
    return loss, (hinge_active + lam, hinge_active)


class RankedLoss(Hook):
    """RRHF on ranked data: the batch holds k responses per prompt (logp, length, reward, each [B, k]),
    and the loss is rrhf_ranked_loss; each response's weight -dL/dl_i is read off autograd and reported
    as w+ for the best response and w- for the others."""

    def loss(self, objective, batch, hp):
        logp = batch["logp"]
        loss = rrhf_ranked_loss(logp, batch["length"], batch["reward"])
        (grad,) = torch.autograd.grad(loss.sum(), logp, retain_graph=True)
        best = torch.nn.functional.one_hot(batch["reward"].argmax(-1), logp.shape[-1]).bool()
        return loss, (-grad[best], grad[~best])


@objective("rrhf", shape="paired", family="ranked", data="ranked",
           paper="RRHF, Yuan et al. 2023, arXiv 2304.05302", hooks=(RankedLoss(),), sweep=("lr", (2.5e-4, 5e-4, 1e-3)),
           seed=lambda m, v, **_: (1 + m.step(v.logp_rejected / v.len_rejected - v.logp_chosen / v.len_chosen),
                                   m.step(v.logp_rejected / v.len_rejected - v.logp_chosen / v.len_chosen)),
           seed_note="The seed writes w+ = 1 + w-, w- = 1{...}: RRHF ranks length-normalised log-probs, "
                     "so each side carries 1/|y|, and the SFT term on the best response gives the extra 1.",
           note="Paired view (y+ the better of two). rrhf_ranked_loss applies it to k ranked responses.")
def rrhf(m, v):
    p_plus, p_minus = v.logp_chosen / v.len_chosen, v.logp_rejected / v.len_rejected
    violated = m.step(p_minus - p_plus)
    loss = m.relu(p_minus - p_plus) - v.logp_chosen
    return loss, (violated / v.len_chosen + 1, violated / v.len_rejected)


def rrhf_ranked_loss(logp: torch.Tensor, length: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """RRHF over k responses per prompt ([B, k] each): hinge on every pair ranked r_i < r_j, plus
    SFT on the best response. Equals the 'rrhf' objective when k = 2."""
    score = logp / length
    worse = reward.unsqueeze(-1) < reward.unsqueeze(-2)  # [B, i, j]: response i is ranked below j
    ranking = (torch.relu(score.unsqueeze(-1) - score.unsqueeze(-2)) * worse).sum((-1, -2))
    best = reward.argmax(-1, keepdim=True)
    return ranking - logp.gather(-1, best).squeeze(-1)


@objective("orpo", shape="paired", family="paired", data="paired",
           paper="ORPO, Hong et al. 2024, arXiv 2403.07691 (no reference model)",
           defaults={"lam": (0.1, "ORPO paper")}, ranges={"lam": "[0, 1e6]"}, sweep=("lam", (0.1, 0.5, 1.0)),
           note="P = exp(l/|y|); the odds-ratio term's weight grows as 1/(1-P) when P -> 1.")
def orpo(m, v, lam):
    mean_plus, mean_minus = v.logp_chosen / v.len_chosen, v.logp_rejected / v.len_rejected
    z = (mean_plus - m.log1mexp(mean_plus)) - (mean_minus - m.log1mexp(mean_minus))  # log odds ratio
    loss = -mean_plus - lam * m.logsigmoid(z)
    # d log-odds / d l = 1 / (|y| (1 - P)), with 1 - P = -expm1(l / |y|) (floored as log1mexp is, so at
    # P = 1 exactly the weight is autograd's, not inf)
    w_plus = 1 / v.len_chosen - lam * m.sigmoid(-z) / (m.expm1_floored(mean_plus) * v.len_chosen)
    w_minus = -lam * m.sigmoid(-z) / (m.expm1_floored(mean_minus) * v.len_rejected)
    return loss, (w_plus, w_minus)


@objective("simpo", shape="paired", family="paired", data="paired",
           paper="SimPO, Meng et al. 2024, arXiv 2405.14734 (no reference model)",
           defaults={"beta": (2.0, "SimPO repo default"), "gamma": (0.5, "gamma/beta = 0.25, SimPO repo")},
           ranges={"gamma": "[0, 1e6]"},
           sweep=("beta", (1.0, 2.0, 5.0)))
def simpo(m, v, beta, gamma):
    u = beta * v.logp_chosen / v.len_chosen - beta * v.logp_rejected / v.len_rejected - gamma
    return -m.logsigmoid(u), (beta * m.sigmoid(-u) / v.len_chosen, beta * m.sigmoid(-u) / v.len_rejected)


# ---------------------------------------------------------------------------------------------
# GPO: E[f(beta Delta)] for a convex f. Each member gives f and its derivative f'; the weight
# w+ = w- = -beta f'(beta Delta) is then checked against SymPy's derivative of f.
# ---------------------------------------------------------------------------------------------
GPO_FUNCTIONS = {
    "logistic": (lambda m, x: m.softplus(-x), lambda m, x: -m.sigmoid(-x), "= DPO"),
    "hinge": (lambda m, x: m.relu(1 - x), lambda m, x: -m.step(1 - x), "= SLiC with a reference"),
    "squared": (lambda m, x: (x - 1) ** 2, lambda m, x: 2 * (x - 1), "= IPO with tau = beta/2, scaled"),
    "exponential": (lambda m, x: m.exp(-x), lambda m, x: -m.exp(-x), "AdaBoost-like"),
    "truncated_quadratic": (lambda m, x: m.relu(1 - x) ** 2, lambda m, x: -2 * m.relu(1 - x), ""),
    "savage": (lambda m, x: m.sigmoid(-x) ** 2, lambda m, x: -2 * m.sigmoid(-x) ** 2 * m.sigmoid(x), ""),
}


def _gpo_formula(f, f_prime):
    def gpo(m, v, beta):
        x = beta * margin(v)
        weight = -beta * f_prime(m, x)
        return f(m, x), (weight, weight)
    return gpo


for _name, (_f, _f_prime, _relation) in GPO_FUNCTIONS.items():
    register(Objective(
        f"gpo_{_name}", _gpo_formula(_f, _f_prime), shape="paired", family="paired", data="paired",
        paper="GPO, Tang et al. 2024, arXiv 2402.05749",
        defaults={"beta": (0.1, "DPO's beta; GPO sweeps it")},
        # logistic GPO is DPO term for term (chapter 10 proves it): the frontier trains it once, as dpo
        sweep=None if _name == "logistic" else ("beta", (0.05, 0.1, 0.5)),
        same_as="dpo" if _name == "logistic" else None,
        # exp(-beta Delta) overflows float32 at beta |Delta| = 89: |Delta| up to 800 at the default beta
        max_log_ratio=400.0 if _name == "exponential" else 1e3, note=f"f = {_name} {_relation}".strip()))
