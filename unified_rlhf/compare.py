"""The reward-KL frontier: every method over a few values of its main knob, on an equal budget of examples.

    unified-rlhf compare [--methods dpo kto ...] [--out results/frontier] [--work runs/compare]

Each sweep point (a method and one value of its knob) is trained from the reference with the task's
defaults for everything else, for the same budget of examples (`STEPS`: 100 steps of 32 rows offline,
50 steps of 16 prompts x 4 samples online, so 3,200 rows or samples per point; SFT and C-RLFT keep
their 64-row batches and read 6,400), and evaluated at four evenly spaced steps on held-out prompts:
gold reward and KL(pi || pi_ref). Gradient updates and seconds differ between methods and are
reported beside each point (`examples`, `updates`, `train_seconds`). A finished point is never trained
again and an interrupted one resumes from its checkpoint, so the command can be stopped and re-run at will.

Writes to --out: `frontier.csv` (one row per point and evaluated step: method, knob, value, step, examples
and updates used so far, gold reward, KL, win rate, training seconds, device), `frontier.md` (the best gold
reward each method reaches within a few KL budgets) and the figures `frontier.png` and `best_within_kl.png`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import objectives, plots
from .data import read_jsonl
from .plots import pareto  # noqa: F401  (the frontier's envelope; chapters call it as compare.pareto)


# The main knob of each method and its values come from the method's record (`Objective.sweep`): a
# hyperparameter (beta, eps, lam, ...) or, for methods without one, a TrainConfig field (the KL penalty
# folded into the reward for online methods, the learning rate for SFT-like ones). A method whose loss is
# another's term for term (`Objective.same_as`, proved in chapters 10 and 15) is trained once, listed twice.
def sweeps() -> dict[str, tuple[str, tuple]]:
    """method -> (knob, values), in registry order."""
    return {name: obj.sweep for name, obj in objectives.REGISTRY.items() if obj.sweep is not None}


def twins() -> dict[str, str]:
    """alias -> the method trained in its place."""
    return {name: obj.same_as for name, obj in objectives.REGISTRY.items() if obj.same_as is not None}


# An equal budget of examples: 100 x 32 rows offline, 50 x 64 samples online (3,200 each).
STEPS = {"offline": 100, "online": 50}
EVALUATIONS = 4  # evenly spaced, the last at the final step
KL_BUDGETS = (1.0, 2.0, 5.0, 10.0, 20.0, math.inf)
# reference_gold_reward: the reference's gold reward on the same prompts as the point (C-RLFT's carry its tag)
COLUMNS = ("method", "knob", "value", "step", "examples", "updates", "gold_reward", "kl", "kl_stderr", "win_rate",
           "mean_length", "reference_gold_reward", "train_seconds", "device", "trained_as")


@dataclass(frozen=True)
class Point:
    method: str
    knob: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.method}/{self.knob}={self.value:g}"

    def config(self, work: Path, **overrides):
        from .config import default_config

        obj = objectives.get(self.method)
        steps = overrides.get("max_steps", STEPS["online" if obj.data == "online" else "offline"])
        every = max(1, math.ceil(steps / EVALUATIONS))
        values = {"max_steps": steps, "eval_every": every, "eval_at_start": False, "checkpoint_every": every,
                  "progress": False,
                  "out": str(work / self.method / f"{self.knob}={self.value:g}")} | overrides
        if self.knob in obj.defaults:
            return default_config(self.method, hyperparameters={self.knob: self.value}, **values)
        return default_config(self.method, **({self.knob: self.value} | values))


def plan(methods=None) -> list[Point]:
    """The sweep's points in a fixed order; `methods` narrows it (aliases in SAME_AS map to their twin)."""
    sweep, same_as = sweeps(), twins()
    names = list(methods) if methods else list(sweep)
    for name in names:
        objectives.get(name)  # an unknown name fails here, listing the known ones
        if name not in sweep and name not in same_as:
            raise ValueError(f"{name} has no sweep: it trains a reward model, not a policy; sweepable: {list(sweep)}")
    trained = list(dict.fromkeys(same_as.get(name, name) for name in names))
    return [Point(m, sweep[m][0], v) for m in trained for v in sweep[m][1]]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


def finished(point: Point, work: Path, **overrides) -> bool:
    config = point.config(work, **overrides)
    out = Path(config.out)
    evals = read_jsonl(out / "eval.jsonl")
    return (out / "model").is_dir() and bool(evals) and evals[-1]["step"] == config.max_steps


