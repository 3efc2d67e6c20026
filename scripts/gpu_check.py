"""The package on one CUDA GPU, checked against float32 and float64, in about five minutes.

    python scripts/gpu_check.py [--out runs/gpu_check]      (scripts/gpu_check.sh sets up .venv and runs this)
    python scripts/gpu_check.py --dry-run                   (the same checks on the CPU with a tiny model)

1. verify: every method's symbolic proof and autograd checks (float64, with the extreme inputs repeated in
   float32 and bfloat16), as `unified-rlhf verify --all` runs them.
2. The model-level gradient identity on the GPU: autograd of each loss against sum_i w_i grad l_i on every
   parameter of a GPT-2, in float32 and under bf16 autocast.
3. Log-probs of a ~100M-parameter GPT-2 built from a config (the book's tokenizer, random weights) on the
   book's held-out pairs: CUDA float32 against CPU float64, and bf16 autocast against float32.
4. DPO and GRPO, 50 steps each on that model and the book's data, once in bf16 autocast (the trainer's
   default on a GPU that has it) and once in float32 (bf16=False); the two runs are compared.

Every check has a stated tolerance (TOLERANCES); report.json and report.md in --out list each value, its
tolerance and PASS or FAIL, with timings and peak GPU memory. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

# name -> (tolerance, what it bounds)
TOLERANCES = {
    "identity_float32": (1e-4, "model-level gradient identity, relative error, float32 on the device"),
    "identity_bf16": (1e-2, "model-level gradient identity, relative error, bf16 autocast on the device"),
    "logprob_float32": (1e-4, "summed log-probs, device float32 vs CPU float64, max relative error"),
    "logprob_bf16": (0.05, "log-probs, bf16 autocast vs float32, mean absolute error per token (nats)"),
    "dpo_first_loss": (0.02, "DPO's first loss against log 2 (policy = reference), each precision"),
    "dpo_last_loss": (0.1, "DPO's mean loss over the last 10 steps, bf16 vs float32 (absolute)"),
    "grpo_last_reward": (0.1, "GRPO's mean gold reward over the last 10 steps, bf16 vs float32 (absolute)"),
}


def device_and_setting(dry_run: bool) -> SimpleNamespace:
    if dry_run:
        return SimpleNamespace(device=torch.device("cpu"), methods=["dpo", "grpo"], verify=["dpo"], steps=3, model=dict(
            n_embd=32, n_layer=2, n_head=2), dpo=dict(batch_size=4), grpo=dict(batch_size=2, samples_per_prompt=2,
                                                                                 max_new_tokens=8), eval_prompts=4)
    if not torch.cuda.is_available():
        sys.exit(f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none. On a GPU "
                 "machine install a CUDA build of torch; `--dry-run` runs the checks on the CPU.")
    from unified_rlhf import objectives

    return SimpleNamespace(device=torch.device("cuda"), methods=list(objectives.REGISTRY),
                           verify=list(objectives.REGISTRY), steps=50,
                           model=dict(n_embd=768, n_layer=14, n_head=12), dpo={}, grpo={}, eval_prompts=64)


class OnDevice(torch.nn.Module):
    """A model on the device, called with CPU tensors as verify's model check calls it, under autocast if
    asked; the logits come back to the CPU in float64, so verify's float64 constants apply unchanged (the
    gradient still flows through the device's own arithmetic)."""

    def __init__(self, model, device, autocast):
        super().__init__()
        self.model, self.device, self.autocast = model, device, autocast

    def forward(self, **inputs):
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(**inputs).logits
        return SimpleNamespace(logits=logits.double().cpu())


def check_verify(setting) -> dict:
    from unified_rlhf import verify

    failed = {}
    for name in setting.verify:
        result = verify.verify(name)
        if not result.passed:
            failed[name] = result.failures
    return {"methods": len(setting.verify), "failed": failed, "passed": not failed}


def check_identity(setting) -> dict:
    """The largest relative error of the gradient identity over the methods, per precision."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from unified_rlhf import objectives, verify

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).float().eval().to(setting.device)
    out = {}
    for label, autocast in (("float32", False), ("bf16", True)):
        errors = {}
        for name in setting.methods:
            if objectives.get(name).shape == "reward_model":
                continue  # a scalar head: checked on the CPU by verify
            errors[name] = verify.model_error(name, model=OnDevice(model, setting.device, autocast))
        worst = max(errors, key=errors.get)
        out[label] = {"worst_method": worst, "error": errors[worst]}
    return out


def build_model(setting, out: Path) -> tuple[Path, int]:
    """A GPT-2 of the setting's size on the book's tokenizer, random weights, saved as a model directory."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    from unified_rlhf import task
    from unified_rlhf.models import load_tokenizer

    logging.disable_progress_bar()

    tokenizer = load_tokenizer(DATA / "reference")
    config = task.reference_config(len(tokenizer), **setting.model)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    directory = out / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, sum(p.numel() for p in model.parameters())


def check_logprobs(setting, model_dir: Path) -> dict:
    from unified_rlhf.data import load_rows
    from unified_rlhf.logprobs import pad_batch, token_logprobs
    from unified_rlhf.models import Encoder, load_model, load_tokenizer

    encoder = Encoder(load_tokenizer(model_dir), 64)
    rows = list(load_rows(DATA / "pairs_test.jsonl", "paired"))[:64]
    prompts = [encoder.prompt(r["prompt"]) for r in rows]
    completions = [encoder.fit(p, encoder.completion(r["chosen"])) for p, r in zip(prompts, rows)]
    batch = pad_batch(prompts, completions, encoder.pad, "right")
    model = load_model(str(model_dir)).eval()
    with torch.no_grad():
        exact, mask = token_logprobs(model.double(), *batch)
        model = model.float().to(setting.device)
        on_device = [t.to(setting.device) for t in batch]
        single, _ = token_logprobs(model, *on_device)
        with torch.autocast(setting.device.type, dtype=torch.bfloat16):
            half, _ = token_logprobs(model, *on_device)
    single, half = single.double().cpu(), half.double().cpu()
    relative = ((single.sum(-1) - exact.sum(-1)).abs() / exact.sum(-1).abs()).max().item()
    per_token = ((half - single).abs()[mask]).mean().item()
    return {"float32_vs_float64": relative, "bf16_vs_float32_per_token": per_token, "tokens": int(mask.sum())}


