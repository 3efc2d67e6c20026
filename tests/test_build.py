"""`data build` is seeded: the same seed gives the same files; it never overwrites without asking."""

import hashlib
import json
from pathlib import Path

import pytest

from unified_rlhf import task
from unified_rlhf.build import TEXT_FILES, build, file_hashes, tokenizer_texts, write_text_files
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


# ----------------------------------------------------------------------------- the committed data
DATA = Path(__file__).resolve().parents[1] / "data"
REPORT = json.loads((DATA / "build_report.json").read_text())


def test_committed_data_is_what_its_build_report_records():
    """Every built file is listed with its sha256, and none was edited after the build."""
    assert file_hashes(DATA) == REPORT["files"]
    assert {"reference/model.safetensors", "pairs_train.jsonl", "sft_train.jsonl"} <= set(REPORT["files"])


def test_the_code_still_writes_the_committed_text_files_and_tokenizer(tmp_path):
    """The cheap stages of `data build` (corpus, prompts, tokenizer) reproduce the committed bytes; the
    expensive ones (SFT of the reference, its samples) are checked by test_full_build_reproduces_the_data."""
    corpus = write_text_files(tmp_path, REPORT["seed"], REPORT["sft_rows"], REPORT["preference_prompts"],
                              REPORT["test_prompts"])
    for name in TEXT_FILES:
        assert file_hashes(tmp_path)[name] == REPORT["files"][name], name
    tokenizer = task.train_tokenizer(tokenizer_texts(corpus), tmp_path / "tokenizer")
    assert len(tokenizer) > 0
    assert file_hashes(tmp_path)["tokenizer/tokenizer.json"] == REPORT["files"]["reference/tokenizer.json"]


@pytest.mark.data_build
def test_full_build_reproduces_the_data(tmp_path):
    """About 11 minutes on one core: `make check-data` runs it (CI does not)."""
    settings = {k: REPORT[k] for k in ("seed", "sft_rows", "sft_steps", "preference_prompts", "test_prompts",
                                       "samples_per_prompt")}
    rebuilt = build(tmp_path / "data", progress=False, **settings)
    differing = sorted(name for name, digest in rebuilt["files"].items() if REPORT["files"].get(name) != digest)
    assert not differing and rebuilt["files"].keys() == REPORT["files"].keys(), (
        f"the code no longer reproduces data/: {differing}; rebuild with `unified-rlhf data build --overwrite` "
        "and re-run what depends on it")
