"""Structural pruning: dependency groups from the jaxpr, and compaction into a smaller model.

:func:`dependency_groups` finds the parameter axes that must lose the same channels together,
:func:`group_scores` and :func:`group_masks` choose the channels to keep (for a FLOP budget,
:func:`group_masks_for_flops`), and :func:`compact`
removes the others (these four are also at the top level). Here too: the types they return
(:class:`DependencyGroups`, :class:`Group`, :class:`BlockedAxis`) and
:func:`group_weight_masks`, the boolean masks that zero the pruned channels of every group (the
masked model that the compacted one reproduces; ``docs/structural.md``).
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.graph.budget import group_masks_for_flops
from jaxprune._src.graph.compact import compact
from jaxprune._src.graph.compact import group_weight_masks
from jaxprune._src.graph.linen_rebuild import compact_linen
from jaxprune._src.graph.rebuild import compact_equinox
from jaxprune._src.graph.rebuild import compact_nnx
from jaxprune._src.graph.rebuild import equinox_function
from jaxprune._src.graph.rebuild import nnx_function
from jaxprune._src.graph.groups import BlockedAxis
from jaxprune._src.graph.groups import DependencyGroups
from jaxprune._src.graph.groups import Group
from jaxprune._src.graph.groups import dependency_groups
from jaxprune._src.graph.groups import group_masks
from jaxprune._src.graph.groups import group_scores

__all__ = [
    "BlockedAxis",
    "DependencyGroups",
    "Group",
    "compact",
    "compact_equinox",
    "compact_linen",
    "compact_nnx",
    "dependency_groups",
    "equinox_function",
    "group_masks",
    "group_masks_for_flops",
    "group_scores",
    "group_weight_masks",
    "nnx_function",
]
