"""jaxprune: pruning for JAX and Flax.

Masks from pure functions on parameter pytrees, and an optax transformation that prunes on a
schedule inside any jit-compiled training loop.
"""

from jaxprune._src.flops import FlopsReport, count_flops, flops_report
from jaxprune._src.masks import apply_masks, global_magnitude_masks, magnitude_mask
from jaxprune._src.schedules import (
    ConstantSparsity,
    OptaxSparsity,
    PolynomialDecay,
    PruningSchedule,
    constant_sparsity,
    polynomial_decay,
    schedule_from_optax,
)
from jaxprune._src.summaries import get_masks, get_pruning_state, sparsity_summary, sparsity_table
from jaxprune._src.transform import MagnitudePruningState, magnitude_pruning

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "FlopsReport",
    "MagnitudePruningState",
    "OptaxSparsity",
    "PolynomialDecay",
    "PruningSchedule",
    "apply_masks",
    "constant_sparsity",
    "count_flops",
    "flops_report",
    "get_masks",
    "get_pruning_state",
    "global_magnitude_masks",
    "magnitude_mask",
    "magnitude_pruning",
    "polynomial_decay",
    "schedule_from_optax",
    "sparsity_summary",
    "sparsity_table",
]
