"""The book's running table: every method's exact weights beside the source text's simplified ones."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import objectives
from .symbolic import hyper_symbol, prove_equal, to_latex


@dataclass
class SeedComparison:
    name: str
    exact: tuple  # closed-form weights (proven equal to the derivative of the loss)
    seed: tuple | None  # the source text's simplified weights, None where it has no entry
    same: bool | None  # equal as functions of all symbols
    same_at_defaults: bool | None  # equal once the authors' default hyperparameters are put in
    note: str


def _at_defaults(obj, expr):
    return expr.xreplace({hyper_symbol(k): sp.nsimplify(v) for k, (v, _) in obj.defaults.items()})


def _equal(a, b) -> bool:
    return all(prove_equal(x, y) != "FAILED" for x, y in zip(a, b))


def compare_with_seed(name) -> SeedComparison:
    obj = objectives.get(name)
    exact, seed = obj.closed_weights(), obj.seed_weights()
    if seed is None:
        return SeedComparison(obj.name, exact, None, None, None, "not in the source text's table")
    same = _equal(exact, seed)
    same_at_defaults = same or _equal([_at_defaults(obj, e) for e in exact], [_at_defaults(obj, s) for s in seed])
    return SeedComparison(obj.name, exact, seed, same, same_at_defaults, obj.seed_note)


def weights_table(names=None) -> list[dict]:
    """One row per method: family, data, exact w+ and w- in LaTeX, and the seed's version."""
    rows = []
    for name in names or objectives.REGISTRY:
        obj = objectives.get(name)
        exact = obj.closed_weights()
        seed = obj.seed_weights()
        rows.append({
            "method": obj.name, "family": obj.family, "data": obj.data, "level": obj.level,
            "w_plus": to_latex(exact[0]),
            "w_minus": to_latex(exact[1]) if len(exact) > 1 else "",
            "seed": ", ".join(to_latex(s) for s in seed) if seed is not None else "",
        })
    return rows
