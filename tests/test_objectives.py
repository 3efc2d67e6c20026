"""Every objective: present, verified (symbolic, scalar, extreme, compiled, model), and safe on bad input."""

import math

import pytest
import torch

from unified_rlhf import objectives, verify
from unified_rlhf.objectives import REGISTRY
from unified_rlhf.symbolic import TORCH

REQUIRED = ("sft crlft vpg ppo_kl_fixed trpo ppo_clip ppo_kl apa rloo grpo rm unlikelihood dpo cdpo ipo slic rrhf orpo "
            "simpo kto una una_pairwise una_score gpo_logistic gpo_hinge gpo_squared gpo_exponential "
            "gpo_truncated_quadratic gpo_savage").split()
GRPO_DESCENDANTS = "dr_grpo dapo bnpo gspo cispo sapo luspo vespo".split()
REQUIRED += GRPO_DESCENDANTS
DIRECT_ALIGNMENT_ZOO = ("sigmoid_norm bco_pair apo_zero apo_down exo_pair nca_pair sppo_hard rdpo discopop aot "
                        "aot_unpaired apo_zero_unpaired bco fdpo_forward_kl fdpo_js_divergence fdpo_alpha_divergence "
                        "ld_dpo wpo rpo cpo mpo").split()
REQUIRED += DIRECT_ALIGNMENT_ZOO


def test_every_method_of_the_reference_is_registered():
    assert sorted(REQUIRED) == sorted(REGISTRY)


@pytest.mark.parametrize("name", REQUIRED)
def test_objective_verifies(name):
    result = verify.verify(name)
    assert "FAILED" not in result.symbolic, result
    assert result.scalar <= verify.SCALAR_TOLERANCE, result
    assert result.extreme <= verify.SCALAR_TOLERANCE, result
    assert result.compiled <= verify.SCALAR_TOLERANCE, result
    assert result.model <= verify.MODEL_TOLERANCE, result
    assert result.passed


@pytest.mark.parametrize("name", REQUIRED)
def test_extreme_inputs_give_finite_losses_and_weights(name):
    obj = objectives.get(name)
    batch = verify.sample_inputs(obj, 512, extreme=True, seed=3)
    out = obj(batch)
    assert torch.isfinite(out.loss).all()
    assert all(torch.isfinite(w).all() for w in out.weights)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_objective_documents_itself(name):
    obj = objectives.get(name)
    assert obj.paper and obj.family and obj.data in objectives.DATA_KINDS
    for key, (value, source) in obj.defaults.items():
        assert isinstance(value, float) and source, (name, key)
    assert set(obj.inputs()) >= set(objectives.POLICY_VARIABLES[obj.shape][:1])


def test_token_level_objectives_declare_their_token_inputs():
    for obj in REGISTRY.values():
        assert (obj.level == "token") == bool(obj.token_vars), obj.name
    assert {o.name for o in REGISTRY.values() if o.level == "token"} == {
        "ppo_kl_fixed", "trpo", "ppo_kl", "ppo_clip", "apa", "grpo", "unlikelihood", *GRPO_DESCENDANTS, "ld_dpo"}


def test_dpo_weight_is_beta_sigmoid_of_minus_beta_margin():
    batch = {"logp_chosen": torch.tensor([-3.0]), "logp_rejected": torch.tensor([-5.0]),
             "ref_logp_chosen": torch.tensor([-4.0]), "ref_logp_rejected": torch.tensor([-4.0])}
    w_plus, w_minus = objectives.get("dpo").weights(batch, beta=0.5)
    expected = 0.5 / (1 + math.exp(0.5 * 2.0))  # margin = 1 - (-1) = 2
    assert w_plus.item() == pytest.approx(expected, rel=1e-6) and w_minus.item() == pytest.approx(expected, rel=1e-6)


