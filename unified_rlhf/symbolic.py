"""The symbolic engine: shared symbols, the two math back-ends, and weight derivation.

Every objective is written once, as a function of a math back-end ``m`` and its inputs ``v``.
Called with :data:`SYMPY` and SymPy symbols it returns the loss as a SymPy expression; called with
:data:`TORCH` and tensors it returns the torch loss. The derivation then needs nothing but calculus:

    w+ = -dL/d l(y+),   w- = +dL/d l(y-)        (one signed w = -dL/d l(y) for unpaired/online)

which this module differentiates, simplifies, proves equal to the hand-written closed form,
renders as LaTeX and compiles to torch.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import sympy as sp
import torch
import torch.nn.functional as F
from sympy.printing.pytorch import TorchPrinter

# ---------------------------------------------------------------------------------------------
# Shared symbols. One table: the name is both the SymPy symbol and the key of a torch batch.
# domain: how verification samples it ("logprob" <= 0, "length" >= 1, "binary" in {0, 1}, ...).
# ---------------------------------------------------------------------------------------------
VARIABLES = {
    # the differentiated inputs: sequence (or token) log-probs of the policy, or reward-model outputs
    "logp_chosen": (r"\ell_{+}", "logprob", "l(y+): summed log-prob of the chosen completion"),
    "logp_rejected": (r"\ell_{-}", "logprob", "l(y-): summed log-prob of the rejected completion"),
    "logp": (r"\ell", "logprob", "l(y): log-prob of a single (unpaired or sampled) completion"),
    "reward_chosen": (r"r_{+}", "real", "reward model output r_phi(x, y+)"),
    "reward_rejected": (r"r_{-}", "real", "reward model output r_phi(x, y-)"),
    # constants: detached inputs the loss reads
    "ref_logp_chosen": (r"\ell^{\mathrm{ref}}_{+}", "logprob", "l_ref(y+): reference policy"),
    "ref_logp_rejected": (r"\ell^{\mathrm{ref}}_{-}", "logprob", "l_ref(y-): reference policy"),
    "ref_logp": (r"\ell^{\mathrm{ref}}", "logprob", "l_ref(y): reference policy"),
    "old_logp": (r"\ell^{\mathrm{old}}", "logprob", "l_old(y): the policy that sampled y"),
    # what the rest of the batch contributes (detached): AOT's sorted batch, BCO's running mean (zoo.py)
    "ref_margin_at_rank": (r"v^{*}", "real", "AOT: the batch's reference margin l_ref(y+) - l_ref(y-) whose rank "
                           "is the rank of this row's l(y+) - l(y-)"),
    "rejected_ratio_at_rank": (r"\rho^{*}_{-}", "real", "unpaired AOT: the batch's rejected log-ratio whose rank is "
                               "the rank of this row's chosen log-ratio"),
    "chosen_ratio_at_rank": (r"\rho^{*}_{+}", "real", "unpaired AOT: the batch's chosen log-ratio whose rank is the "
                             "rank of this row's rejected log-ratio"),
    "reward_shift": (r"\delta", "real", "BCO: running mean of the implicit reward beta (l - l_ref) so far"),
    "wpo_weight": (r"\omega", "positive", "WPO: the pair's weight omega(y+) omega(y-) under the policy (detached)"),
    "mean_len_chosen": (r"\bar{n}_{+}", "length", "the batch's mean |y+|: l(y+) divided by it averages to the "
                        "batch's token mean"),
    "len_chosen": (r"\lvert y_{+}\rvert", "length", "number of completion tokens of y+"),
    "len_rejected": (r"\lvert y_{-}\rvert", "length", "number of completion tokens of y-"),
    "length": (r"\lvert y\rvert", "length", "number of completion tokens of y"),
    "reward": (r"r", "real", "reward r(x, y)"),
    "baseline": (r"b", "real", "baseline subtracted from the reward"),
    "advantage": (r"A", "real", "advantage estimate (detached)"),
    "label": (r"d", "binary", "1 if y is desirable, 0 if undesirable"),
    "z0": (r"z_{0}", "nonneg", "KTO reference point (detached)"),
    "score": (r"s_{\phi}", "unit", "score in [0, 1] of y"),
    "source_weight": (r"r_{c}", "positive", "C-RLFT weight of the completion's source class"),
    "max_completion_length": (r"L_{\max}", "length", "longest completion the sampler may draw: Dr. GRPO's "
                              "constant normaliser (detached)"),
    "mean_length": (r"\bar{L}", "length", "tokens a token-level mean averages over, per sequence of the batch: "
                    "DAPO's normaliser (detached)"),
}

# The policy variables of each objective shape, in the order (w+, w-) or (w,).
POLICY_VARIABLES = {
    "paired": ("logp_chosen", "logp_rejected"),
    "single": ("logp",),
    "reward_model": ("reward_chosen", "reward_rejected"),
}

# LaTeX names of hyperparameters; anything else prints as its own name.
HYPER_LATEX = {
    "beta": r"\beta", "eps": r"\epsilon", "tau": r"\tau", "alpha": r"\alpha", "gamma": r"\gamma",
    "delta": r"\delta", "lam": r"\lambda", "lambda_d": r"\lambda_{D}", "lambda_u": r"\lambda_{U}",
    "margin": r"m", "center": r"c",
    "f_alpha": r"\alpha_{f}", "ld_alpha": r"\alpha_{\mathrm{LD}}",
    "eps_low": r"\epsilon_{\mathrm{low}}", "eps_high": r"\epsilon_{\mathrm{high}}", "tau_pos": r"\tau_{+}",
    "tau_neg": r"\tau_{-}", "k_pos": r"k_{+}", "k_neg": r"k_{-}", "lambda_pos": r"\lambda_{+}",
    "lambda_neg": r"\lambda_{-}",
}

_ASSUMPTIONS = {
    "logprob": dict(real=True), "real": dict(real=True), "length": dict(positive=True),
    "binary": dict(real=True), "nonneg": dict(nonnegative=True), "unit": dict(real=True),
    "positive": dict(positive=True),
}
SYMBOLS = {name: sp.Symbol(name, **_ASSUMPTIONS[dom]) for name, (_, dom, _) in VARIABLES.items()}


def hyper_symbol(name: str) -> sp.Symbol:
    """Hyperparameters are positive symbols, so beta * x does not flip sign in simplification."""
    return sp.Symbol(name, positive=True)


def symbol_latex() -> dict:
    names = {SYMBOLS[n]: tex for n, (tex, _, _) in VARIABLES.items()}
    names.update({hyper_symbol(n): tex for n, tex in HYPER_LATEX.items()})
    return names


# ---------------------------------------------------------------------------------------------
# SymPy has no sigmoid. These two functions carry their own derivative, LaTeX and exp-rewrite,
# so derived weights read sigma(.) instead of a tower of exponentials.
# ---------------------------------------------------------------------------------------------
class Sigmoid(sp.Function):
    """sigma(x) = 1 / (1 + exp(-x)); d sigma / dx = sigma(x) sigma(-x)."""

    def fdiff(self, argindex=1):
        x = self.args[0]
        return Sigmoid(x) * Sigmoid(-x)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0]))).evalf(prec)

    def _latex(self, printer, exp=None):
        s = rf"\sigma\left({printer._print(self.args[0])}\right)"
        return s if exp is None else rf"{s}^{{{exp}}}"


class LogSigmoid(sp.Function):
    """log sigma(x) = -softplus(-x); its derivative is sigma(-x)."""

    def fdiff(self, argindex=1):
        return Sigmoid(-self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return -sp.log(1 + sp.exp(-x))

    def _eval_evalf(self, prec):
        return (-sp.log(1 + sp.exp(-self.args[0]))).evalf(prec)

    def _latex(self, printer, exp=None):
        s = rf"\log\sigma\left({printer._print(self.args[0])}\right)"
        return s if exp is None else rf"\left({s}\right)^{{{exp}}}"


class StopGradient(sp.Function):
    """sg(x): x in value, no derivative (torch's detach). derive_weights drops it once it has
    differentiated, so a weight reads x (CISPO's detached, clipped ratio)."""

    @classmethod
    def eval(cls, x):
        if x.is_number:
            return x

    def fdiff(self, argindex=1):
        return sp.S.Zero

    def _latex(self, printer, exp=None):
        s = rf"\operatorname{{sg}}\left({printer._print(self.args[0])}\right)"
        return s if exp is None else rf"{s}^{{{exp}}}"


# ---------------------------------------------------------------------------------------------
# The two back-ends. Same operation names; objectives use nothing else.
# ---------------------------------------------------------------------------------------------
def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0 without cancellation (Maechler 2012). Each branch sees only inputs
    in its own range, so the branch torch.where discards cannot send a NaN gradient back. At x = 0
    (a float32 log-prob rounds to exactly 0 once one logit leads by ~17) the value is floored at
    log(tiny) rather than -inf, so a clamp downstream (unlikelihood's kappa) gets a 0, not a NaN, gradient."""
    near_zero = x > -0.6931471805599453
    x_near = torch.where(near_zero, x.clamp(max=-torch.finfo(x.dtype).tiny), -1.0)
    x_far = torch.where(near_zero, -1.0, x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


class _SafeExp(torch.autograd.Function):
    """exp whose backward passes a zero upstream gradient through as zero. torch's backward is
    grad * exp(x), which is 0 * inf = NaN where exp overflows (a log-ratio above ~89 in float32) even
    though nothing downstream depends on it, as in PPO's clipped branch. Bit for bit torch's exp and
    backward wherever exp(x) is finite."""

    @staticmethod
    def forward(ctx, x):
        result = torch.exp(x)
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad):
        (result,) = ctx.saved_tensors
        return torch.where(grad == 0, grad, grad * result)


def _gate(value, gate):
    """`value`, a product that carries the 0/1 factor `gate`, with 0 where the gate is closed and the
    product is NaN (inf * 0 or 0 / 0 in floating point): there its limit, and autograd's, is 0. Every
    other entry, -0.0 included, is left as it is."""
    if not torch.is_tensor(value):
        return value
    return torch.where((gate == 0) & torch.isnan(value), torch.zeros_like(value), value)


def _expm1_floored(x):
    """e^x - 1 for a log-prob x as `_log1mexp` sees it: expm1(x), except -1 where log1mexp floors x
    (x > -tiny, a log-prob of 0 up to rounding). There log(1 - e^x) is held constant, so the slope of
    the log-odds x - log(1 - e^x), 1 / (1 - e^x) = -1 / expm1(x) in general, is 1: what autograd gives."""
    if not torch.is_tensor(x):
        return math.expm1(x)
    return torch.where(x > -torch.finfo(x.dtype).tiny, -torch.ones_like(x), torch.expm1(x))


class _AccurateSigmoid(torch.autograd.Function):
    """sigma with the backward sigma(x) sigma(-x). torch.sigmoid's backward computes y (1 - y), which
    rounds to 0 (or loses all relative accuracy) once y is within 1e-16 of 1, where the exact
    weight is tiny but not zero. Verification compares weights elementwise, so this matters."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * torch.sigmoid(-x)


def _as_tensor_like(a, b):
    return a if torch.is_tensor(a) else torch.as_tensor(a, dtype=b.dtype, device=b.device)


def _minimum(a, b):
    if not (torch.is_tensor(a) or torch.is_tensor(b)):
        return min(a, b)
    a, b = _as_tensor_like(a, b), _as_tensor_like(b, a)
    return torch.minimum(a, b)


def _maximum(a, b):
    if not (torch.is_tensor(a) or torch.is_tensor(b)):
        return max(a, b)
    a, b = _as_tensor_like(a, b), _as_tensor_like(b, a)
    return torch.maximum(a, b)


def _numeric(tensor_fn, number_fn):
    """Elementwise function that also takes a plain number (a hyperparameter such as log(kappa))."""
    return lambda x: tensor_fn(x) if torch.is_tensor(x) else number_fn(x)


def _sum_tokens(x, mask):
    # Per-token losses summed over each sequence's completion tokens; mask None = sequence level.
    return x if mask is None else (x * mask).sum(-1)


def _number_sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _number_logsigmoid(x: float) -> float:
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


TORCH = SimpleNamespace(
    name="torch",
    exp=_numeric(_SafeExp.apply, math.exp), expm1=_numeric(torch.expm1, math.expm1),
    log=_numeric(torch.log, math.log), sqrt=_numeric(torch.sqrt, math.sqrt), abs=torch.abs,
    sigmoid=_numeric(_AccurateSigmoid.apply, _number_sigmoid),
    logsigmoid=_numeric(F.logsigmoid, _number_logsigmoid),
    softplus=lambda x: -F.logsigmoid(-x),  # F.softplus turns into the identity above 20 (2e-9 off)
    log1mexp=_log1mexp, expm1_floored=_expm1_floored, gate=_gate,
    minimum=_minimum, maximum=_maximum,
    clip=lambda x, lo, hi: torch.clamp(x, lo, hi),
    relu=torch.relu,
    step=lambda x: (x > 0).to(x.dtype),  # Heaviside; the value at 0 is measure-zero for gradients
    sum_tokens=_sum_tokens,
    stop_gradient=lambda x: x.detach() if torch.is_tensor(x) else x,
)

SYMPY = SimpleNamespace(
    name="sympy",
    exp=sp.exp, expm1=lambda x: sp.exp(x) - 1, log=sp.log, sqrt=sp.sqrt, abs=sp.Abs,
    sigmoid=Sigmoid, logsigmoid=LogSigmoid, softplus=lambda x: -LogSigmoid(-x),
    log1mexp=lambda x: sp.log(1 - sp.exp(x)), expm1_floored=lambda x: sp.exp(x) - 1,
    gate=lambda value, gate: value,  # the product already carries the gate; only floats need the guard
    minimum=sp.Min, maximum=sp.Max,
    clip=lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi),
    relu=lambda x: sp.Max(x, 0),
    step=sp.Heaviside,  # Heaviside(0) = 1/2, which is what autograd gives at a tie of min/max
    sum_tokens=lambda x, mask: x,  # symbolically we look at one token
    stop_gradient=StopGradient,
)


def symbolic_inputs() -> SimpleNamespace:
    """The symbols as attribute access (``v.logp_chosen``); masks are absent in the one-token view."""
    return SimpleNamespace(**SYMBOLS, mask=None, mask_chosen=None, mask_rejected=None)


# ---------------------------------------------------------------------------------------------
# Derivation, proof, rendering, compilation.
# ---------------------------------------------------------------------------------------------
def derive_weights(loss: sp.Expr, shape: str) -> tuple:
    """w+ = -dL/d(first policy variable); w- = +dL/d(second). One signed weight for 'single'."""
    names = POLICY_VARIABLES[shape]
    signs = (-1, 1)
    return tuple((signs[i] * sp.diff(loss, SYMBOLS[n])).replace(StopGradient, lambda x: x)
                 for i, n in enumerate(names))


def _is_zero(expr: sp.Expr) -> bool:
    expr = expr.rewrite(sp.exp) if expr.has(Sigmoid, LogSigmoid) else expr
    for attempt in (sp.expand, sp.simplify, lambda e: sp.simplify(sp.expand(sp.powsimp(e, force=True)))):
        if attempt(expr) == 0:
            return True
    return False


def grid_points(symbols, n: int, seed: int = 0) -> list[dict]:
    """Rational sample points. Log-prob differences enter through exp(); we pick them as logs of
    rationals so that ratios like exp(l - l_old) stay exact."""
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        point = {}
        for s in symbols:
            dom = VARIABLES[s.name][1] if s.name in VARIABLES else "positive"
            q = sp.Rational(rng.randint(1, 19), rng.randint(2, 9))
            if dom == "logprob":
                point[s] = -q
            elif dom == "binary":
                point[s] = rng.randint(0, 1)
            elif dom == "length":
                point[s] = rng.randint(1, 9)
            elif dom in ("unit",):
                point[s] = sp.Rational(rng.randint(1, 9), 10)
            elif dom == "real":
                point[s] = q * rng.choice((-1, 1))
            elif dom == "positive" and s.name in ("eps",):
                point[s] = sp.Rational(rng.randint(1, 4), 10)
            else:
                point[s] = q
        points.append(point)
    return points


def _vanishes_on_grid(difference: sp.Expr, scale: sp.Expr, n_grid: int, digits: int) -> bool:
    # the scale's symbols too: a symbol can cancel from the difference and still be in the scale
    free = sorted(difference.free_symbols | scale.free_symbols, key=lambda s: s.name)
    for point in grid_points(free, n_grid):
        value = difference.subs(point)
        if value.is_Rational:
            if value != 0:
                return False
            continue
        size = max(1, abs(sp.N(scale.subs(point), digits)))
        if abs(sp.N(value, digits)) > sp.Float(10) ** (5 - digits) * size:
            return False
    return True


def prove_equal(derived: sp.Expr, closed: sp.Expr, n_grid: int = 24, digits: int = 50) -> str:
    """'symbolic' if derived - closed simplifies to 0; else 'grid' if it vanishes at n_grid rational
    points evaluated to `digits` significant digits (exactly where the values are rational);
    else 'FAILED'. A few grid points go first, so a real difference fails fast."""
    difference = derived - closed
    if not _vanishes_on_grid(difference, closed, 4, digits):
        return "FAILED"
    if _is_zero(difference):
        return "symbolic"
    return "grid" if _vanishes_on_grid(difference, closed, n_grid, digits) else "FAILED"


def to_latex(expr: sp.Expr) -> str:
    return sp.latex(expr, symbol_names=symbol_latex())


def _variadic(torch_binary):
    def op(*args):
        out = args[0]
        for a in args[1:]:
            out = torch_binary(out, a)
        return out
    return op


class _TorchPrinter(TorchPrinter):
    """SymPy's torch printer, taught our sigmoids and vectorised Min / Max / Heaviside (the stock
    ones accept Python numbers badly: torch.heaviside needs a tensor second argument). The sigmoids
    compile to the package's stable functions (the torch back-end's, as the built-in methods use)."""

    def _print_Sigmoid(self, expr):
        return f"_sigmoid({self._print(expr.args[0])})"

    def _print_LogSigmoid(self, expr):
        return f"_logsigmoid({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr):
        return f"_heaviside({self._print(expr.args[0])})"

    def _print_Min(self, expr):
        return f"_minimum({', '.join(self._print(a) for a in expr.args)})"

    def _print_Max(self, expr):
        return f"_maximum({', '.join(self._print(a) for a in expr.args)})"


def _heaviside(x):
    x = torch.as_tensor(x)
    return torch.where(x > 0, 1.0, torch.where(x < 0, 0.0, 0.5)).to(x.dtype)  # H(0) = 1/2, as SymPy


class _CompiledTorch:
    """What `torch` means inside a compiled expression. exp is the back-end's (its backward stays
    finite where exp overflows and nothing depends on it); every other function is torch's. A function
    of plain numbers only (log 2, sqrt(beta): a constant, or a hyperparameter, which arrives as a Python
    number) is evaluated in float64 and returns a Python number, where torch would refuse a non-tensor."""

    _STABLE = {"exp": TORCH.exp, "expm1": TORCH.expm1, "log": TORCH.log, "sqrt": TORCH.sqrt}

    def __init__(self):
        self._wrapped = {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._wrapped:
            target = getattr(torch, name)
            if not callable(target) or isinstance(target, type):
                return target
            self._wrapped[name] = self._numbers_too(self._STABLE.get(name, target))
        return self._wrapped[name]

    @staticmethod
    def _numbers_too(function):
        def call(*args, **kwargs):
            if args and all(isinstance(a, (int, float)) for a in args):
                result = function(*(torch.tensor(a, dtype=torch.float64) for a in args), **kwargs)
                return result.item() if torch.is_tensor(result) else result
            return function(*args, **kwargs)
        return call


_TORCH_NAMESPACE = {"torch": _CompiledTorch(), "_heaviside": _heaviside, "_sigmoid": TORCH.sigmoid,
                    "_logsigmoid": TORCH.logsigmoid, "_minimum": _variadic(_minimum),
                    "_maximum": _variadic(_maximum)}


def to_torch(expr: sp.Expr, symbols: list[sp.Symbol]):
    """Compile a SymPy expression into a torch function of `symbols` (positional)."""
    if expr.has(sp.Piecewise):
        expr = expr.rewrite(sp.Heaviside)
    return sp.lambdify(symbols, expr, modules=[_TORCH_NAMESPACE, "torch"], printer=_TorchPrinter)
