"""Objectives made of objectives: weighted sums, and modifiers of the implicit reward (chapter 16).

Composition. The gradient is linear in the loss, so for L = sum_k c_k L_k

    -grad L = sum_k c_k (w+_k grad l(y+) - w-_k grad l(y-)):   w+ = sum_k c_k w+_k,  w- = sum_k c_k w-_k.

`compose({"dpo": 1.0, "sft": 0.2})` returns that sum as an Objective: its formula calls each part's, so its
SymPy loss is the weighted sum and the proof and the autograd checks run on it as on any record; RPO, CPO and
TRL's `loss_type=[...]` lists with `loss_weights` are such sums. `objectives.get("dpo+0.2*sft")` (and so
`unified-rlhf train --method "dpo+0.2*sft"`) parses the same sum. A single-completion part on paired data acts
on the chosen completion, and by default as TRL's "sft" loss does: the mean of -log pi over every chosen token
of the batch, written per row as -l(y+) / mean|y+| (`ChosenTokenMean` supplies the batch's mean |y+|).

Modifiers change what the parts read, not how they are summed:

    with_divergence     f-DPO: the implicit reward beta log(pi/pi_ref) becomes beta f'(pi/pi_ref) for another
                        f-divergence; each weight gains the slope d f'(e^rho) / d rho
    length_desensitized LD-DPO: the log-prob summed with weight 1 up to the shorter completion's length and
                        ld_alpha beyond; each token's weight gains that factor (the token-level view)
    wpo_weighted        WPO: the whole pair's loss, so both weights, times a detached weight omega(y+) omega(y-)
    reference_free      pi_ref dropped (log pi_ref = 0), as CPO's preference term does

Each is a function of an objective, because each applies to many: TRL applies its f-divergences to eight loss
types, ld_alpha and use_weighting to all of them. The records registered below apply them to DPO.
"""

from __future__ import annotations

import math
import re
from functools import cache
from types import SimpleNamespace

import sympy as sp
import torch

from .. import symbolic
from ..logprobs import pad_batch
from .core import RESOLVERS, Hook, Objective, _check_ranges, get, register

_MASKS = {"logp_chosen": "mask_chosen", "ref_logp_chosen": "mask_chosen", "logp_rejected": "mask_rejected",
          "ref_logp_rejected": "mask_rejected"}
_ON_CHOSEN = {"logp": "logp_chosen", "ref_logp": "ref_logp_chosen"}  # a single-completion part on paired data


def _namespace(v, **changes):
    return SimpleNamespace(**(vars(v) | changes))


def _tokenwise(weight, like):
    """A per-sequence weight [B] beside per-token log-probs [B, T]: the same weight for every token."""
    if torch.is_tensor(weight) and torch.is_tensor(like) and weight.dim() < like.dim():
        return weight.unsqueeze(-1)
    return weight


def _summed(m, v, names):
    """The sequence view of token inputs, for a part defined on sequences inside a token-level sum."""
    changes = {}
    for name in names:
        x = getattr(v, name, None)
        if torch.is_tensor(x) and x.dim() == 2:
            changes[name] = m.sum_tokens(x, getattr(v, _MASKS[name]))
    return _namespace(v, **changes)


# =============================================================================================
# Composition
# =============================================================================================
class ChosenTokenMean(Hook):
    """The batch's mean |y+| for every row: a single-completion part divides l(y+) by it, so that the mean over
    the batch's rows is the mean of -log pi over all of the batch's chosen tokens, TRL's "sft" loss."""

    def offline_inputs(self, trainer, indices, batch):
        batch["mean_len_chosen"] = batch["len_chosen"].mean().expand_as(batch["len_chosen"])
        return {}


_CHOSEN_TOKEN_MEAN = ChosenTokenMean()


