"""The direct-alignment zoo: every loss of TRL's DPOTrainer the earlier chapters do not cover (chapter 16).

Notation as in paired.py: rho = l - l_ref is a completion's log-ratio, Delta = rho(y+) - rho(y-) the margin,
u = beta Delta. Each record is registered under TRL's `loss_type` name where TRL has one (DPOConfig), so a
reader who meets `loss_type="nca_pair"` in a config file finds its weights under `unified-rlhf show nca_pair`;
rdpo is TRL's "robust". tests/test_trl_dpo.py feeds the same float64 log-probs to TRL's own loss code and to
these records. Two shapes are new here:

* weights that read the two log-ratios separately, not only Delta (nca_pair, bco_pair, sppo_hard, apo_*): the
  atlas over Delta does not hold them, chapter 16 draws them over rho(y+) and rho(y-);
* weights that depend on the rest of the batch (aot, aot_unpaired sort it; bco's reward shift averages over
  every batch so far). Their records read what the batch contributes as detached inputs, filled in by a hook;
  the weight is exact given those inputs (for AOT: given the batch's ranks, which are constant almost
  everywhere, so the gradient of the sorted loss is the closed form).
"""

from __future__ import annotations

import torch

from .core import Hook, margin, objective

TRL_DEFAULT = "TRL DPOConfig default"


def _ratios(v):
    return v.logp_chosen - v.ref_logp_chosen, v.logp_rejected - v.ref_logp_rejected


def _smoothed_logistic(m, u, beta, eps):
    """cDPO's loss of u = beta x and its weight -dL/dx, shared by the AOT records (TRL's label_smoothing)."""
    loss = -(1 - eps) * m.logsigmoid(u) - eps * m.logsigmoid(-u)
    return loss, beta * ((1 - eps) * m.sigmoid(-u) - eps * m.sigmoid(u))


# ---------------------------------------------------------------------------------------------
# Fading weights: functions of Delta (or of each rho) that vanish as the pair is learned
# ---------------------------------------------------------------------------------------------
@objective("sigmoid_norm", shape="paired", family="paired", data="paired",
           paper="length-normalised DPO, Tulu 3 (Lambert et al. 2024, arXiv 2411.15124)",
           defaults={"beta": (5.0, "Tulu 3 trains its length-normalised DPO with beta = 5")},
           sweep=("beta", (2.0, 5.0, 10.0)),
           note="DPO on per-token log-ratios rho/|y|: w = beta sigma(-u) / |y| on each side, as SimPO's with a "
                "reference and no margin. TRL's loss_type='sigmoid_norm'.")
def sigmoid_norm(m, v, beta):
    rho_plus, rho_minus = _ratios(v)
    u = beta * (rho_plus / v.len_chosen - rho_minus / v.len_rejected)
    weight = beta * m.sigmoid(-u)
    return -m.logsigmoid(u), (weight / v.len_chosen, weight / v.len_rejected)


@objective("bco_pair", shape="paired", family="paired", data="paired",
           paper="BCO, Jung et al. 2024, arXiv 2404.04656 (TRL's paired form)",
           defaults={"beta": (0.1, TRL_DEFAULT)}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="A binary classifier on each implicit reward r = beta rho: y+ labelled 1, y- labelled 0, without "
                "the paper's reward shift delta (TRL 1.16 keeps only this form; `bco` has the shift). Each side "
                "fades on its own: w+ = beta sigma(-r+), w- = beta sigma(r-).")
def bco_pair(m, v, beta):
    rho_plus, rho_minus = _ratios(v)
    r_plus, r_minus = beta * rho_plus, beta * rho_minus
    return -m.logsigmoid(r_plus) - m.logsigmoid(-r_minus), (beta * m.sigmoid(-r_plus), beta * m.sigmoid(r_minus))


@objective("apo_zero", shape="paired", family="paired", data="paired",
           paper="APO, D'Oosterlinck et al. 2024, arXiv 2408.06266 (APO-zero, paired)",
           defaults={"beta": (0.1, TRL_DEFAULT)}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="Anchored at rho = 0: pushes r+ up and r- down, each by a bell-shaped weight beta sigma(r) "
                "sigma(-r) that is largest where the policy equals the reference and fades both ways.")
