"""The symbolic engine: derivation signs, proofs that can fail, LaTeX, compilation to torch."""

import sympy as sp
import torch

from unified_rlhf import objectives, symbolic, tables
from unified_rlhf.symbolic import SYMBOLS, LogSigmoid, Sigmoid, hyper_symbol

lp, lm = SYMBOLS["logp_chosen"], SYMBOLS["logp_rejected"]


def test_derive_weights_sign_convention():
    w_plus, w_minus = symbolic.derive_weights(-3 * lp + 2 * lm, "paired")
    assert (w_plus, w_minus) == (3, 2)  # -grad L = 3 grad l+ - 2 grad l-
    (w,) = symbolic.derive_weights(-SYMBOLS["reward"] * SYMBOLS["logp"], "single")
    assert w == SYMBOLS["reward"]


def test_sigmoid_functions_differentiate_and_rewrite():
    x = sp.Symbol("x", real=True)
    assert sp.diff(LogSigmoid(x), x) == Sigmoid(-x)
    assert sp.simplify((sp.diff(Sigmoid(x), x) - Sigmoid(x) * (1 - Sigmoid(x))).rewrite(sp.exp)) == 0


def test_prove_equal_catches_a_wrong_closed_form():
    dpo = objectives.get("dpo")
    derived = dpo.derived_weights()[0]
    beta = hyper_symbol("beta")
    assert symbolic.prove_equal(derived, dpo.closed_weights()[0]) == "symbolic"
    assert symbolic.prove_equal(derived, dpo.closed_weights()[0] / beta) == "FAILED"  # the seed's dropped beta
    ppo = objectives.get("ppo_clip")
    assert symbolic.prove_equal(ppo.derived_weights()[0], ppo.closed_weights()[0]) == "grid"
    assert symbolic.prove_equal(ppo.derived_weights()[0], ppo.seed_weights()[0]) == "FAILED"  # one-sided


def test_grid_points_are_exact_rationals_in_each_domain():
    points = symbolic.grid_points([SYMBOLS["logp"], SYMBOLS["length"], SYMBOLS["label"]], 20)
    for p in points:
        assert p[SYMBOLS["logp"]] < 0 and p[SYMBOLS["length"]] >= 1 and p[SYMBOLS["label"]] in (0, 1)
        assert all(isinstance(v, (sp.Rational, int)) for v in p.values())


def test_latex_is_deterministic_and_uses_book_notation():
    latex = symbolic.to_latex(objectives.get("dpo").closed_weights()[0])
    assert latex == symbolic.to_latex(objectives.get("dpo").closed_weights()[0])
    assert r"\sigma" in latex and r"\ell^{\mathrm{ref}}_{+}" in latex and r"\beta" in latex


def test_to_torch_handles_min_max_heaviside_piecewise_with_python_floats():
    x, y = sp.symbols("x y", real=True)
    expr = sp.Min(x, 2) + sp.Max(y, 0.5) + sp.Heaviside(x) + sp.Piecewise((x, x > 1), (0, True)) + Sigmoid(y)
    fn = symbolic.to_torch(expr, [x, y])
    xs, ys = torch.tensor([-1.0, 0.0, 3.0], dtype=torch.float64), torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    expected = (torch.minimum(xs, torch.tensor(2.0)) + torch.maximum(ys, torch.tensor(0.5))
                + torch.tensor([0.0, 0.5, 1.0]) + torch.where(xs > 1, xs, 0.0) + torch.sigmoid(ys))
    torch.testing.assert_close(fn(xs, ys), expected.double())


def test_seed_comparison_reports_the_differences():
    assert tables.compare_with_seed("dpo").same is False  # beta dropped
    assert tables.compare_with_seed("ppo_clip").same is False  # one-sided clip
    rm = tables.compare_with_seed("rm")
    assert rm.same is False and rm.same_at_defaults is True  # equal once margin = centring = 0
    assert tables.compare_with_seed("sft").same is True
    assert tables.compare_with_seed("simpo").seed is None


def test_weights_table_has_a_row_per_method():
    rows = tables.weights_table()
    assert [r["method"] for r in rows] == list(objectives.REGISTRY)
    assert all(r["w_plus"] for r in rows)
    assert all(r["w_minus"] for r in rows if objectives.get(r["method"]).shape != "single")
