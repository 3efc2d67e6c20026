"""LoRA through peft: the policy trains adapters only, the reference is the same model with its adapters
disabled (no second copy), the gradient identity holds for the adapters, runs resume with their adapters;
gradient checkpointing takes the same steps; bf16 autocast runs on the CPU."""

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_models import tiny_model
from training_runs import DATA, small

from unified_rlhf import verify
from unified_rlhf.data import load_rows, write_jsonl
from unified_rlhf.models import AdaptersDisabled, add_lora, load_model
from unified_rlhf.trainer import Trainer


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = load_rows(DATA / "pairs_train.jsonl", "paired").select(range(16)).to_list()
    return str(write_jsonl(rows, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", kind="paired"))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_the_policy_trains_adapters_and_the_reference_is_its_base(tmp_path, pairs_file):
    trainer = Trainer(small("dpo", tmp_path / "run", lora_r=4, data_file=pairs_file, max_steps=2))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(trainer.reference, AdaptersDisabled) and trainer.reference.lora_model is policy
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    trainer.train()

    base = load_model(str(DATA / "reference"))
    pairs = [(e["prompt"], e["completions"][0]) for e in trainer.examples[:8]]
    reference, base_logps, policy_logps = (trainer.logprobs(pairs, m)[0] for m in (trainer.reference, base, None))
    torch.testing.assert_close(reference, base_logps, rtol=0, atol=0)  # adapters off: exactly the base model
    assert not torch.equal(policy_logps, base_logps)  # adapters on: the trained policy
    frozen = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in policy.named_parameters()
              if not p.requires_grad}
    for name, weight in base.named_parameters():  # the base weights did not move
        torch.testing.assert_close(frozen[name], weight, rtol=0, atol=0)
    assert policy.training  # computing the reference left the policy in training mode

    saved = tmp_path / "run" / "model"
    assert (saved / "adapter_model.safetensors").exists() and not (saved / "model.safetensors").exists()
    reloaded = load_model(str(saved))  # transformers attaches the adapters to the base model it names
    torch.testing.assert_close(trainer.logprobs(pairs, reloaded)[0], policy_logps, rtol=1e-6, atol=1e-6)


def lora_model(arch: str):
    """A float64 model with adapters whose B matrices are random (peft starts them at 0, where the A
    matrices get no gradient), so that every adapter parameter is checked."""
    if arch == "gpt2":
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(verify.tiny_gpt2(0).config).double().eval()  # its own copy: add_lora edits in place
    else:
        model = tiny_model(arch)
    model = add_lora(model, r=2)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_the_gradient_identity_holds_for_the_adapters(arch, method):
    model = lora_model(arch)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained)
    assert verify.model_error(method, model=model) <= verify.MODEL_TOLERANCE


def adapters(run) -> dict:
    return load_file(str(run / "model" / "adapter_model.safetensors"))


def test_a_resumed_lora_run_ends_where_the_uninterrupted_one_does(tmp_path, pairs_file):
    options = dict(lora_r=4, data_file=pairs_file, checkpoint_every=2)
    Trainer(small("dpo", tmp_path / "straight", max_steps=4, **options)).train()
    Trainer(small("dpo", tmp_path / "split", max_steps=2, **options)).train()
    assert (tmp_path / "split" / "checkpoint" / "adapter_model.safetensors").exists()
    Trainer(small("dpo", tmp_path / "split", max_steps=4, **options), resume=True).train()
    straight, split = adapters(tmp_path / "straight"), adapters(tmp_path / "split")
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"lora_r \(saved 4, now 8\)"):
        Trainer(small("dpo", tmp_path / "split", max_steps=6, **(options | {"lora_r": 8})), resume=True)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_gradient_checkpointing_takes_the_same_steps(tmp_path, pairs_file, lora_r):
    models = {}
    for checkpointing in (False, True):
        trainer = Trainer(small("dpo", tmp_path / str(checkpointing), lora_r=lora_r, data_file=pairs_file,
                                gradient_checkpointing=checkpointing))
        assert trainer.accelerator.unwrap_model(trainer.model).is_activation_checkpointing == checkpointing
        trainer.train()
        models[checkpointing] = flat(trainer.model)
    torch.testing.assert_close(models[True], models[False], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"), reason="this torch has no CPU autocast")
def test_bf16_autocast_runs_on_the_cpu(tmp_path, pairs_file):
    """accelerate holds one precision per process: trainers of two precisions run one after the other."""
    fp32 = Trainer(small("dpo", tmp_path / "fp32", data_file=pairs_file, bf16=False))
    assert fp32.accelerator.mixed_precision == "no"
    pairs = [(e["prompt"], e["completions"][0]) for e in fp32.examples[:8]]
    with torch.no_grad():
        high = fp32.logprobs(pairs)[0]
    bf16 = Trainer(small("dpo", tmp_path / "bf16", data_file=pairs_file, bf16=True))
    assert bf16.accelerator.mixed_precision == "bf16"
    with torch.no_grad():
        low = bf16.logprobs(pairs)[0]
    assert low.dtype == torch.float32 and not torch.equal(low, high)  # autocast ran the matmuls in bf16
    torch.testing.assert_close(low, high, rtol=0.02, atol=0.1)  # and the summed log-probs stay close
    bf16.train()
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert Trainer(small("dpo", tmp_path / "again", data_file=pairs_file)).accelerator.mixed_precision == "no"


def test_lora_without_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"lora_r needs peft: pip install 'unified-rlhf\[lora\]'"):
        add_lora(verify.tiny_gpt2(0), r=2)