def apo_zero(m, v, beta):
    rho_plus, rho_minus = _ratios(v)
    r_plus, r_minus = beta * rho_plus, beta * rho_minus
    slope_plus, slope_minus = m.sigmoid(r_plus) * m.sigmoid(-r_plus), m.sigmoid(r_minus) * m.sigmoid(-r_minus)
    return m.sigmoid(-r_plus) + m.sigmoid(r_minus), (beta * slope_plus, beta * slope_minus)


@objective("apo_down", shape="paired", family="paired", data="paired",
           paper="APO, D'Oosterlinck et al. 2024, arXiv 2408.06266 (APO-down, paired)",
           defaults={"beta": (0.1, TRL_DEFAULT)}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="For pairs whose chosen answer is worse than the model's own: r+ is pushed down by "
                "beta sigma'(r+) while the margin is pushed up by beta sigma'(u), so w+ is signed (the "
                "difference of two bells) and w- = beta sigma'(u) > 0. sigma' = sigma(x) sigma(-x).")
def apo_down(m, v, beta):
    rho_plus, _ = _ratios(v)
    r_plus, u = beta * rho_plus, beta * margin(v)
    bell_plus, bell_margin = m.sigmoid(r_plus) * m.sigmoid(-r_plus), m.sigmoid(u) * m.sigmoid(-u)
    # beta bell_margin - beta bell_plus, the sum autograd forms: the two bells cancel where u is close to r+
    # (|rho-| << |rho+|), and only the same rounding agrees to 1e-10 there
    return m.sigmoid(r_plus) + m.sigmoid(-u), (beta * bell_margin - beta * bell_plus, beta * bell_margin)


# ---------------------------------------------------------------------------------------------
# Targeted: a signed weight that pushes back once a target is passed
# ---------------------------------------------------------------------------------------------
@objective("exo_pair", shape="paired", family="paired", data="paired",
           paper="EXO, Ji et al. 2024, arXiv 2402.00856 (pairwise EXO)",
           defaults={"beta": (0.1, TRL_DEFAULT), "eps": (1e-3, "EXO paper's label smoothing (TRL docs)")},
           ranges={"eps": "(0, 0.5]"}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="KL(q || p) between the policy's preference q = sigma(u) and the smoothed label p = 1 - eps "
                "(the reverse of cDPO's cross-entropy). w = beta sigma(u) sigma(-u) (ln((1-eps)/eps) - u): "
                "zero at u = ln((1-eps)/eps) (6.9 at eps = 1e-3), negative beyond, and it also fades as u -> "
                "-inf, where DPO's weight is largest. TRL refuses eps = 0 (log 0), and takes log(1-eps) and "
                "log(eps) in float32 whatever the log-probs' precision (1e-8 relative in float64); here they "
                "are exact.")
def exo_pair(m, v, beta, eps):
    u = beta * margin(v)
    # q log q stays finite as q = sigma(u) underflows: logsigmoid is finite, and 0 * finite = 0
    loss = m.sigmoid(u) * (m.logsigmoid(u) - m.log(1 - eps)) + m.sigmoid(-u) * (m.logsigmoid(-u) - m.log(eps))
    weight = beta * m.sigmoid(u) * m.sigmoid(-u) * (m.log((1 - eps) / eps) - u)
    return loss, (weight, weight)


@objective("nca_pair", shape="paired", family="paired", data="paired",
           paper="NCA, Chen et al. 2024, arXiv 2402.05369 (pairwise NCA)",
           defaults={"beta": (0.1, TRL_DEFAULT)}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="Noise-contrastive: each implicit reward r = beta rho is classified against the noise, not only "
                "their difference. w+ = beta (sigma(-r+) - sigma(r+)/2) is signed, zero at r+ = ln 2 (the chosen "
                "log-ratio has a target); w- = beta sigma(r-)/2 fades as r- -> -inf, so y- is not pushed down "
                "for ever as DPO pushes it.")
def nca_pair(m, v, beta):
    rho_plus, rho_minus = _ratios(v)
    r_plus, r_minus = beta * rho_plus, beta * rho_minus
    loss = -m.logsigmoid(r_plus) - m.logsigmoid(-r_plus) / 2 - m.logsigmoid(-r_minus) / 2
    return loss, (beta * (m.sigmoid(-r_plus) - m.sigmoid(r_plus) / 2), beta * m.sigmoid(r_minus) / 2)


