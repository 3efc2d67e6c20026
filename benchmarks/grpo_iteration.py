"""Throughput and peak memory of one online GRPO iteration: unified_rlhf's Trainer beside TRL's GRPOTrainer.

    .venv/bin/pip install trl==1.16.0            # the optional benchmark dependency
    .venv/bin/python benchmarks/grpo_iteration.py [--data-dir data] [--prompts 8] [--samples 8] [--steps 10]
    .venv/bin/python benchmarks/grpo_iteration.py --smoke   # 2 prompts x 2 samples, 1 + 1 iterations: checks the script

An iteration samples `samples` completions for each of `prompts` prompts from the current policy, scores them with
the book's gold reward (unified_rlhf.task.gold_reward, on the prompt text and the decoded completion), takes the
log-probs it needs under the reference (and the sampling policy), and updates the policy once. Ours is
Trainer.train_step on default_config("grpo", ...); TRL's is one optimiser step of GRPOTrainer, without vLLM.

Same on both sides: the model (<data-dir>/reference, with its tokenizer) as policy and as frozen reference, the
prompts of <data-dir>/prompts_train.jsonl in the order our trainer draws them (TRL's prompts get our BOS as text, so
both sides feed the model the same prompt ids: checked and printed), the group size (our samples_per_prompt, TRL's
num_generations), the batch (TRL's per_device_train_batch_size = prompts x samples, with steps_per_generation=1 and
gradient_accumulation_steps=1, so one generation batch is one update), max completion length (max_new_tokens,
max_completion_length), temperature 1 with no top-k or top-p, learning rate, warm-up steps, weight decay, gradient
clipping and AdamW (unfused), beta and epsilon from our grpo record (0.04, 0.2), fp32 on CPU (bf16 autocast on
CUDA). The TRL settings that make its loss ours (tests/test_trl_grpo.py checks the loss and its gradient equal):
loss_type="grpo" (each completion's tokens averaged, then the batch), scale_rewards="group" (advantage
(r - mean) / (std + 1e-4) within each prompt's group, as our GroupStandardised), use_bias_correction_kl=False
(DeepSeekMath's k3 KL term, as ours; TRL's default multiplies it by pi/pi_old), num_iterations=1 (our
update_epochs), mask_truncated_completions=False (ours keeps cut completions in the loss), beta > 0, so TRL loads a
reference model and runs its forward every iteration, as ours does. Also: gradient_checkpointing=False and bf16
only on CUDA (TRL defaults to both), shuffle_dataset=False (the order above), logging, saving, evaluation and
completion logging off.

What cannot be made equal: (1) the samples. Each side draws its own tokens, so completion lengths differ a little
(the mean is printed beside samples/s). (2) TRL samples with transformers' generate (its logits processors and
stopping criteria each token); ours with evaluate.sample, a loop over one forward per token with a static KV cache,
which computes a prompt's forward once for its group and drops finished rows from the batch (neither changes a
token: tests/test_models.py).
(3) Ours packs every forward's sequences into shared rows (TrainConfig.packing); TRL pads them. (4) TRL computes
per-token entropies in the update's forward (for its metrics). (5) The learning-rate warm-up: TRL's
constant_with_warmup starts at 0, ours at lr / warmup_steps (the same compute). Like TRL with num_iterations=1, ours
takes pi_old from the update's own forward and runs no forward after the update.

Each side runs in its own subprocess, so peak memory (ru_maxrss on CPU, max_memory_allocated on CUDA) is its own;
"above baseline" subtracts the libraries and one load of the model. samples/s counts the completions generated
and trained on per second. The iteration is split into sampling (generating the completion ids), scoring
(decoding and the gold reward), log-probs (the no-gradient forwards before the update: reference, and for ours
old), update (the forward with gradient, loss, backward, clipping, AdamW) and other (the rest: batching,
advantages, metrics, the trainer's loop), each timed with a synchronisation at its ends; a timed call nested in
another counts once, to the inner part. --profile adds cProfile's top functions of each side's timed iterations.
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

SIDES = {"ours": "unified_rlhf Trainer", "trl": "TRL GRPOTrainer"}
PARTS = ("sampling", "scoring", "logprobs", "update", "other")
SMOKE = dict(prompts=2, samples=2, max_new_tokens=8, warmup=1, steps=1, rounds=1)
PROFILE_LINES = 25


def grpo_defaults() -> dict:
    """The sizes our grpo runs take by default: the record's task settings (batch_size prompts, samples_per_prompt)
    and TrainConfig's max_new_tokens."""
    from unified_rlhf.config import default_config

    config = default_config("grpo")
    return {"prompts": config.batch_size, "samples": config.samples_per_prompt, "max_new_tokens": config.max_new_tokens}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="holds prompts_train.jsonl and reference/ (default: data)")
    parser.add_argument("--prompts", type=int, help="prompts per iteration (default: the grpo record's batch_size)")
    parser.add_argument("--samples", type=int,
                        help="completions per prompt, the group size (default: the record's samples_per_prompt)")
    parser.add_argument("--max-new-tokens", type=int, help="longest completion (default: TrainConfig's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: 2, at least 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (default: 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of every side; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help=f"print cProfile's top {PROFILE_LINES} functions (by own time) of each side's timed "
                             "iterations (profiling slows every side down)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"every side for a few iterations ({', '.join(f'{k}={v}' for k, v in SMOKE.items())}): "
                             "checks that the script runs, its timings mean nothing")
    parser.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    if None in (args.prompts, args.samples, args.max_new_tokens):
        vars(args).update({k: v for k, v in grpo_defaults().items() if getattr(args, k) is None})
    if min(args.prompts, args.max_new_tokens, args.warmup, args.steps, args.rounds, args.threads) < 1:
        parser.error("--prompts, --max-new-tokens, --warmup, --steps, --rounds and --threads must be positive")
    if args.samples < 2:
        parser.error(f"--samples must be at least 2 (GRPO compares the samples of a prompt), got {args.samples}")
    return args


