"""Flax modules that hold channel masks, for Fisher pruning.

Both multiply the feature (last) axis of an activation by a mask of shape ``(C,)`` (ones when
created) with :func:`jaxprune.fisher.mask_channels`; the mask lives outside the trainable parameters
so that it can be passed in, differentiated and counted on its own:

* :class:`ChannelMask` (Flax linen) keeps it in the variable collection ``"channel_masks"``;
* :class:`NNXChannelMask` (Flax NNX) keeps it in a :class:`ChannelMaskVariable`, its own
  ``nnx.Variable`` type, so ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leaves it alone and
  ``nnx.split(model, nnx.Param, ChannelMaskVariable, ...)`` takes the masks apart.

A mask value may also have shape ``(B, C)``, one row per example: the extended masks of
:func:`jaxprune.fisher.fisher_value_and_grad` with ``batched=True``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as linen
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune._src.base import Array
from jaxprune._src.fisher_signals import mask_channels

MASK_COLLECTION = "channel_masks"


class ChannelMask(linen.Module):
    """A linen module that multiplies the last axis of its input by a channel mask.

    The mask is the variable ``mask`` of the collection ``"channel_masks"``, created as ones of
    shape ``(C,)`` by ``init``. Pass the collection with the parameters to ``apply``; its
    leaves are the masks of :func:`jaxprune.fisher.fisher_signals` and
    :func:`jaxprune.fisher.fisher_prune`.

    Attributes:
      collection: the variable collection that holds the mask (default ``"channel_masks"``).

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from jaxprune._src.nn import ChannelMask
      >>> model = nn.Sequential([nn.Dense(4), nn.relu, ChannelMask(), nn.Dense(2)])
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> masks = variables["channel_masks"]
      >>> jax.tree.map(jnp.shape, masks)
      {'layers_2': {'mask': (4,)}}
      >>> def apply(params, masks, x):
      ...     return model.apply({"params": params, "channel_masks": masks}, x)
      >>> y = apply(variables["params"], masks, jnp.ones((5, 3)))
      >>> y.shape
      (5, 2)
    """

    collection: str = MASK_COLLECTION

    @linen.compact
    def __call__(self, x: Any) -> Array:
        """Returns ``x`` with its last axis multiplied by the mask.

        Raises:
          ValueError: if the mask's shape is neither ``(C,)`` nor ``(B, C)`` for ``x``.
        """
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise ValueError("ChannelMask needs an input with a feature axis, got a scalar")
        mask = self.variable(self.collection, "mask", lambda: jnp.ones((x.shape[-1],), jnp.float32))
        return mask_channels(x, mask.value)


class ChannelMaskVariable(nnx.Variable):
    """The NNX variable type of channel masks.

    Not an ``nnx.Param``: optimizers built with ``wrt=nnx.Param`` do not update it, and
    ``nnx.split(model, nnx.Param, ChannelMaskVariable, ...)`` returns the masks as a state of
    their own.
    """


class NNXChannelMask(nnx.Module):
    """An NNX module that multiplies the last axis of its input by a channel mask.

    Args:
      num_features: ``C``, the size of the feature axis, ``>= 1``.
      dtype: the mask's float dtype (float32 by default); it is cast to the input's dtype
        when applied.

    Raises:
      ValueError: if ``num_features < 1``.
      TypeError: if ``num_features`` is not an int or ``dtype`` is not a float dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxprune._src.nn import ChannelMaskVariable, NNXChannelMask
      >>> class MLP(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.hidden = nnx.Linear(3, 4, rngs=rngs)
      ...         self.mask = NNXChannelMask(4)
      ...         self.out = nnx.Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(self.mask(nnx.relu(self.hidden(x))))
      >>> graphdef, params, masks = nnx.split(MLP(nnx.Rngs(0)), nnx.Param, ChannelMaskVariable)
      >>> masks = nnx.as_pure(masks)
      >>> jax.tree.map(lambda m: m.tolist(), nnx.to_pure_dict(masks))
      {'mask': {'mask': [1.0, 1.0, 1.0, 1.0]}}
      >>> def apply(params, masks, x):
      ...     return nnx.merge(graphdef, params, masks)(x)
      >>> apply(params, masks, jnp.ones((5, 3))).shape
      (5, 2)
    """

    def __init__(self, num_features: int, *, dtype: Any = jnp.float32):
        if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a float dtype, got {dtype!r}")
        self.mask = ChannelMaskVariable(jnp.ones((int(num_features),), dtype))

    def __call__(self, x: Any) -> Array:
        """Returns ``x`` with its last axis multiplied by the mask.

        Raises:
          ValueError: if the mask's shape is neither ``(C,)`` nor ``(B, C)`` for ``x``.
        """
        return mask_channels(x, self.mask[...])
