r"""Fisher pruning of channels (Theis et al. 2018): the public entry points in one module.

The implementation is split by concern:

* :mod:`jaxprune._src.fisher_signals`: masks on activations (:func:`mask_channels`),
  per-example mask gradients by ``jax.vmap`` or by one backward pass, the batch signal
  :math:`\frac{1}{N}\sum_n g_{nk}^2` and its moving average;
* :mod:`jaxprune._src.fisher_prune`: removal of the feature with the smallest
  :math:`s_k - \beta c_k` (or :math:`s_k / c_k`) across all layers;
* :mod:`jaxprune._src.fisher_transform`: an optax transformation that does both inside a
  jitted training loop, on a schedule, until a FLOPs target;
* :mod:`jaxprune._src.fisher_checks`: the validation they share.

See ``docs/fisher.md`` for a walk-through.

References:
  Theis, Korshunova, Tejani, Huszár, "Faster gaze prediction with dense networks and Fisher
  pruning", 2018, https://arxiv.org/abs/1801.05787
"""

from jaxprune._src.fisher_prune import fisher_prune
from jaxprune._src.fisher_signals import (
    DEFAULT_DECAY,
    extend_masks,
    fisher_batch_signals,
    fisher_signals,
    fisher_value_and_grad,
    mask_channels,
    per_example_mask_grads,
    update_fisher_signals,
)
from jaxprune._src.fisher_transform import FisherPruningState, fisher_pruning

__all__ = [
    "DEFAULT_DECAY",
    "FisherPruningState",
    "extend_masks",
    "fisher_batch_signals",
    "fisher_prune",
    "fisher_pruning",
    "fisher_signals",
    "fisher_value_and_grad",
    "mask_channels",
    "per_example_mask_grads",
    "update_fisher_signals",
]
