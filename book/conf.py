"""Sphinx configuration of the book's web site.

Do not run sphinx-build on this folder directly: scripts/build_book.py assembles the source tree (this
folder, the executed chapters from notebooks/, references.bib and a local copy of MathJax) in a build
folder and builds the site from there, into book_html/. The chapters are rendered as committed, with
their stored outputs: nothing is executed here (scripts/run_book.py executes them).
"""

project = "Unified RLHF"
author = "the Unified RLHF authors"
copyright = "the Unified RLHF authors, MIT licence"

extensions = [
    "myst_nb",  # reads the .ipynb chapters and the .md pages (it brings myst_parser with it)
    "sphinx.ext.mathjax",
    "sphinxcontrib.bibtex",
    "sphinx_togglebutton",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# --- notebooks: render the stored outputs, never execute ------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True  # a cell's printed lines in one block, as Jupyter shows them
# Markdown outputs (the chapters' tables of weights, with math and links to chapters) are parsed as MyST, with
# the extensions below, not as plain CommonMark (which has no tables and no math)
nb_render_markdown_format = "myst"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True  # "text $$a$$ text" in a paragraph, as Jupyter renders it
myst_heading_anchors = 3  # "chapter.ipynb#a-section" links resolve to the section's slug
myst_update_mathjax = False  # myst would add a MathJax 3 configuration; the book ships MathJax 2

# --- math: a local MathJax 2.7, no network at read time ----------------------------------------------
# scripts/build_book.py copies MathJax from the jupyter-server-mathjax package into _static/mathjax/.
# Inline math arrives as \(...\) from myst's dollarmath, display math as \[...\]; $...$ is enabled as well
# for the math inside raw HTML blocks (the chapters' <details> hints), which myst passes through as is.
# The package ships MathJax as Jupyter uses it: one combined configuration (TeX in, HTML-CSS out) and the STIX
# web fonts (its SVG output lacks its code); the settings below only add to that configuration.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "tex2jax": {
        "inlineMath": [["$", "$"], ["\\(", "\\)"]],
        "displayMath": [["$$", "$$"], ["\\[", "\\]"]],
        "processEscapes": True,
        "processEnvironments": True,
    },
    "HTML-CSS": {
        "availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None,
        # typeset a chapter's few hundred formulas in one pass, not in chunks of 50 with pauses between
        # (half the time in a headless browser; a chapter is typeset in a second or two)
        "EqnChunk": 1000, "EqnChunkFactor": 1, "EqnChunkDelay": 0,
        # MathJax's blank test font is url('about:blank'), which a page opened from file:// may not load
        # (a console error); a local() font that is never there is as blank and asks for nothing
        "styles": {"@font-face": {"font-family": "MathJax_Blank", "src": "local('MathJax_Blank')"}},
    },
    # no rough preview of each formula before the real one: one pass, and no page that reflows twice
    "fast-preview": {"disabled": True},
    # Each formula also gets a hidden MathML copy for screen readers, whose styles point six @font-face rules
    # at TeX fonts the package does not ship (failed loads, console errors). They are replaced by rules that
    # load nothing: the copy is read, never seen.
    "NativeMML": {"styles": {f"@font-face /*{i}*/": {"font-family": f"MathJax_unused_{i}", "src": "local('none')"}
                             for i in range(1, 7)}},
    "messageStyle": "none",  # no "Typesetting math: 40%" box in a corner of the page
    "showMathMenu": False,
}

# --- bibliography --------------------------------------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# --- HTML ----------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "Unified RLHF"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "show_navbar_depth": 1,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
# The search page would fetch() every hit's HTML for a summary; browsers refuse fetch() from file://.
html_show_search_summary = False
html_last_updated_fmt = None
html_context = {"default_mode": "auto"}  # light or dark as the reader's system prefers
html_copy_source = True  # the download button offers the chapter's .ipynb
html_sourcelink_suffix = ""


def setup(app):
    # MathJax on every page, not only those with math nodes: raw HTML ($ in <details> hints) needs it too
    app.set_html_assets_policy("always")
