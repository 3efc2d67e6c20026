"""The DPO step benchmark keeps running: its smoke mode takes every side through a few steps and prints every column
(the timings of a smoke run mean nothing; the counts of tokens do)."""

import importlib.util
import re
import subprocess
import sys

import pytest
from training_runs import DATA, ROOT

SCRIPT = ROOT / "benchmarks" / "dpo_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("dpo_step", SCRIPT)
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
