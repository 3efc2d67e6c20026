"""The repository stands on its own: readers clone only this repository.

Every text file git knows about (notebooks with their outputs, Python, Markdown, BibTeX, YAML, TOML,
cfg, ...) is scanned for pointers outside the repository (the sibling folder the project was planned
in and its notes) and for references to the project's issue tracker, which readers do not have.
And every arXiv id a chapter or the README cites must have an entry in references.bib.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TEXT_SUFFIXES = {".py", ".ipynb", ".md", ".bib", ".yml", ".yaml", ".toml", ".cfg", ".ini", ".txt", ".sh",
                 ".json", ".csv"}
TEXT_NAMES = {"Makefile", ".gitignore"}
TEXT_FOLDERS = (".ci/",)  # scripts without a suffix

# Written so that this file does not match itself: each pattern is split or escaped.
OUTSIDE = [
    ("a path to the sibling planning folder", re.compile(r"\.\./" + "shared")),
    ("the planning folder's source texts", re.compile("shared" + r"/seeds")),
    ("the planning notes", re.compile("METHODS" + r"\.md")),
]
ISSUE_WORDS = re.compile(r"\b(?:issue|pull request|PR)s?\s*#?\d+\b", re.IGNORECASE)
# "#12" meaning an issue: after the start of a line, a space or an opening bracket, digits only, then not
# a word character. Hex colours are quoted strings or follow "color", Markdown headings and comments
# have a space after "#", HTML entities follow "&", URL fragments follow a word character.
HASH_NUMBER = re.compile(r"(?:^|(?<=[\s(\[]))#(\d{1,5})(?![\w-])")
COLOUR_CONTEXT = re.compile(r"(colou?r|fill|edge|face|stroke|bg)\W{0,12}$", re.IGNORECASE)


def tracked_files() -> list[Path]:
    """Files git tracks, plus new files not yet committed that git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    names = sorted(set(out.splitlines()))
    return [ROOT / n for n in names if (ROOT / n).is_file()
            and (Path(n).suffix in TEXT_SUFFIXES or Path(n).name in TEXT_NAMES or n.startswith(TEXT_FOLDERS))]


def notebook_lines(path: Path):
    """(where, line) for every line of every cell's source and text outputs (images skipped)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb.get("cells", [])):
        kind = cell.get("cell_type", "?")
        texts = [("source", cell.get("source", ""))]
        for output in cell.get("outputs", []):
            texts.append(("output", output.get("text", "")))
            texts += [("output " + mime, value) for mime, value in output.get("data", {}).items()
                      if not mime.startswith("image/")]
            texts.append(("traceback", output.get("traceback", [])))
        for part, text in texts:
            if not isinstance(text, str):
                text = "".join(text) if all(isinstance(t, str) for t in text) else json.dumps(text)
            for n, line in enumerate(text.splitlines(), start=1):
                yield f"cell {i} ({kind} {part}) line {n}", line


def file_lines(path: Path):
    if path.suffix == ".ipynb":
        yield from notebook_lines(path)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    for n, line in enumerate(text.splitlines(), start=1):
        yield f"line {n}", line


def problems_in(line: str) -> list[str]:
    found = [f"{what} ({m.group(0)!r})" for what, pattern in OUTSIDE for m in pattern.finditer(line)]
    found += [f"an issue reference ({m.group(0)!r})" for m in ISSUE_WORDS.finditer(line)]
    for m in HASH_NUMBER.finditer(line):
        before = line[:m.start()]
        if before.endswith(("'", '"')) or COLOUR_CONTEXT.search(before):
            continue
        found.append(f"an issue reference ({m.group(0)!r})")
    return found


def test_the_scan_sees_the_book():
    names = {p.relative_to(ROOT).as_posix() for p in tracked_files()}
    assert "README.md" in names and "references.bib" in names
    assert sum(n.startswith("notebooks/") and n.endswith(".ipynb") for n in names) >= 17


@pytest.mark.parametrize("line, bad", [
    # each bad example is split so that this file does not match itself
    ("see ../" + "shared/" + "seeds/002", True), ("as " + "METHODS" + ".md says", True),
    ("fixed in issue " + "6", True), ("see issue " + "#12", True), ("closes " + "#5.", True),
    ("(" + "#42)", True), ("PR " + "17 added it", True),
    ('color="#555555"', False), ("edgecolor = '#000'", False), ("# 1. Preface", False),
    ("x = 1  # noqa: E731", False), ("&#8212;", False), ("page.html#5", False), ("## 15.4 Offline", False),
    ("the shared on-disk cache", False), ("a known issue with padding", False),
])
def test_the_patterns(line, bad):
    assert bool(problems_in(line)) == bad, problems_in(line)


def test_no_file_points_outside_the_repository_or_at_the_issue_tracker():
    hits = [f"{path.relative_to(ROOT)}: {where}: {problem}"
            for path in tracked_files() for where, line in file_lines(path) for problem in problems_in(line)]
    assert not hits, "references a reader of this repository cannot follow:\n" + "\n".join(hits)


ARXIV = re.compile(r"(?:arXiv[\s:]*|arxiv\.org/(?:abs|pdf)/)(\d{4}\.\d{4,5})", re.IGNORECASE)


def bib_entries() -> dict[str, str]:
    """key -> body of every entry in references.bib."""
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    return {m.group(2): m.group(3) for m in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,(.*?)\n\}", text, re.S)}


def field(body: str, name: str) -> str | None:
    m = re.search(rf"\b{name}\s*=\s*[{{\"](.*?)[}}\"]\s*,?\s*$", body, re.M | re.S)
    return m.group(1) if m else None


def cited_ids() -> dict[str, set[str]]:
    """arXiv id -> where it is cited (chapters' Markdown cells and the README)."""
    cited: dict[str, set[str]] = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                for m in ARXIV.finditer("".join(cell["source"])):
                    cited.setdefault(m.group(1), set()).add(f"{path.name} cell {i}")
    for m in ARXIV.finditer((ROOT / "README.md").read_text(encoding="utf-8")):
        cited.setdefault(m.group(1), set()).add("README.md")
    return cited


def test_every_cited_arxiv_id_is_in_the_bibliography():
    entries = bib_entries()
    in_bib = {field(body, "eprint") for body in entries.values()} - {None}
    cited = cited_ids()
    assert len(cited) >= 20, "the scan for arXiv ids found too few: is the pattern still right?"
    missing = {i: sorted(where) for i, where in cited.items() if i not in in_bib}
    assert not missing, f"arXiv ids cited but not in references.bib: {missing}"


def test_the_bibliography_entries_are_complete():
    entries = bib_entries()
    assert len(entries) >= 30
    kinds = re.findall(r"@(\w+)\s*\{", (ROOT / "references.bib").read_text(encoding="utf-8"))
    assert kinds.count("unpublished") == 2, "the two source texts, as unpublished drafts"
    for key, body in entries.items():
        for name in ("author", "title", "year"):
            assert field(body, name), f"{key}: no {name}"
        assert re.fullmatch(r"\d{4}", field(body, "year")), f"{key}: year"
        if field(body, "eprint"):
            assert re.fullmatch(r"\d{4}\.\d{4,5}", field(body, "eprint")), f"{key}: eprint is not an arXiv id"
            assert field(body, "archivePrefix") == "arXiv", f"{key}: eprint without archivePrefix = {{arXiv}}"
    eprints = [field(body, "eprint") for body in entries.values() if field(body, "eprint")]
    assert len(eprints) == len(set(eprints)), "an arXiv id with two entries"
