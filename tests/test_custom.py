"""A user's own objective from a SymPy loss alone."""

import pytest
import sympy as sp
import torch

from unified_rlhf import objectives, verify
from unified_rlhf.custom import V, hyper, objective_from_sympy

beta = hyper("beta")
delta = (V.logp_chosen - V.ref_logp_chosen) - (V.logp_rejected - V.ref_logp_rejected)


def test_new_convex_gpo_function_is_derived_and_verified():
    # f(x) = log(1 + e^-x)^2, not among the built-in GPO members
    obj = objective_from_sympy("gpo_logistic_squared", sp.log(1 + sp.exp(-beta * delta)) ** 2, defaults={"beta": 0.5})
    assert obj.shape == "paired" and obj.data == "paired"
    result = verify.verify(obj)
    assert result.passed, result
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
