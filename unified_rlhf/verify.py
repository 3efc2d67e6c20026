"""Gradient verification: the closed-form weights against SymPy and against autograd.

The checks per objective (float64 unless said otherwise):
  symbolic  the derivative of the SymPy loss equals the hand-written closed form (symbolic.prove_equal);
  scalar    autograd of the torch loss w.r.t. its log-prob inputs equals the closed-form weights, on
            random and on extreme inputs (|Delta| up to 1e3, or the record's max_log_ratio);
  low precision
            the same extreme inputs in float32 and bfloat16, the precisions training runs in: the loss,
            the closed-form weights and autograd's stay finite (an exp that overflows there fails,
            though float64 holds it);
  compiled  the derived weights compiled to torch equal the closed-form torch weights;
  model     on a real GPT-2 (built from a config), autograd of the loss w.r.t. every parameter equals
            (1/B) sum_i [w+_i grad l(y+_i) - w-_i grad l(y-_i)], assembled from separate backward passes
            with the weights detached.
Each failed check comes with its reason (`Verification.failures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import torch

from . import objectives, symbolic
from .logprobs import pad_batch, sequence_logprobs_slow, sequence_rewards, token_logprobs
from .symbolic import POLICY_VARIABLES, VARIABLES

SCALAR_TOLERANCE = 1e-10
MODEL_TOLERANCE = 1e-8
LOW_PRECISION = (torch.float32, torch.bfloat16)  # the extreme check is repeated in these: finite, or it fails
# which policy log-prob a reference / old log-prob is measured against
_PARTNER = {"ref_logp_chosen": "logp_chosen", "ref_logp_rejected": "logp_rejected",
            "ref_logp": "logp", "old_logp": "logp"}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max_i |a_i - e_i| / max(|a_i|, |e_i|): elementwise, so tiny weights are checked as strictly
    as large ones (0 where both are exactly 0)."""
    actual, expected = torch.broadcast_tensors(actual.detach(), expected.detach())
    scale = torch.maximum(actual.abs(), expected.abs()).clamp_min(1e-300)
    return ((actual - expected).abs() / scale).max().item()


def sample_inputs(obj, n: int = 256, extreme: bool = False, seed: int = 0, **options) -> dict:
    """Random float64 inputs for every variable the loss reads, each in its own domain."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    def signed_magnitude(max_exponent):
        sign = torch.where(uniform() < 0.5, -1.0, 1.0).double()
        return sign * 10 ** uniform(-3, max_exponent)

    batch = {}
    names = obj.inputs(**options)
    for name in sorted(names, key=lambda s: s in _PARTNER):  # policy log-probs before their partners
        domain = VARIABLES[name][1]
        if name in _PARTNER and _PARTNER[name] in batch:
            spread = min(obj.max_log_ratio, 1e3) if extreme else 3.0
            value = (batch[_PARTNER[name]] + uniform(-spread, spread)).clamp(max=-1e-9)
        elif domain == "logprob":
            value = -(10 ** uniform(-6, 3)) if extreme else -uniform(0.05, 20.0)
        elif domain == "real":
            value = signed_magnitude(3) if extreme else 2 * torch.randn(n, generator=g, dtype=torch.float64)
        elif domain == "length":
            value = torch.randint(1, 21, (n,), generator=g).double()
        elif domain == "binary":
            value = torch.randint(0, 2, (n,), generator=g).double()
        elif domain == "nonneg":
            value = uniform(0, 3)
        elif domain == "unit":
            value = uniform()
        else:  # positive: C-RLFT's two source weights
            value = torch.where(uniform() < 0.5, 1.0, 0.1).double()
        batch[name] = value
    return batch


def autograd_weights(obj, batch: dict, **hp):
    """(closed-form weights, autograd weights, losses) with w+ = -dL/dl+, w- = +dL/dl-. A policy log-prob
    the loss does not read (one side of a pair) has autograd weight 0."""
    policy = [batch[n].requires_grad_() for n in POLICY_VARIABLES[obj.shape]]
    out = obj(batch, **hp)
    grads = torch.autograd.grad(out.loss.sum(), policy, allow_unused=True)
    signs = (-1.0, 1.0)
    return out.weights, tuple(s * (torch.zeros_like(p) if g is None else g)
                              for s, g, p in zip(signs, grads, policy)), out.loss


def _scalar_check(obj, n: int = 256, extreme: bool = False, seed: int = 0, dtype=torch.float64, **hp):
    """(relative error of autograd against the closed form, the reason it failed or None). In float64 the
    error must be at most SCALAR_TOLERANCE; in a lower precision only finiteness is asked (the error is 0
    when everything is finite)."""
    obj = objectives.get(obj)
    options = {k: v for k, v in hp.items() if k in obj.options}
    batch = {k: v.to(dtype) for k, v in sample_inputs(obj, n, extreme, seed, **options).items()}
    try:
        closed, auto, loss = autograd_weights(obj, batch, **hp)
    except (ValueError, TypeError, RuntimeError) as error:  # the objective refuses its own inputs
        return float("inf"), f"{type(error).__name__}: {error}"
    labels = ("w+", "w-") if len(closed) == 2 else ("w",)
    parts = {"the loss": loss, **{f"{w} (closed form)": c for w, c in zip(labels, closed)},
             **{f"{w} (autograd)": a for w, a in zip(labels, auto)}}
    bad = {name: int((~torch.isfinite(torch.as_tensor(t))).sum()) for name, t in parts.items()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        where = ", ".join(f"{name} at {count}" for name, count in bad.items())
        return float("inf"), f"inf or NaN: {where} of {n} inputs"
    if dtype != torch.float64:
        return 0.0, None
    error = max(relative_error(a.double(), torch.as_tensor(c).double()) for a, c in zip(auto, closed))
    if error > SCALAR_TOLERANCE:
        return error, f"autograd and the closed-form weights differ by {error:.1e} (relative; at most " \
                      f"{SCALAR_TOLERANCE:g} allowed)"
    return error, None


def scalar_error(obj, n: int = 256, extreme: bool = False, seed: int = 0, **hp) -> float:
    return _scalar_check(obj, n, extreme, seed, **hp)[0]


def compiled_error(obj, n: int = 64, seed: int = 1, **hp) -> float:
    """The derived weights compiled to torch (lambdify) against the closed-form torch weights."""
    obj = objectives.get(obj)
    options = {k: v for k, v in hp.items() if k in obj.options}
    batch = sample_inputs(obj, n, False, seed, **options)
    values = obj.hyperparameters(**hp)
    coefficients = {symbolic.hyper_symbol(k): values[k] for k in obj.defaults}
    closed = obj(batch, **hp).weights
    names = obj.inputs(**options)
    errors = []
    for derived, expected in zip(obj.derived_weights(**options), closed):
        fn = symbolic.to_torch(derived.subs(coefficients), [symbolic.SYMBOLS[v] for v in names])
        got = fn(*[batch[v] for v in names])
        got = got if torch.is_tensor(got) else torch.full_like(expected, float(got))
        errors.append(relative_error(got, expected))
    return max(errors)


# ------------------------------------------------------------------------------- model level
@cache
def tiny_gpt2(seed: int = 0, reward_head: bool = False):
    """A 2-layer GPT-2 built from a config (no download), float64, dropout off."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                        num_labels=1)
    torch.manual_seed(seed)
    model = (GPT2ForSequenceClassification if reward_head else GPT2LMHeadModel)(config)
    return model.double().eval()


