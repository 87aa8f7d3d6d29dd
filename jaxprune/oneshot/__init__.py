"""One-shot pruning of a trained model, with no training loop.

:func:`prune_weights` and :func:`prune_units` prune a params tree by magnitude;
:func:`prune_oneshot` prunes every linear layer of any JAX function from calibration batches
(magnitude, Wanda, SparseGPT, OWL). These three are also at the top level. The layer functions
it is built from are here for pipelines of your own: :func:`wanda_mask`,
:func:`sparsegpt_prune`, :func:`hessian_from_inputs` and :func:`owl_sparsities`
(``docs/oneshot.md``).
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.oneshot import prune_units
from jaxprune._src.oneshot import prune_weights
from jaxprune._src.posttraining import hessian_from_inputs
from jaxprune._src.posttraining import owl_sparsities
from jaxprune._src.posttraining import sparsegpt_prune
from jaxprune._src.posttraining import wanda_mask
from jaxprune._src.posttraining_runner import prune_oneshot

__all__ = [
    "hessian_from_inputs",
    "owl_sparsities",
    "prune_oneshot",
    "prune_units",
    "prune_weights",
    "sparsegpt_prune",
    "wanda_mask",
]
