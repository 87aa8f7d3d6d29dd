"""FLOP counts read off the jaxpr: dense, pruned, and differentiable in the masks.

:func:`count_flops` (a number) and :func:`flops_report` (a :class:`FlopsReport` broken down
per primitive and per module) are also at the top level; :class:`UnknownEquation` is what a
report lists for an equation whose cost cannot be known. ``docs/flops.md`` describes what is
counted.
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.flops import FlopsReport
from jaxprune._src.flops import UnknownEquation
from jaxprune._src.flops import count_flops
from jaxprune._src.flops import flops_report

__all__ = [
    "FlopsReport",
    "UnknownEquation",
    "count_flops",
    "flops_report",
]
