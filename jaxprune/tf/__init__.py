"""TensorFlow compatibility: what exists only to port TensorFlow pruning code to jaxprune.

* ``tf.contrib.model_pruning`` and lingvo: :class:`PruningConfig` (the hyperparameters and
  their ``"name=value,..."`` string), :func:`pruning_from_config` (the legacy threshold-based
  pruning as an optax transformation, :class:`LegacyPruningState`),
  :class:`PruningConfigWarning`, and lingvo's accessors :func:`get_thresholds`,
  :func:`get_weights`, :func:`get_masked_weights` and :func:`get_weight_sparsity`.
  :func:`get_masks` and :func:`pruning_summaries` (``add_pruning_summaries``) are the core's
  :func:`jaxprune.get_masks` and :func:`jaxprune.pruning_summaries`, here too so that lingvo's
  accessors are all in one place.
* TensorFlow Model Optimization (tfmot): :func:`from_tfmot` and :class:`TfmotSchedule` run a
  schedule written with tfmot's step numbers (or a tfmot schedule's ``get_config()``) on
  jaxprune's update count.

The rest of jaxprune never imports this wing; ``docs/migrating-from-tensorflow.md`` shows
every TensorFlow call next to its jaxprune form.

>>> import jaxprune as jp
>>> config = jp.tf.PruningConfig.parse("target_sparsity=0.75,pruning_frequency=1")
>>> config.target_sparsity
0.75
"""

# One name per line (isort would merge them).
# ruff: noqa: I001

from jaxprune._src.accessors import get_masked_weights
from jaxprune._src.accessors import get_thresholds
from jaxprune._src.accessors import get_weight_sparsity
from jaxprune._src.accessors import get_weights
from jaxprune._src.config import PruningConfig
from jaxprune._src.config import PruningConfigWarning
from jaxprune._src.legacy import LegacyPruningState
from jaxprune._src.legacy import pruning_from_config
from jaxprune._src.summaries import get_masks
from jaxprune._src.summaries import pruning_summaries
from jaxprune._src.tfmot import TfmotSchedule
from jaxprune._src.tfmot import from_tfmot

__all__ = [
    "LegacyPruningState",
    "PruningConfig",
    "PruningConfigWarning",
    "TfmotSchedule",
    "from_tfmot",
    "get_masked_weights",
    "get_masks",
    "get_thresholds",
    "get_weight_sparsity",
    "get_weights",
    "pruning_from_config",
    "pruning_summaries",
]
