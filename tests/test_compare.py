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
    values = compare.sweeps()["dpo"][1]
    assert [(p.method, p.value, p.seed) for p in points] == [("dpo", v, s) for s in compare.SEEDS for v in values]
    assert len(compare.SEEDS) >= 3 and compare.EVALUATIONS >= 10


def test_online_variants_train_their_objective_on_its_own_samples_at_the_online_budget(tmp_path):
    points = compare.plan(list(compare.VARIANTS), seeds=(1,))
    assert {p.listed for p in points} == set(compare.VARIANTS) and {p.seed for p in points} == {1}
    online_dpo = next(p for p in points if p.listed == "online_dpo").config(tmp_path)
    ppo = compare.Point("ppo_clip", "eps", 0.2).config(tmp_path)
    assert online_dpo.method == "dpo" and online_dpo.sampling == "online" and online_dpo.seed == 1
    assert online_dpo.max_steps * online_dpo.batch_size * online_dpo.samples_per_prompt == \
        ppo.max_steps * ppo.batch_size * ppo.samples_per_prompt  # the same samples as PPO
    assert "online_dpo" in online_dpo.out and "seed=1" in online_dpo.out
    for config, updates in ((online_dpo, 50), (ppo, 50 * ppo.update_epochs)):  # completions sampled: 3,200 each
        assert compare.budget(config.to_dict(), 50) == {"examples": 3200, "updates": updates}, config.method
    assert compare.VARIANTS_PANEL in compare.groups([{"method": "online_dpo"}, {"method": "dpo"}])


def test_knob_goes_to_the_objective_or_the_config(tmp_path):
    beta = compare.Point("dpo", "beta", 0.5, seed=2).config(tmp_path)
    assert beta.hyperparameters == {"beta": 0.5} and beta.max_steps == compare.STEPS["offline"] and beta.seed == 2
    assert beta.eval_every * compare.EVALUATIONS == beta.max_steps
    kl = compare.Point("rloo", "kl_coef", 0.2).config(tmp_path, max_steps=20)
    assert kl.kl_coef == 0.2 and kl.hyperparameters == {} and kl.max_steps == 20 and kl.eval_every == 2


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


def _rows(seeds=(0,), noise=None):
    """Two methods, three knob values each (one step), per seed: b is a's frontier moved right by 2 and down by 0.1."""
    rows = []
    for seed, method, (kl, reward) in itertools.product(seeds, ["a", "b"], [(0.5, 0.5), (3.0, 0.7), (12.0, 0.95)]):
        shift = noise[(seed, method, kl)] if noise else 0.0
        rows.append({"method": method, "knob": "beta", "value": kl, "seed": seed, "step": 10, "examples": 320,
                     "updates": 10, "kl": kl + (method == "b") * 2, "train_seconds": 10.0 + seed, "win_rate": 0.5,
                     "gold_reward": reward - (method == "b") * 0.1 + shift, "mean_length": 9.0})
    return rows + [{"method": "reference", "knob": "", "value": "", "seed": 0, "step": 0, "kl": 0.0,
                    "gold_reward": 0.4, "train_seconds": 0.0, "win_rate": 0.5, "mean_length": 9.0}]


def test_best_within_a_budget():
    rows = _rows()
    assert compare.best_within(rows, 1.0) == {"a": rows[0]}  # b's cheapest point has KL 2.5
    best = compare.best_within(rows, 5.0)
    assert best["a"]["gold_reward"] == 0.7 and best["b"]["gold_reward"] == pytest.approx(0.6)
    assert compare.best_within(rows, math.inf)["b"]["kl"] == 14.0
    table = compare.budget_table(rows, budgets=(1.0, math.inf))  # one seed: the plain best, no interval
    assert "| a | 0.50 ± 0.00 | 0.95 ± 0.00 | beta: 12 | 320 | 10 | 10 |" in table
    assert "| b | – | 0.85 ± 0.00 | beta: 12 | 320 | 10 | 10 |" in table and "gold reward 0.400" in table


def test_t_quantiles_are_students():
    import sympy.stats

    for df, t in compare.T975.items():
        cdf = sympy.stats.cdf(sympy.stats.StudentT("T", df))(t)
        assert abs(float(cdf) - 0.975) < 2e-4, df
    mean, half = compare.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert compare.interval([5.0]) == (5.0, 0.0)


def test_summaries_average_the_seeds_with_intervals():
    rows = _rows(seeds=(0, 1, 2), noise={(s, m, kl): 0.01 * s for s in range(3) for m in "ab"
                                         for kl in (0.5, 3.0, 12.0)})
    summary = {(r["method"], r["value"]): r for r in compare.summarise(rows) if r["method"] != "reference"}
    a = summary[("a", 3.0)]
    assert a["n"] == 3 and a["gold_reward"] == pytest.approx(0.71) and a["kl"] == 3.0 and a["kl_ci"] == 0.0
    assert a["gold_ci"] == pytest.approx(4.303 * 0.01 / math.sqrt(3)) and a["train_seconds"] == 11.0


