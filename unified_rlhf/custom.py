"""Your own objective from nothing but a SymPy loss.

    from unified_rlhf.custom import objective_from_sympy, V, hyper
    from unified_rlhf.symbolic import LogSigmoid
    beta = hyper("beta")
    delta = (V.logp_chosen - V.ref_logp_chosen) - (V.logp_rejected - V.ref_logp_rejected)
    obj = objective_from_sympy("my_loss", LogSigmoid(beta * delta) ** 2, defaults={"beta": 0.1})

gives the derived weights, a torch loss, torch weight functions, and everything ``verify`` checks.
Symbols are matched by name, so ``sp.Symbol("logp_chosen")`` works as well as ``V.logp_chosen``. The
torch form uses the package's stable functions (``Sigmoid`` and ``LogSigmoid`` compile to the torch
back-end's, as the built-in methods use), and functions of numbers or hyperparameters (``log(2)``,
``sqrt(beta)``) compile too.

From the command line, an objective in a file is named ``FILE.py:NAME`` (``NAME`` a module-level
variable holding it): ``unified-rlhf train --objective my_loss.py:mine`` imports the file, registers the
objective and records the file in the run's config, so ``--resume`` finds it again (`load_objective`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
                         register: bool = False, overwrite: bool = False,
                         ranges: dict | None = None, max_log_ratio: float = 1e3) -> objectives.Objective:
    """Build (and optionally register) an Objective whose weights are derived from `loss`.

    defaults: {hyperparameter name: value} for every symbol that is not a shared variable.
    ranges: {hyperparameter name: interval} where a value outside (0, inf) is meaningful, e.g.
    {"margin": "[0, inf)"} (hyperparameters are positive symbols in the derivation, so (0, inf) is the default).
    closed_weights: optional hand-written weights, which verification then proves equal to the
    derived ones; without them the derived weights are the closed form, compiled as SymPy writes them (so a form
    that overflows at large margins, such as 1 - tanh(x)^2, fails verify's extreme check until a stable one is
    given here).
    max_log_ratio: the |log-ratio| (or margin) range over which the loss is meant to stay finite, in float32 too; a
    loss with exp(log-ratio) in it (a ratio of policies, as PPO's) overflows beyond about 88 and takes a smaller one,
    which verify's extreme check then uses."""
    if not max_log_ratio > 0:
        raise ValueError(f"{name}: max_log_ratio must be positive, got {max_log_ratio}")
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
        paper=paper, defaults={h: (float(defaults[h]), "user") for h in hyper_names}, ranges=dict(ranges or {}),
        max_log_ratio=float(max_log_ratio), note="derived from a user-supplied SymPy loss")
    if register:
        objectives.register(obj, overwrite=overwrite)
    return obj


_LOADED: dict[str, tuple] = {}  # objective name -> (resolved FILE.py:NAME, its file's modification time)


def load_objective(spec: str) -> objectives.Objective:
    """The Objective held by variable NAME of FILE.py (``spec`` = "FILE.py:NAME"), registered under its own
    name. The file is imported once per process (again if it changed); an objective named like one already
    registered from elsewhere, a built-in method for instance, is refused."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"objective must be FILE.py:NAME (a Python file and the variable holding the objective), "
                         f"got {spec!r}")
    file, _, variable = spec.rpartition(":")
    path = Path(file).expanduser().resolve()
    if path.suffix != ".py" or not path.is_file():
        problem = "is not a .py file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"objective file {file} {problem}")
    if not variable.isidentifier():
        raise ValueError(f"objective {spec}: '{variable}' is not a variable name")
    resolved = f"{path}:{variable}"
    for name, (loaded_from, stamp) in _LOADED.items():
        if loaded_from == resolved and stamp == path.stat().st_mtime_ns and name in objectives.REGISTRY:
            return objectives.REGISTRY[name]
    module_name = f"unified_rlhf_objective_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ValueError(f"objective file {file} failed to import: {type(error).__name__}: {error}") from error
    obj = getattr(module, variable, None)
    if not isinstance(obj, objectives.Objective):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, objectives.Objective))
        raise ValueError(f"{file} has no objective named '{variable}'"
                         + (f"; it defines {', '.join(found)}" if found else " (make one with objective_from_sympy)"))
    existing = objectives.REGISTRY.get(obj.name)
    if existing is not None and existing is not obj and _LOADED.get(obj.name, ("",))[0] != resolved:
        raise ValueError(f"{spec}: an objective named '{obj.name}' is already registered (built in, or from "
                         "another file); give yours another name")
    objectives.register(obj, overwrite=True)
    _LOADED[obj.name] = (resolved, path.stat().st_mtime_ns)
    return obj
