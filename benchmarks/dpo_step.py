"""Throughput and peak memory of one DPO training step: unified_rlhf's Trainer beside TRL's DPOTrainer.

    .venv/bin/pip install trl==1.16.0            # the optional benchmark dependency
    .venv/bin/python benchmarks/dpo_step.py [--data-dir data] [--batch-size 32] [--warmup 3] [--steps 20]

Same model (<data-dir>/reference), tokenizer, rows of <data-dir>/pairs_train.jsonl, batches (TRL reads the rows in
the order our trainer draws them), beta 0.1 sigmoid loss, learning rate, warm-up, AdamW, grad clipping and
max_length on both sides; fp32 on CPU, bf16 autocast on CUDA. TRL's prompts get our BOS (the EOS text) and its
completions our leading space, so both sides feed the model the same token ids (checked and printed).
Each side runs in its own subprocess, so peak memory (ru_maxrss on CPU, max_memory_allocated on CUDA) is its own.
tokens/s counts the non-padding tokens of the policy forward (chosen + rejected, prompt included).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = {"ours": "unified_rlhf Trainer", "trl": "TRL DPOTrainer", "trl_precompute": "TRL, precomputed ref"}
BETA = 0.1  # DPO's default on both sides


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="holds pairs_train.jsonl and reference/ (default: data)")
    parser.add_argument("--batch-size", type=int, default=32, help="preference pairs per step (default: 32)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3, at least 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of every side; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.warmup, args.steps, args.batch_size, args.rounds) < 1:
        parser.error("--warmup, --steps, --batch-size and --rounds must be at least 1")
    return args


# ============================================================================================ one side (child)
def our_config(args, out: str):
    from unified_rlhf.config import default_config

    return default_config("dpo", data_dir=args.data_dir, model=str(Path(args.data_dir) / "reference"), out=out,
                          batch_size=args.batch_size, max_steps=args.warmup + args.steps, eval_every=0,
                          progress=False, seed=args.seed)


def run_ours(args, tmp: str, sync) -> dict:
    from unified_rlhf.data import batch_indices
    from unified_rlhf.trainer import Trainer

    config = our_config(args, tmp)
    config.reference_cache = str(Path(tmp) / "reference_cache")
    trainer = Trainer(config)
    n, seed = len(trainer.examples), trainer.config.seed
    for side in ("side0", "side1"):  # reference log-probs: computed once before timing, as TRL's precompute
        trainer.reference_logprobs(side, range(n))
    tokens = [sum(2 * len(e["prompt"]) + len(e["completions"][0]) + len(e["completions"][1])
                  for e in (trainer.examples[i] for i in batch_indices(step, args.batch_size, n, seed)))
              for step in range(args.warmup + args.steps)]
    times = []
    for _ in range(args.warmup + args.steps):
        trainer.train_step()
        sync()
        times.append(time.perf_counter())
    return {"tokens": tokens, "times": times}


def run_trl(args, tmp: str, sync, precompute: bool) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from unified_rlhf.data import batch_indices
    from unified_rlhf.models import Encoder

    cfg = our_config(args, tmp)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    encoder = Encoder(tokenizer, cfg.max_length)
    rows = load_dataset("json", data_files=str(Path(args.data_dir) / "pairs_train.jsonl"), split="train",
                        cache_dir=str(Path(tmp) / "datasets"))
    # our trainer drops rows whose prompt fills max_length, then draws seeded batches: TRL reads them in that order
    kept = [i for i, p in enumerate(rows["prompt"]) if len(encoder.prompt(p)) < cfg.max_length]
    order = [kept[i] for step in range(args.warmup + args.steps)
             for i in batch_indices(step, args.batch_size, len(kept), cfg.seed)]
    bos = tokenizer.decode([encoder.bos])
    dataset = rows.select(order).select_columns(["prompt", "chosen", "rejected"]).map(
        lambda r: {"prompt": bos + r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]})

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # as our trainer's autocast
    config = DPOConfig(
        output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=cfg.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, optim="adamw_torch",  # unfused, as ours
        beta=BETA, loss_type=["sigmoid"], max_length=cfg.max_length, precompute_ref_log_probs=precompute,
        gradient_checkpointing=False, bf16=bf16,  # TRL defaults to True for both; ours does neither
        train_sampling_strategy="sequential", seed=cfg.seed, data_seed=cfg.seed,
        eval_strategy="no", save_strategy="no", report_to="none", dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(cfg.model)
    times, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            sync()
            times.append(time.perf_counter())

    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Clock()])
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    ours = [(encoder.prompt(p), encoder.completion(c), encoder.completion(r))
            for p, c, r in zip(*(rows.select(order)[k] for k in ("prompt", "chosen", "rejected")))]
    theirs = zip(*(trainer.train_dataset[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
    same = sum(a == tuple(b) for a, b in zip(ours, theirs))
    trainer.train()
    return {"tokens": tokens, "times": times, "same_ids": same, "rows": len(order)}


def child(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def peak_mib() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # baseline: the libraries and one load of the model, so "above baseline" is what training adds
    from transformers import AutoModelForCausalLM

    import unified_rlhf.trainer  # noqa: F401

    if args.child != "ours":
        import trl  # noqa: F401
    AutoModelForCausalLM.from_pretrained(str(Path(args.data_dir) / "reference"))  # and dropped
    base = peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "ours":
            result = run_ours(args, tmp, sync)
        else:
            result = run_trl(args, tmp, sync, precompute=args.child == "trl_precompute")
    w, n = args.warmup, args.steps
    return result | {"seconds": result["times"][w + n - 1] - result["times"][w - 1],
                     "timed_tokens": sum(result["tokens"][w:w + n]), "peak": peak_mib(), "base": base,
                     "device": torch.cuda.get_device_name() if cuda else "cpu"}


# ============================================================================================ driver
def run_side(side: str, args) -> dict:
    command = [sys.executable, __file__, "--child", side, "--data-dir", args.data_dir, "--batch-size",
               str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads",
               str(args.threads), "--seed", str(args.seed)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
                        "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
                        # one GPU: TRL refuses nn.DataParallel, our trainer is single-process here too
                        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{SIDES[side]} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    if importlib.util.find_spec("trl") is None:
        sys.exit("TRL is not installed; it is an optional benchmark dependency: pip install trl==1.16.0")
    data = Path(args.data_dir)
    if not (data / "pairs_train.jsonl").is_file() or not (data / "reference").is_dir():
        sys.exit(f"{data} holds no pairs_train.jsonl and reference/ model: build the data first, or pass --data-dir")
    load = os.getloadavg()[0]
    runs = {side: [] for side in SIDES}
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits every side alike
        for side in SIDES:
            runs[side].append(run_side(side, args))
    results = {side: max(r, key=lambda x: x["timed_tokens"] / x["seconds"]) for side, r in runs.items()}

    print(f"DPO step on {results['ours']['device']}, {args.threads} torch threads, {data}: {args.batch_size} pairs "
          f"a step, {args.warmup} warm-up + {args.steps} timed steps, best of {args.rounds} rounds")
    if results["ours"]["device"] == "cpu" and load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores before the "
              "benchmark: other processes compete for the CPU and the timings are noisy")
    print(f"TRL token ids identical to ours on {results['trl']['same_ids']}/{results['trl']['rows']} rows\n")
    unit = "MiB" if results["ours"]["device"] == "cpu" else "MiB CUDA"
    print(f"{'side':<22}{'steps/s':>8}{'tokens/s':>10}{'tokens/step':>12}{'peak ' + unit:>15}{'above baseline':>16}")
    for side, r in results.items():
        r["rate"], r["added"] = r["timed_tokens"] / r["seconds"], r["peak"] - r["base"]
        print(f"{SIDES[side]:<22}{args.steps / r['seconds']:>8.2f}{r['rate']:>10.0f}"
              f"{r['timed_tokens'] / args.steps:>12.0f}{r['peak']:>15.0f}{r['added']:>16.0f}")
    ours = results["ours"]
    for side in ("trl", "trl_precompute"):
        r = results[side]
        print(f"ours / {SIDES[side] + ':':<22} tokens/s x{ours['rate'] / r['rate']:.2f}, peak memory "
              f"x{ours['peak'] / r['peak']:.2f}, above baseline x{ours['added'] / max(r['added'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
