"""GRPO: a clipped surrogate over groups of samples, per token, with a KL pull towards the reference (chapter 6),
and its descendants (chapter 7): dr_grpo, dapo, bnpo, gspo, cispo, sapo, luspo, vespo."""

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


# =============================================================================================
# GRPO's descendants (chapter 7). Each changes one thing about the weight on a token's log-prob
# gradient: how it is normalised over tokens and the group, where the ratio is clipped, whether the
# ratio is per token or per sequence, and whether the clip stops the gradient or only bounds the weight.
# =============================================================================================
GROUP_TASK = dict(lr=2e-4, batch_size=8, samples_per_prompt=8, kl_coef=0.0, max_steps=100)  # grpo's settings
# a method whose point is what happens once pi moves away from pi_old needs more than one update per batch
OFF_POLICY_TASK = GROUP_TASK | dict(update_epochs=2)
TOKEN_LEVEL = dict(shape="single", family="online", data="online", level="token",
                   token_vars=("logp", "old_logp", "ref_logp"), max_log_ratio=30.0)
BETA_SWEEP = ("beta", (0.0, 0.04, 0.2))  # grpo's, so the frontier compares them at the same KL penalties
NO_KL = "its paper's objective has no KL term (TRL's default beta is 0 too)"


def clipped_surrogate(m, ratio, advantage, eps_low, eps_high):
    """PPO's clipped surrogate min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A), and its derivative
    with respect to the log-ratio: ratio A where the clip passes the gradient, 0 where it stops it."""
    surrogate = m.minimum(ratio * advantage, m.clip(ratio, 1 - eps_low, 1 + eps_high) * advantage)
    passes = 1 - m.step(advantage) * m.step(ratio - (1 + eps_high)) - m.step(-advantage) * m.step(
        (1 - eps_low) - ratio)
    return surrogate, m.gate(ratio * advantage * passes, passes)


def k3(m, v):
    """Schulman's k3 estimate of KL(pi || pi_ref) per token, in the loss as GRPO has it, and its weight
    -dk3/dl = pi_ref/pi - 1 (chapter 7 says which KL's gradient it follows)."""
    return m.exp(v.ref_logp - v.logp) - (v.ref_logp - v.logp) - 1, m.exp(v.ref_logp - v.logp) - 1


def beside_tokens(x, v):
    """A per-sequence value ([B] in the token view) as [B, 1], to broadcast over the sequence's tokens. In
    SymPy and on sequence log-probs there are no tokens (v.mask is None) and the value is left as it is."""
    return x if v.mask is None else x.unsqueeze(-1)


def per_sequence(x, v):
    """The inverse of beside_tokens: [B, 1] -> [B]."""
    return x if v.mask is None else x.squeeze(-1)


def sequence_ratio(m, v):
    """GSPO's s = (pi/pi_old)(y)^(1/|y|), the geometric mean of the token ratios, beside the tokens."""
    return m.exp(beside_tokens(m.sum_tokens((v.logp - v.old_logp) / v.length, v.mask), v))


