"""What the benchmark scripts share: each side runs in a subprocess of its own (the same script with --child), so
its peak memory and its libraries are its own, and reports one line `RESULT {json}`."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_child(script: str, side: str, label: str, threads: int, flags: list[str]) -> dict:
    """Run `script --child side *flags` offline with `threads` torch threads and return its RESULT."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
                        "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                        # one GPU: TRL refuses nn.DataParallel, our trainer is single-process here too
                        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    done = subprocess.run([sys.executable, script, "--child", side, *flags], capture_output=True, text=True,
                          env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{label} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))
