"""Beyond one CPU: the accelerate configs under configs/accelerate/ are valid and documented, and
scripts/gpu_check.sh runs its checks end to end in its CPU dry-run mode (this machine has no GPU)."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed_zero2.yaml": "DEEPSPEED",
           "deepspeed_zero3.yaml": "DEEPSPEED"}


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_accelerate_config_loads_and_every_option_is_one_accelerate_knows(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    path = ROOT / "configs" / "accelerate" / name
    config = ClusterConfig.from_yaml_file(str(path))  # refuses unknown top-level keys
    assert config.distributed_type.value == CONFIGS[name]
    options = {o.lstrip("-") for action in launch_command_parser()._actions for o in action.option_strings}
    nested = yaml.safe_load(path.read_text()).get("fsdp_config", {}) | yaml.safe_load(path.read_text()).get(
        "deepspeed_config", {})
    assert all(key in options for key in nested), sorted(set(nested) - options)
    if name.startswith("deepspeed"):
        assert nested["zero_stage"] == int(name[-6]) and nested["gradient_clipping"] == 1.0
    text = path.read_text()
    assert text.startswith("# ") and "accelerate launch --config_file configs/accelerate/" + name in text
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5


def test_the_check_refuses_to_run_without_a_gpu_unless_dry_run():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    with pytest.raises(SystemExit, match="no CUDA device: .* `--dry-run` runs the checks on the CPU"):
        gpu_check().device_and_setting(dry_run=False)


def test_a_value_over_its_tolerance_fails_the_check():
    module = gpu_check()
    run = {"first_loss": 0.6931, "last_loss": 0.5, "last_reward": 0.6, "finite": True}
    results = {"identity": {"float32": {"error": 1e-7}, "bf16": {"error": 1e-4}},
               "logprobs": {"float32_vs_float64": 1e-6, "bf16_vs_float32_per_token": 0.01},
               "training": {"dpo_bf16": run, "dpo_float32": run, "grpo_bf16": run, "grpo_float32": run},
               "verify": {"failed": {}, "passed": True}}
    assert all(passed for *_, passed in module.judge(results))
    results["training"]["grpo_bf16"] = run | {"last_reward": 0.9}
    results["identity"]["bf16"]["error"] = 0.5
    failed = {check for check, _, _, passed in module.judge(results) if not passed}
    assert failed == {"grpo_last_reward", "identity_bf16"}


@pytest.mark.slow
def test_the_dry_run_writes_a_passing_report(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "report"), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["environment"]["dry_run"] and report["checks"] and all(c["passed"] for c in report["checks"])
    assert set(report["training"]) == {"dpo_bf16", "dpo_float32", "grpo_bf16", "grpo_float32"}
    assert all(r["steps"] == 3 and r["finite"] for r in report["training"].values())
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| identity_bf16 |" in table and "| dpo_last_loss |" in table and "FAIL" not in table