@objective("dr_grpo", paper="Dr. GRPO, Liu et al. 2025, arXiv 2503.20783",
           defaults={"eps": (0.2, "GRPO's; the paper changes only the two normalisers"),
                     "beta": (0.0, "Dr. GRPO's objective (their Fig. 1) has no KL term")},
           ranges={"eps": "(0, 1)", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupCentred(), task_defaults=GROUP_TASK, sweep=BETA_SWEEP,
           note="GRPO without its two normalisers: the advantage is r - mean(r) (no std, which over-weights "
                "groups whose rewards barely differ) and the tokens are summed, not averaged over |o_i| (which "
                "weights a token of a short completion more, so wrong answers grow longer). The sum is divided "
                "by a constant, the sampler's budget max_new_tokens, as TRL's loss_type='dr_grpo' divides by "
                "max_completion_length; TRL's advantage matches with scale_rewards='none' (its default "
                "divides by the std).")
def dr_grpo(m, v, eps, beta):
    ratio = m.exp(v.logp - v.old_logp)
    surrogate, surrogate_weight = clipped_surrogate(m, ratio, v.advantage, eps, eps)
    kl, kl_weight = k3(m, v)
    loss = m.sum_tokens(-(surrogate - beta * kl) / v.max_completion_length, v.mask)
    return loss, ((surrogate_weight + beta * kl_weight) / v.max_completion_length,)


@objective("dapo", paper="DAPO, Yu et al. 2025, arXiv 2503.14476",
           defaults={"eps_low": (0.2, "DAPO (clip-higher keeps the lower clip at PPO's 0.2)"),
                     "eps_high": (0.28, "DAPO (clip-higher)"),
                     "beta": (0.0, "DAPO removes the KL term")},
           ranges={"eps_low": "(0, 1)", "eps_high": "(0, 1e6]", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.DynamicSampling(), task_defaults=OFF_POLICY_TASK,
           sweep=("eps_high", (0.2, 0.28, 0.4)),
           note="Four changes to GRPO. Clip-higher: the ratio is clipped to [1 - eps_low, 1 + eps_high] with "
                "eps_high > eps_low, so a rising token keeps its gradient longer. Token-level mean: each group's "
                "loss is its tokens' sum over the group's tokens (their Eq. 8), so every token weighs the same; "
                "TRL's loss_type='dapo' averages over the batch's tokens instead (DynamicSampling(token_mean="
                "'batch')). Dynamic sampling: a group whose rewards are all equal is dropped; the paper samples "
                "more prompts to refill the batch, here the batch shrinks (its advantages are 0 and its tokens "
                "leave the mean; with beta > 0 its KL term stays). Overlong shaping: the reward falls linearly "
                "to -1 over the last 20% of max_new_tokens (the paper's 4,096 of 20,480; TRL has it as the "
                "reward get_soft_overlong_punishment). TRL's GRPOTrainer has neither dynamic sampling nor a "
                "clip-higher default (epsilon_high=0.28 sets it).")
def dapo(m, v, eps_low, eps_high, beta):
    ratio = m.exp(v.logp - v.old_logp)
    surrogate, surrogate_weight = clipped_surrogate(m, ratio, v.advantage, eps_low, eps_high)
    kl, kl_weight = k3(m, v)
    loss = m.sum_tokens(-(surrogate - beta * kl) / v.mean_length, v.mask)
    return loss, ((surrogate_weight + beta * kl_weight) / v.mean_length,)


@objective("bnpo", paper="TRL 1.16's loss_type='bnpo' (GRPOTrainer), von Werra et al. 2020",
           defaults={"eps": (0.2, "TRL's default epsilon"), "beta": (0.0, "TRL's default")},
           ranges={"eps": "(0, 1)", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4, token_mean="batch"), task_defaults=GROUP_TASK,
           sweep=BETA_SWEEP,
           note="GRPO's clipped surrogate and standardised advantage, averaged over the tokens of the batch "
                "rather than over each completion's: DAPO's token-level mean without its other changes. TRL "
                "averages over the tokens of each device's batch (dapo: of the whole batch); with one process "
                "and one batch per step, as here, the two are the same loss.")
def bnpo(m, v, eps, beta):
    return dapo(m, v, eps, eps, beta)


@objective("gspo", paper="GSPO, Zheng et al. 2025, arXiv 2507.18071",
           defaults={"eps_low": (3e-4, "GSPO"), "eps_high": (4e-4, "GSPO"), "beta": (0.0, NO_KL)},
           ranges={"eps_low": "(0, 1)", "eps_high": "(0, 1e6]", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4), task_defaults=OFF_POLICY_TASK, sweep=BETA_SWEEP,
           note="One ratio per sequence, s = (pi/pi_old)(y)^(1/|y|), clipped to [1 - 3e-4, 1 + 4e-4] (the ratio "
                "is a geometric mean, so the range is small) in a per-sequence surrogate. Every token of a "
                "completion gets the same weight s A / |y| (0 once the clip is active), where GRPO's weight "
                "follows each token's own ratio. TRL: importance_sampling_level='sequence' with "
                "loss_type='grpo'; the KL term stays per token, averaged over |y| as GRPO's.")
def gspo(m, v, eps_low, eps_high, beta):
    surrogate, surrogate_weight = clipped_surrogate(m, sequence_ratio(m, v), v.advantage, eps_low, eps_high)
    kl, kl_weight = k3(m, v)
    loss = -per_sequence(surrogate, v) + m.sum_tokens(beta * kl / v.length, v.mask)
    return loss, ((surrogate_weight + beta * kl_weight) / v.length,)


@objective("cispo", paper="CISPO, MiniMax-M1, MiniMax et al. 2025, arXiv 2506.13585",
           defaults={"eps_high": (4.0, "TRL 1.16 recommends a cap of 5.0 on the ratio for cispo; MiniMax-M1 "
                                       "tunes it and gives no value"),
                     "beta": (0.0, NO_KL)},
           ranges={"eps_high": "(0, 1e6]", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4, token_mean="group"), task_defaults=OFF_POLICY_TASK,
           sweep=BETA_SWEEP,
           note="REINFORCE with a clipped, detached importance weight: -sg(min(r, 1 + eps_high)) A log pi. The "
                "clip bounds the weight but never stops the gradient (PPO's clip sets it to 0), and no token is "
                "dropped. MiniMax-M1 also has a lower bound 1 - eps_low, set so large it never acts, so it is "
                "left out. Token-level mean over the group, as DAPO's. TRL's cispo caps the ratio at "
                "epsilon_high itself (so its epsilon_high is 1 + eps_high here) and averages over the batch's "
                "tokens.")
def cispo(m, v, eps_high, beta):
    capped = m.minimum(m.exp(v.logp - v.old_logp), 1 + eps_high)
    kl, kl_weight = k3(m, v)
    loss = m.sum_tokens(-(m.stop_gradient(capped) * v.advantage * v.logp - beta * kl) / v.mean_length, v.mask)
    return loss, ((capped * v.advantage + beta * kl_weight) / v.mean_length,)


@objective("sapo", paper="SAPO, Gao et al. 2025, arXiv 2511.20347",
           defaults={"tau_pos": (1.0, "SAPO (TRL's sapo_temperature_pos)"),
                     "tau_neg": (1.05, "SAPO (TRL's sapo_temperature_neg)"), "beta": (0.0, NO_KL)},
           ranges={"beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4), task_defaults=OFF_POLICY_TASK, sweep=BETA_SWEEP,
           note="A soft clip: the surrogate (4/tau) sigmoid(tau (r - 1)) A replaces min(r A, clip(r) A), so the "
                "weight 4 sigmoid(x) sigmoid(-x) r A, x = tau (r - 1), is A on policy and fades smoothly as r "
                "leaves 1 instead of dropping to 0 at the clip. tau_neg > tau_pos: tokens with a negative "
                "advantage fade faster. Averaged over |o_i| as GRPO's; TRL's loss_type='sapo' is the same.")
def sapo(m, v, tau_pos, tau_neg, beta):
    ratio = m.exp(v.logp - v.old_logp)
    tau = tau_pos * m.step(v.advantage) + tau_neg * (1 - m.step(v.advantage))  # tau_neg at A <= 0, as TRL
    kl, kl_weight = k3(m, v)
    loss = m.sum_tokens(-(4 / tau * m.sigmoid(tau * (ratio - 1)) * v.advantage - beta * kl) / v.length, v.mask)
    gate = 4 * m.sigmoid(tau * (ratio - 1)) * m.sigmoid(-tau * (ratio - 1)) * ratio
    return loss, ((gate * v.advantage + beta * kl_weight) / v.length,)


@objective("luspo", paper="LUSPO, Liu et al. 2026, arXiv 2602.05261",
           defaults={"eps_low": (3e-4, "GSPO's; LUSPO changes GSPO's loss, not its clip"),
                     "eps_high": (4e-4, "GSPO's"), "beta": (0.0, NO_KL)},
           ranges={"eps_low": "(0, 1)", "eps_high": "(0, 1e6]", "beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4), task_defaults=OFF_POLICY_TASK, sweep=BETA_SWEEP,
           note="GSPO with each sequence's loss multiplied by its length |y|: the 1/|y| of GSPO's weight s A / |y| "
                "cancels, so every token's weight is s A whatever the length of its completion (GSPO's weight "
                "favours short completions). The KL term is summed over the tokens. TRL: loss_type='luspo' with "
                "importance_sampling_level='sequence'.")
def luspo(m, v, eps_low, eps_high, beta):
    surrogate, surrogate_weight = clipped_surrogate(m, sequence_ratio(m, v), v.advantage, eps_low, eps_high)
    kl, kl_weight = k3(m, v)
    loss = -per_sequence(surrogate * v.length, v) + m.sum_tokens(beta * kl, v.mask)
    return loss, (surrogate_weight + beta * kl_weight,)


@objective("vespo", paper="VESPO, Shen et al. 2026, arXiv 2602.10693",
           defaults={"k_pos": (2.0, "TRL 1.16's vespo_k_pos"), "lambda_pos": (3.0, "TRL 1.16's vespo_lambda_pos"),
                     "k_neg": (3.0, "TRL 1.16's vespo_k_neg"), "lambda_neg": (2.0, "TRL 1.16's vespo_lambda_neg"),
                     "beta": (0.0, NO_KL)},
           ranges={"beta": "[0, 1e6]"}, **TOKEN_LEVEL,
           advantage=advantages.GroupStandardised(eps=1e-4, token_mean="group"), task_defaults=OFF_POLICY_TASK,
           sweep=BETA_SWEEP,
           note="A detached weight phi(w) A on every token's log-prob, where w = (pi/pi_old)(y) is the whole "
                "sequence's ratio (no 1/|y|) and phi(w) = w^k exp(-lambda (w - 1)) a Gamma-shaped kernel: 1 at "
                "w = 1, falling to 0 for w -> 0 (as w^k) and for large w (as exp(-lambda w)), with (k, lambda) "
                "by the sign of A. Token-level mean over the group. TRL's vespo also clamps each token's "
                "log-ratio to [-20, 20] and log w to [log 1e-8, 20] (equal here unless w leaves that range) and "
                "averages over the batch's tokens.")
def vespo(m, v, k_pos, lambda_pos, k_neg, lambda_neg, beta):
    log_w = beside_tokens(m.sum_tokens(v.logp - v.old_logp, v.mask), v)
    positive = m.step(v.advantage)  # TRL takes A >= 0 as positive: at A = 0 the weight is 0 either way
    k, lam = k_pos * positive + k_neg * (1 - positive), lambda_pos * positive + lambda_neg * (1 - positive)
    phi = m.exp(lam + k * log_w - lam * m.exp(log_w))  # in log space: w^k overflows where phi is 0
    kl, kl_weight = k3(m, v)
    loss = m.sum_tokens(-(m.stop_gradient(phi) * v.advantage * v.logp - beta * kl) / v.mean_length, v.mask)
    return loss, ((phi * v.advantage + beta * kl_weight) / v.mean_length,)
