"""Every objective of the book, one short function each.

An objective is written once against a math back-end ``m`` (torch or SymPy, see symbolic.py) and its
inputs ``v`` (tensors or symbols named in ``symbolic.VARIABLES``). It returns its loss and its
closed-form gradient weights, which the package proves equal to the derivative of the loss:

    -grad L = w+ grad l(y+) - w- grad l(y-)           paired and reward-model objectives
    -grad L = w  grad l(y)                            single-completion objectives (w is signed)

Adding a method means adding one decorated function here: its record holds everything else the
package needs to know about the method (defaults with their sources and the ranges they may take, the
settings it trains with on the book's task, the knob the frontier sweeps, the advantage estimator of an
online method, and hooks for per-method behaviour that is not a loss). Nothing outside this file names a
method. `seed` gives the source text's simplified weights ("Unifying RLHF Objectives") so the book can
show where the exact weights differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace

import sympy as sp
import torch

from . import advantages, checks, symbolic
from .symbolic import POLICY_VARIABLES, SYMBOLS, SYMPY, TORCH, VARIABLES

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


class Hook:
    """Per-method behaviour that is not a loss. The trainer calls every hook of the objective at these
    points of a step; each method here does nothing, and a hook overrides the ones it needs.

        reference_sequences(examples)      extra (prompt, completion) sequences, by name, whose reference
                                           log-probs are cached with the data's (KTO's mismatched pairs)
        offline_inputs(trainer, indices, batch)
                                           add loss inputs to an offline batch; returns values to log
        loss(objective, batch, hp)         a loss over a batch the formula does not take (RRHF's k responses):
                                           (per-example loss, weights), or None to use the formula
        hyperparameters(state, hp)         the step's hyperparameters (PPO's adapted KL coefficient)
        after_step(objective, state, metrics, hp)
                                           update `state` (saved in checkpoints) and add metrics
        validate(config)                   refuse a TrainConfig the hook cannot run with (KTO's batch of
                                           one), naming the field, before the run starts

    An advantage estimator may define the same `validate(config)`.
    """

    def reference_sequences(self, examples: list) -> dict:
        return {}

    def offline_inputs(self, trainer, indices: list, batch: dict) -> dict:
        return {}

    def loss(self, objective, batch: dict, hp: dict):
        return None

    def hyperparameters(self, state: dict, hp: dict) -> dict:
        return hp

    def after_step(self, objective, state: dict, metrics: dict, hp: dict) -> None:
        pass

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


def get(name: str) -> Objective:
    if isinstance(name, Objective):
        return name
    if name not in REGISTRY:
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


SEED = "the source text ('Unifying RLHF Objectives')"

# The book's task: a 1.3M-parameter GPT-2 and ~25-token reviews on 2 CPU cores, about a minute a run.
# The papers' learning rates (DPO: 1e-6 for billions of parameters) are far too small here; these are
# TrainConfig values each record starts from (`task_defaults`).
# online: 100 steps of 16 prompts x 4 samples, two passes over each batch
ONLINE_TASK = dict(lr=2e-4, batch_size=16, update_epochs=2, max_steps=100)

# =============================================================================================
# Supervised
# =============================================================================================


@objective("sft", shape="single", family="supervised", data="sft", paper="maximum likelihood (standard)",
           options={"length_normalize": False}, task_defaults=dict(lr=2e-3, batch_size=64, max_steps=150),
           sweep=("lr", (2e-3,)),  # imitation only: one point, the baseline that ignores feedback
           seed=lambda m, v, **_: (1,),
           seed_note="Same: w+ = 1 for the summed log-prob (1/|y| if the token mean is used).")
def sft(m, v, length_normalize):
    scale = 1 / v.length if length_normalize else 1
    return -scale * v.logp, (scale,)


@objective("crlft", shape="single", family="supervised", data="sft_tagged",
           paper="OpenChat C-RLFT, Wang et al. 2023, arXiv 2309.11235",
           task_defaults=dict(lr=1e-3, batch_size=64), sweep=("lr", (5e-4, 1e-3, 2e-3)),
           trainer_defaults={"source_weights": {"expert": 1.0, "suboptimal": 0.1}, "inference_tag": "expert",
                             "source": "OpenChat paper: r_c = 1 for expert (GPT-4), 0.1 for sub-optimal data; "
                                       "inference conditions on the expert tag"},
           seed=lambda m, v, **_: (v.source_weight,),
           seed_note="Same weights; the seed writes the sub-optimal class as w- ~ -0.1, i.e. a push *up* of "
                     "0.1 in our sign convention. The source tag sits in the prompt and is chosen at inference.")
def crlft(m, v):
    return -v.source_weight * v.logp, (v.source_weight,)


# =============================================================================================
# Online / reward-driven: y is sampled from the policy and scored
# =============================================================================================


@objective("vpg", shape="single", family="online", data="online", paper="REINFORCE, Williams 1992",
           advantage=advantages.RunningBaseline(decay=0.9),
           task_defaults=dict(lr=2e-4, kl_coef=0.0, batch_size=16, samples_per_prompt=4, max_steps=100),
           sweep=("kl_coef", (0.0, 0.05, 0.2)),
           seed=lambda m, v, **_: (v.reward,),
           seed_note="The seed uses w = r; with a baseline b the weight is r - b, same expectation, "
                     "lower variance.")
def vpg(m, v):
    advantage = v.reward - v.baseline
    return -advantage * v.logp, (advantage,)


def kl_penalized_surrogate(m, v, beta):
    """ratio * A - beta KL(pi_old || pi_theta); KL from samples of pi_old with the k3 estimator
    (ratio - 1) - log ratio, which is >= 0 and has zero gradient at ratio = 1 (Schulman 2020)."""
    log_ratio = v.logp - v.old_logp
    ratio = m.exp(log_ratio)
    kl = ratio - 1 - log_ratio
    loss = m.sum_tokens(-(ratio * v.advantage - beta * kl), v.mask)
    return loss, (ratio * v.advantage - beta * (ratio - 1),)


def adapt_kl_coefficient(beta: float, kl: float, target: float) -> float:
    """PPO's adaptive rule: halve beta when the measured KL is well under target, double it when over."""
    if kl < target / 1.5:
        return beta / 2
    if kl > target * 1.5:
        return beta * 2
    return beta


