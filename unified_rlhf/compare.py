"""The reward-KL frontier: every method over a few values of its main knob, three seeds each, on an equal budget.

    unified-rlhf compare [--methods dpo kto ...] [--seeds 0 1 2] [--workers 2] [--out results/frontier]

Each sweep point (a method, one value of its knob, one seed) is trained from the reference with the task's
defaults for everything else, for the same budget of examples (`STEPS`: 100 steps of 32 rows offline, 50 steps
of 16 prompts x 4 samples online, so 3,200 rows or samples per point; SFT and C-RLFT keep their 64-row batches
and read 6,400), and evaluated at ten evenly spaced steps on held-out prompts: gold reward and KL(pi || pi_ref).
The online variants (`VARIANTS`: online DPO, semi-online DPO, online KTO and SimPO) train a paired or
unpaired objective on the policy's own samples, labelled by the gold reward, at the online budget. Examples,
gradient updates and seconds are reported beside each point (`examples`, `updates`, `train_seconds`). A
finished point is never trained again and an interrupted one resumes from its checkpoint, so the command can
be stopped and re-run at will; `workers` points train at once, one torch thread each.

Writes to --out: `frontier.csv` (one row per point, seed and evaluated step: method, knob, value, seed, step,
examples and updates used so far, gold reward, KL, win rate, training seconds, device), `frontier.md` (the best
gold reward each method reaches within a few KL budgets, selection-adjusted, with 95% intervals over seeds) and
the figures `frontier.png` and `best_within_kl.png`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import objectives, plots
from .config import extendable_fields
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
EVALUATIONS = 10  # evenly spaced, the last at the final step
# each on one sample for each of the 64 held-out prompts: 640 samples a run, half the cost of two per prompt
EVALUATION = {"eval_prompts": 64, "eval_samples": 1}
SEEDS = (0, 1, 2)
KL_BUDGETS = (1.0, 2.0, 5.0, 10.0, 20.0, math.inf)
# Paired and unpaired objectives on the policy's own samples (TrainConfig.sampling; pairs: best against worst of
# each prompt's group, labels: above or below the group's mean gold reward), listed under these names. They take the
# online budget: 16 prompts x 4 samples a step, as PPO's, so the same samples as every online method.
VARIANTS = {"online_dpo": ("dpo", "online"), "semi_online_dpo": ("dpo", "semi_online"), "online_kto": ("kto", "online"),
            "online_simpo": ("simpo", "online")}
ONLINE_BATCH = {"batch_size": 16, "samples_per_prompt": 4}
# reference_gold_reward: the reference's gold reward on the same prompts as the point (C-RLFT's carry its tag)
COLUMNS = ("method", "knob", "value", "seed", "step", "examples", "updates", "gold_reward", "kl", "kl_stderr",
           "win_rate", "mean_length", "reference_gold_reward", "train_seconds", "device", "trained_as")


@dataclass(frozen=True)
class Point:
    method: str
    knob: str
    value: float
    seed: int = 0
    sampling: str = "offline"  # or online / semi_online: a paired or unpaired objective on its own samples

    @property
    def listed(self) -> str:
        """The name its rows carry: the method, or its online variant's name (VARIANTS)."""
        return self.method if self.sampling == "offline" else f"{self.sampling}_{self.method}"

    @property
    def online(self) -> bool:
        """Whether the point trains on samples it draws: an online method, or an online variant (VARIANTS)."""
        return objectives.get(self.method).data == "online" or self.sampling != "offline"

    @property
    def name(self) -> str:
        return f"{self.listed}/{self.knob}={self.value:g}/seed={self.seed}"

    def config(self, work: Path, **overrides):
        from .config import default_config

        obj = objectives.get(self.method)
        steps = overrides.get("max_steps", STEPS["online" if self.online else "offline"])
        every = max(1, math.ceil(steps / EVALUATIONS))
        values = {"max_steps": steps, "eval_every": every, "eval_at_start": False, "checkpoint_every": every,
                  "progress": False, "seed": self.seed, **EVALUATION,
                  "out": str(work / self.listed / f"{self.knob}={self.value:g}" / f"seed={self.seed}")}
        if self.sampling != "offline":
            values |= {"sampling": self.sampling, **ONLINE_BATCH}
        values |= overrides
        if self.knob in obj.defaults:
            return default_config(self.method, hyperparameters={self.knob: self.value}, **values)
        return default_config(self.method, **({self.knob: self.value} | values))


