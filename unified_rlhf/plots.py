"""The book's figures: training curves, weight trajectories, reward-KL frontiers, the weight atlas.

Every function draws on ``ax`` (a new figure when omitted) and returns it, so figures compose into
subplots; the multi-panel ones return their figure. Nothing here picks a backend: the book draws
inline, scripts and tests that run headless use Agg, set by the caller.
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


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left envelope of (kl, reward) points: those no other point beats with less or equal KL."""
    envelope, best = [], -math.inf
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        if reward > best:
            envelope.append((kl, reward))
            best = reward
    return envelope


KL_LABEL = "KL($\\pi\\,\\|\\,\\pi_{ref}$), nats per completion"


def plot_frontier(rows: list[dict], ax=None, methods=None, reference: float | None = None, title: str = ""):
    """Gold reward against KL(pi || pi_ref): every evaluated point of each method (faint), joined along
    the method's envelope (the best reward at each KL), one colour and marker per method; rows with
    intervals (compare.summarise) draw them on the envelope's points. `methods`
    picks and orders them (default: all, in order of appearance); `reference` draws the reference
    policy's reward as a dashed line. The KL axis is linear below 1 nat and logarithmic above."""
    ax = _axes(ax)
    by_method, intervals = defaultdict(list), {}
    for row in rows:
        point = (float(row["kl"]), float(row["gold_reward"]))
        by_method[row["method"]].append(point)
        if "gold_ci" in row:  # summarised rows (compare.summarise): means over seeds with 95% half-widths
            intervals[(row["method"], point)] = (float(row["kl_ci"]), float(row["gold_ci"]))
    methods = methods or [m for m in by_method if m != "reference"]
    for i, method in enumerate(methods):
        style = dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)])
        ax.scatter(*zip(*by_method[method]), s=14, alpha=0.35, **style)
        envelope = pareto(by_method[method])
        ax.plot(*zip(*envelope), label=method, markersize=5, **style)
        bars = [(p, intervals[(method, p)]) for p in envelope if (method, p) in intervals]
        if bars:  # the envelope's points with their intervals over seeds, both ways
            (xs, ys), (xerr, yerr) = zip(*(p for p, _ in bars)), zip(*(e for _, e in bars))
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=style["color"], alpha=0.5, linewidth=0.8)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="reference")
    if intervals:  # the axis spans the means drawn (and the reference), not the t-intervals of three seeds, which
        # can reach past what a reward can be; a bar that leaves the axis is cut at its edge
        drawn = [y for method in methods for _, y in by_method[method]]
        ax.set_ylim(*_span(drawn + ([reference] if reference is not None else [])))
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)  # KL >= 0; the automatic margin of a symlog axis would run below it
    ax.set(xlabel=KL_LABEL, ylabel="gold reward", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _span(values: list[float]) -> tuple[float, float]:
    """An axis range around `values` with 5% to spare on each side."""
    margin = 0.05 * (max(values) - min(values) or 1.0)
    return min(values) - margin, max(values) + margin


def plot_frontier_panels(rows: list[dict], groups: dict[str, list[str]], reference: float | None = None):
    """One `plot_frontier` panel per group of methods (title -> methods), sharing both axes so panels
    compare at a given KL."""
    import matplotlib.pyplot as plt

    columns = 2
    lines = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(12, 4.5 * lines), sharex=True, sharey=True, squeeze=False)
    for ax, (title, methods) in zip(axes.flat, groups.items()):
        plot_frontier(rows, ax, methods=methods, reference=reference, title=title)
        ax.xaxis.set_tick_params(labelbottom=True)
    largest = max(float(r["kl"]) for r in rows)
    axes.flat[0].set_xlim(0, max(1.0, 1.3 * largest))  # shared: every panel shows every point, on one KL range
    if any("gold_ci" in r for r in rows):  # shared too: the means of every panel's methods (each panel set its own)
        drawn = {m for methods in groups.values() for m in methods}
        axes.flat[0].set_ylim(*_span([float(r["gold_reward"]) for r in rows if r["method"] in drawn]
                                     + ([reference] if reference is not None else [])))
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_best_within(best: dict[str, dict[float, float]], budgets):
    """Heat map: methods x KL budgets, the best gold reward each method reaches within each budget
    (best[method][budget]; a missing budget is a blank cell)."""
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(best)
    grid = np.array([[best[m].get(b, np.nan) for b in budgets] for m in methods])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(methods) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0.4, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.75 else "white")
    ax.set_xticks(range(len(budgets)), ["any" if math.isinf(b) else f"≤ {b:g}" for b in budgets])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("KL budget")
    ax.set_title("best gold reward within a KL budget")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


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


def plot_weight_panels(panels: dict, columns: int = 2, xlabel: str = "implicit-reward margin"):
    """One panel per group of paired methods (title -> {method: (margins, w_plus, w_minus)}): w+ as a solid
    line and, where it differs from w+, w- dashed in the same colour, with the zero line drawn."""
    import matplotlib.pyplot as plt

    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 3.8 * lines), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels.items()):
        for i, (method, (margins, w_plus, w_minus)) in enumerate(curves.items()):
            x = [float(m) for m in margins]
            plus, minus = [float(w) for w in w_plus], [float(w) for w in w_minus]
            ax.plot(x, plus, color=f"C{i % 10}", label=method)
            if any(abs(a - b) > 1e-12 * max(1.0, abs(a)) for a, b in zip(plus, minus)):
                ax.plot(x, minus, color=f"C{i % 10}", linestyle="--")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel=xlabel, ylabel="weight", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