def run_point(point: Point, work: Path, **overrides) -> list[dict]:
    """Train one point unless it is finished (resuming from a checkpoint if it was interrupted), then
    return its rows: one per evaluated step."""
    from .trainer import train

    config = point.config(work, **overrides)
    out = Path(config.out)
    if not finished(point, work, **overrides):
        resume = (out / "checkpoint" / "trainer_state.pt").exists()
        train(config, resume=resume, overwrite=not resume)
        (out / "device.txt").write_text(device_name() + "\n")
    return point_rows(point, out)


def budget(config: dict, step: int) -> dict:
    """What a run has used by `step`: examples read (rows offline, sampled completions online) and
    optimiser updates (online methods take `update_epochs` passes over each batch of samples)."""
    online = objectives.get(config["method"]).data == "online"
    per_step = config["batch_size"] * (config["samples_per_prompt"] if online else 1)
    return {"examples": step * per_step, "updates": step * (config["update_epochs"] if online else 1)}


def point_rows(point: Point, out: Path, listed_as: str | None = None) -> list[dict]:
    config = json.loads((out / "config.json").read_text())
    seconds, elapsed = {}, 0.0
    for row in read_jsonl(out / "metrics.jsonl"):  # training time to each step, evaluations excluded
        elapsed += row["seconds"]
        seconds[row["step"]] = elapsed
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else ""
    return [{"method": listed_as or point.method, "knob": point.knob, "value": point.value, "step": e["step"],
             **budget(config, e["step"]), "gold_reward": e["gold_reward"], "kl": e["kl"], "kl_stderr": e["kl_stderr"],
             "win_rate": e["win_rate"], "mean_length": e["mean_length"],
             "reference_gold_reward": e["reference_gold_reward"],
             "train_seconds": round(seconds.get(e["step"], 0.0), 1), "device": device,
             "trained_as": point.method if listed_as else ""}
            for e in read_jsonl(out / "eval.jsonl") if e["step"] > 0]


def reference_row(work: Path, **overrides) -> dict:
    """The starting model evaluated once, exactly as every point is evaluated (its KL is 0 by definition)."""
    from . import evaluate
    from .config import TrainConfig
    from .models import load_model, load_tokenizer

    path = work / "reference.json"
    if path.exists():
        return json.loads(path.read_text())
    # every point shares these fields (model, data, evaluation settings): the TrainConfig defaults,
    # with the sweep's overrides; "sft" only stands in for the method field, which is not read here
    config = TrainConfig(method="sft", **{k: v for k, v in overrides.items() if k != "max_steps"})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(config.model).to(device)
    result = evaluate.evaluate_held_out(model, model, load_tokenizer(config.model), config.data_dir,
                                        prompts=config.eval_prompts, samples_per_prompt=config.eval_samples,
                                        max_new_tokens=config.max_new_tokens, seed=config.seed)
    row = {"method": "reference", "knob": "", "value": "", "step": 0, "examples": 0, "updates": 0,
           "gold_reward": result["gold_reward"],
           "kl": 0.0, "kl_stderr": 0.0, "win_rate": 0.5, "mean_length": result["mean_length"],
           "reference_gold_reward": result["reference_gold_reward"], "train_seconds": 0.0,
           "device": device_name(), "trained_as": ""}
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def compare(methods=None, out="results/frontier", work="runs/compare", progress: bool = True,
            **overrides) -> list[dict]:
    """Run (or finish) the sweep and write the table and figures. `overrides` are TrainConfig fields
    applied to every point (model, data_dir, eval_prompts, ...; max_steps changes the budget)."""
    from tqdm.auto import tqdm

    out, work = Path(out), Path(work)
    points = plan(methods)
    wanted = set(methods or [*sweeps(), *twins()])
    rows = [reference_row(work, **overrides)]
    bar = tqdm(points, desc="sweep", unit="point", disable=not progress)
    for point in bar:
        bar.set_postfix_str(point.name)
        skipped = finished(point, work, **overrides)
        started = time.time()
        point_result = run_point(point, work, **overrides)
        if point.method in wanted:
            rows += point_result
        rows += [r for alias, twin in twins().items() if twin == point.method and alias in wanted
                 for r in point_rows(point, Path(point.config(work, **overrides).out), listed_as=alias)]
        last = point_result[-1]
        bar.write(f"{point.name:36s} gold {last['gold_reward']:.3f}  KL {last['kl']:6.2f}  "
                  f"{'(done before)' if skipped else f'{time.time() - started:.0f} s'}")
        write_table(rows, out)  # after every point, so an interrupted sweep leaves a table of what it has
    write_results(rows, out)
    return rows