def _shared(parts, field, fixed):
    """One hyperparameter (or option) per name across the parts, as TRL has one beta for all its losses; the
    first part that has it gives its default, source and range. A disagreement is refused, naming the parts."""
    merged, owner = {}, {}
    for obj, _ in parts:
        for key, value in getattr(obj, field).items():
            if key in fixed.get(obj.name, {}):
                continue
            default = value[0] if field == "defaults" else value
            if key in merged:
                first = merged[key][0] if field == "defaults" else merged[key]
                if first != default or obj.ranges.get(key) != owner[key].ranges.get(key):
                    raise ValueError(f"compose: '{key}' is {first!r} in {owner[key].name} but {default!r} in "
                                     f"{obj.name} (one value serves every part); fix it for one part with "
                                     f"fixed={{'{obj.name}': {{'{key}': ...}}}}")
                continue
            merged[key], owner[key] = value, obj
    return merged, {k: o.ranges[k] for k, o in owner.items() if k in o.ranges}


def compose(parts: dict, name: str | None = None, fixed: dict | None = None, chosen_length: str = "batch",
            register_as_record: bool = False, **fields) -> Objective:
    """The weighted sum sum_k c_k L_k of `parts` ({objective or name: c_k}) as an Objective.

    fixed: {part name: {hyperparameter: value}} held for that part (not a hyperparameter of the sum).
    chosen_length: what a single-completion part on paired data reads as |y|: "batch", the batch's mean |y+|
        (its mean over rows is then TRL's token mean over the batch), or "sequence", the row's own |y+| (a
        per-sequence mean, as RPO's paper). Such a part has length_normalize=True unless `fixed` says otherwise.
    fields: any Objective field to set (paper, note, sweep, task_defaults, ...); the rest follow the parts.
    """
    if not isinstance(parts, dict) or not parts:
        raise ValueError(f"compose: parts must be a non-empty dict {{objective: coefficient}}, got {parts!r}")
    if chosen_length not in ("batch", "sequence"):
        raise ValueError(f"compose: chosen_length must be 'batch' or 'sequence', got {chosen_length!r}")
    items = []
    for key, coefficient in parts.items():
        obj = get(key)
        if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(
                coefficient) or coefficient == 0:
            raise ValueError(f"compose: the coefficient of {obj.name} must be a finite non-zero number, got "
                             f"{coefficient!r}")
        items.append((obj, float(coefficient)))
    names = [o.name for o, _ in items]
    if len(set(names)) < len(names):
        raise ValueError(f"compose: {names} names a part twice; add its coefficients instead")
    for obj, _ in items:
        if obj.data == "online" or obj.shape == "reward_model":
            raise ValueError(f"compose: {obj.name} is {'online' if obj.data == 'online' else 'a reward model'}; "
                             "compose sums offline objectives on one kind of data")
        if any(type(hook).loss is not Hook.loss for hook in obj.hooks):
            raise ValueError(f"compose: {obj.name}'s loss is computed over the batch by a hook, not per row, so "
                             "it is not summed row by row")
    paired = any(o.shape == "paired" for o, _ in items)
    on_chosen = set()
    if paired:
        for obj, _ in items:
            if obj.shape == "paired" and obj.data != "paired":
                raise ValueError(f"compose: {obj.name} trains on {obj.data} data, not pairs")
            if obj.shape == "single":
                reads = set(obj.inputs()) - {"logp", "ref_logp", "length"}
                if obj.level == "token" or reads:
                    raise ValueError(f"compose: the single-completion part {obj.name} reads {sorted(reads)} "
                                     "(or tokens); on paired data only l(y+), l_ref(y+) and |y+| are defined")
                on_chosen.add(obj.name)
        data = "paired"
    else:
        kinds = {o.data for o, _ in items}
        if len(kinds) > 1:
            raise ValueError(f"compose: the parts train on different data ({sorted(kinds)}); a sum needs one kind")
        data = kinds.pop()
    fixed = {k: dict(v) for k, v in (fixed or {}).items()}
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"compose: fixed names {unknown}, which are not parts ({names})")
    for part in on_chosen:
        if "length_normalize" in get_part(items, part).options:
            fixed.setdefault(part, {}).setdefault("length_normalize", True)
    for obj, _ in items:  # fixed values must be the part's own hyperparameters, in their ranges
        obj.hyperparameters(**fixed.get(obj.name, {}))
    defaults, default_ranges = _shared(items, "defaults", fixed)
    options, option_ranges = _shared(items, "options", fixed)
    length_name = "mean_len_chosen" if chosen_length == "batch" else "len_chosen"
    level = "token" if any(o.level == "token" for o, _ in items) else "sequence"
    token_vars = tuple(dict.fromkeys(n for o, _ in items for n in o.token_vars))

    def formula(m, v, **hp):
        loss, weights = 0, [0, 0] if paired else [0]
        policy = (v.logp_chosen, v.logp_rejected) if paired else (v.logp,)
        for obj, coefficient in items:
            if m.name == "sympy":  # exact coefficients (0.2 -> 1/5) keep the derivation rational
                coefficient = sp.Rational(repr(coefficient))
            keys = (*obj.defaults, *obj.options)
            values = {k: hp[k] for k in keys if k not in fixed.get(obj.name, {})} | fixed.get(obj.name, {})
            view = _summed(m, v, token_vars) if obj.level != "token" and level == "token" else v
            if obj.name in on_chosen:
                view = SimpleNamespace(logp=view.logp_chosen, ref_logp=getattr(view, "ref_logp_chosen", None),
                                       length=getattr(view, length_name, None), mask=None)
            part_loss, part_weights = obj.formula(m, view, **values)
            if obj.name in on_chosen:
                part_weights = (part_weights[0], 0)
            loss = loss + coefficient * part_loss
            weights = [w + coefficient * _tokenwise(pw, p) for w, pw, p in zip(weights, part_weights, policy)]
        return loss, tuple(weights)

    hooks = tuple(dict.fromkeys(h for o, _ in items for h in o.hooks))  # each once, in the parts' order
    if on_chosen and chosen_length == "batch":
        hooks += (_CHOSEN_TOKEN_MEAN,)
    first = items[0][0]
    sweep = first.sweep if first.sweep and (first.sweep[0] in {**defaults, **options}
                                            or first.sweep[0] not in {**first.defaults, **first.options}) else None
    name = name or "+".join(o.name if c == 1 else f"{c:g}*{o.name}" for o, c in items)
    record = dict(name=name, formula=formula, shape="paired" if paired else "single",
                  family=next((o.family for o, _ in items if o.shape == "paired"), first.family), data=data,
                  paper="weighted sum: " + " + ".join(f"{c:g} {o.name}" for o, c in items), defaults=defaults,
                  options=options, ranges=default_ranges | option_ranges, task_defaults=first.task_defaults,
                  sweep=sweep, hooks=hooks, level=level, token_vars=token_vars,
                  max_log_ratio=min(o.max_log_ratio for o, _ in items),
                  note=(f"On the chosen side: {', '.join(sorted(on_chosen))}, -l(y+) / "
                        f"{'the batch mean |y+| (TRL)' if chosen_length == 'batch' else '|y+|'}." if on_chosen
                        else ""))
    obj = Objective(**(record | fields))
    if register_as_record:
        return register(obj)
    _check_ranges(obj)  # what `register` checks of a record: its defaults and sweep values lie in their ranges
    return obj