@dataclass(frozen=True)
class AdaptiveKL(Hook):
    """PPO's adaptive KL coefficient: each step's loss uses the beta adapted after the previous step,
    from KL(pi_old || pi) per token measured after the update (the trainer's `policy_kl_old`)."""

    target: float = 0.01

    def hyperparameters(self, state, hp):
        return hp | {"beta": state["kl_beta"]} if "kl_beta" in state else hp

    def after_step(self, objective, state, metrics, hp):
        beta = objective.hyperparameters(**hp)["beta"]
        state["kl_beta"] = metrics["kl_beta"] = adapt_kl_coefficient(beta, metrics["policy_kl_old"], self.target)


register(Objective(
    "trpo", kl_penalized_surrogate, shape="single", family="online", data="online",
    paper="TRPO, Schulman et al. 2015, arXiv 1502.05477 (penalty form)",
    defaults={"beta": (1.0, "PPO paper's initial KL coefficient; TRPO proper uses a constraint "
                            "delta = 0.01 (baselines code), not a penalty")}, ranges={"beta": "[0, 1e6]"},
    level="token", token_vars=("logp", "old_logp", "advantage"), max_log_ratio=30.0,
    advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK, sweep=("beta", (0.3, 1.0, 3.0)),
    note="The unconstrained penalty form; the natural-gradient step with a line search is not implemented."))