# ============================================================================================ one side (child)
def our_config(args, out: str):
    from unified_rlhf.config import default_config

    return default_config("grpo", data_dir=args.data_dir, model=str(Path(args.data_dir) / "reference"), out=out,
                          batch_size=args.prompts, samples_per_prompt=args.samples,
                          max_new_tokens=args.max_new_tokens, temperature=1.0, max_steps=args.warmup + args.steps,
                          eval_every=0, progress=False, seed=args.seed)


class Stopwatch:
    """Seconds spent in wrapped calls, by part, synchronised at both ends (GPU work lands in its own part). A wrapped
    call inside another pauses the outer one: each second counts once, to the innermost part. A part may be a
    function of the names of the wrapped calls in progress (the same forward is a log-prob or an update)."""

    def __init__(self, sync):
        self.sync, self.seconds, self.stack, self.mark = sync, {}, [], 0.0

    def reset(self):
        self.seconds = {}

    def _advance(self):
        now = time.perf_counter()
        if self.stack:
            part = self.stack[-1][1]
            self.seconds[part] = self.seconds.get(part, 0.0) + now - self.mark
        self.mark = now

    def wrap(self, owner, name: str, part):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.sync()
            self._advance()
            names = [n for n, _ in self.stack]
            self.stack.append((name, part(names) if callable(part) else part))
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self._advance()
                self.stack.pop()

        setattr(owner, name, timed)  # on an instance, found before the class's method


def run_ours(args, tmp: str, sync, profiler) -> dict:
    from unified_rlhf import evaluate
    from unified_rlhf.trainer import Trainer

    trainer = Trainer(our_config(args, str(Path(tmp) / "run")))
    clock = Stopwatch(sync)
    for name in ("train_step", "rollout"):  # the context the parts below are read in; their own time is "other"
        clock.wrap(trainer, name, "other")
    clock.wrap(evaluate, "sample", "sampling")  # the trainer calls evaluate.sample: the module's attribute
    clock.wrap(trainer, "score", "scoring")  # decoding and the gold reward
    # the same method runs every forward: before the update (old, reference), with gradient, and after it
    clock.wrap(trainer, "logprobs", lambda names: "logprobs" if "rollout" in names else
               "update" if "online_inputs" in names else "after_update")
    for name in ("online_inputs", "loss_and_weights", "update"):  # forward with gradient, loss, backward, AdamW
        clock.wrap(trainer, name, "update")
    times, lengths = [], []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:  # time and profile the timed iterations only
            clock.reset()
            if profiler:
                profiler.enable()
        metrics = trainer.train_step()
        sync()
        times.append(time.perf_counter())
        lengths.append(metrics["sample_length"])
    if profiler:
        profiler.disable()
    return {"times": times, "lengths": lengths, "parts": clock.seconds}


