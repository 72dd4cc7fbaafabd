"""Sphinx configuration (myst-nb, autosummary, numpydoc-style docstrings via napoleon)."""

from __future__ import annotations

from importlib.metadata import version as _pkg_version

project = "scexplain"
author = "scexplain developers"
copyright = "2026, scexplain developers"
release = _pkg_version("scexplain")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "off"  # CI executes the tutorials (tutorials/run_all.py); the docs render their stored outputs
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = "scexplain"
intersphinx_mapping = {}  # no network while building
nitpicky = False
suppress_warnings = ["myst.header"]
