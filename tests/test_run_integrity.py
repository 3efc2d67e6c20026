"""Run integrity on the shipped data and model: resume refuses another run, nothing that fails leaves a
directory that blocks the next try, Ctrl-C saves a checkpoint and says how to resume, a reward model must
have a trained head, and your own objective trains and evaluates from the command line."""

import json
import os
import shutil
import signal
import textwrap

import pytest
import torch
from training_runs import DATA, small

from unified_rlhf import cli, objectives
from unified_rlhf.checks import SettingError
from unified_rlhf.models import load_model
from unified_rlhf.trainer import Trainer, TrainingInterrupted

ARGS = ["--data-dir", str(DATA), "--model", str(DATA / "reference"), "--batch-size", "4",
        "--set", "eval_every=0", "--set", "progress=false"]


def parameters(path):
    return torch.cat([p.detach().flatten() for p in load_model(str(path)).parameters()])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------ 1. resume refuses another run
@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dpo"
    Trainer(small("dpo", out, max_steps=1, checkpoint_every=1)).train()
    return out


@pytest.mark.parametrize("argv, named", [
    (["--method", "sft"], "method (saved dpo, now sft)"),
    (["--method", "kto"], "method (saved dpo, now kto)"),
    (["--method", "dpo", "--hp", "beta=5"], "hyperparameter beta (saved 0.1, now 5)"),
    (["--method", "dpo", "--lr", "0.001"], "lr (saved 0.0005, now 0.001)"),
    (["--hp", "beta=5"], "hyperparameter beta (saved 0.1, now 5)"),  # --resume --out alone: the saved settings
])
def test_resume_refuses_a_different_run_in_one_line_naming_the_fields(dpo_run, argv, named, capsys):
    saved = (dpo_run / "config.json").read_text()
    assert cli.main(["train", *argv, "--out", str(dpo_run), "--max-steps", "2", "--resume", *ARGS]) == 2
    err = one_line(capsys)
    assert "cannot resume" in err and named in err and "max_steps" in err, err
    assert (dpo_run / "config.json").read_text() == saved  # the record of the run is untouched


