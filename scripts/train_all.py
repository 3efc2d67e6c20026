"""Train every method from the shipped reference with its task defaults and record what it reached.

    python scripts/train_all.py [--out results/methods] [--methods dpo kto ...] [--eval-prompts 200]

Writes <out>/summary.json and <out>/summary.md: per method the reference's and the trained policy's
gold reward on held-out prompts, KL(pi || pi_ref), win rate and wall time. Runs are kept under
<out>/runs/<method>; a finished method is skipped when the script is run again.
"""

import argparse
import json
import time
from pathlib import Path

from unified_rlhf import objectives
from unified_rlhf.config import default_config
from unified_rlhf.evaluate import evaluate_run
from unified_rlhf.trainer import train

# What each run's record should say when a method is not expected to raise the gold reward by itself.
NOT_EXPECTED = {
    "rm": "trains a reward model, not a policy: its record is held-out pair accuracy",
    "sft": "imitates the SFT corpus, whose mean gold reward is the reference's own (~0.4)",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/methods")
    parser.add_argument("--methods", nargs="*", default=list(objectives.REGISTRY))
    parser.add_argument("--eval-prompts", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for method in args.methods:
        if method in summary:
            continue
        run = out / "runs" / method
        started = time.time()
        train(default_config(method, out=str(run), eval_every=0, progress=False), overwrite=True)
        seconds = time.time() - started
        result = evaluate_run(run, samples_per_prompt=4, prompts=args.eval_prompts)
        result.pop("samples", None)
        summary[method] = result | {"train_seconds": round(seconds, 1), "note": NOT_EXPECTED.get(method, "")}
        out.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{method:24s} {json.dumps({k: v for k, v in summary[method].items() if isinstance(v, float)})}",
              flush=True)
    lines = ["| method | reference gold reward | gold reward | KL(pi‖ref) | win rate | train s | note |",
             "|---|---|---|---|---|---|---|"]
    for method in [m for m in objectives.REGISTRY if m in summary]:
        r = summary[method]
        if "gold_reward" in r:
            lines.append(f"| {method} | {r['reference_gold_reward']:.3f} | {r['gold_reward']:.3f} | {r['kl']:.2f} | "
                         f"{r['win_rate']:.2f} | {r['train_seconds']:.0f} | {r['note']} |")
        else:
            lines.append(f"| {method} | | accuracy {r['accuracy']:.3f}, gold agreement {r['gold_agreement']:.3f} | | | "
                         f"{r['train_seconds']:.0f} | {r['note']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
