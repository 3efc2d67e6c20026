"""Your own objective from nothing but a SymPy loss.

    from unified_rlhf.custom import objective_from_sympy, V, hyper
    from unified_rlhf.symbolic import LogSigmoid
    beta = hyper("beta")
    delta = (V.logp_chosen - V.ref_logp_chosen) - (V.logp_rejected - V.ref_logp_rejected)
    obj = objective_from_sympy("my_loss", LogSigmoid(beta * delta) ** 2, defaults={"beta": 0.1})

gives the derived weights, a torch loss, torch weight functions, and everything ``verify`` checks.
Symbols are matched by name, so ``sp.Symbol("logp_chosen")`` works as well as ``V.logp_chosen``.
"""

from __future__ import annotations

import sympy as sp

from . import objectives
from .symbolic import POLICY_VARIABLES, SYMBOLS, SYMPY, VARIABLES, derive_weights, hyper_symbol, to_torch

V = type("SharedSymbols", (), dict(SYMBOLS))  # V.logp_chosen, V.ref_logp, ... (the shared symbols)
hyper = hyper_symbol


def _shape_of(names: set) -> str:
    shapes = [s for s, policy in POLICY_VARIABLES.items() if names & set(policy)]
    if len(shapes) != 1:
        found = sorted(names & {n for p in POLICY_VARIABLES.values() for n in p})
        raise ValueError("a loss must depend on exactly one kind of policy variable: logp_chosen/logp_rejected "
                         f"(paired), logp (single) or reward_chosen/reward_rejected (reward model); found {found}")
    return shapes[0]


def _data_of(shape: str, names: set) -> str:
    if shape != "single":
        return "paired"
    for variable, data in (("label", "unpaired"), ("score", "scored"), ("source_weight", "sft_tagged")):
        if variable in names:
            return data
    return "online" if names & {"advantage", "reward", "old_logp"} else "sft"


def objective_from_sympy(name: str, loss, defaults: dict | None = None, closed_weights=None,
                         family: str = "custom", data: str | None = None, paper: str = "user-defined",
                         register: bool = False, overwrite: bool = False) -> objectives.Objective:
    """Build (and optionally register) an Objective whose weights are derived from `loss`.

    defaults: {hyperparameter name: value} for every symbol that is not a shared variable.
    closed_weights: optional hand-written weights, which verification then proves equal to the
    derived ones; without them the derived weights are the closed form."""
    defaults = dict(defaults or {})
    loss = sp.sympify(loss)
    # match symbols by name: shared variables get the package's symbols, the rest become hyperparameters
    renamed = {s: SYMBOLS[s.name] if s.name in VARIABLES else hyper_symbol(s.name) for s in loss.free_symbols}
    loss = loss.xreplace(renamed)
    names = {s.name for s in loss.free_symbols}
    missing = sorted(names - set(VARIABLES) - set(defaults))
    if missing:
        raise ValueError(f"{name}: the loss uses {missing}, which are neither shared variables "
                         f"({', '.join(VARIABLES)}) nor hyperparameters given in defaults")
    unused = sorted(set(defaults) - names)
    if unused:
        raise ValueError(f"{name}: defaults {unused} do not appear in the loss")
    shape = _shape_of(names)
    derived = derive_weights(loss, shape)
    closed = derived if closed_weights is None else tuple(
        sp.sympify(w).xreplace({s: SYMBOLS[s.name] if s.name in VARIABLES else hyper_symbol(s.name)
                                for s in sp.sympify(w).free_symbols}) for w in closed_weights)
    if len(closed) != len(derived):
        raise ValueError(f"{name}: closed_weights must have {len(derived)} entries for a {shape} loss")

    inputs = [n for n in VARIABLES if n in names]
    hyper_names = sorted(defaults)
    arguments = [SYMBOLS[n] for n in inputs] + [hyper_symbol(h) for h in hyper_names]
    loss_fn = to_torch(loss, arguments)
    weight_fns = [to_torch(w, arguments) for w in closed]

    def formula(m, v, **hp):
        if m is SYMPY:
            values = {hyper_symbol(h): hp[h] for h in hyper_names}
            return loss.xreplace(values), tuple(w.xreplace(values) for w in closed)
        args = [getattr(v, n) for n in inputs] + [hp[h] for h in hyper_names]
        return loss_fn(*args), tuple(f(*args) for f in weight_fns)

    obj = objectives.Objective(
        name=name, formula=formula, shape=shape, family=family, data=data or _data_of(shape, names),
        paper=paper, defaults={h: (float(defaults[h]), "user") for h in hyper_names},
        note="derived from a user-supplied SymPy loss")
    if register:
        objectives.register(obj, overwrite=overwrite)
    return obj
