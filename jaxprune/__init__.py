"""jaxprune: pruning for JAX and Flax.

Masks from pure functions on parameter pytrees, and an optax transformation that prunes on a
schedule inside any jit-compiled training loop.
"""

from jaxprune._src.flops import FlopsReport
from jaxprune._src.flops import count_flops
from jaxprune._src.flops import flops_report
from jaxprune._src.masks import apply_masks
from jaxprune._src.masks import global_magnitude_masks
from jaxprune._src.masks import magnitude_mask
from jaxprune._src.schedules import ConstantSparsity
from jaxprune._src.schedules import OptaxSparsity
from jaxprune._src.schedules import PolynomialDecay
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.schedules import constant_sparsity
from jaxprune._src.schedules import polynomial_decay
from jaxprune._src.schedules import schedule_from_optax
from jaxprune._src.summaries import get_masks
from jaxprune._src.summaries import get_pruning_state
from jaxprune._src.summaries import sparsity_summary
from jaxprune._src.summaries import sparsity_table
from jaxprune._src.transform import MagnitudePruningState
from jaxprune._src.transform import magnitude_pruning

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
