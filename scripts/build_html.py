"""Render the executed notebooks as a static HTML book: one page per chapter plus an index.

    python scripts/build_html.py [--notebooks notebooks] [--out book_html]

Open book_html/index.html in a browser; no server is needed. Figures are embedded in the pages,
links between chapters point at the .html pages, and each page has previous / contents / next links.
Formulas are typeset by MathJax, which the page loads from its CDN (without a network connection
they show as LaTeX source).
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
# a link to a chapter, optionally to a section in it: href="09_dpo.ipynb" or href="09_dpo.ipynb#the-loss"
CHAPTER_LINK = re.compile(r'href="(?:\./)?([\w\-]+)\.ipynb(#[^"]*)?"')
# the index page loads MathJax as nbconvert's chapter pages do, for the formulas in the chapter summaries
MATHJAX = """<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js?config=TeX-AMS_CHTML-full,Safe">
</script>
<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {inlineMath: [['$','$']]}});</script>"""
STYLE = """<style>
.book-nav { font-family: sans-serif; padding: 0.6em 1em; border-bottom: 1px solid #ccc; display: flex;
            justify-content: space-between; max-width: 1100px; margin: 0 auto; }
.book-nav a { text-decoration: none; }
</style>"""


def title_and_summary(notebook) -> tuple[str, str]:
    """The chapter's first heading, and the first sentence of its first paragraph of prose (for the index)."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown" or not cell.source.lstrip().startswith("#"):
            continue
        heading, _, rest = cell.source.strip().partition("\n")
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", rest)]
        prose = next((p for p in paragraphs if p and not p.startswith(("#", "*Time", "|", "<", "$", "!", "-"))), "")
        sentence = re.split(r"(?<=[.!?])\s", prose, maxsplit=1)[0]
        return heading.lstrip("#").strip(), re.sub(r"[*`]", "", sentence)
    return "", ""


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    previous = f'<a href="{pages[i - 1][0]}">← {html.escape(pages[i - 1][1])}</a>' if i > 0 else "<span></span>"
    following = (f'<a href="{pages[i + 1][0]}">{html.escape(pages[i + 1][1])} →</a>' if i + 1 < len(pages)
                 else "<span></span>")
    return f'<nav class="book-nav">{previous}<a href="index.html">Contents</a>{following}</nav>'


def build(notebooks: Path, out: Path) -> list[Path]:
    paths = sorted(notebooks.glob("[0-9]*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapters (NN_name.ipynb) in {notebooks}")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    loaded = [nbformat.read(path, as_version=4) for path in paths]
    pages = [(f"{path.stem}.html", title_and_summary(nb)[0] or path.stem) for path, nb in zip(paths, loaded)]
    written = []
    for i, (path, notebook) in enumerate(zip(paths, loaded)):
        # embedded images are resolved relative to the notebook's folder (figures/...)
        body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"path": str(path.parent),
                                                                                 "name": pages[i][1]}})
        body = CHAPTER_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
        nav = _nav(pages, i)
        body = body.replace("</head>", STYLE + "\n</head>", 1)
        body = re.sub(r"(<body[^>]*>)", lambda m, nav=nav: m.group(1) + nav, body, count=1)
        body = body.replace("</body>", nav + "\n</body>", 1)
        target = out / pages[i][0]
        target.write_text(body, encoding="utf-8")
        written.append(target)
    items = []
    for (page, title), notebook in zip(pages, loaded):
        summary = title_and_summary(notebook)[1]
        items.append(f'<li><a href="{page}">{html.escape(title)}</a><br><small>{html.escape(summary)}</small></li>')
    index = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Unified RLHF</title>{MATHJAX}</head>\n'
             '<body style="font-family: sans-serif; max-width: 900px; margin: 2em auto; line-height: 1.5">\n'
             "<h1>Unified RLHF</h1>\n<p>Every RLHF and preference-optimisation method is one gradient, "
             "w<sub>+</sub> ∇log π(y<sub>+</sub>|x) − w<sub>−</sub> ∇log π(y<sub>−</sub>|x); the methods differ "
             "only in the weights. Each chapter derives a method's weights, verifies them against autograd "
             "and trains a small language model with them.</p>\n<ul style=\"list-style: none\">\n" + "\n".join(items)
             + "\n</ul>\n</body></html>\n")
    (out / "index.html").write_text(index, encoding="utf-8")
    return [out / "index.html", *written]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "book_html")
    args = parser.parse_args(argv)
    written = build(args.notebooks, args.out)
    print(f"{len(written)} pages written; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