def test_ppo_clip_case_analysis():
    """Gradient is cut only where the clip raises the objective; A<0 with a large ratio keeps it."""
    ppo = objectives.get("ppo_clip")
    log_ratio = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.05])
    advantage = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    (w,) = ppo.weights({"logp": -1 + log_ratio, "old_logp": torch.full((5,), -1.0), "advantage": advantage})
    ratio = log_ratio.exp()
    torch.testing.assert_close(w, torch.stack([0 * ratio[0], -ratio[1], ratio[2], 0 * ratio[3], ratio[4]]))


def test_rrhf_ranked_loss_equals_the_paired_objective_for_two_responses():
    logp = torch.tensor([[-4.0, -9.0], [-6.0, -2.0]])
    length = torch.tensor([[2.0, 3.0], [3.0, 4.0]])
    reward = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    ranked = objectives.rrhf_ranked_loss(logp, length, reward)
    best = reward.argmax(-1)
    other = 1 - best
    rows = torch.arange(2)
    paired = objectives.get("rrhf").loss({
        "logp_chosen": logp[rows, best], "logp_rejected": logp[rows, other],
        "len_chosen": length[rows, best], "len_rejected": length[rows, other]})
    torch.testing.assert_close(ranked, paired)


def test_adaptive_kl_rule():
    assert objectives.adapt_kl_coefficient(1.0, kl=0.001, target=0.01) == 0.5
    assert objectives.adapt_kl_coefficient(1.0, kl=0.1, target=0.01) == 2.0
    assert objectives.adapt_kl_coefficient(1.0, kl=0.011, target=0.01) == 1.0


# ------------------------------------------------------------------------------------ bad input
def paired_batch(n=4):
    return {k: -torch.rand(n, dtype=torch.float64) - 0.1 for k in
            ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected")}


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        objectives.get("dpoo")
    assert "dpoo" in str(info.value) and "simpo" in str(info.value) and "kto" in str(info.value)


def test_missing_input_is_named():
    batch = paired_batch()
    del batch["ref_logp_rejected"]
    with pytest.raises(KeyError, match="ref_logp_rejected"):
        objectives.get("dpo").loss(batch)


def test_integer_log_probs_are_refused():
    batch = paired_batch()
    batch["logp_chosen"] = torch.tensor([-1, -2, -3, -4])
    with pytest.raises(TypeError, match="logp_chosen"):
        objectives.get("dpo").loss(batch)


def test_shape_mismatch_is_named():
    batch = paired_batch()
    batch["ref_logp_chosen"] = batch["ref_logp_chosen"][:3]
    with pytest.raises(ValueError, match="ref_logp_chosen"):
        objectives.get("dpo").loss(batch)


def test_nan_reward_is_named_not_propagated():
    batch = {"logp": -torch.rand(3), "reward": torch.tensor([1.0, float("nan"), 0.0]), "baseline": torch.zeros(3)}
    with pytest.raises(ValueError, match="'reward'.*non-finite"):
        objectives.get("vpg").loss(batch)


def test_zero_length_completion_in_a_length_normalised_loss():
    batch = paired_batch(2) | {"len_chosen": torch.tensor([3.0, 0.0]), "len_rejected": torch.tensor([2.0, 2.0])}
    with pytest.raises(ValueError, match="len_chosen.*zero-length"):
        objectives.get("simpo").loss(batch)


def test_labels_must_be_binary():
    batch = {"logp": -torch.rand(2), "ref_logp": -torch.rand(2), "z0": torch.zeros(2),
             "label": torch.tensor([1.0, 0.5])}
    with pytest.raises(ValueError, match="label"):
        objectives.get("kto").loss(batch)


def test_bool_labels_are_accepted():
    batch = {"logp": -torch.rand(2), "ref_logp": -torch.rand(2), "z0": torch.zeros(2),
             "label": torch.tensor([True, False])}
    assert objectives.get("kto").loss(batch).shape == (2,)


def test_kto_reference_point_needs_a_batch_of_two():
    with pytest.raises(ValueError, match="at least 2"):
        objectives.kto_reference_point(torch.tensor([-1.0]), torch.tensor([-2.0]))
    z0 = objectives.kto_reference_point(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]))
    assert z0.item() == 0.0  # mean rho = 0, clamped at 0
    z0 = objectives.kto_reference_point(torch.tensor([-1.0, -1.0], requires_grad=True), torch.tensor([-2.0, -2.0]))
    assert z0.item() == 1.0 and not z0.requires_grad


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="betta.*known"):
        objectives.get("dpo").loss(paired_batch(), betta=0.1)


