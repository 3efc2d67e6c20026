"""Each plot draws what it should on small fake data."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unified_rlhf import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def weight_records(with_minus: bool):
    records = []
    for step in range(5):
        record = {"step": step * 10, "loss": 1.0 / (step + 1)}
        for name in ("w_plus",) + (("w_minus",) if with_minus else ()):
            record |= {f"{name}_mean": 0.5, f"{name}_q10": 0.2, f"{name}_q90": 0.8}
        records.append(record)
    return records


def test_plot_metrics_one_line_per_key_skipping_missing_values():
    records = weight_records(with_minus=False)
    records[2]["loss"] = float("nan")
    del records[3]["w_plus_mean"]
    ax = plots.plot_metrics(records, ["loss", "w_plus_mean"])
    assert len(ax.lines) == 2
    assert list(ax.lines[0].get_xdata()) == [0, 10, 30, 40]
    assert list(ax.lines[1].get_xdata()) == [0, 10, 20, 40]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "w_plus_mean"]


@pytest.mark.parametrize("with_minus, drawn", [(True, 2), (False, 1)])
def test_plot_weights_line_and_band_per_weight(with_minus, drawn):
    ax = plots.plot_weights(weight_records(with_minus))
    assert len(ax.lines) == drawn and len(ax.collections) == drawn
    assert list(ax.lines[0].get_ydata()) == [0.5] * 5


def frontier_rows():
    return [
        {"method": "dpo", "kl": 3.0, "gold_reward": 0.9},
        {"method": "dpo", "kl": 1.0, "gold_reward": 0.7},
        {"method": "ipo", "kl": 2.0, "gold_reward": 0.8},
        {"method": "kto", "kl": 0.5, "gold_reward": 0.6},
        {"method": "dpo", "kl": 2.0, "gold_reward": 0.65},  # beaten by a point with less KL: off the envelope
    ]


def test_plot_frontier_scatters_every_point_and_joins_each_envelope():
    fig, ax = plt.subplots()
    assert plots.plot_frontier(frontier_rows(), ax=ax, reference=0.4, methods=["dpo", "ipo"]) is ax
    assert len(ax.lines) == 3  # two envelopes and the reference line
    dpo = ax.lines[0]
    assert list(dpo.get_xdata()) == [1.0, 3.0] and list(dpo.get_ydata()) == [0.7, 0.9]
    assert [len(c.get_offsets()) for c in ax.collections] == [3, 1]  # every point of each method
    assert ax.lines[0].get_marker() != ax.lines[1].get_marker()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dpo", "ipo", "reference"]


def test_frontier_panels_share_their_axes():
    fig = plots.plot_frontier_panels(frontier_rows(), {"one": ["dpo"], "two": ["ipo", "kto"], "three": ["kto"]})
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["one", "two", "three"] and len(fig.axes) == 4
    assert len({ax.get_xlim() for ax in visible}) == 1 and len({ax.get_ylim() for ax in visible}) == 1
    assert visible[0].get_xlim()[0] == 0 and visible[0].get_xlim()[1] >= 3.0  # the largest KL of any panel shows


def test_best_within_heat_map_leaves_missing_budgets_blank():
    fig = plots.plot_best_within({"dpo": {1.0: 0.7, 5.0: 0.9}, "kto": {5.0: 0.6}}, (1.0, 5.0))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.70", "0.90", "0.60"]


def test_plot_weight_atlas_one_curve_per_method():
    x = np.linspace(-3, 3, 7)
    curves = {"dpo": (x, 1 / (1 + np.exp(x))), "ipo": (x[::-1], np.abs(x[::-1] - 1)), "slic": (x, x < 1)}
    ax = plots.plot_weight_atlas(curves)
    assert len(ax.lines) == 3
    assert list(ax.lines[1].get_xdata()) == sorted(x)  # sorted by margin
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dpo", "ipo", "slic"]


def test_the_axis_of_summarised_rows_spans_the_means_not_their_intervals():
    rows = [r | {"gold_ci": 0.8, "kl_ci": 0.1} for r in frontier_rows()]  # three seeds: wide t-intervals
    fig, ax = plt.subplots()
    plots.plot_frontier(rows, ax=ax, reference=0.4)
    low, high = ax.get_ylim()
    means = [r["gold_reward"] for r in rows] + [0.4]
    assert min(means) - 0.1 < low <= min(means) and max(means) <= high < max(means) + 0.1


def test_a_subset_of_summarised_methods_spans_its_own_means():
    rows = [r | {"gold_ci": 0.8, "kl_ci": 0.1} for r in frontier_rows()]
    fig, ax = plt.subplots()
    plots.plot_frontier(rows, ax=ax, methods=["kto"], reference=0.4)  # kto's mean 0.6 and the reference
    low, high = ax.get_ylim()
    assert 0.35 < low <= 0.4 and 0.6 <= high < 0.65  # not stretched to dpo's 0.9


def test_summarised_panels_share_a_range_over_every_panels_means():
    rows = [r | {"gold_ci": 0.8, "kl_ci": 0.1} for r in frontier_rows()]
    fig = plots.plot_frontier_panels(rows, {"dpo": ["dpo"], "kto": ["kto"]})  # the last panel drawn spans 0.6 alone
    low, high = fig.axes[0].get_ylim()
    assert low <= 0.6 and 0.9 <= high < 1.0