def get_part(items, name):
    return next(o for o, _ in items if o.name == name)


_TERM = re.compile(r"\s*(?:(?P<coefficient>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*")


def _written_sum(name) -> Objective | None:
    """objectives.get's resolver: a name with '+' or '*' is a weighted sum."""
    return parse(name) if isinstance(name, str) and ("+" in name or "*" in name) else None


RESOLVERS.append(_written_sum)


@cache
def parse(expression: str) -> Objective:
    """'dpo+0.2*sft' -> compose({"dpo": 1.0, "sft": 0.2}); the same Objective for the same text."""
    parts, position = {}, 0
    while True:
        match = _TERM.match(expression, position)
        if match is None:
            raise ValueError(f"cannot read the weighted sum {expression!r} at character {position}: write "
                             "terms NAME or NUMBER*NAME joined by '+', e.g. 'dpo+0.2*sft'")
        name = match["name"]
        if name in parts:
            raise ValueError(f"{expression!r} names {name} twice; add its coefficients instead")
        parts[name] = float(match["coefficient"] or 1.0)
        position = match.end()
        if position == len(expression):
            break
        if expression[position] != "+":
            raise ValueError(f"cannot read the weighted sum {expression!r} at character {position}: expected '+'")
        position += 1
    return compose(parts, name=expression)