@objective("sppo_hard", shape="paired", family="paired", data="paired",
           paper="SPPO, Wu et al. 2024, arXiv 2405.00675 (hard-label form, as TRL)",
           defaults={"beta": (0.1, TRL_DEFAULT + " (eta = 1/beta in the paper's notation)")},
           sweep=("beta", (0.05, 0.1, 0.5)),
           note="Squared regression of each log-ratio on its own target: rho+ -> 1/(2 beta), rho- -> -1/(2 beta) "
                "(the paper's eta (P - 1/2) with a hard P of 1 or 0). w+ = 1/beta - 2 rho+, w- = 1/beta + 2 rho-: "
                "linear and signed, never fading, like IPO's but per side.")
def sppo_hard(m, v, beta):
    rho_plus, rho_minus = _ratios(v)
    loss = (rho_plus - 1 / (2 * beta)) ** 2 + (rho_minus + 1 / (2 * beta)) ** 2
    return loss, (1 / beta - 2 * rho_plus, 1 / beta + 2 * rho_minus)


# ---------------------------------------------------------------------------------------------
# Non-monotone and non-fading
# ---------------------------------------------------------------------------------------------
@objective("rdpo", shape="paired", family="paired", data="paired",
           paper="Robust DPO, Chowdhury et al. 2024, arXiv 2403.00409",
           defaults={"beta": (0.1, TRL_DEFAULT), "eps": (0.1, "rDPO paper's flip rate (TRL docs)")},
           ranges={"eps": "[0, 0.5)"}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="TRL's loss_type='robust'. The unbiased loss under labels flipped with probability eps: "
                "w = beta ((1-eps) sigma(-u) + eps sigma(u)) / (1 - 2 eps) > 0 never fades: it tends to "
                "beta eps / (1 - 2 eps) as u -> inf, so the loss has no minimum (cDPO's weight crosses zero "
                "instead).")
def rdpo(m, v, beta, eps):
    u = beta * margin(v)
    loss = (-(1 - eps) * m.logsigmoid(u) + eps * m.logsigmoid(-u)) / (1 - 2 * eps)
    weight = beta * ((1 - eps) * m.sigmoid(-u) + eps * m.sigmoid(u)) / (1 - 2 * eps)
    return loss, (weight, weight)


@objective("discopop", shape="paired", family="paired", data="paired",
           paper="DiscoPOP, Lu et al. 2024, arXiv 2406.08414 (log-ratio modulated loss)",
           defaults={"beta": (0.1, TRL_DEFAULT), "tau": (0.05, "DiscoPOP paper (TRL discopop_tau)")},
           sweep=("beta", (0.05, 0.1, 0.5)),
           note="A blend of the logistic loss and exp(-x), x = beta Delta, mixed by sigma(x/tau). The weight "
                "is not monotone and is negative on a band above x = 0 (about -0.8 beta at x = 0 for tau = "
                "0.05). Written as exp(logsigmoid(x/tau) - x) where TRL computes sigma(x/tau) exp(-x), which "
                "overflows to inf * 0 = NaN in float32 once x < -88; the values agree wherever TRL's are finite.")
def discopop(m, v, beta, tau):
    x = beta * margin(v)
    mix = m.sigmoid(x / tau)  # the exponential part's share
    exponential = m.exp(m.logsigmoid(x / tau) - x)  # = mix * exp(-x), finite for every x
    loss = m.sigmoid(-x / tau) * m.softplus(-x) + exponential
    weight = beta * (mix * m.sigmoid(-x / tau) * m.softplus(-x) / tau + m.sigmoid(-x / tau) * m.sigmoid(-x)
                     + exponential * (1 - m.sigmoid(-x / tau) / tau))
    return loss, (weight, weight)


