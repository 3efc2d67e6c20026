"""A user's own objective from a SymPy loss alone."""

import math

import pytest
import sympy as sp
import torch

from unified_rlhf import cli, objectives, verify
from unified_rlhf.custom import V, hyper, objective_from_sympy
from unified_rlhf.symbolic import LogSigmoid, Sigmoid

beta = hyper("beta")
delta = (V.logp_chosen - V.ref_logp_chosen) - (V.logp_rejected - V.ref_logp_rejected)


def test_new_convex_gpo_function_is_derived_and_verified():
    # f(x) = log(1 + e^-x)^2 = logsigmoid(x)^2, not among the built-in GPO members
    obj = objective_from_sympy("gpo_logistic_squared", LogSigmoid(beta * delta) ** 2, defaults={"beta": 0.5})
    assert obj.shape == "paired" and obj.data == "paired"
    result = verify.verify(obj)
    assert result.passed, result.failures
    # the derived weight is -beta f'(beta Delta) = 2 beta log(1 + e^-x) sigma(-x)
    batch = verify.sample_inputs(obj, 16, seed=4)
    x = 0.5 * ((batch["logp_chosen"] - batch["ref_logp_chosen"])
               - (batch["logp_rejected"] - batch["ref_logp_rejected"]))
    w_plus, w_minus = obj.weights(batch)
    torch.testing.assert_close(w_plus, 2 * 0.5 * torch.log1p(torch.exp(-x)) * torch.sigmoid(-x))
    torch.testing.assert_close(w_minus, w_plus)


def test_plain_sympy_symbols_are_matched_by_name_and_hyperparameters_overridable():
    logp, reward, k = sp.symbols("logp reward k")
    obj = objective_from_sympy("clipped_pg", -sp.Min(reward, k) * logp, defaults={"k": 1.0})
    assert obj.shape == "single" and obj.data == "online"
    batch = {"logp": -torch.rand(4, dtype=torch.float64), "reward": torch.tensor([0.5, 2.0, -1.0, 3.0]).double()}
    (w,) = obj.weights(batch, k=2.5)
    torch.testing.assert_close(w, torch.tensor([0.5, 2.0, -1.0, 2.5]).double())
    assert verify.verify(obj).passed


def test_wrong_closed_weights_are_caught_and_naive_softplus_is_flagged():
    right = objective_from_sympy("naive", sp.log(1 + sp.exp(-delta)), closed_weights=[1 / (1 + sp.exp(delta))] * 2)
    result = verify.verify(right)
    assert result.symbolic == ("symbolic", "symbolic") and result.scalar < 1e-12 and result.model < 1e-12
    assert result.extreme == float("inf") and not result.passed  # log(1 + e^1000) overflows: say so
    bounded = objective_from_sympy("naive_bounded", sp.log(1 + sp.exp(-delta)), max_log_ratio=30.0,
                                   closed_weights=[1 / (1 + sp.exp(delta))] * 2)
    assert bounded.max_log_ratio == 30.0 and verify.verify(bounded).passed  # finite over the range it claims
    with pytest.raises(ValueError, match="max_log_ratio must be positive"):
        objective_from_sympy("x", sp.log(1 + sp.exp(-delta)), max_log_ratio=0)
    wrong = objective_from_sympy("bad", sp.log(1 + sp.exp(-delta)), closed_weights=[1 / (1 + sp.exp(-delta))] * 2)
    result = verify.verify(wrong)
    assert "FAILED" in result.symbolic and result.scalar > 1e-3


def test_unknown_symbol_without_default_is_refused():
    with pytest.raises(ValueError, match=r"\['gamma'\]"):
        objective_from_sympy("x", -hyper("gamma") * V.logp)


def test_loss_without_policy_variable_is_refused():
    with pytest.raises(ValueError, match="exactly one kind of policy variable"):
        objective_from_sympy("x", V.reward**2)


