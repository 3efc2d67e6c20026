"""The trainer on the shipped data and reference model: every method steps, runs resume exactly,
reference log-probs are cached, bad input is named, and data-parallel equals one process."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from training_runs import DATA, small

from unified_rlhf import advantages, cli, evaluate, objectives
from unified_rlhf.models import load_model
from unified_rlhf.trainer import Trainer


@pytest.mark.parametrize("method", list(objectives.REGISTRY))
def test_every_method_takes_finite_steps(method, tmp_path):
    trainer = Trainer(small(method, tmp_path / method))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        weights = [v for k, v in row.items() if k.startswith(("w_plus", "w_minus"))]  # a batch may hold one side
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and weights
        assert all(math.isfinite(w) for w in weights)
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


def test_reference_log_probs_are_lazy_aligned_and_shared_between_runs(tmp_path, reference_cache):
    cache_dir = tmp_path / "cache"
    trainer = Trainer(small("dpo", tmp_path / "run", reference_cache=str(cache_dir)))
    assert trainer.reference_cache.computed_blocks == 0 and not cache_dir.exists()  # nothing before it is needed
    indices = [5, 0, 17, 3]
    batch, _ = trainer.offline_inputs(indices)
    assert trainer.reference_cache.computed_blocks == 2  # one block of rows for each side, not the whole file
    with torch.no_grad():  # recompute the reference log-probs of exactly these rows
        chosen = trainer.logprobs([(trainer.examples[i]["prompt"], trainer.examples[i]["completions"][0])
                                   for i in indices], trainer.reference)[0]
    torch.testing.assert_close(batch["ref_logp_chosen"], chosen)
    [stored] = list(cache_dir.iterdir())

    again = Trainer(small("dpo", tmp_path / "again", reference_cache=str(cache_dir)))
    again.reference.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("reference called again"))
    torch.testing.assert_close(again.offline_inputs(indices)[0]["ref_logp_chosen"], batch["ref_logp_chosen"],
                               rtol=0, atol=0)
    assert again.reference_cache.computed_blocks == 0
    other = Trainer(small("dpo", tmp_path / "other", reference_cache=str(cache_dir), max_length=20))
    other.offline_inputs(indices)  # another encoding of the rows: another key, another file
    assert other.reference_cache.computed_blocks == 2 and len(list(cache_dir.iterdir())) == 2 and stored.exists()


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
    rollout = trainer.rollout(list(range(4)))
    advantage = trainer.advantages(rollout)["advantage"]
    mask = rollout.mask
    for row in range(len(advantage)):
        values = advantage[row][mask[row]]
        torch.testing.assert_close(values, values[:1].expand_as(values))
    per_sequence = torch.stack([advantage[r][mask[r]][0] for r in range(len(advantage))])
    assert torch.equal(per_sequence.argsort(), rollout.reward.argsort()) or rollout.reward.unique().numel() < len(
        advantage)


def test_old_log_probs_read_before_the_update_come_from_the_updates_own_forward(tmp_path):
    """A KL-shaped reward reads pi_old before the update: the forward that gives it runs with gradient and is the
    update's, so a step computes the policy's log-probs once. Its bits equal a forward without gradient's."""
    trainer = Trainer(small("vpg", tmp_path / "run", kl_coef=0.1, samples_per_prompt=4))
    rollout = trainer.rollout(list(range(4)))
    with torch.no_grad():
        without_gradient = trainer.logprobs(rollout.pairs, per_token=True)[0]
    forwards, logprobs = [], trainer.logprobs  # the policy's forwards (the reference's pass the model too)
    trainer.logprobs = lambda *args, **kwargs: (len(args) == 1 and forwards.append(args)) or logprobs(*args, **kwargs)
    estimated = trainer.advantages(rollout)  # the shaped reward reads rollout.old: one forward, with gradient
    assert len(forwards) == 1 and torch.equal(rollout.old, without_gradient)
    first = trainer.online_inputs(rollout, estimated)["logp"]
    assert len(forwards) == 1 and first.requires_grad  # the update takes that forward
    assert torch.equal(first.detach(), rollout.old.sum(-1))
    trainer.online_inputs(rollout, estimated)  # a second epoch (the policy may have moved): a forward of its own
    assert len(forwards) == 2
    # read early, then the policy reloaded in place (as chapter 7 does between variants): that forward is stale
    again = trainer.rollout(list(range(4, 8)))
    trainer.advantages(again)
    trainer.model.load_state_dict(trainer.model.state_dict())
    inputs = trainer.online_inputs(again, estimated)
    assert len(forwards) == 4
    trainer.optimizer_step(trainer.loss_and_weights(inputs)[0].mean())  # its graph is intact: backward runs


