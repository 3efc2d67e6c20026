"""Throughput and peak memory of one DPO training step: unified_rlhf's Trainer beside TRL's DPOTrainer.

    .venv/bin/pip install trl==1.16.0            # the optional benchmark dependency
    .venv/bin/python benchmarks/dpo_step.py [--data-dir data] [--batch-size 32] [--warmup 3] [--steps 20]
    .venv/bin/python benchmarks/dpo_step.py --smoke    # a few steps of every side: checks the script, times nothing

Same model (<data-dir>/reference), tokenizer, rows of <data-dir>/pairs_train.jsonl, batches (TRL reads the rows in
the order our trainer draws them), beta 0.1 sigmoid loss, learning rate, warm-up, AdamW, grad clipping and
max_length on both sides; fp32 on CPU, bf16 autocast on CUDA. TRL's prompts get our BOS (the EOS text) and its
completions our leading space, so both sides feed the model the same token ids (checked and printed).
Each side runs in its own subprocess, so peak memory (ru_maxrss on CPU, max_memory_allocated on CUDA) is its own.
Sides: ours with padding to the batch's longest sequence and with packing (TrainConfig.packing), TRL by default, with
precompute_ref_log_probs=True, and with padding_free=True where TRL supports it (1.16's DPOTrainer turns it off).

Useful tokens are the non-padding tokens of the policy forward (chosen + rejected, prompt included); computed tokens
are all the tokens the policy forward runs (the padded or packed input's size). tokens/s counts useful tokens;
padding is 1 - useful / computed; GFLOP/s is the useful work, 6 x parameters x useful tokens a second (forward
2 + backward 4 FLOPs per parameter and token, attention not counted), and "of peak" divides it by the speed of a
large square matmul (fp32 on CPU, bf16 on CUDA) timed in the same run with the same threads. Our step is also split
into model forward, backward, optimiser (clipping, AdamW, zero_grad) and the rest (batching, packing, log-softmax,
loss, metrics), each timed with a synchronisation at its ends.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run_child  # noqa: E402

SIDES = {"ours": "unified_rlhf Trainer", "ours_packed": "unified_rlhf, packed", "trl": "TRL DPOTrainer",
         "trl_precompute": "TRL, precomputed ref", "trl_padding_free": "TRL, padding_free"}
BETA = 0.1  # DPO's default on both sides
PARTS = ("forward", "backward", "optimiser", "rest")  # of our step
SMOKE = dict(batch_size=4, warmup=1, steps=2, rounds=1, peak_seconds=0.1, peak_size=256)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="holds pairs_train.jsonl and reference/ (default: data)")
    parser.add_argument("--batch-size", type=int, default=32, help="preference pairs per step (default: 32)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3, at least 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of every side; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-seconds", type=float, default=1.5, help="time the matmul peak this long (default 1.5)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul (default 2048)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"every side for a few steps ({', '.join(f'{k}={v}' for k, v in SMOKE.items())}): "
                             "checks that the script runs, its timings mean nothing")
    parser.add_argument("--child", choices=[*SIDES, "peak"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    if min(args.warmup, args.steps, args.batch_size, args.rounds, args.peak_size) < 1 or args.peak_seconds <= 0:
        parser.error("--warmup, --steps, --batch-size, --rounds, --peak-size and --peak-seconds must be positive")
    return args


# ============================================================================================ one side (child)
def our_config(args, out: str, packing: bool = False):
    from unified_rlhf.config import default_config

    return default_config("dpo", data_dir=args.data_dir, model=str(Path(args.data_dir) / "reference"), out=out,
                          batch_size=args.batch_size, max_steps=args.warmup + args.steps, eval_every=0,
                          progress=False, seed=args.seed, packing=packing)


class Stopwatch:
    """Seconds spent in wrapped calls, by part; synchronised at both ends, so GPU work lands in its own part."""

    def __init__(self, sync):
        self.sync, self.seconds = sync, dict.fromkeys(PARTS, 0.0)

    def wrap(self, owner, name: str, part: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[part] += time.perf_counter() - start

        setattr(owner, name, timed)  # an instance attribute: found before the class's method


def run_ours(args, tmp: str, sync, packing: bool) -> dict:
    from unified_rlhf.data import batch_indices
    from unified_rlhf.trainer import Trainer

    config = our_config(args, tmp, packing)
    config.reference_cache = str(Path(tmp) / "reference_cache")
    trainer = Trainer(config)
    n, seed = len(trainer.examples), trainer.config.seed
    batches = [batch_indices(step, args.batch_size, n, seed) for step in range(args.warmup + args.steps)]
    # reference log-probs: computed before timing, as TRL's precompute does for its dataset (the rows the run reads)
    for side in ("side0", "side1"):
        trainer.reference_logprobs(side, sorted({i for batch in batches for i in batch}))
    tokens = [sum(2 * len(e["prompt"]) + len(e["completions"][0]) + len(e["completions"][1])
                  for e in (trainer.examples[i] for i in batch)) for batch in batches]
    computed = []  # tokens of every policy forward (the reference's are cached)
    trainer.model.register_forward_pre_hook(lambda _, a, kw: computed.append(kw["input_ids"].numel()),
                                            with_kwargs=True)
    clock = Stopwatch(sync)
    clock.wrap(trainer.model, "forward", "forward")
    clock.wrap(trainer.accelerator, "backward", "backward")
    for owner, name in ((trainer.accelerator, "clip_grad_norm_"), (trainer.optimizer, "step"),
                        (trainer.optimizer, "zero_grad")):
        clock.wrap(owner, name, "optimiser")
    times, computed_per_step = [], []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:  # profile the timed steps only
            clock.seconds = dict.fromkeys(PARTS, 0.0)
        computed.clear()
        trainer.train_step()
        sync()
        times.append(time.perf_counter())
        computed_per_step.append(sum(computed))
    parts = clock.seconds | {"rest": times[-1] - times[args.warmup - 1] - sum(clock.seconds.values())}
    return {"tokens": tokens, "computed": computed_per_step, "times": times,
            "parameters": parameter_count(trainer.model), "profile": {k: v / args.steps for k, v in parts.items()}}


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # each tied weight once


def run_trl(args, tmp: str, sync, precompute: bool = False, padding_free: bool = False) -> dict:
    import torch
    import trl
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
        padding_free=padding_free,
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
    if padding_free and not trainer.padding_free:
        return {"unsupported": f"TRL {trl.__version__}'s DPOTrainer turns padding_free off and pads (its warning)"}
    collate, computed = trainer.data_collator, []

    def counting_collator(examples):
        batch = collate(examples)
        ids = batch["input_ids"]  # chosen then rejected, [2B, T]; padding-free: one row
        computed.append(ids.numel())
        tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel())
        return batch

    trainer.data_collator = counting_collator
    ours = [(encoder.prompt(p), encoder.completion(c), encoder.completion(r))
            for p, c, r in zip(*(rows.select(order)[k] for k in ("prompt", "chosen", "rejected")))]
    theirs = zip(*(trainer.train_dataset[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
    same = sum(a == tuple(b) for a, b in zip(ours, theirs))
    trainer.train()
    return {"tokens": tokens, "computed": computed, "times": times, "same_ids": same, "rows": len(order),
            "parameters": parameter_count(model)}


def matmul_peak(args, device: str) -> dict:
    """GFLOP/s of a square matmul in the training's precision (fp32 on CPU, bf16 on CUDA): a bound no step can pass."""
    import torch

    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    a, b = (torch.randn(args.peak_size, args.peak_size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    a @ b  # warm-up: threads started, kernels chosen
    sync()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < args.peak_seconds:
        a @ b
        sync()
        count += 1
    seconds = time.perf_counter() - start
    return {"peak_gflops": 2 * args.peak_size ** 3 * count / seconds / 1e9, "peak_dtype": str(dtype).split(".")[-1]}


def child(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.child == "peak":
        return matmul_peak(args, "cuda" if cuda else "cpu")

    def peak_mib() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # baseline: the libraries and one load of the model, so "above baseline" is what training adds
    from transformers import AutoModelForCausalLM

    import unified_rlhf.trainer  # noqa: F401

    if args.child.startswith("trl"):
        import trl  # noqa: F401
    AutoModelForCausalLM.from_pretrained(str(Path(args.data_dir) / "reference"))  # and dropped
    base = peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child.startswith("ours"):
            result = run_ours(args, tmp, sync, packing=args.child == "ours_packed")
        else:
            result = run_trl(args, tmp, sync, precompute=args.child == "trl_precompute",
                             padding_free=args.child == "trl_padding_free")
    if "unsupported" in result:
        return result
    w, n = args.warmup, args.steps
    return result | {"seconds": result["times"][w + n - 1] - result["times"][w - 1],
                     "timed_tokens": sum(result["tokens"][w:w + n]), "timed_computed": sum(result["computed"][w:w + n]),
                     "peak": peak_mib(), "base": base, "device": torch.cuda.get_device_name() if cuda else "cpu"}


# ============================================================================================ driver
def run_side(side: str, args) -> dict:
    flags = ["--data-dir", args.data_dir, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
             "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
             "--peak-seconds", str(args.peak_seconds), "--peak-size", str(args.peak_size)]
    return run_child(__file__, side, SIDES.get(side, side), args.threads, flags)


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
    runs, peaks, unsupported = {side: [] for side in SIDES}, [], {}
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits every side alike
        peaks.append(run_side("peak", args))
        for side in SIDES:
            if side not in unsupported:
                result = run_side(side, args)
                if "unsupported" in result:
                    unsupported[side] = result["unsupported"]
                else:
                    runs[side].append(result)
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    results = {side: max(r, key=lambda x: x["timed_tokens"] / x["seconds"]) for side, r in runs.items() if r}
    report(args, results, unsupported, peak, load)


def report(args, results: dict, unsupported: dict, peak: dict, load: float):
    ours = results["ours"]
    print(f"DPO step on {ours['device']}, {args.threads} torch threads, {args.data_dir}: {args.batch_size} pairs "
          f"a step, {args.warmup} warm-up + {args.steps} timed steps, best of {args.rounds} rounds"
          + (" (--smoke: these timings mean nothing)" if args.smoke else ""))
    if ours["device"] == "cpu" and load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores before the "
              "benchmark: other processes compete for the CPU and the timings are noisy")
    print(f"TRL token ids identical to ours on {results['trl']['same_ids']}/{results['trl']['rows']} rows")
    print(f"{ours['parameters']:,} parameters; {peak['peak_dtype']} matmul peak {peak['peak_gflops']:.1f} GFLOP/s "
          f"({args.peak_size}x{args.peak_size}, {args.peak_seconds:g} s); GFLOP/s = 6 x parameters x useful "
          "(non-padding) tokens a second\n")
    unit = "MiB" if ours["device"] == "cpu" else "MiB CUDA"
    print(f"{'side':<22}{'steps/s':>8}{'tokens/s':>10}{'padding':>9}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'peak ' + unit:>15}{'above baseline':>16}")
    for side, r in results.items():
        r["rate"], r["added"] = r["timed_tokens"] / r["seconds"], r["peak"] - r["base"]
        r["padding"] = 1 - r["timed_tokens"] / r["timed_computed"]
        r["gflops"] = 6 * r["parameters"] * r["rate"] / 1e9
        print(f"{SIDES[side]:<22}{args.steps / r['seconds']:>8.2f}{r['rate']:>10.0f}{r['padding']:>9.1%}"
              f"{r['gflops']:>9.1f}{r['gflops'] / peak['peak_gflops']:>9.1%}{r['peak']:>15.0f}{r['added']:>16.0f}")
    for side, why in unsupported.items():
        print(f"{SIDES[side]:<22}not run: {why}")
    print()
    for mine in ("ours", "ours_packed"):
        for side in ("trl", "trl_precompute", "trl_padding_free") + (("ours",) if mine == "ours_packed" else ()):
            if side in results:
                a, b = results[mine], results[side]
                print(f"{SIDES[mine]} / {SIDES[side] + ':':<22} tokens/s x{a['rate'] / b['rate']:.2f}, peak memory "
                      f"x{a['peak'] / b['peak']:.2f}, above baseline x{a['added'] / max(b['added'], 1e-9):.2f}")
    print("\nWhere our step's time goes (ms a step; forward: the model's forward call; optimiser: clipping, AdamW, "
          "zero_grad;\nrest: batching, packing, log-softmax, loss, metrics)")
    print(f"{'side':<22}" + "".join(f"{part:>11}" for part in PARTS) + f"{'total':>11}")
    for side in ("ours", "ours_packed"):
        profile = results[side]["profile"]
        total = sum(profile.values())
        print(f"{SIDES[side]:<22}" + "".join(f"{1e3 * profile[p]:>7.1f} {profile[p] / total:>3.0%}" for p in PARTS)
              + f"{1e3 * total:>11.1f}")


if __name__ == "__main__":
    main()