register(Objective(
    "ppo_kl", kl_penalized_surrogate, shape="single", family="online", data="online",
    paper="PPO (adaptive KL penalty), Schulman et al. 2017, arXiv 1707.06347",
    defaults={"beta": (1.0, "PPO paper, initial value of the adapted coefficient")},
    ranges={"beta": "[0, inf)"},  # no upper bound: the adaptive rule doubles beta while the KL stays high
    hooks=(AdaptiveKL(target=0.01),),  # PPO paper: d_targ = 0.01
    level="token", token_vars=("logp", "old_logp", "advantage"), max_log_ratio=30.0,
    advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK, sweep=("kl_coef", (0.02, 0.05, 0.2)),
    note="Same loss as trpo; beta is adapted after each update by adapt_kl_coefficient()."))


@objective("ppo_clip", shape="single", family="online", data="online",
           paper="PPO-clip, Schulman et al. 2017, arXiv 1707.06347",
           defaults={"eps": (0.2, "PPO paper")}, ranges={"eps": "(0, 1)"},
           level="token", token_vars=("logp", "old_logp", "advantage"),
           max_log_ratio=30.0, advantage=advantages.KLShapedReturns(), task_defaults=ONLINE_TASK,
           sweep=("eps", (0.1, 0.2, 0.4)),
           seed=lambda m, v, eps: (m.exp(v.logp - v.old_logp) * v.advantage
                                   * m.step(1 + eps - m.exp(v.logp - v.old_logp)),),
           seed_note="The seed derives one side only: w = ratio*r while ratio < 1+eps. Exactly, the clip "
                     "is active only where it would *raise* the objective: ratio > 1+eps with A > 0 or "
                     "ratio < 1-eps with A < 0; with A < 0 and ratio > 1+eps the gradient stays on. The "
                     "seed also takes the ratio against pi_ref and r for A.")
def ppo_clip(m, v, eps):
    ratio = m.exp(v.logp - v.old_logp)
    surrogate = m.minimum(ratio * v.advantage, m.clip(ratio, 1 - eps, 1 + eps) * v.advantage)
    passes = unclipped(m, ratio, v.advantage, eps)
    # where the clip holds, the weight is 0 even if the ratio overflowed (inf * 0 in floating point)
    return m.sum_tokens(-surrogate, v.mask), (m.gate(ratio * v.advantage * passes, passes),)


@objective("apa", shape="single", family="online", data="online",
           paper="APA, Zhu et al. 2023, arXiv 2306.02231",
           defaults={"lam": (0.1, "official code: 1/lambda = 10")}, ranges={"lam": "[1e-6, 1e6]"},  # divides A
           level="token",
           token_vars=("logp", "old_logp", "advantage"), advantage=advantages.KLShapedReturns(),
           task_defaults=ONLINE_TASK, sweep=("lam", (0.03, 0.1, 0.3)),
           seed=lambda m, v, lam: (v.advantage - (v.logp - v.old_logp),),
           seed_note="The seed writes w = r - log(pi/pi_ref). Exactly w = 2(A/lambda - log(pi/pi_old)): a "
                     "factor 2 and the 1/lambda scale of the target log-ratio.")
def apa(m, v, lam):
    log_ratio = v.logp - v.old_logp
    target = v.advantage / lam  # APA regresses the log-ratio onto A / lambda
    return m.sum_tokens((log_ratio - target) ** 2, v.mask), (2 * (target - log_ratio),)


@objective("rloo", shape="single", family="online", data="online",
           paper="RLOO, Ahmadian et al. 2024, arXiv 2402.14740", advantage=advantages.LeaveOneOut(),
           task_defaults=dict(lr=2e-4, batch_size=32, samples_per_prompt=2, max_steps=100),
           sweep=("kl_coef", (0.02, 0.05, 0.2)),
           note="advantage = leave-one-out advantages of the KL-shaped rewards (advantages.leave_one_out). "
                "For k = 2: w+ = w- = (R+ - R-)/2, exactly a paired objective. Paper: k in {2, 4}, KL "
                "coefficient 0.03-0.05 in the reward (TrainConfig.samples_per_prompt, kl_coef).")