def test_ppo_kl_measures_the_kl_after_the_update(tmp_path):
    Trainer(small("ppo_kl", tmp_path / "run", update_epochs=1, max_steps=2)).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["policy_kl_old"] > 0 for r in rows)  # measured on the updated policy, not before the step


class BestOfGroup:
    """A new estimator: +1 for the best sample of each prompt's group, 0 for the others."""

    def __call__(self, rollout, kl_coef, state):
        grouped = rollout.grouped(rollout.reward)
        best = torch.nn.functional.one_hot(grouped.argmax(-1), rollout.group_size).float()
        state["calls"] = state.get("calls", 0) + 1
        return {"advantage": best.flatten()}


def test_a_new_online_method_trains_without_touching_the_trainer(tmp_path):
    def best_of_group(m, v):
        return -v.advantage * v.logp, (v.advantage,)

    steps = []
    obj = objectives.register(objectives.Objective(
        "test_best_of_group", best_of_group, shape="single", family="online", data="online", paper="a test",
        advantage=BestOfGroup(), task_defaults=dict(samples_per_prompt=3)), overwrite=True)
    try:
        class Watch:
            def on_rollout(self, trainer, rollout, estimated):
                steps.append((rollout.group_size, estimated["advantage"].sum().item()))

        trainer = Trainer(small("test_best_of_group", tmp_path / "run", samples_per_prompt=3), callbacks=[Watch()])
        trainer.train()
        assert steps == [(3, 4.0), (3, 4.0)]  # one best sample for each of the 4 prompts, each step
        assert trainer.state["calls"] == 2
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["loss"]) for r in rows)
        assert obj.task_defaults == {"samples_per_prompt": 3}
    finally:
        del objectives.REGISTRY["test_best_of_group"]


def test_training_sampling_and_evaluation_encode_prompts_alike(tmp_path, monkeypatch):
    seen = []
    real_sample = evaluate.sample

    def recording(model, prompt_ids, **kwargs):
        seen.append(prompt_ids)
        return real_sample(model, prompt_ids, **kwargs)

    monkeypatch.setattr(evaluate, "sample", recording)
    trainer = Trainer(small("rloo", tmp_path / "run", eval_prompts=2, eval_samples=1))
    first = trainer.examples[0]["text"]
    trainer.rollout([0])
    evaluated = tmp_path / "eval"
    (evaluated).mkdir()
    (evaluated / "prompts_test.jsonl").write_text(json.dumps({"prompt": first}) + "\n")
    evaluate.evaluate_held_out(trainer.model, trainer.reference, trainer.tokenizer, evaluated, prompts=1,
                               samples_per_prompt=1, max_new_tokens=4)
    training, policy_eval, reference_eval = seen
    assert training[0] == policy_eval[0] == reference_eval[0] == trainer.examples[0]["prompt"]


def test_every_online_record_names_its_estimator_and_every_policy_a_sweep():
    for name, obj in objectives.REGISTRY.items():
        if obj.data == "online":
            assert callable(obj.advantage), name
        if obj.shape != "reward_model":
            assert (obj.sweep is None) != (obj.same_as is None), name
    with pytest.raises(ValueError, match="advantage estimator"):
        objectives.register(objectives.Objective("x", lambda m, v: None, shape="single", family="online",
                                                 data="online", paper=""))
    assert isinstance(objectives.get("vpg").advantage, advantages.RunningBaseline)
