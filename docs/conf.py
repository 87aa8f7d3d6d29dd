"""Sphinx configuration: the pages in docs/ (Markdown, via MyST) and an API reference that
autodoc builds from the docstrings. Build with ``make docs``; the site goes to ``site/``."""

import importlib
import inspect
import re
import types

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


def _subpackages() -> list:
    """The public subpackages: ``jaxprune.fisher``, ``jaxprune.tf``, ..."""
    return [
        module
        for name, module in vars(jaxprune).items()
        if isinstance(module, types.ModuleType)
        and module.__name__ == f"jaxprune.{name}"
        and not name.startswith("_")
    ]


def _public() -> dict[int, str]:
    """Every public object, by id, under its shortest name (the top level first)."""
    out: dict[int, str] = {}
    for module in [jaxprune, *_subpackages()]:
        for name in module.__all__:
            out.setdefault(id(getattr(module, name)), f"{module.__name__}.{name}")
    return out


def _resolve(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _directive(dotted: str) -> str:
    kind = "autoclass" if inspect.isclass(_resolve(dotted)) else "autofunction"
    return f".. {kind}:: {dotted}\n"


def _complete_api_page(app, docname, source):
    """Appends every public object that docs/api.md does not place in a section yet.

    The reference then always covers ``jaxprune.__all__`` and the subpackages' ``__all__``,
    also right after a new name is exported and before someone files it under the right
    heading.
    """
    if docname != "api":
        return
    directives = re.findall(r"^\.\. auto(?:function|class):: (jaxprune[\w.]*)$", source[0], re.M)
    placed = {id(_resolve(d)) for d in directives}
    missing = [dotted for key, dotted in _public().items() if key not in placed]
    if missing:
        # autodoc writes reStructuredText, which MyST reads inside an eval-rst block.
        rst = "\n".join(_directive(d) for d in missing)
        source[0] += f"\n## More\n\n```{{eval-rst}}\n{rst}```\n"


def setup(app):
    app.connect("source-read", _complete_api_page)