def test_the_adjusted_best_pays_for_picking_a_lucky_setting():
    """Method a's cheapest setting is lucky on seed 0 only. The best of the means picks it (its mean, 1.0, beats the
    steady 0.95 of setting 12); holding each seed out, the other seeds' pick is scored on the held-out seed."""
    noise = {(s, m, kl): 0.0 for s in range(3) for m in "ab" for kl in (0.5, 3.0, 12.0)}
    noise[(0, "a", 0.5)] = 1.5  # one lucky run: 2.0 where the other seeds get 0.5
    rows = _rows(seeds=(0, 1, 2), noise=noise)
    naive = compare.best_within(compare.summarise(rows), math.inf)["a"]
    assert naive["value"] == 0.5 and naive["gold_reward"] == pytest.approx(1.0)
    adjusted = compare.best_within_adjusted(rows, math.inf)["a"]
    # seed 0 held out: seeds 1 and 2 pick 12 (0.95); seed 1 or 2 held out: the lucky mean (1.25) picks 0.5 (0.5)
    assert adjusted["choices"] == [(12.0, 10), (0.5, 10), (0.5, 10)]
    assert adjusted["gold_reward"] == pytest.approx(0.65) and adjusted["gold_ci"] > 0.5
    within = compare.best_within_adjusted(rows, 1.0)  # b has no setting with KL <= 1
    assert within.keys() == {"a"} and within["a"]["choices"] == [(0.5, 10)] * 3
    # b is a's frontier 0.1 lower: held out seed by seed, a picks (12, 0.5, 0.5), b picks 12 every time (0.85)
    ahead = compare.gap(rows, "a", "b")
    assert ahead["gap"] == pytest.approx((0.95 + 0.5 + 0.5) / 3 - 0.85) and not ahead["resolved"]
    assert compare.gap(rows, "a", "b", budget=1.0) is None
    steady = compare.gap(_rows(seeds=(0, 1, 2), noise={k: 0.01 * k[0] for k in noise}), "a", "b")
    assert steady["gap"] == pytest.approx(0.1) and steady["ci"] == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A one-point DPO sweep on 16 pairs, two steps, evaluated on 4 prompts."""
    rows = (DATA / "pairs_train.jsonl").read_text().splitlines()[:16]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(compare, "sweeps", lambda: compare_sweeps() | {"dpo": ("beta", (0.1,))})
    return dict(out=tmp_path / "out", work=tmp_path / "work", progress=False, seeds=(0,), max_steps=2, batch_size=4,
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
    run = tiny["work"] / "dpo" / "beta=0.1" / "seed=0"
    for path in (run / "model").iterdir():  # an interrupted point: no final model, a checkpoint
        path.unlink()
    (run / "model").rmdir()
    compare.compare(["dpo"], **tiny)
    assert calls == [True]  # resumed from its checkpoint, not started over


def test_an_alias_lists_its_twins_offline_runs_only(tiny):
    rows = compare.compare(["dpo", "gpo_logistic", "online_dpo"], **tiny)
    listed = {m: [(r["seed"], r["step"], r["gold_reward"]) for r in rows if r["method"] == m]
              for m in ("dpo", "gpo_logistic", "online_dpo")}
    assert listed["gpo_logistic"] == listed["dpo"] and len(listed["online_dpo"]) == len(listed["dpo"]) == 2


def test_workers_train_the_missing_seeds_in_processes_of_their_own(tiny):
    compare.compare(["dpo"], **tiny)  # seed 0 in this process
    rows = compare.compare(["dpo"], **(tiny | {"seeds": (0, 1, 2), "workers": 2}))
    assert sorted({r["seed"] for r in rows if r["method"] == "dpo"}) == [0, 1, 2]
    for seed in (1, 2):
        run = tiny["work"] / "dpo" / "beta=0.1" / f"seed={seed}"
        assert (run / "wall_seconds.txt").is_file() and "threads" in (run / "device.txt").read_text()
    seeds = {r["seed"]: r["gold_reward"] for r in rows if r["method"] == "dpo" and r["step"] == 2}
    assert len(set(seeds.values())) > 1  # different seeds, different runs
    assert "over 3 seeds" in (tiny["out"] / "frontier.md").read_text()


def test_a_run_of_other_settings_in_the_work_directory_is_refused_not_reused(tiny):
    compare.compare(["dpo"], **tiny)
    with pytest.raises(ValueError, match=r"holds a run of dpo/beta=0.1/seed=0 with other settings: lr"):
        compare.compare(["dpo"], **(tiny | {"lr": 1e-3}))
    assert compare.compare(["dpo"], **(tiny | {"eval_prompts": 4}))  # the same settings: reused