def run_trl(args, tmp: str, sync, profiler) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from unified_rlhf import objectives, task
    from unified_rlhf.data import batch_indices, load_rows, prompt_text
    from unified_rlhf.models import Encoder

    cfg = our_config(args, str(Path(tmp) / "run"))
    hp = objectives.get("grpo").hyperparameters(**cfg.hyperparameters)  # beta and eps, as our trainer uses them
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    encoder = Encoder(tokenizer, cfg.max_length)
    rows = list(load_rows(Path(args.data_dir) / "prompts_train.jsonl", "prompts"))
    order = [i for step in range(args.warmup + args.steps) for i in batch_indices(step, args.prompts, len(rows),
                                                                                  cfg.seed)]
    bos = tokenizer.decode([encoder.bos])
    dataset = Dataset.from_dict({"prompt": [bos + rows[i]["prompt"] for i in order],
                                 "text": [prompt_text(rows[i]["prompt"]) for i in order]})

    def gold_reward(prompts, completions, text, **_):
        """The book's gold reward on the prompt text (the dataset's column) and the decoded completion."""
        return [task.gold_reward(p, c) for p, c in zip(text, completions)]

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # as our trainer's autocast
    config = GRPOConfig(
        output_dir=str(Path(tmp) / "trl"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.prompts * args.samples, num_generations=args.samples,
        steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=cfg.update_epochs,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
        learning_rate=cfg.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, optim="adamw_torch",  # unfused, as ours
        loss_type="grpo", beta=hp["beta"], epsilon=hp["eps"], scale_rewards="group", use_bias_correction_kl=False,
        mask_truncated_completions=False, shuffle_dataset=False, seed=cfg.seed, data_seed=cfg.seed,
        gradient_checkpointing=False, bf16=bf16,  # TRL defaults to True for both; ours does neither
        logging_strategy="no", log_completions=False, eval_strategy="no", save_strategy="no", report_to="none",
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    clock, times, lengths, prompt_ids = Stopwatch(sync), [], [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            clock.wrap(trainer.optimizer, "step", "update")  # created by train(): wrapped once it exists

        def on_step_end(self, *_, **__):
            sync()
            times.append(time.perf_counter())
            if len(times) == args.warmup:
                clock.reset()
                if profiler:
                    profiler.enable()
            elif len(times) == args.warmup + args.steps and profiler:
                profiler.disable()  # before train()'s own ending

    model = AutoModelForCausalLM.from_pretrained(cfg.model)
    trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          reward_funcs=[gold_reward], callbacks=[Clock()])
    for name in ("_prepare_inputs", "_generate_and_score_completions", "_generate"):  # context; bookkeeping: other
        clock.wrap(trainer, name, "other")
    generate = trainer._generate_single_turn

    def sample(ids, *rest, **kwargs):  # records what was sampled, for the checks and the lengths
        completions, logprobs = generate(ids, *rest, **kwargs)
        prompt_ids.extend(list(p) for p in ids)
        lengths.append(sum(map(len, completions)) / len(completions))
        return completions, logprobs

    trainer._generate_single_turn = sample
    clock.wrap(trainer, "_generate_single_turn", "sampling")
    clock.wrap(trainer.processing_class, "batch_decode", "scoring")  # decoding, as in our score()
    clock.wrap(trainer, "_calculate_rewards", "scoring")
    clock.wrap(trainer, "_get_per_token_logps_and_entropies",
               lambda names: "logprobs" if "_generate_and_score_completions" in names else "update")
    clock.wrap(trainer, "training_step", "update")  # compute_loss and backward (its _prepare_inputs is timed above)
    clock.wrap(trainer.accelerator, "clip_grad_norm_", "update")
    settings = {name: getattr(trainer, name) for name in (  # as the trainer took them, for the report
        "loss_type", "beta", "epsilon_low", "epsilon_high", "scale_rewards", "num_iterations", "num_generations",
        "max_completion_length", "temperature", "top_k", "top_p", "mask_truncated_completions", "use_vllm")}
    settings |= {"use_bias_correction_kl": trainer.args.use_bias_correction_kl,
                 "generation_batch_size": trainer.args.generation_batch_size,
                 "reference model": trainer.ref_model is not None}
    trainer.train()
    ours = [encoder.prompt(rows[i]["prompt"]) for i in order for _ in range(args.samples)]
    same = sum(a == b for a, b in zip(ours, prompt_ids))
    return {"times": times, "lengths": lengths, "parts": clock.seconds, "same_ids": same, "rows": len(ours),
            "sampled_rows": len(prompt_ids), "settings": settings}


def child(args) -> dict:
    import cProfile
    import io
    import pstats
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

    if args.child == "trl":
        import trl  # noqa: F401
    AutoModelForCausalLM.from_pretrained(str(Path(args.data_dir) / "reference"))  # and dropped
    base = peak_mib()
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if args.child == "ours" else run_trl)(args, tmp, sync, profiler)
    w, n = args.warmup, args.steps
    seconds = result["times"][w + n - 1] - result["times"][w - 1]
    parts = {part: result["parts"].get(part, 0.0) for part in PARTS[:-1]}
    parts["other"] = seconds - sum(parts.values())  # all the rest of the iterations, timed or not
    profile = ""
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(PROFILE_LINES)
        profile = text.getvalue()
    return result | {"seconds": seconds, "parts": {k: v / n for k, v in parts.items()},
                     "after_update": result["parts"].get("after_update", 0.0) / n,
                     "length": sum(result["lengths"][w:w + n]) / n, "peak": peak_mib(), "base": base,
                     "profile": profile, "device": torch.cuda.get_device_name() if cuda else "cpu"}


# ============================================================================================ driver
def run_side(side: str, args) -> dict:
    flags = ["--data-dir", args.data_dir, "--prompts", str(args.prompts), "--samples", str(args.samples),
             "--max-new-tokens", str(args.max_new_tokens), "--warmup", str(args.warmup), "--steps", str(args.steps),
             "--threads", str(args.threads), "--seed", str(args.seed)]
    flags += ["--profile"] if args.profile else []
    return run_child(__file__, side, SIDES[side], args.threads, flags)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    if importlib.util.find_spec("trl") is None:
        sys.exit("TRL is not installed; it is an optional benchmark dependency: pip install trl==1.16.0")
    data = Path(args.data_dir)
    if not (data / "prompts_train.jsonl").is_file() or not (data / "reference").is_dir():
        sys.exit(f"{data} holds no prompts_train.jsonl and reference/ model: build the data first, or pass --data-dir")
    load = os.getloadavg()[0]
    runs = {side: [] for side in SIDES}
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits every side alike
        for side in SIDES:
            runs[side].append(run_side(side, args))
    report(args, {side: min(r, key=lambda x: x["seconds"]) for side, r in runs.items()}, load)


def report(args, results: dict, load: float):
    ours, trl = results["ours"], results["trl"]
    batch = args.prompts * args.samples
    print(f"GRPO iteration on {ours['device']}, {args.threads} torch threads, {args.data_dir}: {args.prompts} prompts "
          f"x {args.samples} samples, at most {args.max_new_tokens} new tokens, {args.warmup} warm-up + {args.steps} "
          f"timed iterations, best of {args.rounds} rounds" + (" (--smoke: these timings mean nothing)"
                                                               if args.smoke else ""))
    if ours["device"] == "cpu" and load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores before the "
              "benchmark: other processes compete for the CPU and the timings are noisy")
    print("TRL's settings: " + ", ".join(f"{k}={v}" for k, v in trl["settings"].items()))
    print(f"TRL prompt ids identical to ours on {trl['same_ids']}/{trl['rows']} rows (prompts x samples x "
          f"iterations; TRL sampled {trl['sampled_rows']})\n")
    unit = "MiB" if ours["device"] == "cpu" else "MiB CUDA"
    print(f"{'side':<22}{'iter/s':>8}{'samples/s':>11}{'tokens/sample':>15}{'peak ' + unit:>15}{'above baseline':>16}")
    for side, r in results.items():
        r["rate"], r["added"] = batch * args.steps / r["seconds"], r["peak"] - r["base"]
        print(f"{SIDES[side]:<22}{args.steps / r['seconds']:>8.2f}{r['rate']:>11.1f}{r['length']:>15.1f}"
              f"{r['peak']:>15.0f}{r['added']:>16.0f}")
    print(f"\n{SIDES['ours']} / {SIDES['trl']}: samples/s x{ours['rate'] / trl['rate']:.2f}, peak memory "
          f"x{ours['peak'] / trl['peak']:.2f}, above baseline x{ours['added'] / max(trl['added'], 1e-9):.2f}")
    print("\nWhere an iteration's time goes (ms an iteration; sampling: generating the completion ids; scoring: "
          "decoding and the gold reward;\nlogprobs: the forwards before the update (reference; ours also old); "
          "update: forward with gradient, loss, backward, clipping, AdamW;\nother: the rest)")
    print(f"{'side':<22}" + "".join(f"{part:>13}" for part in PARTS) + f"{'total':>11}")
    for side, r in results.items():
        parts = r["parts"]
        total = sum(parts.values())
        print(f"{SIDES[side]:<22}" + "".join(f"{1e3 * parts[p]:>9.1f} {parts[p] / total:>3.0%}" for p in PARTS)
              + f"{1e3 * total:>11.1f}")
    print(f"(ours' other includes {1e3 * ours['after_update']:.1f} ms a step for the forward after the update that "
          "logs KL(pi_old || pi))")
    for side, r in results.items():
        if r["profile"]:
            print(f"\ncProfile of {SIDES[side]}, timed iterations, top {PROFILE_LINES} by own time:\n{r['profile']}")


if __name__ == "__main__":
    main()
