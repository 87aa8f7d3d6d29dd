"""jaxprune: pruning for JAX and Flax.

Masks from pure functions on parameter pytrees, and an optax transformation that prunes on a
schedule inside any jit-compiled training loop.

The names here are the public API. Families live in public subpackages, each with its own
``__all__``: :mod:`jaxprune.schedules`, :mod:`jaxprune.oneshot`, :mod:`jaxprune.structural`,
:mod:`jaxprune.fisher`, :mod:`jaxprune.flops` and :mod:`jaxprune.tf` (TensorFlow
compatibility); their most used names are here too. Everything under ``jaxprune._src`` is
private.
"""

# The public API is re-exported one name per line (isort would merge them).
# ruff: noqa: I001

import warnings as _warnings

from jaxprune import fisher as fisher
from jaxprune import flops as flops
from jaxprune import oneshot as oneshot
from jaxprune import schedules as schedules
from jaxprune import structural as structural
from jaxprune import tf as tf
from jaxprune._src.acdc import ACDCState
from jaxprune._src.acdc import acdc
from jaxprune._src.distributions import erk_sparsities
from jaxprune._src.distributions import uniform_sparsities
from jaxprune._src.export import load_sparse
from jaxprune._src.export import save_sparse
from jaxprune._src.export import strip
from jaxprune._src.export import to_bcoo
from jaxprune._src.fisher import fisher_pruning
from jaxprune._src.flops import count_flops
from jaxprune._src.flops import flops_report
from jaxprune._src.graph.compact import compact
from jaxprune._src.graph.groups import dependency_groups
from jaxprune._src.graph.groups import group_masks
from jaxprune._src.graph.groups import group_scores
from jaxprune._src.leaf_rules import default_rule
from jaxprune._src.masks import apply_masks
from jaxprune._src.masks import global_magnitude_masks
from jaxprune._src.masks import magnitude_mask
from jaxprune._src.oneshot import prune_units
from jaxprune._src.oneshot import prune_weights
from jaxprune._src.posttraining_runner import prune_oneshot
from jaxprune._src.random_pruning import RandomPruningState
from jaxprune._src.random_pruning import random_pruning
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.schedules import constant_sparsity
from jaxprune._src.schedules import polynomial_decay
from jaxprune._src.schedules import schedule_from_optax
from jaxprune._src.sparse_core import SparseAlgorithm
from jaxprune._src.sparse_core import SparseMaskState
from jaxprune._src.transform import register_pruning_state
from jaxprune._src.sparse_core import SparseState
from jaxprune._src.sparse_core import masked_params
from jaxprune._src.sparse_core import sparse
from jaxprune._src.sparse_dst import rigl
from jaxprune._src.sparse_dst import set_training
from jaxprune._src.sparse_dst import static_sparse
from jaxprune._src.sparse_ste import MovementPruningState
from jaxprune._src.sparse_ste import magnitude_ste
from jaxprune._src.sparse_ste import movement_pruning
from jaxprune._src.sparse_ste import random_ste
from jaxprune._src.sparse_ste import saliency_pruning
from jaxprune._src.structured import BlockSparsity
from jaxprune._src.structured import NMSparsity
from jaxprune._src.structured import UnitSparsity
from jaxprune._src.structured import block_mask
from jaxprune._src.structured import nm_mask
from jaxprune._src.structured import unit_mask
from jaxprune._src.summaries import PrunedWeightsNotZeroError
from jaxprune._src.summaries import check_pruned_zero
from jaxprune._src.summaries import get_masks
from jaxprune._src.summaries import get_pruning_state
from jaxprune._src.summaries import pruning_summaries
from jaxprune._src.summaries import sparsity_summary
from jaxprune._src.summaries import sparsity_table
from jaxprune._src.transform import MagnitudePruningState
from jaxprune._src.transform import magnitude_pruning

__version__ = "0.2.0.dev0"

# Grouped by family, as in docs/api.md.
__all__ = [
    # Pruning in a training loop
    "magnitude_pruning",
    "MagnitudePruningState",
    "default_rule",
    "check_pruned_zero",
    "PrunedWeightsNotZeroError",
    # Schedules (the classes are in jaxprune.schedules)
    "polynomial_decay",
    "constant_sparsity",
    "schedule_from_optax",
    "PruningSchedule",
    # Masks
    "magnitude_mask",
    "global_magnitude_masks",
    "apply_masks",
    # Structured masks
    "block_mask",
    "nm_mask",
    "unit_mask",
    "BlockSparsity",
    "NMSparsity",
    "UnitSparsity",
    # Sparse training
    "sparse",
    "masked_params",
    "static_sparse",
    "set_training",
    "rigl",
    "magnitude_ste",
    "random_ste",
    "saliency_pruning",
    "movement_pruning",
    "SparseAlgorithm",
    "SparseState",
    "SparseMaskState",
    "register_pruning_state",
    "MovementPruningState",
    # Sparsity distributions, random pruning and AC/DC
    "uniform_sparsities",
    "erk_sparsities",
    "random_pruning",
    "RandomPruningState",
    "acdc",
    "ACDCState",
    # One-shot pruning (the layer functions are in jaxprune.oneshot)
    "prune_weights",
    "prune_units",
    "prune_oneshot",
    # Structural pruning (the group types are in jaxprune.structural)
    "dependency_groups",
    "group_scores",
    "group_masks",
    "compact",
    # Inspecting and logging the pruning state
    "get_masks",
    "get_pruning_state",
    "pruning_summaries",
    "sparsity_summary",
    "sparsity_table",
    # Export
    "strip",
    "to_bcoo",
    "save_sparse",
    "load_sparse",
    # Fisher pruning (the rest is in jaxprune.fisher)
    "fisher_pruning",
    # FLOPs (the rest is in jaxprune.flops)
    "count_flops",
    "flops_report",
]

# Names that jaxprune 0.1.0 exported here and that now live in a subpackage only. They still
# resolve, to the same object, with a DeprecationWarning that names the new place.
_MOVED = {
    **dict.fromkeys(
        [
            "PruningConfig",
            "PruningConfigWarning",
            "pruning_from_config",
            "LegacyPruningState",
            "get_thresholds",
            "get_weights",
            "get_masked_weights",
            "get_weight_sparsity",
            "from_tfmot",
            "TfmotSchedule",
        ],
        "tf",
    ),
    **dict.fromkeys(
        [
            "FisherPruningState",
            "fisher_prune",
            "fisher_signals",
            "update_fisher_signals",
            "fisher_value_and_grad",
            "per_example_mask_grads",
            "fisher_batch_signals",
            "mask_channels",
            "extend_masks",
            "ChannelMask",
            "NNXChannelMask",
            "ChannelMaskVariable",
        ],
        "fisher",
    ),
    **dict.fromkeys(["FlopsReport", "UnknownEquation"], "flops"),
    **dict.fromkeys(["PolynomialDecay", "ConstantSparsity", "OptaxSparsity"], "schedules"),
    **dict.fromkeys(
        ["wanda_mask", "sparsegpt_prune", "hessian_from_inputs", "owl_sparsities"], "oneshot"
    ),
    **dict.fromkeys(
        ["group_weight_masks", "Group", "BlockedAxis", "DependencyGroups"], "structural"
    ),
}


def __getattr__(name: str):
    subpackage = _MOVED.get(name)
    if subpackage is None:
        raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
    _warnings.warn(
        f"jaxprune.{name} moved to jaxprune.{subpackage}.{name}; the top-level name is "
        "deprecated and will be removed in a future release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(globals()[subpackage], name)