# ============================================================================================ results
def write_table(rows: list[dict], out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frontier.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_table(path) -> list[dict]:
    """frontier.csv back as dicts with numbers where the columns hold numbers."""
    numeric = set(COLUMNS) - {"method", "knob", "value", "device", "trained_as"}
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key in numeric:
            row[key] = float(row[key])
        row["value"] = float(row["value"]) if row["value"] else ""
    return rows


def best_within(rows: list[dict], budget: float) -> dict[str, dict]:
    """Per method, the row with the highest gold reward among those with KL at most `budget`."""
    best = {}
    for row in rows:
        if row["method"] != "reference" and row["kl"] <= budget:
            if row["method"] not in best or row["gold_reward"] > best[row["method"]]["gold_reward"]:
                best[row["method"]] = row
    return best


def budget_table(rows: list[dict], budgets=KL_BUDGETS) -> str:
    """Markdown: the best gold reward each method reaches within each KL budget (and the knob value)."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "reference"))
    reference = next((r["gold_reward"] for r in rows if r["method"] == "reference"), None)
    best = {b: best_within(rows, b) for b in budgets}
    label = [("any KL" if math.isinf(b) else f"KL ≤ {b:g}") for b in budgets]
    lines = [f"| method | {' | '.join(label)} | seconds per run |", "|---|" + "---|" * (len(budgets) + 1)]
    for m in sorted(methods, key=lambda m: -best[budgets[-1]].get(m, {"gold_reward": 0})["gold_reward"]):
        cells = []
        for b in budgets:
            row = best[b].get(m)
            cells.append(f"{row['gold_reward']:.2f} ({row['knob']}={row['value']:g})" if row else "–")
        seconds = max(r["train_seconds"] for r in rows if r["method"] == m)
        lines.append(f"| {m} | {' | '.join(cells)} | {seconds:.0f} |")
    if reference is not None:
        lines.append(f"\nReference policy: gold reward {reference:.3f} at KL 0.")
    return "\n".join(lines)


def _module(obj) -> str:
    """The objectives/ module that defines a method: its family in the book's parts (grpo, zoo, compose, ...)."""
    return obj.formula.__module__.rsplit(".", 1)[-1]


GROUPS = {
    "online RL: REINFORCE, PPO, TRPO, APA, RLOO": lambda obj: obj.data == "online" and _module(obj) != "grpo",
    "GRPO and its descendants": lambda obj: _module(obj) == "grpo",
    "paired, with a reference": lambda obj: obj.family == "paired" and _module(obj) in ("paired", "unpaired")
    and not reference_free(obj.name),
    "supervised, ranked and reference-free": lambda obj: obj.family in ("supervised", "ranked")
    or (obj.family == "paired" and _module(obj) == "paired" and reference_free(obj.name)),
    "the direct-alignment zoo: TRL's other losses": lambda obj: _module(obj) == "zoo" and obj.family == "paired",
    "the zoo: modifiers and compositions": lambda obj: _module(obj) == "compose",
    "unpaired feedback": lambda obj: obj.family == "unpaired",
}


def reference_free(method: str) -> bool:
    """A policy objective whose loss reads no reference log-prob (SLiC, unlikelihood, ORPO, SimPO, ...)."""
    return not objectives.get(method).reads_reference


def groups(rows: list[dict]) -> dict[str, list[str]]:
    """The frontier's panels: title -> the methods of `rows` in that group, in order of appearance."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "reference"]
    return {title: [m for m in methods if belongs(objectives.get(m))] for title, belongs in GROUPS.items()}


def best_grid(rows: list[dict], budgets=KL_BUDGETS) -> dict[str, dict[float, float]]:
    """method -> {budget: best gold reward within it}, methods ordered by their best at the last budget."""
    best = {b: best_within(rows, b) for b in budgets}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "reference"))
    methods.sort(key=lambda m: -best[budgets[-1]].get(m, {"gold_reward": 0})["gold_reward"])
    return {m: {b: best[b][m]["gold_reward"] for b in budgets if m in best[b]} for m in methods}


def write_results(rows: list[dict], out) -> None:
    import matplotlib.pyplot as plt

    out = Path(out)
    write_table(rows, out)
    (out / "frontier.md").write_text("# Best gold reward within a KL budget\n\n" + budget_table(rows) + "\n")
    reference = next((r["gold_reward"] for r in rows if r["method"] == "reference"), None)
    figures = {"frontier.png": plots.plot_frontier_panels(rows, groups(rows), reference),
               "best_within_kl.png": plots.plot_best_within(best_grid(rows), KL_BUDGETS)}
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
