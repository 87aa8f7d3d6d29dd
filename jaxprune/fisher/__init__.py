r"""Fisher pruning of whole channels (Theis et al. 2018).

Channel masks on activations (:func:`mask_channels`, the Flax modules :class:`ChannelMask`,
:class:`NNXChannelMask` and their variable type :class:`ChannelMaskVariable`), the Fisher
signals :math:`\frac{1}{N}\sum_n g_{nk}^2` of their per-example gradients
(:func:`fisher_value_and_grad`, :func:`per_example_mask_grads`, :func:`extend_masks`,
:func:`fisher_batch_signals`, :func:`fisher_signals`, :func:`update_fisher_signals`), the
removal of the feature whose loss hurts least (:func:`fisher_prune`), and the optax
transformation that does both inside a jitted training loop (:func:`fisher_pruning`, also at
the top level, and its state :class:`FisherPruningState`). ``docs/fisher.md`` walks through it.

References:
  Theis, Korshunova, Tejani, Huszár, "Faster gaze prediction with dense networks and Fisher
  pruning", 2018, https://arxiv.org/abs/1801.05787
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

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
from jaxprune._src.nn import ChannelMask
from jaxprune._src.nn import ChannelMaskVariable
from jaxprune._src.nn import NNXChannelMask

__all__ = [
    "ChannelMask",
    "ChannelMaskVariable",
    "FisherPruningState",
    "NNXChannelMask",
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
