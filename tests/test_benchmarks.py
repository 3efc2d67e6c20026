"""The benchmarks keep running: the smoke modes of the DPO step and of the GRPO iteration take every side through a
few steps and print every column (the timings of a smoke run mean nothing; the counts of tokens and samples do)."""

import importlib.util
import re
import subprocess
import sys

import pytest
from training_runs import DATA, ROOT

SCRIPT = ROOT / "benchmarks" / "dpo_step.py"
GRPO_SCRIPT = ROOT / "benchmarks" / "grpo_iteration.py"


def load_script(script=SCRIPT):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_shortens_the_run_and_bad_counts_are_refused():
    bench = load_script()
    args = bench.parse_args(["--smoke", "--steps", "50"])
    assert (args.steps, args.batch_size, args.rounds) == (bench.SMOKE["steps"], bench.SMOKE["batch_size"], 1)
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--peak-seconds", "0"])


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL, the benchmark's optional dependency")
def test_the_smoke_run_prints_every_side_and_column():
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--data-dir", str(DATA)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    bench = load_script()
    rows = {}
    for side, name in bench.SIDES.items():
        line = next(line for line in out.splitlines() if line.startswith(name))  # the table comes first
        rows[side] = line[len(name):].split()
    for side in ("ours", "ours_packed", "trl", "trl_precompute"):
        steps, tokens, padding, gflops, of_peak, peak, _ = rows[side]
        assert float(steps) > 0 and float(tokens) > 0 and float(gflops) > 0 and float(peak) > 0
        assert 0 <= float(padding.rstrip("%")) < 100 and float(of_peak.rstrip("%")) > 0
    # TRL pads as our unpacked trainer does: the same batches, the same padding; packing computes less of it
    assert rows["trl"][2] == rows["trl_precompute"][2] == rows["ours"][2]
    assert float(rows["ours_packed"][2].rstrip("%")) < float(rows["ours"][2].rstrip("%"))
    assert rows["trl_padding_free"][:2] == ["not", "run:"] or float(rows["trl_padding_free"][1]) > 0
    same, total = map(int, re.search(r"identical to ours on (\d+)/(\d+) rows", out).groups())
    assert same == total > 0
    assert re.search(r"matmul peak [\d.]+ GFLOP/s", out)
    profile = out[out.index("Where our step's time goes"):].splitlines()
    for name in (bench.SIDES["ours"], bench.SIDES["ours_packed"]):
        line = next(line for line in profile if line.startswith(name))
        ms = [float(x) for x in re.findall(r"([\d.]+) +\d+%", line[len(name):])]
        assert len(ms) == len(bench.PARTS) and abs(sum(ms) - float(line.split()[-1])) < 0.5


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL, the benchmark's optional dependency")
def test_the_grpo_smoke_run_prints_every_side_part_and_setting():
    done = subprocess.run([sys.executable, str(GRPO_SCRIPT), "--smoke", "--threads", "1", "--data-dir", str(DATA)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out, bench = done.stdout, load_script(GRPO_SCRIPT)
    smoke = bench.SMOKE
    batch = smoke["prompts"] * smoke["samples"]
    for name in bench.SIDES.values():  # the table comes first
        iterations, samples, length, peak, _ = map(float, next(
            line for line in out.splitlines() if line.startswith(name))[len(name):].split())
        assert iterations > 0 and peak > 0 and 1 <= length <= smoke["max_new_tokens"]
        assert samples == pytest.approx(batch * iterations, rel=0.02)  # each iteration trains on the whole batch
    # TRL sampled every iteration from our prompts, in our order, as the same token ids
    same, total, sampled = map(int, re.search(r"identical to ours on (\d+)/(\d+) rows .*TRL sampled (\d+)",
                                              out).groups())
    assert same == total == sampled == batch * (smoke["warmup"] + smoke["steps"])
    settings = next(line for line in out.splitlines() if line.startswith("TRL's settings: "))[len("TRL's settings: "):]
    for setting in ("loss_type=grpo", "beta=0.04", "epsilon_low=0.2", "scale_rewards=group", "num_iterations=1",
                    f"num_generations={smoke['samples']}", f"max_completion_length={smoke['max_new_tokens']}",
                    "temperature=1.0", "use_bias_correction_kl=False", "mask_truncated_completions=False",
                    "use_vllm=False", f"generation_batch_size={batch}", "reference model=True"):
        assert setting in settings.split(", "), (setting, settings)
    assert re.search(r"samples/s x[\d.]+, peak memory x[\d.]+", out)
    split = out[out.index("Where an iteration's time goes"):].splitlines()
    for name in bench.SIDES.values():
        line = next(line for line in split if line.startswith(name))
        ms = dict(zip(bench.PARTS, (float(x) for x in re.findall(r"(-?[\d.]+) +-?\d+%", line[len(name):]))))
        assert len(ms) == len(bench.PARTS) and abs(sum(ms.values()) - float(line.split()[-1])) < 0.5
        assert min(ms["sampling"], ms["scoring"], ms["logprobs"], ms["update"]) > 0