def rloo(m, v):
    return -v.advantage * v.logp, (v.advantage,)


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
# Reward model (the weights multiply grad r_phi, not grad log pi)
# =============================================================================================


@objective("rm", shape="reward_model", family="reward model", data="paired",
           task_defaults=dict(lr=1e-3, batch_size=32, max_steps=200),
           paper="Bradley-Terry reward model; Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155",
           defaults={"margin": (0.0, "optional margin (Llama 2); 0 = plain Bradley-Terry"),
                     "center": (0.0, "optional centring term; TRL uses 0.01 when enabled")},
           ranges={"margin": "[0, 1e6]", "center": "[0, 1e6]"},
           seed=lambda m, v, **_: (m.sigmoid(v.reward_rejected - v.reward_chosen),) * 2,
           seed_note="Same as the seed when margin = centring = 0.")
def rm(m, v, margin, center):
    u = v.reward_chosen - v.reward_rejected - margin
    total = v.reward_chosen + v.reward_rejected
    loss = -m.logsigmoid(u) + center * total**2
    return loss, (m.sigmoid(-u) - 2 * center * total, m.sigmoid(-u) + 2 * center * total)


# =============================================================================================
# Offline paired
# =============================================================================================


@objective("unlikelihood", shape="paired", family="paired", data="paired",
           paper="Unlikelihood training, Welleck et al. 2019, arXiv 1908.04319",
           defaults={"alpha": (1.0, "paper code"), "kappa": (1e-5, "paper code clamps 1 - p at 1e-5")},
           ranges={"alpha": "[0, 1e6]", "kappa": "(0, 1)"},  # alpha = 0: SFT on y+ alone
           sweep=("alpha", (0.3, 1.0, 3.0)),
           level="token", token_vars=("logp_rejected",),
           seed=lambda m, v, **_: (1, 1),
           seed_note="The seed's w- = 1 is the naive -l(y-) version. Unlikelihood acts per token: "
                     "w-_t = alpha p_t / (1 - p_t), unbounded as p_t -> 1 (clamped at 1 - p = kappa).")
def unlikelihood(m, v, alpha, kappa):
    # -log(1 - p_t) per rejected token, p_t = exp(l_t), with log(1 - p) floored at log(kappa)
    log_one_minus_p = m.maximum(m.log1mexp(v.logp_rejected), m.log(kappa))
    loss = -v.logp_chosen - alpha * m.sum_tokens(log_one_minus_p, v.mask_rejected)
    not_clamped = m.step(-m.expm1(v.logp_rejected) - kappa)
    # = alpha p / (1 - p); 0 where clamped, also at p = 1 exactly (0 / 0 in floating point)
    return loss, (1, m.gate(alpha * not_clamped / m.expm1(-v.logp_rejected), not_clamped))


@objective("dpo", shape="paired", family="paired", data="paired",
           paper="DPO, Rafailov et al. 2023, arXiv 2305.18290",
           defaults={"beta": (0.1, "DPO paper")}, sweep=("beta", (0.05, 0.1, 0.5)),
           seed=lambda m, v, **_: (m.sigmoid(-margin(v)),) * 2,
           seed_note="The seed writes sigma(r_hat- - r_hat+) with r_hat = log(pi/pi_ref): it drops beta "
                     "both as a factor and inside the sigmoid. Exactly w = beta sigma(-beta Delta).")
def dpo(m, v, beta):
    weight = beta * m.sigmoid(-beta * margin(v))
    return -m.logsigmoid(beta * margin(v)), (weight, weight)