def plan(methods=None, seeds=SEEDS) -> list[Point]:
    """The sweep's points in a fixed order, every knob value of a method for each seed; `methods` narrows it
    (aliases map to their twin; an online variant's name (VARIANTS) to its method sampled online)."""
    sweep, same_as = sweeps(), twins()
    names = list(methods) if methods else [*sweep, *VARIANTS]
    for name in names:
        if name in VARIANTS:
            continue
        objectives.get(name)  # an unknown name fails here, listing the known ones
        if name not in sweep and name not in same_as:
            raise ValueError(f"{name} has no sweep: it trains a reward model, not a policy; sweepable: {list(sweep)}")
    trained = list(dict.fromkeys(same_as.get(name, name) for name in names))
    points = []
    for name in trained:
        method, sampling = VARIANTS.get(name, (name, "offline"))
        knob, values = sweep[method]
        points += [Point(method, knob, v, seed, sampling) for seed in seeds for v in values]
    return points


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


def finished(point: Point, work: Path, **overrides) -> bool:
    """Whether the point's run is complete. A run directory that holds a run of other settings (another reward
    model, learning rate, data, ...) is refused by name, never reused: the work directory names a run by method,
    knob value and seed only."""
    config = point.config(work, **overrides)
    out = Path(config.out)
    if (out / "config.json").is_file():
        saved = json.loads((out / "config.json").read_text())
        wanted = json.loads(json.dumps(config.to_dict()))
        differ = [f"{k} ({saved.get(k)!r} there, {v!r} here)" for k, v in wanted.items()
                  if k not in extendable_fields() and saved.get(k) != v]
        if differ:
            raise ValueError(f"{out} holds a run of {point.name} with other settings: {'; '.join(differ)}. Give this "
                             "sweep its own work directory (--work), or remove that run")
    evals = read_jsonl(out / "eval.jsonl")
    return (out / "model").is_dir() and bool(evals) and evals[-1]["step"] == config.max_steps


def run_point(point: Point, work: Path, **overrides) -> list[dict]:
    """Train one point unless it is finished (resuming from a checkpoint if it was interrupted), then
    return its rows: one per evaluated step."""
    from . import trainer

    config = point.config(work, **overrides)
    out = Path(config.out)
    if not finished(point, work, **overrides):
        resume = (out / "checkpoint" / "trainer_state.pt").exists()
        started = time.time()
        trainer.train(config, resume=resume, overwrite=not resume)
        (out / "device.txt").write_text(device_name() + "\n")
        with (out / "wall_seconds.txt").open("a") as file:  # training and evaluations, per (re)start
            file.write(f"{time.time() - started:.1f}\n")
    return point_rows(point, out)


def _run_in_worker(point: Point, work: Path, overrides: dict) -> list[dict]:
    """run_point in a worker process, with one torch thread: the workers share the cores."""
    torch.set_num_threads(1)
    return run_point(point, work, **overrides)


def budget(config: dict, step: int) -> dict:
    """What a run has used by `step`: examples read (rows offline; completions sampled and scored online, also for
    a paired or unpaired objective on its own samples) and optimiser updates (online RL methods take
    `update_epochs` passes over each batch of samples)."""
    online = objectives.get(config["method"]).data == "online"
    samples = online or config.get("sampling", "offline") != "offline"
    per_step = config["batch_size"] * (config["samples_per_prompt"] if samples else 1)
    return {"examples": step * per_step, "updates": step * (config["update_epochs"] if online else 1)}


