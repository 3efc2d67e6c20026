"""Execute every notebook of the book in order, in place, and report the time each takes.

    python scripts/run_book.py            # all chapters
    python scripts/run_book.py 03 08      # chapters whose file name starts with these prefixes
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parents[1] / "notebooks"


def main(prefixes: list[str]) -> int:
    notebooks = sorted(p for p in BOOK.glob("*.ipynb") if not prefixes or p.name.startswith(tuple(prefixes)))
    if not notebooks:
        print(f"no notebooks to run in {BOOK}")
        return 0
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for path in notebooks:
        start = time.time()
        notebook = nbformat.read(path, as_version=4)
        here = {"metadata": {"path": str(BOOK)}}  # run with the notebooks folder as working directory
        client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources=here)
        client.execute()
        nbformat.write(notebook, path)
        print(f"{path.name:40s} {time.time() - start:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