@objective("cdpo", shape="paired", family="paired", data="paired",
           paper="conservative DPO (label smoothing), Mitchell 2023; DPO with noisy labels",
           defaults={"beta": (0.1, "DPO paper"), "eps": (0.1, "label-smoothing 0.1-0.2")},
           ranges={"eps": "[0, 0.5]"},
           sweep=("beta", (0.05, 0.1, 0.5)),
           note="The weight is signed: zero at beta Delta = ln((1-eps)/eps), negative beyond.")
def cdpo(m, v, beta, eps):
    u = beta * margin(v)
    weight = beta * ((1 - eps) - m.sigmoid(u))
    return -(1 - eps) * m.logsigmoid(u) - eps * m.logsigmoid(-u), (weight, weight)


@objective("ipo", shape="paired", family="paired", data="paired",
           paper="IPO, Azar et al. 2023, arXiv 2310.12036",
           defaults={"tau": (0.1, "IPO paper")}, options={"length_normalize": True}, sweep=("tau", (0.1, 0.5, 2.0)),
           ranges={"tau": "[1e-6, 1e6]"},  # the target is 1/(2 tau)
           note="length_normalize=True divides each log-ratio by |y| as TRL and HALOs do; the DPO "
                "authors' repository sums (length_normalize=False).")
def ipo(m, v, tau, length_normalize):
    n_plus, n_minus = (v.len_chosen, v.len_rejected) if length_normalize else (1, 1)
    delta = (v.logp_chosen - v.ref_logp_chosen) / n_plus - (v.logp_rejected - v.ref_logp_rejected) / n_minus
    pull = 1 / tau - 2 * delta  # signed: pushes back once Delta passes the target 1/(2 tau)
    return (delta - 1 / (2 * tau)) ** 2, (pull / n_plus, pull / n_minus)


@objective("slic", shape="paired", family="paired", data="paired",
           paper="SLiC-HF, Zhao et al. 2023, arXiv 2305.10425",
           defaults={"delta": (1.0, "SLiC-HF paper"), "lam": (0.1, "HALOs (paper value unverified)")},
           ranges={"delta": "[0, 1e6]", "lam": "[0, 1e6]"},
           sweep=("delta", (0.5, 1.0, 2.0)),
           seed=lambda m, v, delta, lam: (1 + m.step(delta - (v.logp_chosen - v.logp_rejected)),
                                          m.step(delta - (v.logp_chosen - v.logp_rejected))),
           seed_note="The seed writes w+ = 1 + w-, w- = 1{pi(y+)/pi(y-) < beta}: a margin in log space "
                     "(log beta = delta) and an SFT weight of 1 where SLiC has lambda. y_sft = y+ here.")
def slic(m, v, delta, lam):
    hinge_active = m.step(delta - (v.logp_chosen - v.logp_rejected))
    loss = m.relu(delta - v.logp_chosen + v.logp_rejected) - lam * v.logp_chosen
    return loss, (hinge_active + lam, hinge_active)


class RankedLoss(Hook):
    """RRHF on ranked data: the batch holds k responses per prompt (logp, length, reward, each [B, k]),
    and the loss is rrhf_ranked_loss; each response's weight -dL/dl_i is read off autograd and reported
    as w+ for the best response and w- for the others."""

    def loss(self, objective, batch, hp):
        logp = batch["logp"]
        loss = rrhf_ranked_loss(logp, batch["length"], batch["reward"])
        (grad,) = torch.autograd.grad(loss.sum(), logp, retain_graph=True)
        best = torch.nn.functional.one_hot(batch["reward"].argmax(-1), logp.shape[-1]).bool()
        return loss, (-grad[best], grad[~best])


