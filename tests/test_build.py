"""`data build` is seeded: the same seed gives the same files; it never overwrites without asking."""

import hashlib
import json

import pytest

from unified_rlhf.build import build
from unified_rlhf.config import load_config

TINY = dict(sft_rows=200, sft_steps=3, preference_prompts=6, test_prompts=4, samples_per_prompt=2, progress=False)


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "build_report.json"}


def test_same_seed_same_files_and_no_silent_overwrite(tmp_path):
    first = build(tmp_path / "a", seed=3, **TINY)
    build(tmp_path / "b", seed=3, **TINY)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert "reference/model.safetensors" in digest(tmp_path / "a")
    assert first["pairs_train"] > 0 and 0 <= first["reference_gold_reward_test"] <= 1
    with pytest.raises(FileExistsError, match="overwrite"):
        build(tmp_path / "a", seed=3, **TINY)
    build(tmp_path / "c", seed=4, **TINY)
    assert digest(tmp_path / "c")["sft_train.jsonl"] != digest(tmp_path / "a")["sft_train.jsonl"]


def test_a_run_config_can_be_loaded_back(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"method": "dpo", "max_steps": 7, "objective_hyperparameters": {"beta": 0.1}}))
    assert load_config(path).max_steps == 7
    path.write_text(json.dumps({"method": "dpo", "max_stepz": 7}))
    with pytest.raises(ValueError, match="max_stepz"):
        load_config(path)