# =============================================================================================
# Modifiers of the implicit reward
# =============================================================================================
def _through_log_ratios(obj: Objective) -> None:
    """Refuse an objective that reads a policy log-prob other than through rho = l - l_ref: replacing the
    implicit reward would change more than the reward."""
    loss = obj.sympy_loss()
    for side in ("chosen", "rejected"):
        logp, ref = symbolic.SYMBOLS[f"logp_{side}"], symbolic.SYMBOLS[f"ref_logp_{side}"]
        if ref not in loss.free_symbols or ref in loss.subs(logp, ref + sp.Dummy("rho")).free_symbols:
            raise ValueError(f"{obj.name} does not read l(y_{side[0]}) only through its log-ratio l - l_ref, so "
                             "it has no implicit reward beta log(pi/pi_ref) to change")


def _paired_sequence_base(obj: Objective, modifier: str) -> None:
    if obj.shape != "paired" or obj.level != "sequence" or obj.data != "paired":
        raise ValueError(f"{modifier}: {obj.name} must be a paired objective on sequence log-probs")


DIVERGENCES = {
    # name: (score f'(t) at t = pi/pi_ref = e^rho, its slope d f'(e^rho) / d rho, f'); a constant in f' cancels in
    # Delta; alpha-divergence reads f_alpha, TRL's coefficient a, which is 1 - the f-DPO paper's alpha
    "reverse_kl": (lambda m, rho, a: rho, lambda m, rho, a: 1, "f'(t) = log t (+1), DPO"),
    "forward_kl": (lambda m, rho, a: 1 - m.exp(-rho), lambda m, rho, a: m.exp(-rho), "f'(t) = 1 - 1/t"),
    "js_divergence": (lambda m, rho, a: m.log(2) + m.logsigmoid(rho), lambda m, rho, a: m.sigmoid(-rho),
                      "f'(t) = log(2t / (1 + t))"),
    "alpha_divergence": (lambda m, rho, a: (m.exp((a - 1) * rho) - 1) / (a - 1),
                         lambda m, rho, a: m.exp((a - 1) * rho),
                         "f'(t) = (t^(a-1) - 1) / (a - 1), a = f_alpha (TRL's; the f-DPO paper's alpha is 1 - a)"),
}


def with_divergence(base, divergence: str, **fields) -> Objective:
    """f-DPO: `base` with its implicit reward rho = log(pi/pi_ref) replaced by the score f'(pi/pi_ref) of the
    f-divergence (DIVERGENCES), as TRL's f_divergence_type. The loss is base's at the scores, and by the chain
    rule each weight is base's times d score / d rho: e^-rho (forward KL), sigma(-rho) (Jensen-Shannon),
    e^((alpha-1) rho) (alpha-divergence). reverse_kl gives base back, term for term."""
    base = get(base)
    if divergence not in DIVERGENCES:
        raise ValueError(f"with_divergence: divergence must be one of {sorted(DIVERGENCES)}, got {divergence!r}")
    _paired_sequence_base(base, "with_divergence")
    _through_log_ratios(base)
    score, slope, _ = DIVERGENCES[divergence]
    alpha = divergence == "alpha_divergence"

    def formula(m, v, **hp):
        a = hp.pop("f_alpha") if alpha else None
        rho_plus, rho_minus = v.logp_chosen - v.ref_logp_chosen, v.logp_rejected - v.ref_logp_rejected
        # base reads l only through l - l_ref (checked), so l = score, l_ref = 0 gives it the score exactly
        view = _namespace(v, logp_chosen=score(m, rho_plus, a), ref_logp_chosen=0, logp_rejected=score(m, rho_minus, a),
                          ref_logp_rejected=0)
        loss, (w_plus, w_minus) = base.formula(m, view, **hp)
        return loss, (w_plus * slope(m, rho_plus, a), w_minus * slope(m, rho_minus, a))

    record = dict(name=f"{base.name}_{divergence}", formula=formula, shape="paired", family=base.family,
                  data="paired", paper=f"f-DPO ({divergence}), Wang et al. 2023, arXiv 2309.16240, on {base.name}",
                  defaults=base.defaults | ({"f_alpha": (0.5, "TRL f_alpha_divergence_coef default")} if alpha
                                           else {}),
                  options=base.options, ranges=base.ranges | ({"f_alpha": "(0, 1)"} if alpha else {}),
                  task_defaults=base.task_defaults, sweep=base.sweep, hooks=base.hooks,
                  # e^-rho (forward KL) and e^((alpha-1) rho) leave float32 past |rho| = 88 / (1 - alpha)
                  max_log_ratio=min(base.max_log_ratio, 1e3 if divergence in ("reverse_kl", "js_divergence") else 80.0),
                  note=f"{DIVERGENCES[divergence][2]}; the implicit reward beta f'(pi/pi_ref) in place of beta "
                       f"log(pi/pi_ref).")
    return Objective(**(record | fields))