def test_sequence_objective_refuses_token_inputs():
    batch = {k: -torch.rand(2, 5) for k in ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected")}
    with pytest.raises(ValueError, match="sequence log-probs"):
        objectives.get("dpo").loss(batch)


def test_register_refuses_to_overwrite_without_asking():
    with pytest.raises(ValueError, match="already registered"):
        objectives.register(objectives.get("dpo"))


def test_logsigmoid_losses_survive_huge_margins():
    batch = {"logp_chosen": torch.tensor([-1.0, -1e4]), "logp_rejected": torch.tensor([-1e4, -1.0]),
             "ref_logp_chosen": torch.tensor([-1.0, -1.0]), "ref_logp_rejected": torch.tensor([-1.0, -1.0])}
    for name in ("dpo", "cdpo", "ipo", "gpo_logistic", "simpo"):
        extra = {"len_chosen": torch.ones(2), "len_rejected": torch.ones(2)}
        out = objectives.get(name)(batch | extra)
        assert torch.isfinite(out.loss).all() and all(torch.isfinite(w).all() for w in out.weights), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unlikelihood_gradient_is_finite_when_a_rejected_token_is_certain(dtype):
    # a float32 token log-prob is exactly 0 once one logit leads the rest by ~17: the kappa clamp must
    # give that token a zero gradient, not 0 * inf = NaN
    logp_rejected = torch.tensor([[0.0, -1e-30, -0.5, -3.0]], dtype=dtype, requires_grad=True)
    batch = {"logp_chosen": torch.tensor([-2.0], dtype=dtype), "logp_rejected": logp_rejected,
             "mask_rejected": torch.ones(1, 4, dtype=dtype)}
    objectives.get("unlikelihood")(batch).loss.sum().backward()
    p = torch.tensor([0.0, -0.5, -3.0], dtype=torch.float64).exp()
    expected = torch.cat([torch.zeros(2, dtype=torch.float64), p[1:] / (1 - p[1:])]).to(dtype)  # dL/dl = w- = p/(1-p)
    torch.testing.assert_close(logp_rejected.grad[0], expected)


# ------------------------------------------------------------------------ logged weights where floats run out
def _weights_and_autograd(name, batch, policy_keys, **hp):
    policy = [batch[k].requires_grad_() for k in policy_keys]
    out = objectives.get(name)(batch, **hp)
    grads = torch.autograd.grad(out.loss.sum(), policy, allow_unused=True)
    return out.weights, tuple(s * g for s, g in zip((-1.0, 1.0), grads))


@pytest.mark.parametrize("name", ["ppo_clip", "grpo"])
@pytest.mark.parametrize("dtype, log_ratio", [(torch.float32, 100.0), (torch.float32, 89.0), (torch.float64, 800.0)])
def test_clipped_weight_is_zero_not_nan_where_the_ratio_overflows(name, dtype, log_ratio):
    # A > 0 and ratio > 1 + eps: the clip holds, the weight is 0; exp(log_ratio) is inf in this dtype
    logp = torch.tensor([-1e-3, -2.0], dtype=dtype)
    batch = {"logp": logp, "old_logp": logp - log_ratio, "advantage": torch.tensor([1.0, 0.5], dtype=dtype),
             "ref_logp": logp, "length": torch.ones(2, dtype=dtype)}
    (w,), (auto,) = _weights_and_autograd(name, batch, ["logp"])
    assert torch.equal(w, torch.zeros_like(w)) and torch.equal(auto, torch.zeros_like(auto)), (w, auto)


def test_orpo_weights_at_a_log_prob_of_exactly_zero_are_autograds():
    batch = {"logp_chosen": torch.tensor([0.0, -1.0, 0.0]), "logp_rejected": torch.tensor([-2.0, 0.0, 0.0]),
             "len_chosen": torch.tensor([3.0, 3.0, 1.0]), "len_rejected": torch.tensor([2.0, 2.0, 1.0])}
    weights, auto = _weights_and_autograd("orpo", batch, ["logp_chosen", "logp_rejected"])
    for w, a in zip(weights, auto):
        assert torch.isfinite(w).all(), weights
        torch.testing.assert_close(w, a, rtol=1e-6, atol=1e-30)


def test_unlikelihood_weight_at_a_certain_rejected_token_is_zero_not_nan():
    batch = {"logp_chosen": torch.tensor([-1.0, -1.0]), "logp_rejected": torch.tensor([[0.0, -1.0], [-0.5, -0.0]]),
             "mask_rejected": torch.ones(2, 2)}
    (_, w_minus), (_, auto) = _weights_and_autograd("unlikelihood", batch, ["logp_chosen", "logp_rejected"])
    assert torch.isfinite(w_minus).all() and w_minus[0, 0] == 0 and w_minus[1, 1] == 0
    torch.testing.assert_close(w_minus, auto)


def test_the_guards_leave_every_finite_weight_and_gradient_bit_for_bit():
    """The book compares its runs byte for byte: where nothing overflowed, the weights (signs of zero
    included) and the gradients are exactly what the unguarded formulas gave."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(64, generator=g) * 3
    old = (logp + torch.randn(64, generator=g) * 0.5).clamp(max=-1e-3)
    advantage = torch.randn(64, generator=g)
    eps = 0.2
    x = logp.clone().requires_grad_()
    ratio = torch.exp(x - old)
    surrogate = torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage)
    passes = 1 - ((advantage > 0) & (ratio > 1 + eps)).float() - ((advantage < 0) & (ratio < 1 - eps)).float()
    (expected_grad,) = torch.autograd.grad(-surrogate.sum(), x)
    (w,), (auto,) = _weights_and_autograd("ppo_clip", {"logp": logp.clone(), "old_logp": old, "advantage": advantage},
                                          ["logp"])
    expected = ratio.detach() * advantage * passes
    assert torch.equal(w, expected) and torch.equal(w.signbit(), expected.signbit()) and (passes == 0).any()
    assert torch.equal(auto, -expected_grad)

    lc, lr = -torch.rand(64, generator=g) * 5 - 0.01, -torch.rand(64, generator=g) * 5 - 0.01
    n_c, n_r = torch.randint(1, 9, (64,), generator=g).float(), torch.randint(1, 9, (64,), generator=g).float()
    (w_plus, w_minus), _ = _weights_and_autograd("orpo", {"logp_chosen": lc, "logp_rejected": lr, "len_chosen": n_c,
                                                          "len_rejected": n_r}, ["logp_chosen", "logp_rejected"])
    mp, mm = lc / n_c, lr / n_r
    z = (mp - TORCH.log1mexp(mp)) - (mm - TORCH.log1mexp(mm))
    assert torch.equal(w_plus, 1 / n_c - 0.1 * TORCH.sigmoid(-z) / (torch.expm1(mp) * n_c))
    assert torch.equal(w_minus, -0.1 * TORCH.sigmoid(-z) / (torch.expm1(mm) * n_r))

    tokens = -torch.rand(4, 16, generator=g) * 3
    tokens[0, :4] = -1e-7  # some clamped tokens (1 - p < kappa)
    (_, w_minus), _ = _weights_and_autograd("unlikelihood", {"logp_chosen": -torch.ones(4), "logp_rejected": tokens,
                                                             "mask_rejected": torch.ones(4, 16)},
                                            ["logp_chosen", "logp_rejected"])
    not_clamped = (-torch.expm1(tokens) - 1e-5 > 0).float()
    expected = 1.0 * not_clamped / torch.expm1(-tokens)
    assert torch.equal(w_minus, expected) and torch.equal(w_minus.signbit(), expected.signbit())