@objective("rrhf", shape="paired", family="ranked", data="ranked",
           paper="RRHF, Yuan et al. 2023, arXiv 2304.05302", hooks=(RankedLoss(),), sweep=("lr", (2.5e-4, 5e-4, 1e-3)),
           seed=lambda m, v, **_: (1 + m.step(v.logp_rejected / v.len_rejected - v.logp_chosen / v.len_chosen),
                                   m.step(v.logp_rejected / v.len_rejected - v.logp_chosen / v.len_chosen)),
           seed_note="The seed writes w+ = 1 + w-, w- = 1{...}: RRHF ranks length-normalised log-probs, "
                     "so each side carries 1/|y|, and the SFT term on the best response gives the extra 1.",
           note="Paired view (y+ the better of two). rrhf_ranked_loss applies it to k ranked responses.")
def rrhf(m, v):
    p_plus, p_minus = v.logp_chosen / v.len_chosen, v.logp_rejected / v.len_rejected
    violated = m.step(p_minus - p_plus)
    loss = m.relu(p_minus - p_plus) - v.logp_chosen
    return loss, (violated / v.len_chosen + 1, violated / v.len_rejected)


def rrhf_ranked_loss(logp: torch.Tensor, length: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """RRHF over k responses per prompt ([B, k] each): hinge on every pair ranked r_i < r_j, plus
    SFT on the best response. Equals the 'rrhf' objective when k = 2."""
    score = logp / length
    worse = reward.unsqueeze(-1) < reward.unsqueeze(-2)  # [B, i, j]: response i is ranked below j
    ranking = (torch.relu(score.unsqueeze(-1) - score.unsqueeze(-2)) * worse).sum((-1, -2))
    best = reward.argmax(-1, keepdim=True)
    return ranking - logp.gather(-1, best).squeeze(-1)


@objective("orpo", shape="paired", family="paired", data="paired",
           paper="ORPO, Hong et al. 2024, arXiv 2403.07691 (no reference model)",
           defaults={"lam": (0.1, "ORPO paper")}, ranges={"lam": "[0, 1e6]"}, sweep=("lam", (0.1, 0.5, 1.0)),
           note="P = exp(l/|y|); the odds-ratio term's weight grows as 1/(1-P) when P -> 1.")
def orpo(m, v, lam):
    mean_plus, mean_minus = v.logp_chosen / v.len_chosen, v.logp_rejected / v.len_rejected
    z = (mean_plus - m.log1mexp(mean_plus)) - (mean_minus - m.log1mexp(mean_minus))  # log odds ratio
    loss = -mean_plus - lam * m.logsigmoid(z)
    # d log-odds / d l = 1 / (|y| (1 - P)), with 1 - P = -expm1(l / |y|) (floored as log1mexp is, so at
    # P = 1 exactly the weight is autograd's, not inf)
    w_plus = 1 / v.len_chosen - lam * m.sigmoid(-z) / (m.expm1_floored(mean_plus) * v.len_chosen)
    w_minus = -lam * m.sigmoid(-z) / (m.expm1_floored(mean_minus) * v.len_rejected)
    return loss, (w_plus, w_minus)


@objective("simpo", shape="paired", family="paired", data="paired",
           paper="SimPO, Meng et al. 2024, arXiv 2405.14734 (no reference model)",
           defaults={"beta": (2.0, "SimPO repo default"), "gamma": (0.5, "gamma/beta = 0.25, SimPO repo")},
           ranges={"gamma": "[0, 1e6]"},
           sweep=("beta", (1.0, 2.0, 5.0)))
def simpo(m, v, beta, gamma):
    u = beta * v.logp_chosen / v.len_chosen - beta * v.logp_rejected / v.len_rejected - gamma
    return -m.logsigmoid(u), (beta * m.sigmoid(-u) / v.len_chosen, beta * m.sigmoid(-u) / v.len_rejected)


# ---------------------------------------------------------------------------------------------
# GPO: E[f(beta Delta)] for a convex f. Each member gives f and its derivative f'; the weight
# w+ = w- = -beta f'(beta Delta) is then checked against SymPy's derivative of f.
# ---------------------------------------------------------------------------------------------
GPO_FUNCTIONS = {
    "logistic": (lambda m, x: m.softplus(-x), lambda m, x: -m.sigmoid(-x), "= DPO"),
    "hinge": (lambda m, x: m.relu(1 - x), lambda m, x: -m.step(1 - x), "= SLiC with a reference"),
    "squared": (lambda m, x: (x - 1) ** 2, lambda m, x: 2 * (x - 1), "= IPO with tau = beta/2, scaled"),
    "exponential": (lambda m, x: m.exp(-x), lambda m, x: -m.exp(-x), "AdaBoost-like"),
    "truncated_quadratic": (lambda m, x: m.relu(1 - x) ** 2, lambda m, x: -2 * m.relu(1 - x), ""),
    "savage": (lambda m, x: m.sigmoid(-x) ** 2, lambda m, x: -2 * m.sigmoid(-x) ** 2 * m.sigmoid(x), ""),
}


def _gpo_formula(f, f_prime):
    def gpo(m, v, beta):
        x = beta * margin(v)
        weight = -beta * f_prime(m, x)
        return f(m, x), (weight, weight)
    return gpo


for _name, (_f, _f_prime, _relation) in GPO_FUNCTIONS.items():
    register(Objective(
        f"gpo_{_name}", _gpo_formula(_f, _f_prime), shape="paired", family="paired", data="paired",
        paper="GPO, Tang et al. 2024, arXiv 2402.05749",
        defaults={"beta": (0.1, "DPO's beta; GPO sweeps it")},
        # logistic GPO is DPO term for term (chapter 9 proves it): the frontier trains it once, as dpo
        sweep=None if _name == "logistic" else ("beta", (0.05, 0.1, 0.5)),
        same_as="dpo" if _name == "logistic" else None,
        # exp(-beta Delta) overflows float32 at beta |Delta| = 89: |Delta| up to 800 at the default beta
        max_log_ratio=400.0 if _name == "exponential" else 1e3, note=f"f = {_name} {_relation}".strip()))

# =============================================================================================
# Offline unpaired
# =============================================================================================


class KTOReferencePoint(Hook):
    """KTO's z0 from mismatched pairs: each completion with the prompt of the next row (a fixed
    partner), scored by the policy under no gradient and by the reference once (cached)."""

    @staticmethod
    def mismatched(examples, indices):
        n = len(examples)
        return [(examples[(i + 1) % n]["prompt"], examples[i]["completions"][0]) for i in indices]

    def reference_sequences(self, examples):
        return {"mismatched": self.mismatched(examples, range(len(examples)))}

    def offline_inputs(self, trainer, indices, batch):
        with torch.no_grad():
            policy = trainer.logprobs(self.mismatched(trainer.examples, indices))[0]
        reference = trainer.reference_logprobs("mismatched", indices)
        # z0 over the global batch: every process contributes its rows
        z0 = kto_reference_point(trainer.accelerator.gather(policy), trainer.accelerator.gather(reference))
        batch["z0"] = z0.expand_as(batch["logp"])
        return {"z0": z0.item()}

    def validate(self, config):
        if config.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for KTO's reference point z0 (estimated from the "
                             f"batch's mismatched pairs), got {config.batch_size}")