def ld_token_coefficients(mask_chosen: torch.Tensor, mask_rejected: torch.Tensor, ld_alpha: float):
    """LD-DPO's weight of each completion token: 1 up to the shorter completion's length, ld_alpha beyond (0 off
    the completion). Masks [B, T] mark each completion's tokens."""
    shared = torch.minimum(mask_chosen.sum(-1), mask_rejected.sum(-1)).unsqueeze(-1)

    def coefficients(mask):
        position = mask.cumsum(-1)  # 1, 2, ... along the completion
        return torch.where(position > shared, torch.full_like(mask, ld_alpha), torch.ones_like(mask)) * mask
    return coefficients(mask_chosen), coefficients(mask_rejected)


class TokenLogprobs(Hook):
    """Both completions' log-probs per token, policy (with gradient) and reference, and their masks: the
    trainer sums the chosen side's, and length desensitisation weighs its tokens by position. One more policy
    forward and one reference forward per step."""

    def offline_inputs(self, trainer, indices, batch):
        examples = [trainer.examples[i] for i in indices]
        pairs = [(e["prompt"], e["completions"][0]) for e in examples] + \
                [(e["prompt"], e["completions"][1]) for e in examples]
        tokens, _, mask = trainer.logprobs(pairs, per_token=True)
        with torch.no_grad():
            reference, _, _ = trainer.logprobs(pairs, trainer.reference, per_token=True)
        for side, part in (("chosen", 0), ("rejected", 1)):
            batch[f"logp_{side}"] = tokens.chunk(2)[part]
            batch[f"ref_logp_{side}"] = reference.chunk(2)[part]
            batch[f"mask_{side}"] = mask.chunk(2)[part]
        return {}


_TOKEN_LOGPROBS = TokenLogprobs()


