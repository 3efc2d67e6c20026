"""The book's figures: training curves, weight trajectories, reward-KL frontiers, the weight atlas.

Every function draws on ``ax`` (a new figure when omitted) and returns it, so figures compose into
subplots. Nothing here picks a backend: scripts and tests that run headless use Agg, set by the caller.
"""

from __future__ import annotations

import math
from collections import defaultdict

MARKERS = "osD^vP*Xh<>"


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def _finite(value) -> bool:
    """A metric worth plotting: a finite number (Python, NumPy or 0-d tensor), not None or a string."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the records that have a finite value for it. The x axis is the
    record's "step" when it has one, else its index."""
    steps, values = [], []
    for i, record in enumerate(records):
        if _finite(record.get(key)):
            steps.append(record.get("step", i))
            values.append(float(record[key]))
    return steps, values


def plot_metrics(records: list[dict], keys: list[str], ax=None):
    """One curve per metric key against the training step; keys missing from a record leave a gap
    in the x values rather than a fake zero."""
    ax = _axes(ax)
    for key in keys:
        steps, values = _series(records, key)
        ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.legend()
    return ax


def plot_weights(records: list[dict], ax=None, low: str = "q10", high: str = "q90"):
    """w+ and w- over training: the batch mean as a line, the band between two quantiles shaded.

    Reads ``w_plus_mean``, ``w_plus_<low>``, ``w_plus_<high>`` and the same for ``w_minus``; a weight
    that no record has (w- for single-completion methods) is not drawn.
    """
    ax = _axes(ax)
    for name, label in (("w_plus", "$w^+$"), ("w_minus", "$w^-$")):
        steps, means = _series(records, f"{name}_mean")
        if not steps:
            continue
        (line,) = ax.plot(steps, means, label=label)
        band = [
            (r.get("step", i), float(r[f"{name}_{low}"]), float(r[f"{name}_{high}"]))
            for i, r in enumerate(records)
            if _finite(r.get(f"{name}_{low}")) and _finite(r.get(f"{name}_{high}"))
        ]
        if band:
            x, lower, upper = zip(*band)
            ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"weight (mean, {low}-{high} band)")
    ax.legend()
    return ax


def plot_frontier(
    rows: list[dict], ax=None, x: str = "kl", y: str = "gold_reward", reference: float | None = None
):
    """Gold reward against KL(pi || pi_ref), one colour and marker per ``method``, each method's points
    joined in order of KL (typically one point per beta or per checkpoint). ``reference`` draws the
    reference policy's reward as a dashed horizontal line."""
    ax = _axes(ax)
    by_method = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append((float(row[x]), float(row[y])))
    for i, (method, points) in enumerate(by_method.items()):
        points.sort(key=lambda point: point[0])
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=MARKERS[i % len(MARKERS)],
            color=f"C{i % 10}",
            label=method,
        )
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="reference")
    ax.set_xlabel("KL($\\pi \\,\\|\\, \\pi_{ref}$)" if x == "kl" else x)
    ax.set_ylabel("gold reward" if y == "gold_reward" else y)
    ax.legend()
    return ax


def plot_weight_atlas(curves: dict, ax=None):
    """Each method's weight as a function of the implicit-reward margin, on one set of axes.

    ``curves`` maps a method name to (margins, weights), two arrays of equal length."""
    ax = _axes(ax)
    for i, (method, (margins, weights)) in enumerate(curves.items()):
        order = sorted(range(len(margins)), key=lambda j: float(margins[j]))
        ax.plot(
            [float(margins[j]) for j in order],
            [float(weights[j]) for j in order],
            color=f"C{i % 10}",
            label=method,
        )
    ax.set_xlabel("implicit-reward margin")
    ax.set_ylabel("weight $w$")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