@objective("kto", shape="single", family="unpaired", data="unpaired",
           paper="KTO, Ethayarajh et al. 2024, arXiv 2402.01306",
           defaults={"beta": (0.1, "KTO paper"), "lambda_d": (1.0, "KTO paper"), "lambda_u": (1.0, "KTO paper")},
           ranges={"lambda_d": "[0, 1e6]", "lambda_u": "[0, 1e6]"},
           trainer_defaults={"desirable_ratio_range": (1.0, 4 / 3),
                             "source": "KTO paper: keep lambda_D n_D / (lambda_U n_U) in [1, 4/3]"},
           hooks=(KTOReferencePoint(),), sweep=("beta", (0.05, 0.1, 0.5)),
           seed=lambda m, v, **_: (v.label * m.sigmoid(v.reward - v.z0) * m.sigmoid(v.z0 - v.reward),),
           seed_note="The seed writes sigma'(r - E[log ratio]); exactly the implicit reward beta*rho "
                     "replaces r, beta multiplies the whole weight, lambda_D / lambda_U scale it, and "
                     "undesirable samples get the negative weight.",
           note="label = 1 desirable, 0 undesirable. z0 = kto_reference_point(...), detached.")
def kto(m, v, beta, lambda_d, lambda_u):
    u = beta * ((v.logp - v.ref_logp) - v.z0)
    # 1 - sigma(u) is written sigma(-u): the same value without cancellation
    loss = v.label * lambda_d * m.sigmoid(-u) + (1 - v.label) * lambda_u * m.sigmoid(u)
    slope = beta * m.sigmoid(u) * m.sigmoid(-u)
    return loss, ((v.label * lambda_d - (1 - v.label) * lambda_u) * slope,)