# ---------------------------------------------------------------------------------------------
# Weights that depend on the batch: AOT sorts it
# ---------------------------------------------------------------------------------------------
def _rank_matched(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each i, the value whose rank among `values` is the rank of keys[i] among `keys` (detached): the
    k-th smallest key is matched with the k-th smallest value, as sorting both and pairing them does."""
    ranks = torch.argsort(torch.argsort(keys.detach(), stable=True), stable=True)
    return torch.sort(values.detach(), stable=True).values[ranks]


def aot_inputs(batch: dict) -> dict:
    """The batch's rank-matched quantities the AOT records read: for paired AOT, the reference margin of the
    same rank as each row's policy margin l+ - l-; for unpaired AOT, the rejected log-ratio of the same rank
    as each row's chosen log-ratio, and the other way round."""
    rho_plus = batch["logp_chosen"] - batch["ref_logp_chosen"]
    rho_minus = batch["logp_rejected"] - batch["ref_logp_rejected"]
    return {"ref_margin_at_rank": _rank_matched(batch["logp_chosen"] - batch["logp_rejected"],
                                                batch["ref_logp_chosen"] - batch["ref_logp_rejected"]),
            "rejected_ratio_at_rank": _rank_matched(rho_plus, rho_minus),
            "chosen_ratio_at_rank": _rank_matched(rho_minus, rho_plus)}


class AOTRanks(Hook):
    """Sorts the batch as AOT does and adds the rank-matched inputs (aot_inputs) each row's weight reads.
    With `sorted_loss`, the loss is AOT's over the sorted batch (unpaired AOT, whose sorted positions pair
    one row's chosen completion with another row's rejected one), and the weights are the closed form."""

    def __init__(self, sorted_loss: bool = False):
        self.sorted_loss = sorted_loss

    def offline_inputs(self, trainer, indices, batch):
        batch.update(aot_inputs(batch))
        return {}

    def online_inputs(self, trainer, rollout, rows, batch):  # reads the batch only, wherever it came from
        return self.offline_inputs(trainer, rows, batch)

    def loss(self, objective, batch, hp):
        if not self.sorted_loss:
            return None
        values = objective.hyperparameters(**hp)
        rho_plus = torch.sort(batch["logp_chosen"] - batch["ref_logp_chosen"]).values
        rho_minus = torch.sort(batch["logp_rejected"] - batch["ref_logp_rejected"]).values
        u = values["beta"] * (rho_plus - rho_minus)
        eps = values["eps"]
        loss = -(1 - eps) * torch.nn.functional.logsigmoid(u) - eps * torch.nn.functional.logsigmoid(-u)
        return loss, objective(batch | aot_inputs(batch), **hp).weights


@objective("aot", shape="paired", family="paired", data="paired",
           paper="AOT, Melnyk et al. 2024, arXiv 2406.05882 (paired)",
           defaults={"beta": (0.1, TRL_DEFAULT), "eps": (0.0, "TRL label_smoothing default")},
           ranges={"eps": "[0, 0.5]"}, hooks=(AOTRanks(),), sweep=("beta", (0.05, 0.1, 0.5)),
           note="Distributional: the batch's policy margins l+ - l- and reference margins are sorted "
                "separately and the k-th smallest of each are paired (first-order stochastic dominance of the "
                "margin's distribution). Each row's loss reads the reference margin of its own margin's rank, "
                "v* (ref_margin_at_rank, from AOTRanks), so the weight is DPO's (with label smoothing eps) at "
                "x = beta (l+ - l- - v*), given the ranks, which are constant almost everywhere.")
def aot(m, v, beta, eps):
    loss, weight = _smoothed_logistic(m, beta * (v.logp_chosen - v.logp_rejected - v.ref_margin_at_rank), beta, eps)
    return loss, (weight, weight)


@objective("aot_unpaired", shape="paired", family="paired", data="paired",
           paper="AOT, Melnyk et al. 2024, arXiv 2406.05882 (unpaired)",
           defaults={"beta": (0.1, TRL_DEFAULT), "eps": (0.0, "TRL label_smoothing default")},
           ranges={"eps": "[0, 0.5]"}, hooks=(AOTRanks(sorted_loss=True),), sweep=("beta", (0.05, 0.1, 0.5)),
           note="The chosen log-ratios and the rejected ones are sorted separately and the k-th smallest of each "
                "are paired, so a sorted position couples one row's y+ with another row's y-. Given the ranks, "
                "w+ = g(beta (rho+ - rho-*)) and w- = g(beta (rho+* - rho-)) with g DPO's (smoothed) weight and "
                "rho-* (rho+*) the rejected (chosen) log-ratio of the same rank. This record's per-row loss counts "
                "each sorted position from both of its completions, so its mean is twice the sorted loss; the "
                "trainer trains the sorted loss itself (AOTRanks.loss), whose gradient these weights are.")
def aot_unpaired(m, v, beta, eps):
    rho_plus, rho_minus = _ratios(v)
    loss_plus, w_plus = _smoothed_logistic(m, beta * (rho_plus - v.rejected_ratio_at_rank), beta, eps)
    loss_minus, w_minus = _smoothed_logistic(m, beta * (v.chosen_ratio_at_rank - rho_minus), beta, eps)
    return loss_plus + loss_minus, (w_plus, w_minus)


# ---------------------------------------------------------------------------------------------
# Unpaired: APO-zero's and BCO's single-completion forms
# ---------------------------------------------------------------------------------------------
@objective("apo_zero_unpaired", shape="single", family="unpaired", data="unpaired",
           paper="APO, D'Oosterlinck et al. 2024, arXiv 2408.06266 (APO-zero, unpaired: TRL's KTOTrainer)",
           defaults={"beta": (0.1, "TRL KTOConfig default"), "lambda_d": (1.0, "TRL desirable_weight default"),
                     "lambda_u": (1.0, "TRL undesirable_weight default")},
           ranges={"lambda_d": "[0, 1e6]", "lambda_u": "[0, 1e6]"}, sweep=("beta", (0.05, 0.1, 0.5)),
           note="KTO with its reference point z0 = 0: desirable completions pushed up, undesirable ones down, "
                "by the bell beta sigma(r) sigma(-r), r = beta rho. apo_zero is this loss on both sides of a pair.")
def apo_zero_unpaired(m, v, beta, lambda_d, lambda_u):
    r = beta * (v.logp - v.ref_logp)
    loss = v.label * lambda_d * m.sigmoid(-r) + (1 - v.label) * lambda_u * m.sigmoid(r)
    return loss, ((v.label * lambda_d - (1 - v.label) * lambda_u) * beta * m.sigmoid(r) * m.sigmoid(-r),)


class BCORewardShift(Hook):
    """BCO's reward shift delta: the running mean of the implicit reward beta rho over every completion seen
    so far, this batch's included (TRL's BCOTrainer updates its RunningMoments before the loss), detached.
    The mean including this batch is computed from the saved state each time the batch is built, and saved
    after the step, so building a batch twice does not count it twice."""

    def offline_inputs(self, trainer, indices, batch):
        beta = trainer.objective.hyperparameters(**trainer.config.hyperparameters)["beta"]
        rewards = trainer.accelerator.gather((beta * (batch["logp"] - batch["ref_logp"])).detach().float())
        count, mean = running_mean(trainer.state.get("bco_count", 0), trainer.state.get("bco_mean", 0.0), rewards)
        trainer.state["bco_pending"] = (count, mean)
        batch["reward_shift"] = torch.full_like(batch["logp"], mean)
        return {"reward_shift": mean}

    def online_inputs(self, trainer, rollout, rows, batch):  # reads the batch and the state only
        return self.offline_inputs(trainer, rows, batch)

    def after_step(self, objective, state, metrics, hp):
        if "bco_pending" in state:
            state["bco_count"], state["bco_mean"] = state.pop("bco_pending")


def running_mean(count: int, mean: float, values: torch.Tensor) -> tuple[int, float]:
    """The mean of everything seen, updated with `values`: (count + n, mean + (mean(values) - mean) n / (count + n))."""
    n = values.numel()
    total = count + n
    return total, mean + (values.double().mean().item() - mean) * n / total


@objective("bco", shape="single", family="unpaired", data="unpaired",
           paper="BCO, Jung et al. 2024, arXiv 2404.04656 (binary feedback, with the reward shift)",
           defaults={"beta": (0.1, "TRL BCOConfig default (BCOTrainer, before TRL 1.16 removed it)")},
           hooks=(BCORewardShift(),), sweep=("beta", (0.05, 0.1, 0.5)),
           note="A binary classifier on r = beta rho - delta: desirable completions labelled 1, undesirable 0. "
                "delta (reward_shift, BCORewardShift) is the running mean of beta rho, detached. w = beta "
                "(d sigma(-r) - (1-d) sigma(r)). The paper's optional density-ratio reweighting of undesirable "
                "prompts (UDM) is not included.")
def bco(m, v, beta):
    r = beta * (v.logp - v.ref_logp) - v.reward_shift
    loss = -v.label * m.logsigmoid(r) - (1 - v.label) * m.logsigmoid(-r)
    return loss, (beta * (v.label * m.sigmoid(-r) - (1 - v.label) * m.sigmoid(r)),)
