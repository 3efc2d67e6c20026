"""The record every method is: `Objective`, its `Hook`s, and the registry.

An objective is written once against a math back-end ``m`` (torch or SymPy, see symbolic.py) and its
inputs ``v`` (tensors or symbols named in ``symbolic.VARIABLES``). It returns its loss and its
closed-form gradient weights, which the package proves equal to the derivative of the loss:

    -grad L = w+ grad l(y+) - w- grad l(y-)           paired and reward-model objectives
    -grad L = w  grad l(y)                            single-completion objectives (w is signed)

The methods themselves live beside this file, one module per family, as the book's parts group them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace

import sympy as sp
import torch

from .. import checks, symbolic
from ..symbolic import POLICY_VARIABLES, SYMPY, TORCH, VARIABLES

SHAPES = tuple(POLICY_VARIABLES)
# The range of a coefficient unless its record says otherwise: positive, as its SymPy symbol is, and at
# most 1e6, past which its products with float32 log-probs of hundreds of nats leave float32's range.
COEFFICIENT_RANGE = "(0, 1e6]"
DATA_KINDS = ("sft", "sft_tagged", "online", "paired", "unpaired", "ranked", "scored")


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so results can be cached
class Objective:
    """One method: its formula (loss and closed-form weights) plus what the book and trainer need."""

    name: str
    formula: Callable  # (m, v, **hyperparameters) -> (loss, weights tuple)
    shape: str  # "paired" | "single" | "reward_model": which log-probs the weights multiply
    family: str  # chapter family: supervised, online, reward model, paired, unpaired, ranked
    data: str  # the data the trainer feeds it (DATA_KINDS)
    paper: str
    defaults: dict = field(default_factory=dict)  # coefficient -> (value, source): symbols in SymPy
    options: dict = field(default_factory=dict)  # structural choices, plain Python values
    ranges: dict = field(default_factory=dict)  # allowed values, "[0, 1e6]" or (choices); default COEFFICIENT_RANGE
    trainer_defaults: dict = field(default_factory=dict)  # data settings outside the loss (class weights, tags)
    task_defaults: dict = field(default_factory=dict)  # TrainConfig values for the book's task (lr, batch, steps)
    sweep: tuple | None = None  # (knob, values) the frontier sweeps: a hyperparameter or a TrainConfig field
    same_as: str | None = None  # the frontier trains this method's twin once (the same loss, term for term)
    advantage: Callable | None = None  # online methods: rewards -> advantages (see advantages.py)
    hooks: tuple = ()  # per-method behaviour that is not a loss (see Hook)
    level: str = "sequence"  # "token": defined per token; the sequence (bandit) view also works
    token_vars: tuple = ()  # inputs given per token in the token-level view
    max_log_ratio: float = 1e3  # |log-ratio| range over which the loss is finite, in float32 too (exp() limits)
    seed: Callable | None = None  # source text's simplified weights, same calling convention
    seed_note: str = ""
    note: str = ""

    # ------------------------------------------------------------------ hyperparameters
    def hyperparameters(self, symbolic_coefficients: bool = False, **overrides) -> dict:
        known = {**self.defaults, **self.options}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
        values = {}
        for key, (default, _source) in self.defaults.items():
            if key in overrides:
                value = overrides[key]
                if not isinstance(value, (int, float, sp.Basic)) or isinstance(value, bool):
                    raise TypeError(f"{self.name}: hyperparameter '{key}' must be a number in {self.range_of(key)}, "
                                    f"got {value!r}")
                if not isinstance(value, sp.Basic) or value.is_number:
                    number = complex(value).real if isinstance(value, sp.Basic) else value
                    if number not in self.range_of(key):
                        raise checks.SettingError(f"{self.name}: hyperparameter '{key}' must be a number in "
                                                  f"{self.range_of(key)}, got {value!r}")
                values[key] = value
            else:
                values[key] = symbolic.hyper_symbol(key) if symbolic_coefficients else default
        for key, default in self.options.items():
            value = overrides.get(key, default)
            if type(default) in (bool, int, float, str):  # other kinds of option are the formula's to check
                value = checks.check(f"{self.name}: option '{key}'", value, type(default), self.range_of(key))
            values[key] = value
        return values

    def range_of(self, key: str):
        """The values a hyperparameter may take: its declared range, else COEFFICIENT_RANGE for a coefficient
        (the symbols are positive in SymPy's derivations) and any value of the default's type for an option."""
        declared = self.ranges.get(key, None if key in self.options else COEFFICIENT_RANGE)
        return checks.allowed(declared)

    def validate(self, config) -> None:
        """Everything about a run's config this method can check before the run starts: its hyperparameters
        (types and ranges), then its advantage estimator's and hooks' own `validate(config)` (a group size,
        a batch size), each raising an error that names the setting."""
        self.hyperparameters(**config.hyperparameters)
        for part in (self.advantage, *self.hooks):
            validate = getattr(part, "validate", None)
            if validate is not None:
                validate(config)

    # ------------------------------------------------------------------ symbolic side
    def sympy_loss(self, **options) -> sp.Expr:
        return self._symbolic(tuple(sorted(options.items())))[0]

    def closed_weights(self, **options) -> tuple:
        """The hand-written closed form, as SymPy expressions."""
        return self._symbolic(tuple(sorted(options.items())))[1]

    def derived_weights(self, **options) -> tuple:
        """w = -+dL/dl obtained by differentiating sympy_loss (no hand-written input)."""
        return symbolic.derive_weights(self.sympy_loss(**options), self.shape)

    def seed_weights(self, **options) -> tuple | None:
        if self.seed is None:
            return None
        hp = self.hyperparameters(symbolic_coefficients=True, **options)
        return tuple(sp.sympify(w) for w in self.seed(SYMPY, symbolic.symbolic_inputs(), **hp))

    def inputs(self, **options) -> tuple:
        """The batch keys the loss reads, read off the free symbols of its SymPy form, and always every
        policy log-prob of its shape (a paired loss may read one side only; that side's weight is 0)."""
        names = {s.name for s in self.sympy_loss(**options).free_symbols} & set(VARIABLES)
        names |= set(POLICY_VARIABLES[self.shape])
        return tuple(n for n in VARIABLES if n in names)

    @property
    def reads_reference(self) -> bool:
        """Whether the loss reads a reference log-prob (DPO, KTO, ...); SimPO, ORPO, SFT and the like do not."""
        return any(n.startswith("ref_") for n in self.inputs())

    def _symbolic(self, options: tuple):
        return _symbolic_form(self, options)

    # ------------------------------------------------------------------ torch side
    def __call__(self, batch: dict, **hyperparameters) -> Output:
        """Per-example losses [B] and weights (each [B], or [B, T] for token inputs)."""
        hp = self.hyperparameters(**hyperparameters)
        options = {k: hp[k] for k in self.options}
        inputs = _prepare_batch(self, batch, self.inputs(**options))
        loss, weights = self.formula(TORCH, inputs, **hp)
        policy = [getattr(inputs, n) for n in POLICY_VARIABLES[self.shape]]
        weights = tuple(_broadcast(w, p) for w, p in zip(weights, policy))
        return Output(loss=loss, weights=weights)

    def loss(self, batch: dict, **hyperparameters) -> torch.Tensor:
        return self(batch, **hyperparameters).loss

    def weights(self, batch: dict, **hyperparameters) -> tuple:
        return self(batch, **hyperparameters).weights

    @property
    def takes_own_step(self) -> bool:
        """A hook of the record takes the policy's update in place of the optimiser (TRPO's natural gradient)."""
        return any(type(hook).update is not Hook.update for hook in self.hooks)


class Hook:
    """Per-method behaviour that is not a loss. The trainer calls every hook of the objective at these
    points of a step; each method here does nothing, and a hook overrides the ones it needs.

        reference_sequences(examples)      extra (prompt, completion) sequences, by name, whose reference
                                           log-probs are cached with the data's (KTO's mismatched pairs)
        offline_inputs(trainer, indices, batch)
                                           add loss inputs to an offline batch; returns values to log
        online_inputs(trainer, rollout, rows, batch)
                                           the same for a batch built from the policy's own samples
                                           (TrainConfig.sampling): `rows` index the rollout's samples
        loss(objective, batch, hp)         a loss over a batch the formula does not take (RRHF's k responses):
                                           (per-example loss, weights), or None to use the formula
        hyperparameters(state, hp)         the step's hyperparameters (PPO's adapted KL coefficient)
        after_step(objective, state, metrics, hp)
                                           update `state` (saved in checkpoints) and add metrics
        update(trainer, loss, recompute_loss, sequences, hp)
                                           take the policy's update step itself (TRPO's natural gradient
                                           with a line search) and return its metrics, or None to leave
                                           the step to the optimiser
        validate(config)                   refuse a TrainConfig the hook cannot run with (KTO's batch of
                                           one), naming the field, before the run starts

    An advantage estimator may define the same `validate(config)`.

    reads_update_kl: the hook reads the step's `policy_kl_old` (KL(pi_old || pi) after the update) in
    after_step; the trainer then measures it even after a single plain update, where it otherwise saves that forward.
    """

    reads_update_kl: bool = False

    def reference_sequences(self, examples: list) -> dict:
        return {}

    def offline_inputs(self, trainer, indices: list, batch: dict) -> dict:
        return {}

    def online_inputs(self, trainer, rollout, rows: list, batch: dict) -> dict:
        return {}

    def loss(self, objective, batch: dict, hp: dict):
        return None

    def hyperparameters(self, state: dict, hp: dict) -> dict:
        return hp

    def after_step(self, objective, state: dict, metrics: dict, hp: dict) -> None:
        pass

    def update(self, trainer, loss, recompute_loss, sequences, hp: dict) -> dict | None:
        return None

    def validate(self, config) -> None:
        pass


@dataclass
class Output:
    loss: torch.Tensor
    weights: tuple


@cache
def _symbolic_form(obj: Objective, options: tuple):
    hp = obj.hyperparameters(symbolic_coefficients=True, **dict(options))
    loss, weights = obj.formula(SYMPY, symbolic.symbolic_inputs(), **hp)
    return sp.sympify(loss), tuple(sp.sympify(w) for w in weights)


def _broadcast(value, like: torch.Tensor) -> torch.Tensor:
    """A constant weight (SFT's 1) becomes a tensor shaped like the log-probs it multiplies."""
    return value if torch.is_tensor(value) else torch.full_like(like, float(value))


_MASK_OF = {"logp": "mask", "old_logp": "mask", "ref_logp": "mask", "logp_chosen": "mask_chosen",
            "ref_logp_chosen": "mask_chosen", "logp_rejected": "mask_rejected",
            "ref_logp_rejected": "mask_rejected"}


def _prepare_batch(obj: Objective, batch: dict, needed: tuple):
    """Check the inputs and bring them to a common shape; every error names the argument."""
    if not isinstance(batch, dict):
        raise TypeError(f"{obj.name}: batch must be a dict of tensors, got {type(batch).__name__}")
    policy = POLICY_VARIABLES[obj.shape]
    missing = [n for n in needed if n not in batch]
    if missing:
        described = "; ".join(f"'{n}' ({VARIABLES[n][2]})" for n in missing)
        raise KeyError(f"{obj.name}: missing input {described}. It reads: {', '.join(needed)}")
    first = batch[policy[0]]
    if not torch.is_tensor(first) or not first.is_floating_point():
        kind = first.dtype if torch.is_tensor(first) else type(first).__name__
        raise TypeError(f"{obj.name}: '{policy[0]}' must be a floating-point tensor, got {kind}")
    dtype, device = first.dtype, first.device
    two_d = [n for n in needed if torch.is_tensor(batch[n]) and batch[n].dim() == 2]
    if two_d and obj.level != "token":
        raise ValueError(f"{obj.name} is defined on sequence log-probs; got 2-D input(s) {two_d}. Pass sums [B].")
    # token view: the policy log-probs come per token; other token inputs may be per token or per sequence
    token_level = any(n in two_d for n in policy if n in obj.token_vars)
    values = {}
    for name in needed:
        x = batch[name]
        if not torch.is_tensor(x):
            raise TypeError(f"{obj.name}: input '{name}' must be a torch.Tensor, got {type(x).__name__}")
        if name in policy and not x.is_floating_point():
            raise TypeError(f"{obj.name}: input '{name}' must be a floating-point tensor, got {x.dtype}")
        if name in policy and x.dtype != dtype:
            raise TypeError(f"{obj.name}: input '{name}' has dtype {x.dtype}, but '{policy[0]}' has {dtype}")
        x = x.to(dtype)  # constants (lengths, labels, rewards) follow the policy's precision
        if x.device != device:
            raise ValueError(f"{obj.name}: input '{name}' is on {x.device}, '{policy[0]}' on {device}")
        per_token = token_level and name in obj.token_vars and x.dim() == 2
        mask = batch.get(_MASK_OF.get(name, "mask")) if per_token else None
        if per_token and mask is None:
            raise KeyError(f"{obj.name}: per-token input '{name}' needs its mask '{_MASK_OF[name]}'")
        expected_dims = 2 if per_token else 1
        if x.dim() != expected_dims:
            raise ValueError(f"{obj.name}: input '{name}' must be {expected_dims}-D, got shape {tuple(x.shape)}")
        if x.shape[0] != first.shape[0] or (mask is not None and x.shape != mask.shape):
            raise ValueError(f"{obj.name}: input '{name}' has shape {tuple(x.shape)}, which does not match "
                             f"'{policy[0]}' {tuple(first.shape)}" + (f" / its mask {tuple(mask.shape)}" if
                                                                      mask is not None else ""))
        valid = x if mask is None else x[mask.bool()]
        _check_domain(obj.name, name, valid.detach())
        if mask is not None:
            # Padding gets a harmless value so no branch of the formula sees log(0) there.
            x = torch.where(mask.bool(), x, torch.full_like(x, -1.0))
        elif token_level and obj.shape == "single":
            x = x.unsqueeze(-1)  # a per-sequence constant, broadcast over tokens
        values[name] = x
    masks = {k: batch[k].to(dtype) for k in ("mask", "mask_chosen", "mask_rejected")
             if token_level and k in batch}
    return SimpleNamespace(**values, **{k: masks.get(k) for k in ("mask", "mask_chosen", "mask_rejected")})


def _check_domain(obj_name: str, name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        index = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{obj_name}: input '{name}' has a non-finite value {x[index].item()} at index {index}")
    domain = VARIABLES[name][1]
    problems = {
        "length": (x <= 0, "a zero-length completion (length must be >= 1)"),
        "binary": ((x != 0) & (x != 1), "a label that is not 0/1 (or False/True)"),
        "unit": ((x < 0) | (x > 1), "a score outside [0, 1]"),
        "nonneg": (x < 0, "a negative value"),
        "logprob": (x > 0, "a log-probability above 0"),
    }
    if domain in problems:
        mask, what = problems[domain]
        if mask.any():
            index = tuple(mask.nonzero()[0].tolist())
            raise ValueError(f"{obj_name}: input '{name}' has {what}: {x[index].item()} at index {index}")


# =============================================================================================
# The registry
# =============================================================================================
REGISTRY: dict[str, Objective] = {}


class UnknownObjectiveError(KeyError):
    def __str__(self):
        return self.args[0]


# Functions that build an objective from a name the registry does not hold, or return None: compose.py adds
# weighted sums written out, "dpo+0.2*sft". They are not registered, so the registry stays the book's methods.
RESOLVERS: list[Callable] = []


def get(name: str) -> Objective:
    if isinstance(name, Objective):
        return name
    if name not in REGISTRY:
        for resolve in RESOLVERS:
            built = resolve(name)
            if built is not None:
                return built
        raise UnknownObjectiveError(f"unknown objective '{name}'. Known objectives: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def register(obj: Objective, overwrite: bool = False) -> Objective:
    if obj.shape not in SHAPES:
        raise ValueError(f"{obj.name}: shape must be one of {SHAPES}, got '{obj.shape}'")
    if obj.data not in DATA_KINDS:
        raise ValueError(f"{obj.name}: data must be one of {DATA_KINDS}, got '{obj.data}'")
    if obj.data == "online" and obj.advantage is None:
        raise ValueError(f"{obj.name}: an online objective needs an advantage estimator (see advantages.py)")
    if obj.sweep is not None and obj.same_as is not None:
        raise ValueError(f"{obj.name}: a method is swept itself or listed as its twin, not both")
    _check_ranges(obj)
    if obj.name in REGISTRY and not overwrite:
        raise ValueError(f"an objective named '{obj.name}' is already registered; pass overwrite=True "
                         "to replace it")
    REGISTRY[obj.name] = obj
    return obj


def _check_ranges(obj: Objective) -> None:
    """A record's ranges name its hyperparameters, and its defaults and sweep values lie in them."""
    stray = sorted(set(obj.ranges) - set(obj.defaults) - set(obj.options))
    if stray:
        raise ValueError(f"{obj.name}: ranges for unknown hyperparameter(s) {stray}")
    values = [*((k, v) for k, (v, _) in obj.defaults.items()), *obj.options.items()]
    if obj.sweep is not None and obj.sweep[0] in {**obj.defaults, **obj.options}:
        values += [(obj.sweep[0], v) for v in obj.sweep[1]]
    for key, value in values:
        obj.hyperparameters(**{key: value})  # raises, naming the hyperparameter and its range


def objective(name, **fields):
    """Decorator: register the decorated formula under `name`."""
    def wrap(formula):
        register(Objective(name=name, formula=formula, **fields))
        return formula
    return wrap


# ---------------------------------------------------------------------------------------------
# small shared pieces
# ---------------------------------------------------------------------------------------------
def margin(v):
    """Delta = rho(y+) - rho(y-), rho = l - l_ref: the implicit-reward margin (divided by beta)."""
    return (v.logp_chosen - v.ref_logp_chosen) - (v.logp_rejected - v.ref_logp_rejected)


def unclipped(m, ratio, advantage, eps):
    """1 where PPO's clipped surrogate still passes gradient, 0 where the clip is active."""
    return 1 - m.step(advantage) * m.step(ratio - (1 + eps)) - m.step(-advantage) * m.step((1 - eps) - ratio)


# The book's task: a 1.3M-parameter GPT-2 and ~25-token reviews on 2 CPU cores, about a minute a run.
# The papers' learning rates (DPO: 1e-6 for billions of parameters) are far too small here; these are
# TrainConfig values each record starts from (`task_defaults`).
# online: 100 steps of 16 prompts x 4 samples, two passes over each batch
ONLINE_TASK = dict(lr=2e-4, batch_size=16, update_epochs=2, max_steps=100)
