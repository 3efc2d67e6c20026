"""The executed chapters as committed: every figure a chapter draws is shown where it is drawn, and
nothing in the stored notebooks changes from one execution to the next (so re-running the book, and
nbval re-running it in CI, reproduces every byte a reader sees). Also the machinery that guarantees
it: scripts/run_book.py's execution and the environment nbval's kernels get (conftest.py)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "notebooks"
CHAPTERS = sorted(BOOK.glob("[0-9]*.ipynb"))
spec = importlib.util.spec_from_file_location("run_book", ROOT / "scripts" / "run_book.py")
run_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_book)

# pyplot calls that create, draw on or show a figure (plt.close, plt.rcParams, plt.style... do not)
PYPLOT_DRAWING = {"subplots", "figure", "subplot", "subplot_mosaic", "plot", "scatter", "imshow", "matshow", "hist",
                  "bar", "barh", "errorbar", "fill_between", "contour", "contourf", "pcolormesh", "axhline",
                  "axvline", "semilogx", "semilogy", "loglog", "gcf", "gca", "show"}
FIGURE_FILE = re.compile(r"""["'](?:\./)?figures/([\w.-]+\.png)["']""")
# what must never be stored: it changes from run to run (or from one machine to another)
PROGRESS_BAR = re.compile(r"\d+%\|.*\|| \d+(?:\.\d+)?(?:it/s|s/it)\b")
ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]{6,}")
# a cell whose code measures wall-clock time: it must not print what it measured
CLOCK = re.compile(r"\btime\.(?:time|perf_counter|monotonic|process_time)\(|\bdatetime\.now\(|\btimeit\b"
                   r"""|\[["']seconds["']\]|column\(["']seconds["']\)""")


def chapter_id(path: Path) -> str:
    return path.stem


@cache
def load(path: Path):
    return nbformat.read(path, as_version=4)


def python_source(cell) -> str:
    """The cell's code as Python (IPython magics and shell escapes turned into function calls)."""
    return TransformerManager().transform_cell(cell.source)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _calls(statements, skip_definitions: bool):
    """The names of the functions called in `statements` ("plt.subplots", "fig.savefig", "draw"), leaving
    out the bodies of functions and classes defined there when skip_definitions."""
    stack = list(statements)
    while stack:
        node = stack.pop()
        if skip_definitions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            yield _dotted(node.func)
        stack.extend(ast.iter_child_nodes(node))


def draws(name: str, helpers: set[str]) -> bool:
    """Whether calling `name` creates, draws on, saves or shows a matplotlib figure."""
    head, _, attribute = name.rpartition(".")
    return ((head in ("plt", "pyplot", "matplotlib.pyplot") and attribute in PYPLOT_DRAWING)
            or attribute.startswith("plot_")  # plots.plot_weights, compare.plot_frontier_panels, ...
            or attribute == "savefig"
            or name in helpers)  # a function defined in the chapter that draws


def drawing_cells(notebook) -> list[int]:
    """Indices of the code cells that draw a figure when executed: they call a plotting function outside
    any function they define, or call a function defined earlier in the chapter that does."""
    trees = {}
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            trees[i] = ast.parse(python_source(cell))
    definitions = {node.name: node for tree in trees.values() for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    helpers: set[str] = set()
    while True:  # functions that draw, directly or through other such functions
        found = {name for name, node in definitions.items() if name not in helpers
                 and any(draws(call, helpers) for call in _calls(node.body, skip_definitions=False))}
        if not found:
            break
        helpers |= found
    return [i for i, tree in trees.items() if any(draws(call, helpers) for call in _calls(tree.body, True))]


def images(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def texts(cell):
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            yield output.text
        elif output.output_type == "error":
            yield "\n".join(output.traceback)
        for kind, value in output.get("data", {}).items():
            if kind.startswith("text/") or kind.endswith("json"):
                yield value if isinstance(value, str) else json.dumps(value)


def where(path: Path, i: int, cell) -> str:
    return f"{path.name} cell {i}: {cell.source.strip().splitlines()[0][:80]!r}"


def test_the_drawing_detector():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\n%matplotlib inline"),
        nbformat.v4.new_code_cell("def panel(ax):\n    ax.plot([1, 2])\n\ndef draw():\n    fig, ax = plt.subplots()\n"
                                  "    panel(ax)\n    return fig"),
        nbformat.v4.new_code_cell("fig = draw()"),
        nbformat.v4.new_code_cell("for run in runs:\n    plots.plot_weights(run.metrics)"),
        nbformat.v4.new_code_cell("fig.savefig('figures/x.png')\nplt.close(fig)"),
        nbformat.v4.new_code_cell("plt.close('all')\nprint(compare.pareto(points))\nrows = table.plot"),
        nbformat.v4.new_code_cell("def later():\n    return plt.figure()"),
    ])
    assert drawing_cells(notebook) == [2, 3, 4]


