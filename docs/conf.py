"""Sphinx configuration: the pages in docs/ (Markdown, via MyST) and an API reference that
autodoc builds from the docstrings. Build with ``make docs``; the site goes to ``site/``."""

import inspect
import re

import jaxprune

project = "jaxprune"
author = "The jaxprune authors"
copyright = "The jaxprune authors"
release = jaxprune.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings are Google style: Args, Returns, Raises, Examples
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: GitHub-style anchors for links such as [text](#strip_pruning_vars).
myst_heading_anchors = 3

# Types go beside the parameters, keeping signatures short.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"jaxprune {release}"


def _directive(name: str) -> str:
    kind = "autoclass" if inspect.isclass(getattr(jaxprune, name)) else "autofunction"
    return f".. {kind}:: jaxprune.{name}\n"


def _complete_api_page(app, docname, source):
    """Appends every public name that docs/api.md does not place in a section yet.

    The reference then always covers ``jaxprune.__all__``, also right after a new name is
    exported and before someone files it under the right heading.
    """
    if docname != "api":
        return
    placed = set(re.findall(r"jaxprune\.(\w+)", source[0]))
    missing = [name for name in jaxprune.__all__ if name not in placed]
    if missing:
        # autodoc writes reStructuredText, which MyST reads inside an eval-rst block.
        rst = "\n".join(_directive(n) for n in missing)
        source[0] += f"\n## More\n\n```{{eval-rst}}\n{rst}```\n"


def setup(app):
    app.connect("source-read", _complete_api_page)