def length_desensitized(base, ld_alpha: float = 0.5, **fields) -> Objective:
    """LD-DPO: base's loss of the length-desensitised log-probs l_LD(y) = sum_t c_t log pi(y_t), c_t = 1 up to
    the shorter completion's length and ld_alpha beyond (the reference's alike). The weight of token t is base's
    weight times c_t. On sequence log-probs (no tokens to tell apart) it is base itself."""
    base = get(base)
    _paired_sequence_base(base, "length_desensitized")

    def formula(m, v, ld_alpha, **hp):
        if v.mask_chosen is None or v.mask_rejected is None:  # the sequence (and symbolic) view: c_t = 1
            return base.formula(m, v, **hp)
        keep = dict(zip(("chosen", "rejected"), ld_token_coefficients(v.mask_chosen, v.mask_rejected, ld_alpha)))
        changes = {}
        for name in ("logp_chosen", "ref_logp_chosen", "logp_rejected", "ref_logp_rejected"):
            x = getattr(v, name, None)
            if x is not None:
                if x.dim() != 2:
                    raise ValueError(f"{base.name} (length-desensitised): '{name}' must be given per token [B, T] "
                                     f"as the policy's log-probs are (its tail tokens are weighted), got "
                                     f"{tuple(x.shape)}")
                changes[name] = (x * keep[name.rsplit("_", 1)[1]]).sum(-1)
        loss, (w_plus, w_minus) = base.formula(m, _namespace(v, **changes), **hp)
        return loss, (_tokenwise(w_plus, keep["chosen"]) * keep["chosen"],
                      _tokenwise(w_minus, keep["rejected"]) * keep["rejected"])

    reads = [n for n in _MASKS if n in base.inputs()]
    record = dict(name=f"ld_{base.name}", formula=formula, shape="paired", family=base.family, data="paired",
                  paper=f"LD-DPO, Liu et al. 2024, arXiv 2409.06411, on {base.name}",
                  defaults=base.defaults | {"ld_alpha": (ld_alpha, "a middle value; the LD-DPO paper tunes it per "
                                                                   "model, TRL's default (None) is 1, plain DPO")},
                  options=base.options, ranges=base.ranges | {"ld_alpha": "[0, 1]"}, task_defaults=base.task_defaults,
                  sweep=base.sweep, hooks=(*base.hooks, _TOKEN_LOGPROBS), level="token", token_vars=tuple(reads),
                  max_log_ratio=base.max_log_ratio,
                  note="Token t of y past the shorter completion's length counts ld_alpha times in l(y) and "
                       "l_ref(y): w_t = c_t w. The symbolic view is a token of the shared part (c = 1); the tail's "
                       "c = ld_alpha is checked on a GPT-2's parameters (verify's model check, per token) and "
                       "against TRL.")
    return Objective(**(record | fields))