def point_rows(point: Point, out: Path, listed_as: str | None = None) -> list[dict]:
    config = json.loads((out / "config.json").read_text())
    seconds, elapsed = {}, 0.0
    for row in read_jsonl(out / "metrics.jsonl"):  # training time to each step, evaluations excluded
        elapsed += row["seconds"]
        seconds[row["step"]] = elapsed
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else ""
    return [{"method": listed_as or point.listed, "knob": point.knob, "value": point.value, "seed": point.seed,
             "step": e["step"],
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
        return {"seed": 0} | json.loads(path.read_text())
    # every point shares these fields (model, data, evaluation settings): the TrainConfig defaults,
    # with the sweep's overrides; "sft" only stands in for the method field, which is not read here
    config = TrainConfig(method="sft", **(EVALUATION | {k: v for k, v in overrides.items() if k != "max_steps"}))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(config.model).to(device)
    result = evaluate.evaluate_held_out(model, model, load_tokenizer(config.model), config.data_dir,
                                        prompts=config.eval_prompts, samples_per_prompt=config.eval_samples,
                                        max_new_tokens=config.max_new_tokens, seed=config.seed)
    row = {"method": "reference", "knob": "", "value": "", "seed": config.seed, "step": 0, "examples": 0, "updates": 0,
           "gold_reward": result["gold_reward"],
           "kl": 0.0, "kl_stderr": 0.0, "win_rate": 0.5, "mean_length": result["mean_length"],
           "reference_gold_reward": result["reference_gold_reward"], "train_seconds": 0.0,
           "device": device_name(), "trained_as": ""}
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def compare(methods=None, out="results/frontier", work="runs/compare", progress: bool = True, seeds=SEEDS,
            workers: int = 1, **overrides) -> list[dict]:
    """Run (or finish) the sweep and write the table and figures. `overrides` are TrainConfig fields
    applied to every point (model, data_dir, eval_prompts, ...; max_steps changes the budget). With
    workers > 1 the points train in that many processes (spawned, one torch thread each), the slowest first."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    out, work = Path(out), Path(work)
    points = plan(methods, seeds)
    wanted = set(methods or [*sweeps(), *twins(), *VARIANTS])
    results = {}
    bar = tqdm(total=len(points), desc="sweep", unit="point", disable=not progress)

    def collect(point: Point, point_result: list[dict], note: str):
        rows = point_result if point.listed in wanted else []
        if point.sampling == "offline":  # an alias lists its twin's offline runs, not an online variant's
            rows += [r for alias, twin in twins().items() if twin == point.method and alias in wanted
                     for r in point_rows(point, Path(point.config(work, **overrides).out), listed_as=alias)]
        results[point] = rows
        last = point_result[-1]
        if progress:
            bar.write(f"{point.name:44s} gold {last['gold_reward']:.3f}  KL {last['kl']:6.2f}  {note}")
        bar.update(1)
        write_table(table_rows(), out)  # after every point, so an interrupted sweep leaves a table of what it has

    def table_rows():
        return [reference_row(work, **overrides)] + [r for p in points if p in results for r in results[p]]

    todo = []
    for point in points:
        if finished(point, work, **overrides):
            collect(point, run_point(point, work, **overrides), "(done before)")
        else:
            todo.append(point)
    if workers <= 1:
        for point in todo:
            started = time.time()
            collect(point, run_point(point, work, **overrides), f"{time.time() - started:.0f} s")
    else:
        reference_row(work, **overrides)  # once, before the workers start
        todo.sort(key=_expected_cost, reverse=True)  # the longest first, so no worker is left with one at the end
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            started = {pool.submit(_run_in_worker, p, work, overrides): (p, time.time()) for p in todo}
            for future in as_completed(started):
                point, began = started[future]
                collect(point, future.result(), f"{time.time() - began:.0f} s (finished)")
    bar.close()
    rows = table_rows()
    write_results(rows, out)
    return rows


def _expected_cost(point: Point) -> float:
    """Rough cost of a point, to order the work: a record that takes its own step (TRPO's conjugate gradient, about
    ten times a PPO point), then the methods that sample, then the offline ones."""
    return 10.0 if objectives.get(point.method).takes_own_step else 1.5 if point.online else 1.0


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
        row.setdefault("seed", "0")  # a table of the one-seed sweep, before seeds were a column
        for key in numeric:
            row[key] = float(row[key])
        row["value"] = float(row["value"]) if row["value"] else ""
    return rows


def best_within(rows: list[dict], budget: float) -> dict[str, dict]:
    """Per method, the row with the highest gold reward among those with KL at most `budget` (one seed's rows, or
    summarise()'s means; with several seeds, best_within_adjusted says what the pick is worth)."""
    best = {}
    for row in rows:
        if row["method"] != "reference" and row["kl"] <= budget:
            if row["method"] not in best or row["gold_reward"] > best[row["method"]]["gold_reward"]:
                best[row["method"]] = row
    return best


# t_{0.975, df}: a 95% interval for the mean of n = df + 1 values is mean +- t sd / sqrt(n) (tests/test_compare.py
# checks these against SymPy's Student t distribution); between and beyond the entries, the next smaller df's (wider)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def interval(values) -> tuple[float, float]:
    """The mean of `values` and the half-width of its 95% t-interval (0 for a single value: no spread to measure)."""
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    t = T975[max(df for df in T975 if df <= len(values) - 1)]
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def summarise(rows: list[dict]) -> list[dict]:
    """One row per method, knob value and step: gold reward, KL, win rate, length and seconds averaged over the
    seeds, with the 95% half-widths `gold_ci` and `kl_ci` and the number of seeds `n` (the reference as it is)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["value"], row["step"]), []).append(row)
    summary = []
    for members in groups.values():
        gold, gold_ci = interval(r["gold_reward"] for r in members)
        kl, kl_ci = interval(r["kl"] for r in members)
        means = {k: sum(r[k] for r in members) / len(members) for k in ("win_rate", "mean_length", "train_seconds")}
        summary.append(members[0] | means | {"seed": "", "gold_reward": gold, "gold_ci": gold_ci, "kl": kl,
                                             "kl_ci": kl_ci, "n": len(members)})
    return summary


def best_within_adjusted(rows: list[dict], budget: float) -> dict[str, dict]:
    """Per method, the best gold reward within a KL budget, corrected for picking the best of many settings.

    The best of a method's (knob value, step) settings, judged on the same runs that report it, is biased upward:
    with thirty noisy settings the luckiest one wins. So each seed is held out in turn: the setting with the
    highest mean gold reward over the *other* seeds, among those whose mean KL there is within the budget, is
    picked, and the held-out seed's run at that setting is what counts. Returns per method the mean and 95%
    interval of those held-out values (gold_reward, gold_ci; kl, kl_ci), the settings picked (`choices`), `n`,
    and the held-out rows by seed (`held_out`).
    With one seed there is nothing to hold out: the plain best, with no interval."""
    by_method = {}  # method -> seed -> {(value, step): row}
    for row in rows:
        if row["method"] != "reference":
            by_method.setdefault(row["method"], {}).setdefault(row["seed"], {})[(row["value"], row["step"])] = row
    best = {}
    for method, seeds in by_method.items():
        settings = sorted(set.intersection(*(set(runs) for runs in seeds.values())))
        held_out = []
        for seed, runs in seeds.items():
            others = [seeds[s] for s in seeds if s != seed] or [runs]
            kl = {c: sum(o[c]["kl"] for o in others) / len(others) for c in settings}
            gold = {c: sum(o[c]["gold_reward"] for o in others) / len(others) for c in settings}
            within = [c for c in settings if kl[c] <= budget]
            if not within:
                break
            choice = max(within, key=gold.get)  # ties: the first, in sorted order
            held_out.append((choice, runs[choice]))
        else:
            gold, gold_ci = interval(r["gold_reward"] for _, r in held_out)
            kl, kl_ci = interval(r["kl"] for _, r in held_out)
            best[method] = {"method": method, "knob": held_out[0][1]["knob"], "gold_reward": gold, "gold_ci": gold_ci,
                            "kl": kl, "kl_ci": kl_ci, "choices": [c for c, _ in held_out], "n": len(held_out),
                            "held_out": {r["seed"]: r for _, r in held_out}}
    return best


def gap(rows: list[dict], first: str, second: str, budget: float = math.inf) -> dict | None:
    """How far `first` is ahead of `second` within a KL budget: the difference of their selection-adjusted bests
    (best_within_adjusted), paired by held-out seed (seed s of one against seed s of the other, so whatever a seed
    shares between methods, such as the order of the offline rows, cancels), with its 95% t-interval: `gap`, `ci`,
    and `resolved` when the interval excludes 0. None if either has no setting within the budget."""
    best = best_within_adjusted([r for r in rows if r["method"] in (first, second)], budget)
    if first not in best or second not in best:
        return None
    one, other = best[first]["held_out"], best[second]["held_out"]
    seeds = sorted(one.keys() & other.keys())
    mean, ci = interval(one[s]["gold_reward"] - other[s]["gold_reward"] for s in seeds)
    return {"gap": mean, "ci": ci, "resolved": abs(mean) > ci > 0, "first": best[first], "second": best[second]}


def budget_table(rows: list[dict], budgets=KL_BUDGETS) -> str:
    """Markdown: per method, the selection-adjusted best gold reward within each KL budget with its 95% interval
    (best_within_adjusted), then what a run used: examples, updates and training seconds."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "reference"))
    reference = next((r["gold_reward"] for r in rows if r["method"] == "reference"), None)
    best = {b: best_within_adjusted(rows, b) for b in budgets}
    label = [("any KL" if math.isinf(b) else f"KL ≤ {b:g}") for b in budgets]
    lines = [f"| method | {' | '.join(label)} | knob picked (any KL) | examples | updates | seconds per run |",
             "|---|" + "---|" * (len(budgets) + 4)]
    for m in sorted(methods, key=lambda m: -best[budgets[-1]].get(m, {"gold_reward": 0})["gold_reward"]):
        cells = [f"{best[b][m]['gold_reward']:.2f} ± {best[b][m]['gold_ci']:.2f}" if m in best[b] else "–"
                 for b in budgets]
        top = best[budgets[-1]].get(m)
        picked = ", ".join(sorted({f"{v:g}" for v, _ in top["choices"]})) if top else "–"
        own = [r for r in rows if r["method"] == m]
        final = max(r["step"] for r in own)
        last = [r for r in own if r["step"] == final]
        seconds = sum(r["train_seconds"] for r in last) / len(last)
        lines.append(f"| {m} | {' | '.join(cells)} | {last[0]['knob']}: {picked} | {last[0]['examples']:.0f} | "
                     f"{last[0]['updates']:.0f} | {seconds:.0f} |")
    seeds = sorted({r["seed"] for r in rows if r["method"] != "reference"})
    lines.append(f"\nMean ± 95% interval over {len(seeds)} seeds of the held-out seed's gold reward at the setting "
                 "(knob value and step) the other seeds pick; – : no setting within the budget.")
    if reference is not None:
        lines.append(f"Reference policy: gold reward {reference:.3f} at KL 0.")
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


VARIANTS_PANEL = "online against offline: DPO, PPO-clip and the online variants"


def groups(rows: list[dict]) -> dict[str, list[str]]:
    """The frontier's panels: title -> the methods of `rows` in that group, in order of appearance. The online
    variants (VARIANTS) have a panel of their own, beside offline DPO and PPO-clip."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "reference"]
    panels = {title: [m for m in methods if m not in VARIANTS and belongs(objectives.get(m))]
              for title, belongs in GROUPS.items()}
    if any(m in VARIANTS for m in methods):
        panels[VARIANTS_PANEL] = [m for m in ("dpo", "ppo_clip") if m in methods] + [m for m in methods
                                                                                  if m in VARIANTS]
    return panels


def best_grid(rows: list[dict], budgets=KL_BUDGETS) -> dict[str, dict[float, float]]:
    """method -> {budget: selection-adjusted best gold reward within it}, methods ordered by their best at the last
    budget."""
    best = {b: best_within_adjusted(rows, b) for b in budgets}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "reference"))
    methods.sort(key=lambda m: -best[budgets[-1]].get(m, {"gold_reward": 0})["gold_reward"])
    return {m: {b: best[b][m]["gold_reward"] for b in budgets if m in best[b]} for m in methods}


def write_results(rows: list[dict], out) -> None:
    import matplotlib.pyplot as plt

    out = Path(out)
    write_table(rows, out)
    (out / "frontier.md").write_text("# Best gold reward within a KL budget\n\n" + budget_table(rows) + "\n")
    reference = next((r["gold_reward"] for r in rows if r["method"] == "reference"), None)
    means = summarise(rows)
    figures = {"frontier.png": plots.plot_frontier_panels(means, groups(means), reference),
               "best_within_kl.png": plots.plot_best_within(best_grid(rows), KL_BUDGETS)}
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
