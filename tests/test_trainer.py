"""The trainer on the shipped data and reference model: every method steps, runs resume exactly,
reference log-probs are cached, bad input is named, and data-parallel equals one process."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unified_rlhf import cli, objectives
from unified_rlhf.config import default_config
from unified_rlhf.trainer import Trainer, load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
pytestmark = pytest.mark.skipif(not (DATA / "reference").is_dir(), reason="data/ not built")  # always built in git


def small(method, out, **overrides):
    values = dict(data_dir=str(DATA), model=str(DATA / "reference"), out=str(out), max_steps=2, batch_size=4,
                  samples_per_prompt=2, max_new_tokens=8, eval_every=0, progress=False)
    return default_config(method, **(values | overrides))


@pytest.mark.parametrize("method", list(objectives.REGISTRY))
def test_every_method_takes_finite_steps(method, tmp_path):
    trainer = Trainer(small(method, tmp_path / method))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and math.isfinite(row["w_plus_mean"])
    assert (tmp_path / method / "model" / "model.safetensors").exists()


def parameters(path, reward_head=False):
    return torch.cat([p.detach().flatten() for p in load_model(str(path), reward_head=reward_head).parameters()])


@pytest.mark.parametrize("method", ["dpo", "rloo", "kto"])
def test_resumed_run_matches_uninterrupted(method, tmp_path):
    Trainer(small(method, tmp_path / "straight", max_steps=4, checkpoint_every=2)).train()
    Trainer(small(method, tmp_path / "split", max_steps=2, checkpoint_every=2)).train()
    Trainer(small(method, tmp_path / "split", max_steps=4, checkpoint_every=2), resume=True).train()
    torch.testing.assert_close(parameters(tmp_path / "split" / "model"), parameters(tmp_path / "straight" / "model"),
                               rtol=0, atol=0)
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    Trainer(small("sft", tmp_path / "run", max_steps=1)).train()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(small("sft", tmp_path / "run", max_steps=1))
    keep = tmp_path / "run" / "my_notes.txt"
    keep.write_text("mine")
    Trainer(small("sft", tmp_path / "run", max_steps=1), overwrite=True).train()
    assert keep.read_text() == "mine"  # overwrite removes only what a run writes
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(small("sft", tmp_path / "fresh", max_steps=1), resume=True)


def test_reference_log_probs_are_computed_once_and_aligned(tmp_path):
    trainer = Trainer(small("dpo", tmp_path / "run"))
    reference = trainer.reference
    indices = [5, 0, 17, 3]
    batch, _ = trainer.offline_inputs(indices)
    with torch.no_grad():  # recompute the reference log-probs of exactly these rows
        chosen = trainer._sequences([(trainer.examples[i]["prompt"], trainer.examples[i]["completions"][0])
                                     for i in indices], reference)[0]
    torch.testing.assert_close(batch["ref_logp_chosen"], chosen)
    reference.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("reference called during training"))
    trainer.train()
    assert (tmp_path / "run" / "reference_logps.pt").exists()


def test_logged_weights_follow_the_dpo_formula(tmp_path):
    trainer = Trainer(small("dpo", tmp_path / "run"))
    batch, _ = trainer.offline_inputs([1, 2, 3, 4])
    _, (w_plus, w_minus) = trainer.loss_and_weights(batch)
    margin = objectives.margin(type("V", (), batch))
    torch.testing.assert_close(w_plus, 0.1 * torch.sigmoid(-0.1 * margin))
    torch.testing.assert_close(w_minus, w_plus)


def test_truncation_and_dropped_rows_are_counted(tmp_path):
    trainer = Trainer(small("dpo", tmp_path / "run", max_length=6))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["truncated_completions"] > 0 and report["dropped_rows"] > 0
    assert report["examples"] + report["dropped_rows"] == report["rows"]
    assert all(len(e["prompt"]) + len(c) <= 6 for e in trainer.examples for c in e["completions"])


def test_bad_row_names_file_row_and_field(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    lines = (DATA / "pairs_train.jsonl").read_text().splitlines()[:5]
    row = json.loads(lines[2])
    row["rejected"] = ""
    lines[2] = json.dumps(row)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl.*row 3.*rejected"):
        Trainer(small("dpo", tmp_path / "run", data_file=str(bad)))
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(small("dpo", tmp_path / "run", model=str(tmp_path / "no_such_model")))


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", "simpo", "--max-steps", "1", "--out", str(out), "--batch-size", "4",
                     "--data-dir", str(DATA), "--model", str(DATA / "reference"), "--hp", "beta=2.5"]) == 0
    assert json.loads((out / "config.json").read_text())["hyperparameters"] == {"beta": 2.5}
    assert cli.main(["evaluate", str(out), "--prompts", "4", "--samples", "1"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert 0 <= result["gold_reward"] <= 1 and math.isfinite(result["kl"])
    assert cli.main(["train", "--method", "simpo", "--max-steps", "1", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_two_processes_match_one(tmp_path):
    """accelerate launch with 2 CPU processes and the same global batch gives the same model."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    script = shutil.which("unified-rlhf", path=os.path.dirname(sys.executable))
    args = ["train", "--method", "dpo", "--max-steps", "3", "--batch-size", "8", "--data-dir", str(DATA),
            "--model", str(DATA / "reference")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", script, *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    torch.testing.assert_close(parameters(tmp_path / "two" / "model"), parameters(tmp_path / "one" / "model"),
                               rtol=1e-5, atol=1e-6)


def test_shaped_returns_put_the_reward_on_the_last_completion_token(tmp_path):
    """With no KL penalty every completion token's return-to-go is the sequence reward, so after
    whitening all tokens of a sequence share one advantage, ordered as the rewards are."""
    trainer = Trainer(small("ppo_clip", tmp_path / "run", kl_coef=0.0, samples_per_prompt=4))
    sample = trainer.rollout(list(range(4)))
    advantages = trainer._advantages(sample)
    mask = sample["mask"]
    for row in range(len(advantages)):
        values = advantages[row][mask[row]]
        torch.testing.assert_close(values, values[:1].expand_as(values))
    per_sequence = torch.stack([advantages[r][mask[r]][0] for r in range(len(advantages))])
    assert torch.equal(per_sequence.argsort(), sample["reward"].argsort()) or sample["reward"].unique().numel() < len(
        advantages)


def test_ppo_kl_measures_the_kl_after_the_update(tmp_path):
    Trainer(small("ppo_kl", tmp_path / "run", update_epochs=1, max_steps=2)).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["policy_kl_old"] > 0 for r in rows)  # measured on the updated policy, not before the step
