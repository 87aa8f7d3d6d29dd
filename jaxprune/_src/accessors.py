"""Lingvo-style accessors, part of the TensorFlow-compatibility wing (:mod:`jaxprune.tf`).

TensorFlow's ``model_pruning`` (which lingvo imports) keeps masks and thresholds in graph
collections and offers ``get_masks``, ``get_thresholds``, ``get_weights``,
``get_masked_weights`` and ``get_weight_sparsity`` to read them. In jaxprune the masks and
thresholds live in the optimizer state (:class:`jaxprune.MagnitudePruningState`); these
functions read them from there, wherever the state sits (``optax.chain``, ``MultiSteps``,
``nnx.Optimizer``, flax ``TrainState``), and name every pruned leaf by its ``/``-joined path.
``get_masks`` itself is :func:`jaxprune.get_masks`, and ``Pruning.add_pruning_summaries`` is
:func:`jaxprune.pruning_summaries` (both in the core, for every user).

A leaf is *pruned* when its mask in the state is an array of the leaf's shape; leaves that are
not pruned carry a scalar ``True`` mask and are left out of every result here.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Array, Params
from jaxprune._src.summaries import count_kept, get_pruning_state, pruned_leaves
from jaxprune._src.trees import pair_with_masks


def get_thresholds(opt_state: Any) -> dict[str, Array]:
    """The last threshold of every pruned leaf: ``{path: threshold}`` (lingvo's ``get_thresholds``).

    A threshold is the k-th largest magnitude (or block score, or unit norm) at the last
    pruning step, a scalar of the leaf's dtype; ``0`` before the first pruning step.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state or more than one, or the state type
        keeps no thresholds.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]]), "b": jnp.zeros(2)}
      >>> tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
      >>> _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
      >>> {name: float(t) for name, t in get_thresholds(state).items()}
      {'w': 3.0}
    """
    leaves = pruned_leaves(opt_state)
    if any(t is None for _, _, t in leaves):
        state = get_pruning_state(opt_state)
        raise ValueError(f"the pruning state ({type(state).__name__}) keeps no thresholds")
    return {path: t for path, _, t in leaves}


def get_weights(params: Params, opt_state: Any) -> dict[str, Any]:
    """The raw weights of every pruned leaf: ``{path: weight}`` (lingvo's ``get_weights``).

    The weights as ``params`` holds them (pruned entries included, whatever their value).

    Raises:
      ValueError: if ``opt_state`` holds no pruning state or more than one, or its masks do not
        match ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]]), "b": jnp.zeros(2)}
      >>> state = jp.magnitude_pruning(jp.constant_sparsity(0.5)).init(params)
      >>> list(get_weights(params, state))
      ['w']
    """
    masks = get_pruning_state(opt_state).masks
    return {path: x for path, x, m in pair_with_masks(params, masks) if np.ndim(m) > 0}


def get_masked_weights(params: Params, opt_state: Any) -> dict[str, Array]:
    """``where(mask, w, 0)`` for every pruned leaf: ``{path: masked weight}``.

    lingvo's ``get_masked_weights``; pruned entries are ``+0.0``.

    Raises:
      ValueError: as :func:`get_weights`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
      >>> tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
      >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> get_masked_weights(params, state)["w"].tolist()
      [[0.0, -4.0], [3.0, 0.0]]
    """
    masks = get_pruning_state(opt_state).masks
    return {
        path: jnp.where(m, x, jnp.zeros((), jnp.asarray(x).dtype))
        for path, x, m in pair_with_masks(params, masks)
        if np.ndim(m) > 0
    }


def get_weight_sparsity(opt_state: Any) -> dict[str, float]:
    """The fraction of every pruned leaf that its mask prunes: ``{path: sparsity}``.

    lingvo's ``get_weight_sparsity`` (TensorFlow's ``zero_fraction`` of the mask), counted
    exactly on the host.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state, or more than one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
      >>> tx = jp.magnitude_pruning(jp.constant_sparsity(0.75, begin_step=0, frequency=1))
      >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> get_weight_sparsity(state)
      {'w': 0.75}
    """
    out = {}
    for path, m, _ in pruned_leaves(opt_state):
        size = math.prod(np.shape(m))
        out[path] = (size - count_kept(m)) / size
    return out


__all__ = [
    "get_masked_weights",
    "get_thresholds",
    "get_weight_sparsity",
    "get_weights",
]