def _random_tokens(g, n, lo, hi):
    return [torch.randint(2, 64, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def model_error(obj, batch_size: int = 4, seed: int = 0, side: str = "right", level: str | None = None,
                model=None, **hp) -> float:
    """Relative error ||grad L - assembled|| / ||grad L|| over all parameters of a tiny GPT-2.

    level='token' feeds per-token log-probs to methods defined per token (the default for them);
    level='sequence' gives them summed log-probs instead: the bandit view of the source text.
    model: any causal LM (a scalar-head model for reward-model objectives), e.g. the book's reference
    in float64; default a tiny random GPT-2."""
    obj = objectives.get(obj)
    g = torch.Generator().manual_seed(seed)
    model = model if model is not None else tiny_gpt2(seed, reward_head=obj.shape == "reward_model")
    params = [p for p in model.parameters() if p.requires_grad]
    prompts = _random_tokens(g, batch_size, 1, 4)
    options = {k: v for k, v in hp.items() if k in obj.options}
    batch = sample_inputs(obj, batch_size, False, seed, **options)  # constants; log-probs replaced below
    token_view = (level or obj.level) == "token" and obj.level == "token"
    suffixes = {"paired": ("_chosen", "_rejected"), "reward_model": ("_chosen", "_rejected"), "single": ("",)}
    for suffix in suffixes[obj.shape]:
        ids, attention, completion = pad_batch(prompts, _random_tokens(g, batch_size, 1, 6), 0, side)
        if obj.shape == "reward_model":
            batch[f"reward{suffix}"] = sequence_rewards(model, ids, attention)
            continue
        tokens, mask = token_logprobs(model, ids, attention, completion)
        logp_name, ref_name, mask_name = f"logp{suffix}", f"ref_logp{suffix}", f"mask{suffix}"
        length_name = {"_chosen": "len_chosen", "_rejected": "len_rejected", "": "length"}[suffix]
        per_token = token_view and logp_name in obj.token_vars
        batch[logp_name] = tokens if per_token else tokens.sum(-1)
        batch[mask_name] = mask
        if length_name in batch:
            batch[length_name] = mask.sum(-1).double()
        for const in (ref_name, "old_logp") if suffix == "" else (ref_name,):
            if const in batch:  # a detached log-prob near the policy's own
                noise = 0.3 * torch.randn(tokens.shape, generator=g, dtype=torch.float64)
                shifted = (tokens.detach() + noise * mask).clamp(max=-1e-6) * mask
                batch[const] = shifted if (per_token and const in obj.token_vars) else shifted.sum(-1)
        if per_token and "advantage" in obj.token_vars:  # per-token advantages, as KL shaping makes them
            batch["advantage"] = torch.randn(tokens.shape, generator=g, dtype=torch.float64) * mask
    policy = [batch[n] for n in POLICY_VARIABLES[obj.shape]]
    out = obj(batch, **hp)
    loss = out.loss.mean()
    autograd = torch.autograd.grad(loss, params, retain_graph=True)
    # -grad L = (1/B) sum_i [w+ grad l+ - w- grad l-]: one backward pass per policy log-prob
    assembled = [torch.zeros_like(p) for p in params]
    for sign, weight, value in zip((1.0, -1.0), out.weights, policy):
        grads = torch.autograd.grad((weight.detach() * value).sum(), params, retain_graph=True)
        for acc, gr in zip(assembled, grads):
            acc.add_(sign * gr / batch_size)
    numerator = sum(((a + b) ** 2).sum() for a, b in zip(autograd, assembled)).sqrt()
    denominator = sum((a**2).sum() for a in autograd).sqrt()
    if denominator == 0:  # a batch where every weight vanishes would check nothing
        return float("inf")
    return (numerator / denominator).item()


def logprob_error(seed: int = 0) -> float:
    """Batched log-probs, left and right padded, against the one-at-a-time reference."""
    g = torch.Generator().manual_seed(seed)
    model = tiny_gpt2(seed)
    prompts, completions = _random_tokens(g, 5, 1, 6), _random_tokens(g, 5, 1, 8)
    reference = torch.tensor([sequence_logprobs_slow(model, p, c) for p, c in zip(prompts, completions)],
                             dtype=torch.float64)
    worst = 0.0
    for side in ("left", "right"):
        tokens, _ = token_logprobs(model, *pad_batch(prompts, completions, 0, side))
        worst = max(worst, relative_error(tokens.sum(-1), reference))
    return worst


# ------------------------------------------------------------------------------- one row per method
@dataclass
class Verification:
    name: str
    symbolic: tuple  # per weight: 'symbolic', 'grid' or 'FAILED'
    scalar: float
    extreme: float
    compiled: float
    model: float
    low_precision: dict = field(default_factory=dict)  # dtype name -> why the extreme inputs failed, or None
    reasons: dict = field(default_factory=dict)  # check -> why it failed, where more can be said than a number

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """One line per failed check: the check and why."""
        out = [f"symbolic: the derivative of the loss is not the closed form of {w}"
               for w, proof in zip(("w+", "w-") if len(self.symbolic) == 2 else ("w",), self.symbolic)
               if proof == "FAILED"]
        for check, error, tolerance in (("scalar", self.scalar, SCALAR_TOLERANCE),
                                        ("extreme", self.extreme, SCALAR_TOLERANCE),
                                        ("compiled", self.compiled, SCALAR_TOLERANCE),
                                        ("model", self.model, MODEL_TOLERANCE)):
            if not error <= tolerance:
                reason = self.reasons.get(check) or f"relative error {error:.1e} > {tolerance:g}"
                out.append(f"{check}: {reason}")
        out += [f"extreme ({dtype}): {reason}" for dtype, reason in self.low_precision.items() if reason]
        return out


def verify(name, **hp) -> Verification:
    obj = objectives.get(name)
    options = {k: v for k, v in hp.items() if k in obj.options}
    proofs = tuple(symbolic.prove_equal(d, c) for d, c in
                   zip(obj.derived_weights(**options), obj.closed_weights(**options)))
    reasons = {}
    scalar, reasons["scalar"] = _scalar_check(obj, **hp)
    extreme, reasons["extreme"] = _scalar_check(obj, extreme=True, seed=1, **hp)
    low = {str(dtype).removeprefix("torch."): _scalar_check(obj, extreme=True, seed=1, dtype=dtype, **hp)[1]
           for dtype in LOW_PRECISION}
    try:
        compiled = compiled_error(obj, **hp)
    except Exception as error:  # a derived weight SymPy cannot compile to torch
        compiled, reasons["compiled"] = float("inf"), f"{type(error).__name__}: {error}"
    model = max(model_error(obj, level=level, **hp) for level in {"sequence", obj.level})
    if model == float("inf"):
        reasons["model"] = "every weight of the test batch is 0, so the batch checks nothing"
    return Verification(name=obj.name, symbolic=proofs, scalar=scalar, extreme=extreme, compiled=compiled,
                        model=model, low_precision=low, reasons={k: v for k, v in reasons.items() if v})


def verify_all(names=None) -> list[Verification]:
    return [verify(n) for n in (names or list(objectives.REGISTRY))]
