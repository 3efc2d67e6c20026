"""Execute the book's notebooks in place, several at a time, and report the time each takes.

    python scripts/run_book.py                  # every chapter, two at a time
    python scripts/run_book.py 03 08            # chapters whose file name starts with these prefixes
    python scripts/run_book.py --jobs 1         # one chapter at a time
    python scripts/run_book.py --notebooks DIR  # the notebooks of another copy of the book

Executing the book twice on one machine gives byte-identical notebooks and figures: every kernel runs
with the environment in KERNEL_ENV (one torch thread, figures drawn inline; nbval's kernels get the same,
see conftest.py), and no execution timestamps are stored; tests/test_book_outputs.py checks that the
chapters store no progress bars or wall-clock times either. Another CPU model can round a training run's
sums differently (its BLAS takes other kernels), so each notebook records the machine that executed it
(`machine()`, in its metadata), and nbval compares a training cell's printed digits only on that machine.
A chapter that fails is left as it was on disk; its error is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "notebooks"
# The environment of every kernel that executes a chapter, here and under nbval (conftest.py):
# figures are drawn inline (each appears in the notebook where it is drawn; chapters also save a copy
# under notebooks/figures/), and torch, MKL and tokenizers use one thread, so the numbers a chapter
# prints do not depend on how many chapters run at once or on the machine's core count.
KERNEL_ENV = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
# The chapter's own estimate, "*Time: about 2.5 minutes ...*", used to start the longest chapters first.
BUDGET = re.compile(r"\*Time: about ([\d.]+) (second|minute)s?")


def budget(path: Path) -> float:
    """The chapter's stated running time in seconds (from its "*Time: about ...*" line), 60 if it has none."""
    match = BUDGET.search(path.read_text(encoding="utf-8"))
    if not match:
        return 60.0
    return float(match.group(1)) * (60 if match.group(2) == "minute" else 1)


def machine() -> str:
    """What decides the last bits of a training run here: the CPU model (its BLAS kernels), the pinned torch
    and the thread count (KERNEL_ENV). Stored in each executed notebook as metadata unified_rlhf.executed_on."""
    from importlib.metadata import version

    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block
            key, _, value = line.partition(":")
            cpu[key.strip()] = value.strip()
    except OSError:
        pass
    model = (f"{cpu['vendor_id']} family {cpu['cpu family']} model {cpu['model']}"
             if {"vendor_id", "cpu family", "model"} <= cpu.keys() else platform.processor() or "unknown CPU")
    return f"{platform.machine()} {model}, torch {version('torch')}, {KERNEL_ENV['OMP_NUM_THREADS']} thread"


def outputs_compared(cell_source: str, executed_on: str | None, here: str) -> bool:
    """Whether nbval compares a cell's printed outputs (conftest.py): a derivation cell, marked
    `# NBVAL_CHECK_OUTPUT`, everywhere (SymPy and float64 checks print the same on any machine); any other
    cell only on the machine that executed the notebook. Elsewhere it still runs and its asserts still hold."""
    return "NBVAL_CHECK_OUTPUT" in cell_source or executed_on == here


def kernel_environment() -> dict[str, str]:
    return {**os.environ, **KERNEL_ENV}


def kernel_config(scratch: Path):
    """Kernel-manager settings: encrypt the kernel's channels (CurveZMQ, which the python3 kernelspec
    supports), which also keeps the kernel from warning that it runs "over TCP without encryption"."""
    import zmq
    from traitlets.config import Config

    config = Config()
    if zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    else:  # no CurveZMQ in this pyzmq build: local IPC sockets instead (files in the folder `scratch`)
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(scratch / "kernel")
    return config


def strip_volatile(notebook) -> None:
    """Drop what changes from one execution to the next without the code's results changing: nbclient's
    per-cell timestamps, and the split of printed text into stream outputs (it follows when the kernel
    flushed, so consecutive pieces of one stream are joined)."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # older runs recorded timestamps here
        outputs = []
        for output in cell.get("outputs", []):
            previous = outputs[-1] if outputs else None
            if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                    and previous.name == output.name):
                previous.text += output.text
            else:
                outputs.append(output)
        if "outputs" in cell:
            cell.outputs = outputs


def execute(path: Path, timeout: int = 900) -> tuple[Path, float, str | None]:
    """Execute one notebook in place (working directory: its folder). Returns (path, seconds, error or None)."""
    import nbformat
    from nbclient import NotebookClient

    start = time.perf_counter()
    notebook = nbformat.read(path, as_version=4)
    # scratch: the kernel process's own log (shown if the chapter fails), and IPC sockets if any
    with tempfile.TemporaryDirectory(prefix="run_book-") as scratch, open(Path(scratch) / "kernel.log", "w+") as stderr:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}}, config=kernel_config(Path(scratch)))
        try:
            client.execute(env=kernel_environment(), stderr=stderr)
        except Exception as error:  # a failing cell, a timeout, a dead kernel: report it, run the other chapters
            stderr.seek(0)
            log = stderr.read().strip()
            return path, time.perf_counter() - start, str(error) + (f"\nkernel log:\n{log}" if log else "")
    strip_volatile(notebook)
    notebook.metadata.setdefault("unified_rlhf", {})["executed_on"] = machine()
    nbformat.write(notebook, path)
    return path, time.perf_counter() - start, None


def chapters(folder: Path, prefixes: list[str]) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if not prefixes or p.name.startswith(tuple(prefixes)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="run only the chapters whose file name starts with these")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="chapters executed at once (default 2: "
                        "one per core of the 2-core machine the book is written on)")
    parser.add_argument("--notebooks", type=Path, default=BOOK, help="the folder of notebooks (default: the book)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed for one cell (default 900)")
    args = parser.parse_args(argv)
    paths = chapters(args.notebooks, args.prefixes)
    if not paths:
        print(f"no notebooks to run in {args.notebooks}")
        return 0
    jobs = max(1, min(args.jobs, len(paths)))
    order = sorted(paths, key=budget, reverse=True)  # longest first: the last ones to finish are short
    start = time.perf_counter()
    if jobs == 1:
        results = (execute(path, args.timeout) for path in order)
        failed, busy = report(results)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each chapter runs in its own kernel process
            futures = [pool.submit(execute, path, args.timeout) for path in order]
            failed, busy = report(future.result() for future in as_completed(futures))
    total = time.perf_counter() - start
    print(f"{len(paths)} notebooks in {total:.0f} s ({busy:.0f} s of execution, {jobs} at a time)"
          + (f"; FAILED: {', '.join(sorted(failed))}" if failed else ""), flush=True)
    return 1 if failed else 0


def report(results) -> tuple[list[str], float]:
    """Print each chapter's time (and error) as it finishes; return the failed ones and the total time."""
    failed, busy = [], 0.0
    for path, seconds, error in results:
        busy += seconds
        print(f"{path.name:40s} {seconds:6.1f} s{'   FAILED' if error else ''}", flush=True)
        if error:
            failed.append(path.name)
            print(error, file=sys.stderr, flush=True)
    return failed, busy


if __name__ == "__main__":
    sys.exit(main())
