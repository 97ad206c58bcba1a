"""Sphinx settings for the reid_nb site; docs/build.py prepares the pages (run `make docs`)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc documents the package in this checkout

project = "reid_nb"
author = "reid_nb authors"
copyright = "2026 onwards, reid_nb authors"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
root_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**/.ipynb_checkpoints"]

# Notebooks arrive already executed (or deliberately not): MyST-NB only renders them.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}

# Furo: a maintained theme with the table of contents in a sidebar. Its content column is widened
# (custom.css) so that a 100-character line of code fits without a horizontal scroll bar.
html_theme = "furo"
html_title = "reid_nb"
html_static_path = ["static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]
