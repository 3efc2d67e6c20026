"""Helpers the chapters share: LaTeX display, the weights table, and chapter-sized training runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sympy as sp
import torch

from . import objectives, symbolic, tables
from .data import read_jsonl

DELTA = sp.Symbol("Delta", real=True)
ROOT = Path(__file__).resolve().parents[1]


def latex(expr) -> str:
    return symbolic.to_latex(expr) if isinstance(expr, sp.Basic) else str(expr)


def show(*parts):
    """Display one line of mathematics made of LaTeX strings and SymPy expressions."""
    from IPython.display import Math, display

    display(Math(" ".join(latex(p) for p in parts)))


def in_terms_of_margin(expr: sp.Expr) -> sp.Expr:
    """Rewrite a paired expression through Delta = (l+ - l+ref) - (l- - l-ref) where it only depends on that."""
    s = symbolic.SYMBOLS
    rest = s["logp_rejected"] + s["ref_logp_chosen"] - s["ref_logp_rejected"]
    rewritten = sp.simplify(expr.subs(s["logp_chosen"], DELTA + rest))
    individual = {s[n] for n in ("logp_rejected", "ref_logp_chosen", "ref_logp_rejected")}
    return expr if rewritten.free_symbols & individual else rewritten


def weights_markdown(names=None, margin: bool = True) -> str:
    """The running table: exact w+ and w- beside the source text's entry, as a Markdown table."""
    lines = ["| method | family | $w_+$ | $w_-$ | source text |", "|---|---|---|---|---|"]
    for name in names or objectives.REGISTRY:
        obj = objectives.get(name)
        weights = obj.closed_weights()
        if margin and obj.shape == "paired" and "ref_logp_chosen" in obj.inputs():
            weights = tuple(in_terms_of_margin(w) for w in weights)
        cells = [f"${latex(w)}$" for w in weights] + ([""] if len(weights) == 1 else [])
        seed = obj.seed_weights()
        if seed is not None and margin and obj.shape == "paired":
            seed = tuple(in_terms_of_margin(w) for w in seed)
        seed_cell = ", ".join(f"${latex(w)}$" for w in seed) if seed is not None else ""
        lines.append(f"| `{name}` | {obj.family} | {cells[0]} | {cells[1]} | {seed_cell} |")
    return "\n".join(lines)


def seed_differences(names=None) -> list[dict]:
    rows = []
    for name in names or objectives.REGISTRY:
        c = tables.compare_with_seed(name)
        if c.seed is not None:
            rows.append({"method": name, "same": c.same, "same_at_defaults": c.same_at_defaults, "note": c.note})
    return rows


def paired_weight_curve(name: str, margins: torch.Tensor, base: float = -1000.0, **hp):
    """w+ and w- of a paired method against the margin: l+- = base +- Delta/2, reference log-probs at
    `base`, |y| = 1 (so reference-free methods see the same log-prob gap)."""
    obj = objectives.get(name)
    ones = torch.ones_like(margins)
    batch = {"logp_chosen": base + margins / 2, "logp_rejected": base - margins / 2, "ref_logp_chosen": base * ones,
             "ref_logp_rejected": base * ones, "len_chosen": ones, "len_rejected": ones}
    return obj.weights({k: v for k, v in batch.items() if k in obj.inputs()}, **hp)


@dataclass
class Run:
    path: Path
    metrics: list
    evals: list
    config: dict

    def column(self, key: str) -> list:
        return [m.get(key, float("nan")) for m in self.metrics]


def load_run(path) -> Run:
    path = Path(path)
    return Run(path, read_jsonl(path / "metrics.jsonl"), read_jsonl(path / "eval.jsonl"),
               json.loads((path / "config.json").read_text()))


def chapter_run(method: str, name: str | None = None, callbacks=(), **overrides) -> Run:
    """Train `method` from the shipped reference into runs/book/<name> (replacing the chapter's previous
    run there, which the book owns), without progress bars, and load what it logged. `callbacks` watch
    the run (see trainer.py)."""
    from .config import default_config
    from .trainer import train

    out = ROOT / "runs" / "book" / (name or method)
    values = {"data_dir": str(ROOT / "data"), "model": str(ROOT / "data" / "reference"), "out": str(out),
              "progress": False} | overrides
    train(default_config(method, **values), overwrite=True, callbacks=callbacks)
    return load_run(out)


def print_evals(run: Run, label: str = "", keys=("gold_reward", "kl", "win_rate")) -> tuple[dict, dict]:
    """One line per held-out evaluation of a run (step, then `keys`); returns the first and the last."""
    names = {"gold_reward": "gold reward", "kl": "KL", "win_rate": "win rate", "mean_length": "mean length"}
    for e in run.evals:
        cells = "   ".join(f"{names.get(k, k)} {e[k]:6.2f}" if k == "kl" else f"{names.get(k, k)} {e[k]:.3f}"
                           for k in keys)
        print(f"{label}{' ' if label else ''}step {e['step']:4d}   {cells}")
    return run.evals[0], run.evals[-1]


def mean(rows: list, key: str | None = None) -> float:
    """The mean of a list of numbers, or of one key over a list of dicts."""
    values = [r[key] for r in rows] if key is not None else list(rows)
    return sum(values) / len(values)