def wpo_sequence_weights(token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor, mask: torch.Tensor):
    """WPO's omega(y) = exp(mean over y's tokens of log pi(y_t) - log sum_v pi(v)^2), each [B, T] (mask 1 on
    the completion), detached. sum_v pi(v)^2 is the probability the policy gives its own sample at that step,
    so omega is 1 on average over the policy's own samples and smaller for text it would not write."""
    with torch.no_grad():
        aligned = ((token_logps - log_sum_sq_probs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return aligned.exp()


class WPOWeights(Hook):
    """omega(y+) omega(y-) for each pair, from one policy forward over the vocabulary under no gradient."""

    def offline_inputs(self, trainer, indices, batch):
        examples = [trainer.examples[i] for i in indices]
        pairs = [(e["prompt"], e["completions"][0]) for e in examples] + \
                [(e["prompt"], e["completions"][1]) for e in examples]
        ids, attention, completion = (t.to(trainer.accelerator.device) for t in pad_batch(
            [p for p, _ in pairs], [c for _, c in pairs], trainer.pad, "right"))
        with torch.no_grad(), trainer.accelerator.autocast():
            position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)
            logits = trainer.model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tokens = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        omega = wpo_sequence_weights(tokens, torch.logsumexp(2 * log_probs, dim=-1), completion[:, 1:].float())
        batch["wpo_weight"] = omega.chunk(2)[0] * omega.chunk(2)[1]
        return {"wpo_weight": batch["wpo_weight"].mean().item()}


_WPO_WEIGHTS = WPOWeights()


def wpo_weighted(base, **fields) -> Objective:
    """WPO: base's loss times the pair's detached weight omega(y+) omega(y-) (wpo_weight), so both weights are
    base's times it, as TRL's use_weighting."""
    base = get(base)
    if base.shape != "paired" or base.data != "paired":
        raise ValueError(f"wpo_weighted: {base.name} must be a paired objective")

    def formula(m, v, **hp):
        loss, weights = base.formula(m, v, **hp)
        return v.wpo_weight * loss, tuple(v.wpo_weight * w for w in weights)

    record = dict(name=f"wpo_{base.name}", formula=formula, shape="paired", family=base.family, data="paired",
                  paper=f"WPO, Zhou et al. 2024, arXiv 2406.11827, on {base.name}", defaults=base.defaults,
                  options=base.options, ranges=base.ranges, task_defaults=base.task_defaults, sweep=base.sweep,
                  hooks=(*base.hooks, _WPO_WEIGHTS), level=base.level, token_vars=base.token_vars,
                  max_log_ratio=base.max_log_ratio,
                  note="omega(y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2]) under the current policy, "
                       "detached (TRL computes it under no_grad): it reweights pairs toward text the policy "
                       "would write itself, and does not itself push any probability.")
    return Objective(**(record | fields))


def reference_free(base, **fields) -> Objective:
    """base with log pi_ref = 0: the implicit reward beta log pi (CPO's preference term is DPO's, so)."""
    base = get(base)
    refs = [n for n in ("ref_logp_chosen", "ref_logp_rejected", "ref_logp") if n in base.inputs()]
    if not refs:
        raise ValueError(f"reference_free: {base.name} reads no reference log-prob")

    def formula(m, v, **hp):
        return base.formula(m, _namespace(v, **dict.fromkeys(refs, 0)), **hp)

    record = dict(name=f"{base.name}_reference_free", formula=formula, shape=base.shape, family=base.family,
                  data=base.data, paper=f"{base.paper}, with log pi_ref = 0", defaults=base.defaults,
                  options=base.options, ranges=base.ranges, task_defaults=base.task_defaults, sweep=base.sweep,
                  hooks=base.hooks, level=base.level, token_vars=tuple(n for n in base.token_vars if n not in refs),
                  max_log_ratio=base.max_log_ratio, note="The reference log-probs are 0: beta log pi is the reward.")
    return Objective(**(record | fields))


# =============================================================================================
# The records: modifiers on DPO, and the compositions papers and TRL name
# =============================================================================================
F_DPO = "f-DPO, Wang et al. 2023, arXiv 2309.16240"
TRL_ALPHA = (" TRL's alpha_divergence raises on float64 log-probs (its exponent's clamp is looked up for float16, "
             "bfloat16 and float32 only) and clamps (alpha - 1) rho at 80, where its gradient is 0; here it is exact.")
for _divergence in ("forward_kl", "js_divergence", "alpha_divergence"):
    _record = with_divergence("dpo", _divergence)
    register(with_divergence("dpo", _divergence, name=f"fdpo_{_divergence}", paper=f"{F_DPO} ({_divergence})",
                             note=_record.note + (TRL_ALPHA if _divergence == "alpha_divergence" else "")))

register(length_desensitized("dpo", name="ld_dpo"))
register(wpo_weighted("dpo", name="wpo", note=wpo_weighted("dpo").note + " TRL's use_weighting multiplies each "
                      "loss in place, which its hinge and sft losses cannot take (a RuntimeError); here any "
                      "objective can be weighted."))

compose({"dpo": 1.0, "sft": 1.0}, name="rpo", chosen_length="sequence", register_as_record=True,
        paper="RPO, Pang et al. 2024, arXiv 2404.19733 (DPO + NLL on y+, alpha = 1)",
        note="DPO plus the chosen completion's NLL divided by its own length (the paper's normalisation): "
             "w+ = w_DPO + 1/|y+|, w- = w_DPO. TRL's rpo (loss_type=['sigmoid', 'sft']) divides by the batch's "
             "mean |y+| instead, a token mean over the batch: compose({'dpo': 1, 'sft': 1}).")
compose({reference_free("dpo"): 1.0, "sft": 1.0}, name="cpo", register_as_record=True,
        paper="CPO, Xu et al. 2024, arXiv 2401.08417 (reference-free DPO + NLL on y+)",
        note="DPO's loss with log pi_ref = 0 plus the NLL of y+ as TRL's CPOTrainer takes it (cross-entropy, a "
             "mean over the batch's chosen tokens): w+ = beta sigma(-beta (l+ - l-)) + 1/mean|y+|.")
compose({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, name="mpo", register_as_record=True,
        paper="MPO, Wang et al. 2024, arXiv 2411.10442 (preference + quality + generation loss)",
        note="TRL's documented MPO: loss_type=['sigmoid', 'bco_pair', 'sft'], loss_weights=[0.8, 0.2, 1.0].")
