"""Build the book's web site from the executed chapters: Sphinx with myst-nb and sphinx-book-theme.

    python scripts/build_book.py                   # book_html/ (incremental: only changed chapters are re-read)
    python scripts/build_book.py --fresh           # from scratch
    python scripts/build_book.py --out DIR --work DIR

Nothing is executed: the chapters are rendered with the outputs committed by scripts/run_book.py. The Sphinx
project lives in book/ (conf.py, index, notation, bibliography); this script lays out its source tree in
a work folder (book/, the chapters notebooks/NN_*.ipynb with their figures, references.bib, and the parts
of MathJax 2.7 it uses, from the jupyter-server-mathjax package) and runs sphinx-build on it. The site
opens from the file system (book_html/index.html) with no server and no network: MathJax, the theme and
the search index are all local files. Warnings fail the build (a broken link between chapters, a citation
key missing from references.bib), after all of them have been printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = ROOT / "notebooks"
BIBLIOGRAPHY = ROOT / "references.bib"
# The parts of MathJax 2.7 that book/conf.py's configuration loads: the combined configuration Jupyter uses
# (TeX input and HTML-CSS output in one file), the STIX web fonts, and what MathJax.js loads on demand from
# there (font metrics, TeX extensions, the operator dictionary). About 3 MB of the package's 12.
MATHJAX_PARTS = ("MathJax.js", "LICENSE", "config/TeX-AMS-MML_HTMLorMML-full.js", "extensions/*.js", "extensions/TeX",
                 "extensions/HTML-CSS", "jax/input/TeX", "jax/output/HTML-CSS", "jax/element",
                 "fonts/HTML-CSS/STIX-Web/woff")


def mathjax_source() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError as error:
        raise SystemExit("MathJax comes from the jupyter-server-mathjax package: pip install -e '.[book]'") from error
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def source_files() -> dict[str, Path]:
    """Every file of the Sphinx source tree, by its path in the tree."""
    chapters = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        raise FileNotFoundError(f"no chapters (NN_name.ipynb) in {NOTEBOOKS}")
    files = {p.relative_to(BOOK).as_posix(): p for p in BOOK.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    files.update({p.name: p for p in chapters})
    files.update({p.relative_to(NOTEBOOKS).as_posix(): p for p in (NOTEBOOKS / "figures").rglob("*") if p.is_file()})
    files["references.bib"] = BIBLIOGRAPHY
    mathjax = mathjax_source()
    for part in MATHJAX_PARTS:
        for path in sorted(mathjax.glob(part)):
            for p in [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()):
                files[f"_static/mathjax/{p.relative_to(mathjax).as_posix()}"] = p
    return files


def assemble(source: Path) -> int:
    """Make `source` hold exactly source_files(). Copies keep their modification times, so Sphinx re-reads
    only the chapters that changed since the last build. Returns the number of files copied."""
    files = source_files()
    copied = 0
    for name, original in files.items():
        target = source / name
        stat = original.stat()
        if target.is_file() and (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size,
                                                                                        stat.st_mtime_ns):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(original, target)
        copied += 1
    for path in sorted(source.rglob("*"), reverse=True):  # a chapter renamed or removed leaves the tree too
        name = path.relative_to(source).as_posix()
        if path.is_file() and name not in files:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return copied


def build(out: Path = ROOT / "book_html", work: Path = ROOT / "build" / "book", *, fresh: bool = False,
          quiet: bool = True) -> Path:
    """Build the site into `out`; returns out / "index.html"."""
    from sphinx.cmd.build import build_main

    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    source, warnings = work / "source", work / "warnings.txt"
    assemble(source)
    args = ["-b", "html", "-d", str(work / "doctrees"), "-W", "--keep-going", "-w", str(warnings), str(source),
            str(out)]
    # myst-nb copies the notebooks into <site>/../jupyter_execute; that folder is not ours to leave behind
    copies, existed = out.parent / "jupyter_execute", (out.parent / "jupyter_execute").exists()
    status = build_main(["-q", *args] if quiet else args)
    if not existed:
        shutil.rmtree(copies, ignore_errors=True)
    if status != 0:
        found = warnings.read_text(encoding="utf-8").strip() if warnings.is_file() else ""
        raise RuntimeError(f"sphinx-build failed (exit status {status}):\n{found or 'see the errors printed above'}")
    return out / "index.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "book_html", help="the site (default: book_html/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "book",
                        help="the assembled source tree and Sphinx's cache (default: build/book/)")
    parser.add_argument("--fresh", action="store_true", help="delete the site and the cache first")
    parser.add_argument("--verbose", action="store_true", help="print Sphinx's progress")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        index = build(args.out, args.work, fresh=args.fresh, quiet=not args.verbose)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    pages = sum(1 for _ in args.out.glob("*.html"))
    print(f"{pages} pages in {time.perf_counter() - start:.0f} s; open {index} in a browser (no server needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