def kto_reference_point(mismatched_logp: torch.Tensor, mismatched_ref_logp: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean rho over mismatched (x', y) pairs), detached (KTO paper, HALOs)."""
    if mismatched_logp.numel() < 2:
        raise ValueError("kto: the reference point z0 needs a batch of at least 2 examples (it is estimated "
                         f"from mismatched pairs); got {mismatched_logp.numel()}")
    return (mismatched_logp - mismatched_ref_logp).mean().clamp(min=0).detach()


@objective("una", shape="single", family="unpaired", data="unpaired",
           paper="UNA, Wang et al. 2024, arXiv 2408.15339 (binary feedback)",
           defaults={"beta": (0.01, "UNA paper, binary feedback")}, options={"loss": "mse"},
           ranges={"loss": ("mse", "bce")},
           sweep=("beta", (0.003, 0.01, 0.03)),
           note="Implicit reward r = beta rho, s = sigma(r); loss='mse' (s - label)^2 or 'bce'.")
def una(m, v, beta, loss):
    s = m.sigmoid(beta * (v.logp - v.ref_logp))
    slope = beta * s * m.sigmoid(-beta * (v.logp - v.ref_logp))  # ds/dl
    if loss == "mse":
        return (s - v.label) ** 2, (2 * (v.label - s) * slope,)
    if loss == "bce":
        r = beta * (v.logp - v.ref_logp)
        return -v.label * m.logsigmoid(r) - (1 - v.label) * m.logsigmoid(-r), (beta * (v.label - s),)
    raise ValueError(f"una: option loss must be 'mse' or 'bce', got {loss!r}")


@objective("una_score", shape="single", family="unpaired", data="scored",
           paper="UNA, Wang et al. 2024, arXiv 2408.15339 (score feedback)",
           defaults={"beta": (0.03, "UNA paper, score feedback")}, sweep=("beta", (0.01, 0.03, 0.1)))
def una_score(m, v, beta):
    r = beta * (v.logp - v.ref_logp)
    s = m.sigmoid(r)
    return (s - v.score) ** 2, (2 * beta * (v.score - s) * s * m.sigmoid(-r),)


register(Objective(
    "una_pairwise", dpo, shape="paired", family="paired", data="paired",
    paper="UNA, Wang et al. 2024, arXiv 2408.15339 (pairwise feedback)",
    defaults={"beta": (0.1, "as DPO (UNA's pairwise form is DPO's loss; its beta unverified)")}, same_as="dpo",
    note="UNA's pairwise form is DPO's loss: the same formula function, registered under UNA."))


__all__ = ["Objective", "Output", "Hook", "REGISTRY", "get", "register", "objective", "SYMBOLS",
           "adapt_kl_coefficient", "AdaptiveKL", "KTOReferencePoint", "RankedLoss", "kto_reference_point",
           "rrhf_ranked_loss"]
