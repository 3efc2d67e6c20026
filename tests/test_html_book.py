"""The static HTML book: one page per chapter, an index, chapter links that work without a server,
figures embedded in the pages, and MathJax for the formulas."""

import base64
import importlib.util
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_html", ROOT / "scripts" / "build_html.py")
build_html = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_html)
# a 1x1 PNG
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
                         "RU5ErkJggg==")


def test_chapters_index_links_figures_and_math(tmp_path):
    notebooks = tmp_path / "notebooks"
    (notebooks / "figures").mkdir(parents=True)
    (notebooks / "figures" / "dot.png").write_bytes(PIXEL)
    first = new_notebook(cells=[
        new_markdown_cell("# 1. First chapter\n*Time: about 1 minute.*\n\nThe first sentence of\nprose. "
                          "And more.\n\nSee [the next one](02_second.ipynb#a-section) and $w_+ = 1$."),
        new_code_cell("1 + 1", outputs=[new_output("display_data", data={
            "image/png": base64.b64encode(PIXEL).decode(), "text/plain": "<Figure>"})])])
    second = new_notebook(cells=[new_markdown_cell("# 2. Second chapter\n\nBack to [one](01_first.ipynb).\n\n"
                                                   "![a figure](figures/dot.png)")])
    nbformat.write(first, notebooks / "01_first.ipynb")
    nbformat.write(second, notebooks / "02_second.ipynb")
    (notebooks / "scratch.ipynb").write_text("not a chapter, never read")

    written = build_html.build(notebooks, tmp_path / "html")
    assert [p.name for p in written] == ["index.html", "01_first.html", "02_second.html"]
    index = (tmp_path / "html" / "index.html").read_text()
    assert '<a href="01_first.html">1. First chapter</a>' in index
    assert "The first sentence of prose." in index and "And more" not in index
    one = (tmp_path / "html" / "01_first.html").read_text()
    two = (tmp_path / "html" / "02_second.html").read_text()
    assert 'href="02_second.html#a-section"' in one and ".ipynb" not in one.split("<body", 1)[1]
    assert 'href="01_first.html"' in two
    assert 'href="02_second.html">2. Second chapter →' in one and '← 1. First chapter' in two
    assert "data:image/png;base64" in one and "data:image/png;base64" in two  # output and markdown figure
    assert "mathjax" in one.lower() and "w_+ = 1" in one


def test_the_real_books_pages_show_every_figure(tmp_path):
    """Each chapter page of the real book embeds every figure its executed notebook holds."""
    notebooks = ROOT / "notebooks"
    chapters = sorted(notebooks.glob("[0-9]*.ipynb"))
    written = build_html.build(notebooks, tmp_path)
    assert [p.name for p in written] == ["index.html"] + [f"{p.stem}.html" for p in chapters]
    figures = {}
    for path in chapters:
        cells = nbformat.read(path, as_version=4).cells
        figures[path.stem] = sum("image/png" in output.get("data", {}) for cell in cells
                                 for output in cell.get("outputs", []))
        page = (tmp_path / f"{path.stem}.html").read_text(encoding="utf-8")
        assert page.count("data:image/png;base64") >= figures[path.stem], f"{path.name}: figures missing from its page"
    assert sum(figures.values()) > 0, "the executed book holds no figures"