@pytest.mark.parametrize("path", CHAPTERS, ids=chapter_id)
def test_every_figure_a_chapter_draws_is_shown_where_it_is_drawn(path):
    notebook = load(path)
    missing = [where(path, i, notebook.cells[i]) for i in drawing_cells(notebook) if not images(notebook.cells[i])]
    assert not missing, ("cells that draw a figure but have no image output (execute the book with "
                         "`make book`; a figure closed before the cell ends is never shown):\n" + "\n".join(missing))


@pytest.mark.parametrize("path", CHAPTERS, ids=chapter_id)
def test_a_chapter_that_draws_figures_shows_them(path):
    notebook = load(path)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    shown = sum(images(cell) for cell in notebook.cells)
    if drawing_cells(notebook) or FIGURE_FILE.search(code):
        assert shown, f"{path.name} draws figures but its stored outputs hold none"
    assert shown >= len(set(FIGURE_FILE.findall(code))), f"{path.name} saves more figures than it shows"


def test_saved_figures_are_the_chapters_figures():
    """Every figure a chapter saves or links is in notebooks/figures/, and every file there is one of them."""
    referenced = {}
    for path in CHAPTERS:
        for cell in load(path).cells:
            for name in FIGURE_FILE.findall(cell.source) + re.findall(r"\]\((?:\./)?figures/([\w.-]+)\)", cell.source):
                referenced.setdefault(name, path.name)
    on_disk = {p.name for p in (BOOK / "figures").glob("*.png")}
    missing = {name: chapter for name, chapter in referenced.items() if name not in on_disk}
    assert not missing, f"saved or linked by a chapter but not in notebooks/figures/: {missing}"
    assert not on_disk - set(referenced), f"no chapter draws or links {sorted(on_disk - set(referenced))}"


@pytest.mark.parametrize("path", CHAPTERS, ids=chapter_id)
def test_stored_notebook_holds_nothing_volatile(path):
    notebook = load(path)
    timed = [i for i, cell in enumerate(notebook.cells) if "execution" in cell.metadata]
    problems = [f"{path.name}: execution timestamps in the metadata of cells {timed} (scripts/run_book.py "
                "leaves them out)"] if timed else []
    roots = {str(ROOT), str(Path.home()), "/tmp/"}
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        streams = [(o.output_type, o.get("name")) for o in cell.outputs]
        if any(a == b == ("stream", a[1]) for a, b in zip(streams, streams[1:])):
            problems.append(f"{where(path, i, cell)} stores one stream split in pieces (where the kernel flushed)")
        for text in texts(cell):
            for pattern, what in ((PROGRESS_BAR, "a progress bar"), (ADDRESS, "a memory address")):
                if pattern.search(text):
                    problems.append(f"{where(path, i, cell)} prints {what}: {pattern.search(text).group(0)!r}")
            problems += [f"{where(path, i, cell)} prints a path of this machine ({root})" for root in roots
                         if root in text]
        if CLOCK.search(python_source(cell)) and any(re.search(r"\d", text) for text in texts(cell)):
            problems.append(f"{where(path, i, cell)} measures wall-clock time and prints numbers")
    assert not problems, "\n".join(problems)


def test_sanitizers_are_read_by_nbval():
    from nbval.plugin import get_sanitize_patterns

    text = (BOOK / "sanitize.cfg").read_text()
    patterns = get_sanitize_patterns(text)
    assert patterns and len(patterns) == len(re.findall(r"^regex:", text, flags=re.MULTILINE))
    sample = ("RLOO: 30 s of training steps, took 1.5 seconds (2 min), <object at 0x7f3a2b1c9d90>, "
              "/tmp/ipykernel_4242/123456.py")
    for regex, replace in patterns:
        sample = re.sub(regex, replace, sample)
    assert not re.search(r"\d", sample.replace("RLOO", "")), sample


