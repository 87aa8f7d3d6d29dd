"""jaxprune: pruning for JAX and Flax.

Masks from pure functions on parameter pytrees, and an optax transformation that prunes on a
schedule inside any jit-compiled training loop.
"""

# The public API is re-exported one name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.acdc import ACDCState
from jaxprune._src.acdc import acdc
from jaxprune._src.accessors import get_masked_weights
from jaxprune._src.accessors import get_thresholds
from jaxprune._src.accessors import get_weight_sparsity
from jaxprune._src.accessors import get_weights
from jaxprune._src.accessors import pruning_summaries
from jaxprune._src.config import PruningConfig
from jaxprune._src.config import PruningConfigWarning
from jaxprune._src.distributions import erk_sparsities
from jaxprune._src.distributions import uniform_sparsities
from jaxprune._src.export import load_sparse
from jaxprune._src.export import save_sparse
from jaxprune._src.export import strip
from jaxprune._src.export import to_bcoo
from jaxprune._src.fisher import FisherPruningState
from jaxprune._src.fisher import extend_masks
from jaxprune._src.fisher import fisher_batch_signals
from jaxprune._src.fisher import fisher_prune
from jaxprune._src.fisher import fisher_pruning
from jaxprune._src.fisher import fisher_signals
from jaxprune._src.fisher import fisher_value_and_grad
from jaxprune._src.fisher import mask_channels
from jaxprune._src.fisher import per_example_mask_grads
from jaxprune._src.fisher import update_fisher_signals
from jaxprune._src.flops import FlopsReport
from jaxprune._src.flops import UnknownEquation
from jaxprune._src.flops import count_flops
from jaxprune._src.flops import flops_report
from jaxprune._src.graph.compact import compact
from jaxprune._src.graph.compact import group_weight_masks
from jaxprune._src.graph.groups import BlockedAxis
from jaxprune._src.graph.groups import DependencyGroups
from jaxprune._src.graph.groups import Group
from jaxprune._src.graph.groups import dependency_groups
from jaxprune._src.graph.groups import group_masks
from jaxprune._src.graph.groups import group_scores
from jaxprune._src.legacy import LegacyPruningState
from jaxprune._src.legacy import pruning_from_config
from jaxprune._src.masks import apply_masks
from jaxprune._src.masks import global_magnitude_masks
from jaxprune._src.masks import magnitude_mask
from jaxprune._src.nn import ChannelMask
from jaxprune._src.nn import ChannelMaskVariable
from jaxprune._src.nn import NNXChannelMask
from jaxprune._src.oneshot import prune_units
from jaxprune._src.oneshot import prune_weights
from jaxprune._src.posttraining import hessian_from_inputs
from jaxprune._src.posttraining import owl_sparsities
from jaxprune._src.posttraining import sparsegpt_prune
from jaxprune._src.posttraining import wanda_mask
from jaxprune._src.posttraining_runner import prune_oneshot
from jaxprune._src.random_pruning import RandomPruningState
from jaxprune._src.random_pruning import random_pruning
from jaxprune._src.schedules import ConstantSparsity
from jaxprune._src.sparse_core import SparseAlgorithm
from jaxprune._src.sparse_core import SparseMaskState
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
from jaxprune._src.leaf_rules import default_rule
from jaxprune._src.schedules import OptaxSparsity
from jaxprune._src.schedules import PolynomialDecay
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.schedules import TfmotSchedule
from jaxprune._src.schedules import constant_sparsity
from jaxprune._src.schedules import from_tfmot
from jaxprune._src.schedules import polynomial_decay
from jaxprune._src.schedules import schedule_from_optax
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
from jaxprune._src.summaries import sparsity_summary
from jaxprune._src.summaries import sparsity_table
from jaxprune._src.transform import MagnitudePruningState
from jaxprune._src.transform import magnitude_pruning

__version__ = "0.1.0"

__all__ = [
    "ACDCState",
    "BlockSparsity",
    "BlockedAxis",
    "ChannelMask",
    "ChannelMaskVariable",
    "ConstantSparsity",
    "DependencyGroups",
    "FisherPruningState",
    "FlopsReport",
    "Group",
    "LegacyPruningState",
    "MagnitudePruningState",
    "MovementPruningState",
    "NMSparsity",
    "NNXChannelMask",
    "OptaxSparsity",
    "PolynomialDecay",
    "PrunedWeightsNotZeroError",
    "PruningConfig",
    "PruningConfigWarning",
    "PruningSchedule",
    "RandomPruningState",
    "SparseAlgorithm",
    "SparseMaskState",
    "SparseState",
    "TfmotSchedule",
    "UnitSparsity",
    "UnknownEquation",
    "acdc",
    "apply_masks",
    "block_mask",
    "check_pruned_zero",
    "compact",
    "constant_sparsity",
    "count_flops",
    "default_rule",
    "dependency_groups",
    "erk_sparsities",
    "extend_masks",
    "fisher_batch_signals",
    "fisher_prune",
    "fisher_pruning",
    "fisher_signals",
    "fisher_value_and_grad",
    "flops_report",
    "from_tfmot",
    "get_masked_weights",
    "get_masks",
    "get_pruning_state",
    "get_thresholds",
    "get_weight_sparsity",
    "get_weights",
    "global_magnitude_masks",
    "group_masks",
    "group_scores",
    "group_weight_masks",
    "hessian_from_inputs",
    "load_sparse",
    "magnitude_mask",
    "magnitude_pruning",
    "magnitude_ste",
    "mask_channels",
    "masked_params",
    "movement_pruning",
    "nm_mask",
    "owl_sparsities",
    "per_example_mask_grads",
    "polynomial_decay",
    "prune_oneshot",
    "prune_units",
    "prune_weights",
    "pruning_from_config",
    "pruning_summaries",
    "random_pruning",
    "random_ste",
    "rigl",
    "saliency_pruning",
    "save_sparse",
    "schedule_from_optax",
    "set_training",
    "sparse",
    "sparsegpt_prune",
    "sparsity_summary",
    "sparsity_table",
    "static_sparse",
    "strip",
    "to_bcoo",
    "uniform_sparsities",
    "unit_mask",
    "update_fisher_signals",
    "wanda_mask",
]
