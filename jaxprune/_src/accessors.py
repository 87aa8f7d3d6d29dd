"""Lingvo-style accessors and TensorFlow-style pruning summaries.

TensorFlow's ``model_pruning`` (which lingvo imports) keeps masks and thresholds in graph
collections and offers ``get_masks``, ``get_thresholds``, ``get_weights``,
``get_masked_weights`` and ``get_weight_sparsity`` to read them, and
``Pruning.add_pruning_summaries`` to log them (SEMANTICS.md §8.4). In jaxprune the masks and
thresholds live in the optimizer state (:class:`jaxprune.MagnitudePruningState`); these
functions read them from there, wherever the state sits (``optax.chain``, ``MultiSteps``,
``nnx.Optimizer``, flax ``TrainState``), and name every pruned leaf by its ``/``-joined path.
``get_masks`` itself is :func:`jaxprune.get_masks`.

A leaf is *pruned* when its mask in the state is an array of the leaf's shape; leaves that are
not pruned carry a scalar ``True`` mask and are left out of every result here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Array, Params, is_float_array
from jaxprune._src.summaries import get_pruning_state
from jaxprune._src.trees import flat_leaves, pair_with_masks


def _field(state: Any, name: str) -> Any:
    # A field of the state NamedTuple, or None (not getattr: tuple.count is a method).
    return getattr(state, name) if name in getattr(state, "_fields", ()) else None


def pruned_leaves(opt_state: Any) -> list[tuple[str, Array, Array | None]]:
    """``(path, mask, threshold)`` for every pruned leaf of the pruning state in ``opt_state``.

    The threshold is ``None`` for a state type that keeps no ``thresholds``.
    """
    state = get_pruning_state(opt_state)
    masks = flat_leaves(state.masks)
    if _field(state, "thresholds") is None:
        return [(path, m, None) for path, m in masks if np.ndim(m) > 0]
    thresholds = flat_leaves(state.thresholds)
    return [
        (path, m, t) for (path, m), (_, t) in zip(masks, thresholds, strict=True) if np.ndim(m) > 0
    ]


def _kept(mask: Any) -> int:
    # On the host: an exact Python int for any size (device int32 sums overflow at 2**31).
    return int(np.count_nonzero(np.asarray(mask)))


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
        out[path] = (size - _kept(m)) / size
    return out


def pruning_summaries(
    opt_state: Any,
    params: Params | None = None,
    *,
    schedule: Callable[[Any], tuple[Any, Any]] | None = None,
) -> dict[str, float]:
    """Scalars to log while pruning, as a flat ``dict[str, float]`` for any logger.

    TensorFlow's ``add_pruning_summaries``, without the summary ops:

    * ``"<path>/sparsity"``: the fraction of the leaf that its mask prunes (TensorFlow's
      ``zero_fraction(mask)``), for every pruned leaf;
    * ``"<path>/threshold"``: the leaf's last threshold (left out for a pruning state type
      that keeps none);
    * ``"pruned/sparsity"``: entries the masks prune over all entries of the pruned leaves;
    * ``"overall/sparsity"``, when ``params`` are given: entries the masks prune over all
      entries of the float leaves of ``params``, pruned or not;
    * ``"skipped_turns"``, for states that count them: pruning turns skipped because the
      sparsity (or, for Fisher pruning, a signal) was NaN;
    * ``"target_sparsity"``, when ``schedule`` is given: the schedule's sparsity at the state's
      step count (the step of the next update).

    The names follow :func:`jaxprune.sparsity_summary`: ``pruned`` is over the pruned leaves,
    ``overall`` over every float leaf.

    Counts are exact integers summed on the host, so the figures hold for any model size.

    Args:
      opt_state: an optimizer state holding one :func:`jaxprune.magnitude_pruning` state.
      params: the current params, or ``None``. When given, they are checked against the
        masks (leaf paths and shapes), which catches a state that belongs to another model.
      schedule: the pruning schedule, any callable ``step -> (should_prune, sparsity)``.

    Returns:
      ``{name: value}`` with Python floats.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state or more than one, or the masks do
        not match ``params``.
      TypeError: if ``schedule`` is not callable.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]]), "b": jnp.zeros(2)}
      >>> schedule = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
      >>> tx = jp.magnitude_pruning(schedule)
      >>> _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
      >>> logs = pruning_summaries(state, params, schedule=schedule)
      >>> for name, value in logs.items():
      ...     print(name, value)
      w/sparsity 0.5
      w/threshold 3.0
      pruned/sparsity 0.5
      overall/sparsity 0.3333333333333333
      skipped_turns 0.0
      target_sparsity 0.5
    """
    if schedule is not None and not callable(schedule):
        raise TypeError(
            f"schedule must be a callable step -> (should_prune, sparsity), got {schedule!r}"
        )
    state = get_pruning_state(opt_state)
    paired = None if params is None else pair_with_masks(params, state.masks)
    out: dict[str, float] = {}
    pruned = total = 0
    for path, m, t in pruned_leaves(opt_state):
        size = math.prod(np.shape(m))
        zeros = size - _kept(m)
        out[f"{path}/sparsity"] = zeros / size
        if t is not None:
            out[f"{path}/threshold"] = float(np.asarray(t, np.float64))
        pruned += zeros
        total += size
    out["pruned/sparsity"] = pruned / total if total else 0.0
    if paired is not None:
        # Unpruned float leaves count in the total with nothing pruned.
        everything = total + sum(
            math.prod(np.shape(x)) for _, x, m in paired if np.ndim(m) == 0 and is_float_array(x)
        )
        out["overall/sparsity"] = pruned / everything if everything else 0.0
    skipped = _field(state, "skipped_turns")
    if skipped is not None:
        out["skipped_turns"] = float(np.asarray(skipped))
    if schedule is not None:
        if _field(state, "count") is None:
            raise ValueError(
                f"the pruning state ({type(state).__name__}) has no step count for the schedule"
            )
        _, sparsity = schedule(state.count)
        out["target_sparsity"] = float(np.asarray(sparsity, np.float64))
    return out


__all__ = [
    "get_masked_weights",
    "get_thresholds",
    "get_weight_sparsity",
    "get_weights",
    "pruning_summaries",
]