def test_chapter_budgets_are_read():
    assert all(run_book.budget(path) > 0 for path in CHAPTERS)
    assert run_book.budget(BOOK / "00_preface.ipynb") <= 60


def test_nbval_kernels_run_with_the_book_environment():
    """conftest.py gives the kernels nbval starts the environment scripts/run_book.py gives its own."""
    from nbval.kernel import RunningKernel

    kernel = RunningKernel("python3")
    try:
        names = sorted(run_book.KERNEL_ENV)
        code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
        kernel.execute_cell_input(code, allow_stdin=False)
        outputs = []
        while True:
            message = kernel.get_message(stream="iopub", timeout=60)
            if message["msg_type"] == "stream":
                outputs.append(message["content"]["text"])
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
    finally:
        kernel.stop()
    assert json.loads("".join(outputs)) == run_book.KERNEL_ENV


def test_run_book_executes_chapters_reproducibly(tmp_path):
    """Executed twice, two at a time, chapters that draw and save figures are byte-identical, figures inline."""
    notebooks = tmp_path / "notebooks"
    (notebooks / "figures").mkdir(parents=True)
    names = ["01_line", "02_bars"]
    for name, draw in zip(names, ["ax.plot([0, 1], [torch.rand(1).item(), 1])", "ax.bar([0, 1], torch.rand(2))"]):
        code = (f"import os\nimport matplotlib.pyplot as plt\nimport torch\n\ntorch.manual_seed(0)\n"
                f"fig, ax = plt.subplots(figsize=(3, 2))\n{draw}\nfig.savefig('figures/{name}.png', dpi=50)\n"
                "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
        nbformat.write(nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell(f"# {name}\n*Time: about 5 seconds.*"),
            nbformat.v4.new_code_cell(code)]), notebooks / f"{name}.ipynb")
    files = [f"{name}.ipynb" for name in names] + [f"figures/{name}.png" for name in names]
    runs = []
    for _ in range(2):
        assert run_book.main(["--notebooks", str(notebooks), "--jobs", "2"]) == 0
        runs.append([(notebooks / name).read_bytes() for name in files])
    assert runs[0] == runs[1]
    for name in names:
        executed = nbformat.read(notebooks / f"{name}.ipynb", as_version=4).cells[1]
        assert executed.outputs[0].text == "1 1\n" and images(executed) == 1
        assert "execution" not in executed.metadata


def test_training_outputs_are_compared_only_on_the_executing_machine(tmp_path):
    """conftest.py under nbval: a derivation cell (# NBVAL_CHECK_OUTPUT) is compared everywhere, any other cell
    only where the notebook's recorded machine is this one (a notebook with none recorded: nowhere); elsewhere
    it still runs (its asserts hold)."""
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('book_conftest', {str(ROOT / 'conftest.py')!r})\n"
        "book = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(book)\n"
        "globals().update({name: hook for name, hook in vars(book).items() if name.startswith('pytest_')})\n")
    stored = [("# NBVAL_CHECK_OUTPUT\nprint(2)", "1\n"), ("print(3)", "4\n"), ("assert 1 + 1 == 2", None)]
    results = {}
    for executed_on in (run_book.machine(), "another machine"):
        cells = []
        for count, (source, text) in enumerate(stored, start=1):
            cell = nbformat.v4.new_code_cell(source, execution_count=count)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)] if text else []
            cells.append(cell)
        notebook = nbformat.v4.new_notebook(cells=cells)
        notebook.metadata["unified_rlhf"] = {"executed_on": executed_on}
        nbformat.write(notebook, tmp_path / "chapter.ipynb")
        report = tmp_path / "report.xml"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                              "-o", "addopts=", "--nbval", f"--junitxml={report}", "chapter.ipynb"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert "3 passed" in run.stdout or "failed" in run.stdout, run.stdout + run.stderr
        cases = ElementTree.parse(report).getroot().iter("testcase")
        results[executed_on] = [case.get("name") for case in cases if case.find("failure") is not None]
    assert results[run_book.machine()] == ["Cell 0", "Cell 1"]
    assert results["another machine"] == ["Cell 0"]