def test_register_under_a_new_name_and_refuse_a_clash():
    name = "my_test_objective"
    objectives.REGISTRY.pop(name, None)
    try:
        objective_from_sympy(name, -V.logp, register=True)
        assert objectives.get(name).shape == "single"
        with pytest.raises(ValueError, match="already registered"):
            objective_from_sympy(name, -2 * V.logp, register=True)
        objective_from_sympy(name, -2 * V.logp, register=True, overwrite=True)
        (w,) = objectives.get(name).weights({"logp": torch.tensor([-1.0])})
        assert w.item() == 2.0
    finally:
        objectives.REGISTRY.pop(name, None)


def test_functions_of_numbers_and_of_hyperparameters_compile():
    # log 2, sqrt(beta), exp(beta), beta**2: before, torch refused the Python numbers ("must be Tensor")
    loss = -sp.log(2) * sp.sqrt(beta) * sp.exp(beta) * V.logp - beta**2 * sp.log(beta) * V.ref_logp
    obj = objective_from_sympy("constants", loss, defaults={"beta": 0.5})
    (w,) = obj.weights({"logp": torch.tensor([-1.0, -2.0], dtype=torch.float64),
                        "ref_logp": torch.tensor([-1.0, -3.0], dtype=torch.float64)})
    torch.testing.assert_close(w, torch.full((2,), math.log(2) * math.sqrt(0.5) * math.exp(0.5), dtype=torch.float64))
    result = verify.verify(obj)
    assert result.passed, result.failures


def test_a_paired_loss_that_reads_one_side_verifies_and_has_a_zero_weight_on_the_other():
    obj = objective_from_sympy("chosen_only", -LogSigmoid(beta * (V.logp_chosen - V.ref_logp_chosen)),
                               defaults={"beta": 0.5})
    assert obj.shape == "paired" and obj.inputs() == ("logp_chosen", "logp_rejected", "ref_logp_chosen")
    result = verify.verify(obj)  # before: KeyError 'logp_rejected' in verify and in training
    assert result.passed, result.failures
    batch = verify.sample_inputs(obj, 8, seed=2)
    w_plus, w_minus = obj.weights(batch)
    assert torch.equal(w_minus, torch.zeros_like(w_plus)) and (w_plus > 0).all()


def test_a_loss_written_with_sigmoid_uses_the_accurate_sigmoid():
    # torch.sigmoid's backward y (1 - y) rounds to 0 in the tails, where the exact weight is tiny but not 0
    obj = objective_from_sympy("sigmoid_loss", -Sigmoid(beta * delta), defaults={"beta": 0.5})
    result = verify.verify(obj)
    assert result.extreme <= verify.SCALAR_TOLERANCE and result.passed, result.failures


def test_an_overflow_in_float32_fails_the_extreme_check_and_says_so(capsys):
    # the README's literal form at the README's beta: finite in float64 at |Delta| = 1e3, not in float32
    naive = objective_from_sympy("naive_squared", sp.log(1 + sp.exp(-beta * delta)) ** 2, defaults={"beta": 0.5},
                                 register=True, overwrite=True)
    try:
        result = verify.verify(naive)
        assert result.extreme <= verify.SCALAR_TOLERANCE  # float64 alone would pass it
        assert not result.passed and result.low_precision["float32"] and result.low_precision["bfloat16"]
        assert any(f.startswith("extreme (float32): inf or NaN: the loss at") for f in result.failures)
        assert cli.main(["verify", "naive_squared"]) == 1
        out = capsys.readouterr().out
        assert "FAIL\n    extreme (float32): inf or NaN: the loss at" in out
    finally:
        objectives.REGISTRY.pop("naive_squared", None)


def test_a_custom_hyperparameter_range_can_be_widened():
    margin = hyper("margin")
    obj = objective_from_sympy("with_margin", -LogSigmoid(beta * delta - margin), defaults={"beta": 0.1, "margin": 0.0},
                               ranges={"margin": "[0, inf)"})
    assert obj.hyperparameters(margin=0) == {"beta": 0.1, "margin": 0}
    with pytest.raises(ValueError, match=r"'beta' must be a number in \(0, 1e6\], got 0"):
        obj.hyperparameters(beta=0)