def test_resume_compares_data_and_models_by_content_not_by_path(dpo_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(DATA / "reference", copy / "reference")
    shutil.copy(DATA / "pairs_train.jsonl", copy / "pairs.jsonl")
    same = small("dpo", dpo_run, max_steps=1, checkpoint_every=1, model=str(copy / "reference"),
                 data_file=str(copy / "pairs.jsonl"))
    Trainer(same, resume=True)  # the same content under other paths
    lines = (copy / "pairs.jsonl").read_text().splitlines()
    (copy / "pairs.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"training data \(content\)"):
        Trainer(same, resume=True)


def test_resume_extends_max_steps_exactly_and_takes_the_saved_settings(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [*ARGS, "--method", "simpo", "--hp", "beta=2.5", "--set", "checkpoint_every=1"]
    assert cli.main(["train", *common, "--max-steps", "3", "--out", str(straight)]) == 0
    assert cli.main(["train", *common, "--max-steps", "1", "--out", str(split)]) == 0
    assert cli.main(["train", "--resume", "--out", str(split), "--max-steps", "3"]) == 0  # hp from config.json
    torch.testing.assert_close(parameters(split / "model"), parameters(straight / "model"), rtol=0, atol=0)
    config = json.loads((split / "config.json").read_text())
    assert config["max_steps"] == 3 and config["hyperparameters"] == {"beta": 2.5}


# ------------------------------------------------------------------------ 2. no error leaves a blocking directory
@pytest.fixture(scope="module")
def data_without_held_out(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    for name in ("pairs_train.jsonl", "pairs_test.jsonl"):
        shutil.copy(DATA / name, directory / name)
    return directory


@pytest.mark.parametrize("argv, named", [
    (["--method", "dpo", "--set", "eval_every=1", "--data-dir", "HELD_OUT_MISSING"], "prompts_test.jsonl"),
    (["--method", "una", "--hp", "loss=hinge"], "una: option 'loss' must be one of 'mse', 'bce', got 'hinge'"),
    (["--method", "kto", "--batch-size", "1"], "batch_size must be at least 2"),
    (["--method", "grpo", "--set", "samples_per_prompt=1"], "samples_per_prompt must be at least 2"),
    (["--method", "dpo", "--lr", "nan"], "lr must be a number in (0, 1], got nan"),
    (["--method", "dpo", "--set", "batch_size=2.5"], "batch_size must be an integer in [1, inf), got 2.5"),
    (["--method", "dpo", "--hp", "beta=inf"], "beta' must be a number in (0, 1e6], got inf"),
    (["--method", "dpo", "--set", "max_length=200"], "max_length must be at most the model's context of 64"),
    (["--method", "rloo", "--set", "max_new_tokens=60"], "max_new_tokens must leave room"),
    (["--method", "dpo", "--set", "eval_every=1", "--set", "eval_prompts=500"], "eval_prompts must be at most"),
    (["--method", "dpo", "--set", "data_file=/no/such.jsonl"], "/no/such.jsonl does not exist"),
])
def test_an_error_names_its_cause_in_one_line_and_writes_nothing(argv, named, tmp_path, capsys,
                                                                 data_without_held_out):
    out = tmp_path / "run"
    argv = [str(data_without_held_out) if a == "HELD_OUT_MISSING" else a for a in argv]
    assert cli.main(["train", *ARGS, *argv, "--max-steps", "1", "--out", str(out)]) == 2
    assert named in one_line(capsys)
    assert not out.exists()
    assert cli.main(["train", *ARGS, "--method", "dpo", "--max-steps", "1", "--out", str(out)]) == 0  # not blocked


class Interrupt:
    """A callback that presses Ctrl-C at the end of a given step."""

    def __init__(self, step, hard=False):
        self.step, self.hard = step, hard

    def on_step(self, trainer, metrics):
        if trainer.step == self.step:
            if self.hard:  # the second Ctrl-C: KeyboardInterrupt in the middle of the step
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_before_the_first_checkpoint_saves_one_and_resumes_exactly(tmp_path):
    # a test run earlier in this process may have left Ctrl-C ignored (kernels, subprocesses): start from Python's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    Trainer(small("dpo", tmp_path / "straight", max_steps=3, checkpoint_every=50)).train()
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(small("dpo", tmp_path / "split", max_steps=3, checkpoint_every=50), callbacks=[Interrupt(1)]).train()
    message = str(stopped.value)
    assert "\n" not in message and "step 1 of 3" in message
    assert f"unified-rlhf train --resume --out {tmp_path / 'split'}" in message
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is itself again
    Trainer(small("dpo", tmp_path / "split", max_steps=3, checkpoint_every=50), resume=True).train()
    torch.testing.assert_close(parameters(tmp_path / "split" / "model"), parameters(tmp_path / "straight" / "model"),
                               rtol=0, atol=0)
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]


def test_ctrl_c_on_the_command_line_prints_one_line(tmp_path, capsys, monkeypatch):
    real = Trainer.train_step

    def pressed(self):
        metrics = real(self)
        os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(Trainer, "train_step", pressed)
    out = tmp_path / "run"
    assert cli.main(["train", *ARGS, "--method", "sft", "--max-steps", "5", "--out", str(out)]) == 130
    assert f"Continue with: unified-rlhf train --resume --out {out}" in one_line(capsys)
    monkeypatch.setattr(Trainer, "train_step", real)
    assert cli.main(["train", "--resume", "--out", str(out)]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("failure", [Interrupt(1, hard=True), "error"])
def test_a_run_stopped_before_any_checkpoint_is_removed(tmp_path, failure):
    class Fails:
        def on_step(self, trainer, metrics):
            raise RuntimeError("a bug in a callback")

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = small("sft", out, max_steps=3, checkpoint_every=50)
    with pytest.raises(TrainingInterrupted if failure != "error" else RuntimeError) as stopped:
        Trainer(config, callbacks=[Fails() if failure == "error" else failure]).train()
    if failure != "error":
        assert "before its first checkpoint: nothing was kept" in str(stopped.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing that blocks a plain re-run
    Trainer(config).train()


def test_an_existing_run_without_a_checkpoint_says_overwrite(tmp_path):
    out = tmp_path / "run"
    Trainer(small("sft", out, max_steps=1)).train()
    shutil.rmtree(out / "checkpoint")
    with pytest.raises(FileExistsError, match=r"already holds a run; pass overwrite=True"):
        Trainer(small("sft", out, max_steps=1))
    with pytest.raises(FileNotFoundError, match="no checkpoint .*--overwrite"):
        Trainer(small("sft", out, max_steps=1), resume=True)


# ------------------------------------------------------------------------ 4. a reward model needs a trained head
def test_a_plain_language_model_is_refused_as_a_reward_model(tmp_path):
    with pytest.raises(ValueError, match="not a trained reward model.*score.weight"):
        Trainer(small("rloo", tmp_path / "run", reward_model=str(DATA / "reference")))
    assert not (tmp_path / "run").exists()
    Trainer(small("rm", tmp_path / "rm", max_steps=1)).train()
    trainer = Trainer(small("rloo", tmp_path / "run", reward_model=str(tmp_path / "rm" / "model")))
    assert trainer.reward_model is not None


# ------------------------------------------------------------------------ 5. your own objective from the CLI
OBJECTIVE = textwrap.dedent('''
    from unified_rlhf.custom import V, hyper, objective_from_sympy
    from unified_rlhf.symbolic import LogSigmoid

    beta = hyper("beta")
    delta = (V.logp_chosen - V.ref_logp_chosen) - (V.logp_rejected - V.ref_logp_rejected)
    mine = objective_from_sympy("test_cli_logistic_squared", LogSigmoid(beta * delta) ** 2, defaults={"beta": 0.5})
''')


def test_your_own_objective_trains_resumes_verifies_and_evaluates_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "my_loss.py"
    path.write_text(OBJECTIVE)
    out = tmp_path / "run"
    try:
        assert cli.main(["verify", "--objective", f"{path}:mine"]) == 0
        assert "test_cli_logistic_squared" in capsys.readouterr().out
        assert cli.main(["train", "--objective", f"{path}:mine", *ARGS, "--max-steps", "1", "--set",
                         "checkpoint_every=1", "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["method"] == "test_cli_logistic_squared" and config["objective"] == f"{path}:mine"
        del objectives.REGISTRY["test_cli_logistic_squared"]  # a new process: the run's config finds the file
        assert cli.main(["train", "--resume", "--out", str(out), "--max-steps", "2"]) == 0
        del objectives.REGISTRY["test_cli_logistic_squared"]  # evaluate needs no objective at all
        assert cli.main(["evaluate", str(out), "--prompts", "2", "--samples", "1"]) == 0
        assert json.loads((out / "evaluation.json").read_text())["method"] == "test_cli_logistic_squared"
        assert cli.main(["train", "--objective", f"{path}:nothing", "--out", str(tmp_path / "x")]) == 2
        assert "has no objective named 'nothing'; it defines mine" in one_line(capsys)
    finally:
        objectives.REGISTRY.pop("test_cli_logistic_squared", None)


def test_an_objective_file_may_not_take_a_built_in_name(tmp_path, capsys):
    path = tmp_path / "clash.py"
    path.write_text(OBJECTIVE.replace('"test_cli_logistic_squared"', '"dpo"'))
    assert cli.main(["train", "--objective", f"{path}:mine", "--out", str(tmp_path / "run")]) == 2
    assert "an objective named 'dpo' is already registered" in one_line(capsys)
    assert objectives.get("dpo").paper.startswith("DPO")


def test_setting_errors_are_value_errors():
    assert issubclass(SettingError, ValueError)


# ------------------------------------------------------------------------ 7. rough edges
def test_a_dropped_over_long_row_prints_no_indexing_warning(tmp_path, capfd):
    rows = [json.loads(line) for line in (DATA / "pairs_train.jsonl").read_text().splitlines()[:8]]
    rows[3]["prompt"] = " ".join(["the film was good"] * 40)  # 160 words: longer than the model's 64 positions
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capfd.readouterr()
    trainer = Trainer(small("dpo", tmp_path / "run", data_file=str(tmp_path / "pairs.jsonl")))
    assert trainer.data_report["dropped_rows"] == 1
    assert "indexing errors" not in capfd.readouterr().err


def test_the_default_model_is_never_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'data/reference' .*the default.*unified-rlhf data build"):
        load_model("data/reference")


def test_a_paired_loss_that_reads_one_side_trains(tmp_path):
    from unified_rlhf.custom import V, hyper, objective_from_sympy
    from unified_rlhf.symbolic import LogSigmoid

    objective_from_sympy("test_chosen_only", -LogSigmoid(hyper("beta") * (V.logp_chosen - V.ref_logp_chosen)),
                         defaults={"beta": 0.5}, register=True, overwrite=True)
    try:
        Trainer(small("test_chosen_only", tmp_path / "run", max_steps=1)).train()
        [row] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert row["w_minus_mean"] == 0 and row["w_plus_mean"] > 0
    finally:
        objectives.REGISTRY.pop("test_chosen_only", None)