def train_run(setting, model_dir: Path, out: Path, method: str, bf16: bool) -> dict:
    from unified_rlhf.config import default_config
    from unified_rlhf.data import read_jsonl
    from unified_rlhf.trainer import train

    run = out / f"{method}_{'bf16' if bf16 else 'float32'}"
    config = default_config(method, model=str(model_dir), data_dir=str(DATA), out=str(run), max_steps=setting.steps,
                            eval_every=setting.steps, eval_at_start=False, eval_prompts=setting.eval_prompts,
                            progress=False, bf16=bf16, reference_cache=str(out / "reference_cache"),
                            **getattr(setting, method))
    if setting.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    evaluation = train(config, overwrite=True)
    rows = read_jsonl(run / "metrics.jsonl")
    last = rows[-10:]
    return {"seconds": round(time.time() - started, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if setting.device.type == "cuda"
            else None,
            "first_loss": rows[0]["loss"], "last_loss": sum(r["loss"] for r in last) / len(last),
            "last_reward": sum(r.get("reward_mean", math.nan) for r in last) / len(last),
            "finite": all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows),
            "steps": len(rows), "gold_reward": evaluation.get("gold_reward"), "kl": evaluation.get("kl")}


def judge(results: dict) -> list:
    """(check, value, tolerance, passed) for every check with a tolerance."""
    rows = []

    def add(name, value, passed=None):
        tolerance = TOLERANCES[name][0]
        rows.append((name, value, tolerance, bool(value <= tolerance) if passed is None else passed))

    add("identity_float32", results["identity"]["float32"]["error"])
    add("identity_bf16", results["identity"]["bf16"]["error"])
    add("logprob_float32", results["logprobs"]["float32_vs_float64"])
    add("logprob_bf16", results["logprobs"]["bf16_vs_float32_per_token"])
    runs = results["training"]
    add("dpo_first_loss", max(abs(runs[f"dpo_{p}"]["first_loss"] - math.log(2)) for p in ("bf16", "float32")))
    add("dpo_last_loss", abs(runs["dpo_bf16"]["last_loss"] - runs["dpo_float32"]["last_loss"]))
    add("grpo_last_reward", abs(runs["grpo_bf16"]["last_reward"] - runs["grpo_float32"]["last_reward"]))
    rows.append(("verify", len(results["verify"]["failed"]), 0, results["verify"]["passed"]))
    rows.append(("training_finite", sum(not r["finite"] for r in runs.values()), 0,
                 all(r["finite"] for r in runs.values())))
    return rows


def write_report(out: Path, results: dict, checks: list) -> None:
    results["checks"] = [{"check": c, "value": v, "tolerance": t, "passed": p} for c, v, t, p in checks]
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    env = results["environment"]
    lines = [f"# GPU check: {env['device']}{' (dry run)' if env['dry_run'] else ''}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, a {results['model_parameters'] / 1e6:.1f}M-parameter model, "
             f"{results['seconds']} s in all", "", "| check | value | tolerance | result | what |",
             "|---|---|---|---|---|"]
    for c, v, t, p in checks:
        what = TOLERANCES[c][1] if c in TOLERANCES else {"verify": "methods failing `verify`",
                                                          "training_finite": "runs with a non-finite loss"}[c]
        lines.append(f"| {c} | {v:.3g} | {t:g} | {'PASS' if p else 'FAIL'} | {what} |")
    lines += ["", "| run | seconds | peak GPU GiB | first loss | last-10 loss | last-10 reward | gold reward | KL |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in results["training"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['peak_gpu_gib']} | {r['first_loss']:.4f} | {r['last_loss']:.4f} "
                     f"| {r['last_reward']:.3f} | {r['gold_reward']:.3f} | {r['kl']:.3f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny model, 3 steps: checks this script")
    args = parser.parse_args(argv)
    setting = device_and_setting(args.dry_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = torch.cuda.get_device_name() if setting.device.type == "cuda" else f"CPU ({platform.machine()})"
    results = {"environment": {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                               "dry_run": args.dry_run, "tolerances": TOLERANCES}}
    for part, run in (("verify", lambda: check_verify(setting)), ("identity", lambda: check_identity(setting))):
        print(f"{part} ...", flush=True)
        results[part] = run()
    model_dir, results["model_parameters"] = build_model(setting, out)
    print(f"log-probs of a {results['model_parameters'] / 1e6:.1f}M-parameter model ...", flush=True)
    results["logprobs"] = check_logprobs(setting, model_dir)
    results["training"] = {}
    for method in ("dpo", "grpo"):
        for bf16 in (True, False):
            name = f"{method}_{'bf16' if bf16 else 'float32'}"
            print(f"training {name} for {setting.steps} steps ...", flush=True)
            results["training"][name] = train_run(setting, model_dir, out, method, bf16)
    results["seconds"] = round(time.time() - started, 1)
    checks = judge(results)
    write_report(out, results, checks)
    print((out / "report.md").read_text())
    return 0 if all(p for *_, p in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
