"""The frontier sweep: its plan covers every policy method, its summaries are right on hand-made rows,
and a (tiny) sweep writes its table and figures, reuses finished points and resumes interrupted ones."""

import itertools
import math
from pathlib import Path

import pytest
import sympy as sp

from unified_rlhf import cli, compare, objectives, trainer

compare_sweeps = compare.sweeps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def test_plan_covers_every_policy_method_once():
    planned = {p.method for p in compare.plan()}
    policies = {n for n, o in objectives.REGISTRY.items() if o.shape != "reward_model"}
    twins = compare.twins()
    assert planned | set(twins) == policies and set(twins) == {"gpo_logistic", "una_pairwise"}
    assert not planned & set(twins)  # an alias is never trained twice
    for alias, twin in twins.items():  # aliases really are their twin's loss
        assert objectives.get(alias).data == objectives.get(twin).data
        assert sp.simplify(objectives.get(alias).sympy_loss() - objectives.get(twin).sympy_loss()) == 0
    points = compare.plan(["gpo_logistic", "dpo"])
    assert [p.method for p in points] == ["dpo"] * len(compare.sweeps()["dpo"][1])


def test_knob_goes_to_the_objective_or_the_config(tmp_path):
    beta = compare.Point("dpo", "beta", 0.5).config(tmp_path)
    assert beta.hyperparameters == {"beta": 0.5} and beta.max_steps == compare.STEPS["offline"]
    kl = compare.Point("rloo", "kl_coef", 0.2).config(tmp_path, max_steps=8)
    assert kl.kl_coef == 0.2 and kl.hyperparameters == {} and kl.max_steps == 8 and kl.eval_every == 2


def test_unknown_or_unsweepable_methods_are_named(capsys):
    with pytest.raises(KeyError, match="no_such_method"):
        compare.plan(["no_such_method"])
    assert cli.main(["compare", "--methods", "rm"]) == 2
    assert "rm has no sweep" in capsys.readouterr().err


def test_pareto_keeps_only_points_nothing_beats():
    points = [(3.0, 0.7), (1.0, 0.5), (2.0, 0.4), (5.0, 0.9), (4.0, 0.8), (6.0, 0.85), (1.0, 0.6)]
    envelope = compare.pareto(points)
    assert envelope == [(1.0, 0.6), (3.0, 0.7), (4.0, 0.8), (5.0, 0.9)]
    for kl, reward in points:  # every point is matched or beaten by an envelope point with no more KL
        assert any(k <= kl and r >= reward for k, r in envelope)


def _rows():
    rows = []
    for method, (kl, reward) in itertools.product(["a", "b"], [(0.5, 0.5), (3.0, 0.7), (12.0, 0.95)]):
        rows.append({"method": method, "knob": "beta", "value": kl, "kl": kl + (method == "b") * 2,
                     "gold_reward": reward - (method == "b") * 0.1, "train_seconds": 10.0})
    return rows + [{"method": "reference", "knob": "", "value": "", "kl": 0.0, "gold_reward": 0.4,
                    "train_seconds": 0.0}]


def test_best_within_a_budget():
    rows = _rows()
    assert compare.best_within(rows, 1.0) == {"a": rows[0]}  # b's cheapest point has KL 2.5
    best = compare.best_within(rows, 5.0)
    assert best["a"]["gold_reward"] == 0.7 and best["b"]["gold_reward"] == pytest.approx(0.6)
    assert compare.best_within(rows, math.inf)["b"]["kl"] == 14.0
    table = compare.budget_table(rows, budgets=(1.0, math.inf))
    assert "| a | 0.50 (beta=0.5) | 0.95 (beta=12) | 10 |" in table
    assert "| b | – | 0.85 (beta=12) | 10 |" in table and "gold reward 0.400" in table


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A one-point DPO sweep on 16 pairs, two steps, evaluated on 4 prompts."""
    rows = (DATA / "pairs_train.jsonl").read_text().splitlines()[:16]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(compare, "sweeps", lambda: compare_sweeps() | {"dpo": ("beta", (0.1,))})
    return dict(out=tmp_path / "out", work=tmp_path / "work", progress=False, max_steps=2, batch_size=4,
                eval_prompts=4, max_new_tokens=8, data_dir=str(DATA), model=str(DATA / "reference"),
                data_file=str(tmp_path / "pairs.jsonl"))


def test_tiny_sweep_writes_table_and_figures_and_reuses_finished_points(tiny, monkeypatch):
    rows = compare.compare(["dpo", "gpo_logistic"], **tiny)
    assert [(r["method"], r["step"], r["trained_as"]) for r in rows] == [
        ("reference", 0, ""), ("dpo", 1, ""), ("dpo", 2, ""), ("gpo_logistic", 1, "dpo"), ("gpo_logistic", 2, "dpo")]
    assert rows[2]["gold_reward"] == rows[4]["gold_reward"] and rows[2]["kl"] == rows[4]["kl"]
    assert rows[2]["train_seconds"] > 0 and rows[2]["device"]
    table = compare.read_table(tiny["out"] / "frontier.csv")
    assert [(r["method"], r["step"]) for r in table] == [(r["method"], r["step"]) for r in rows]
    assert table[2]["gold_reward"] == pytest.approx(rows[2]["gold_reward"], rel=1e-3)
    for name in ("frontier.png", "best_within_kl.png", "frontier.md"):
        assert (tiny["out"] / name).stat().st_size > 0

    calls = []
    monkeypatch.setattr(trainer, "train", lambda config, resume=False, overwrite=False: calls.append(resume))
    assert compare.compare(["dpo"], **tiny)[1:] == rows[1:3]  # finished: nothing is trained again
    assert calls == []
    run = tiny["work"] / "dpo" / "beta=0.1"
    for path in (run / "model").iterdir():  # an interrupted point: no final model, a checkpoint
        path.unlink()
    (run / "model").rmdir()
    compare.compare(["dpo"], **tiny)
    assert calls == [True]  # resumed from its checkpoint, not started over
