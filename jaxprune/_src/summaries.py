"""Inspection: find the pruning state in an optimizer state, and count sparsity exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxprune._src.base import Array, Masks, Params, is_float_array
from jaxprune._src.packed import has_packed, unpack_tree
from jaxprune._src.transform import PRUNING_STATE_TYPES, MagnitudePruningState
from jaxprune._src.trees import flat_leaves, pair_with_masks
from jaxprune._src.trees import is_variable as _is_variable  # noqa: F401 (flops imports it)
from jaxprune._src.trees import unwrap as _unwrap

# Counting is done per chunk so that int32 device counts never overflow.
_CHUNK = 2**30


def _is_opt_state_variable(x: Any) -> bool:
    # nnx.Optimizer wraps every array of its optax state in an OptState variable (OptArray,
    # OptVariable). Only those are removed: an nnx.Param inside the masks tree is part of the
    # params' own structure and stays, so the masks still match the params.
    return any(
        cls.__name__ == "OptState" and "flax.nnx" in cls.__module__ for cls in type(x).__mro__
    )


def _is_pruning_state(x: Any) -> bool:
    return isinstance(x, tuple(PRUNING_STATE_TYPES))


def find_pruning_states(opt_state: Any) -> list[MagnitudePruningState]:
    """Every pruning state (e.g. :class:`MagnitudePruningState`) inside ``opt_state``.

    Looks inside ``optax.chain``, ``optax.MultiSteps``, ``nnx.Optimizer`` states and the like.
    Packed masks (``mask_dtype="packed"``) are returned unpacked: bool
    arrays of the leaves' shapes, as every accessor expects.
    """
    found: list[Any] = []

    def visit(x: Any) -> Any:
        if _is_pruning_state(x):
            state = jax.tree.map(_unwrap, x, is_leaf=_is_opt_state_variable)
            if has_packed(state.masks):
                state = state._replace(masks=unpack_tree(state.masks))
            found.append(state)
        return x

    jax.tree.map(visit, opt_state, is_leaf=_is_pruning_state)
    return found


def get_pruning_state(opt_state: Any) -> MagnitudePruningState:
    """The one pruning state (e.g. :class:`MagnitudePruningState`) in ``opt_state``.

    Raises:
      ValueError: if there is none, or more than one.
    """
    states = find_pruning_states(opt_state)
    if len(states) != 1:
        raise ValueError(
            "expected exactly one pruning state (of magnitude_pruning, random_pruning, acdc, "
            f"sparse(...) or another pruning transformation) in opt_state, found {len(states)}"
            + ("" if not states else f" ({', '.join(type(x).__name__ for x in states)})")
            + "; pass the part of the optimizer state that holds the one you mean"
        )
    return states[0]


def get_masks(opt_state: Any) -> Masks:
    """The masks of the :func:`jaxprune.magnitude_pruning` state anywhere inside ``opt_state``.

    Finds the state inside ``optax.chain``, ``optax.MultiSteps``, ``nnx.Optimizer.opt_state``
    or flax ``TrainState.opt_state``.

    Returns:
      A pytree shaped like the params: bool arrays for pruned leaves, scalar ``True`` elsewhere.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state, or more than one.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> tx = optax.chain(optax.adam(1e-3), jp.magnitude_pruning(jp.constant_sparsity(0.5)))
      >>> masks = jp.get_masks(tx.init({"w": jnp.ones((2, 2))}))
      >>> masks["w"].dtype.name, masks["w"].shape
      ('bool', (2, 2))
    """
    return get_pruning_state(opt_state).masks


def _count(b: Array) -> int:
    """The number of ``True`` entries of a bool array, counted on the devices that hold it."""
    if math.prod(b.shape) < _CHUNK or b.ndim < 2:
        return int(jnp.sum(b))
    # Per-row counts stay far below 2**31; the total is summed in int64 on the host. No
    # reshape, so a leaf sharded along any axis is counted where it lives.
    rows = jnp.sum(b, axis=tuple(range(1, b.ndim)), dtype=jnp.int32)
    if not rows.is_fully_addressable:
        # Under jax.distributed, rows held by other processes (every process calls this).
        rows = multihost_utils.process_allgather(rows, tiled=True)
    return int(np.asarray(rows, np.int64).sum())


def _zeros_and_size(x: Any) -> tuple[int, int]:
    x = jnp.asarray(x)
    return _count(x == 0), math.prod(x.shape)


def _rows(params: Params, masks: Masks | None) -> list[tuple[str, tuple, int, int, bool]]:
    """``(path, shape, size, zeros, pruned)`` for every float leaf of ``params``."""
    if masks is None:
        triples = [(path, x, True) for path, x in flat_leaves(params)]
    else:
        try:
            triples = pair_with_masks(params, masks)
        except ValueError as e:
            raise ValueError(
                f"masks must have the leaves of params (the structure of params): {e}"
            ) from e
    rows = []
    for path, x, m in triples:
        if is_float_array(x):
            zeros, size = _zeros_and_size(x)
            rows.append(
                (path, tuple(np.shape(x)), size, zeros, masks is not None and np.ndim(m) > 0)
            )
    return rows


def _fraction(rows: list[tuple[str, tuple, int, int, bool]]) -> float:
    total = sum(r[2] for r in rows)
    return sum(r[3] for r in rows) / total if total else 0.0


def sparsity_summary(params: Params, masks: Masks | None = None) -> dict[str, float]:
    """The fraction of exact zeros in every float leaf, and ``"overall"`` across them.

    Counts are exact integers (summed on the host), so the figures hold for any model size.

    Args:
      params: a pytree of arrays (``nnx.State`` works too).
      masks: optional masks shaped like ``params`` (e.g. from :func:`get_masks`); with them,
        ``"pruned"`` gives the sparsity over the pruned leaves only.

    Returns:
      ``{leaf path: sparsity, ..., "overall": sparsity}`` (and ``"pruned"`` with masks); paths
      are ``/``-joined.

    Raises:
      ValueError: if ``masks`` does not have the structure of ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> jp.sparsity_summary({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(4)})
      {'b': 0.0, 'w': 0.75, 'overall': 0.375}
    """
    rows = _rows(params, masks)
    out = {path: (zeros / size if size else 0.0) for path, _, size, zeros, _ in rows}
    out["overall"] = _fraction(rows)
    if masks is not None:
        out["pruned"] = _fraction([r for r in rows if r[4]])
    return out


def sparsity_table(params: Params, masks: Masks | None = None) -> str:
    """A readable per-leaf table: shape, parameters, non-zero, sparsity, and a total row.

    With ``masks`` (shaped like ``params``) pruned leaves are starred and a row sums them.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(4)}
      >>> print(jp.sparsity_table(params))
      leaf   shape   params  non-zero  sparsity
      b      (4,)         4         4     0.00%
      w      (2, 2)       4         1    75.00%
      total               8         5    37.50%
      >>> print(jp.sparsity_table(params, {"w": jnp.ones((2, 2), bool), "b": jnp.bool_(True)}))
      leaf    shape   params  non-zero  sparsity
      b       (4,)         4         4     0.00%
      w *     (2, 2)       4         1    75.00%
      pruned               4         1    75.00%
      total                8         5    37.50%
    """
    rows = _rows(params, masks)
    lines_in = [
        (path + (" *" if on else ""), str(shape), size, size - zeros)
        for path, shape, size, zeros, on in rows
    ]
    if masks is not None:
        kept = [r for r in rows if r[4]]
        size = sum(r[2] for r in kept)
        lines_in.append(("pruned", "", size, size - sum(r[3] for r in kept)))
    size = sum(r[2] for r in rows)
    lines_in.append(("total", "", size, size - sum(r[3] for r in rows)))
    header = ("leaf", "shape", "params", "non-zero", "sparsity")
    cells = [
        (name, shape, f"{n:,}", f"{nz:,}", f"{(1 - nz / n) * 100 if n else 0.0:.2f}%")
        for name, shape, n, nz in lines_in
    ]
    widths = [max(len(r[c]) for r in [header, *cells]) for c in range(5)]
    lines = []
    for r in [header, *cells]:
        left = [r[c].ljust(widths[c]) for c in range(2)]
        right = [r[c].rjust(widths[c]) for c in range(2, 5)]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines)


class PrunedWeightsNotZeroError(ValueError):
    """Raised by :func:`check_pruned_zero`: a weight its mask prunes is not exactly zero."""


def check_pruned_zero(params: Params, opt_state: Any) -> None:
    """Checks that every weight the pruning state's masks prune is exactly ``0.0``.

    A pruning transformation in an ``optax.chain`` must come **last**: it emits ``-w`` for
    pruned weights so that ``optax.apply_updates`` lands them on exactly zero, and any
    transformation after it (Adam, ``optax.clip_by_global_norm``, a learning-rate scale)
    rescales that ``-w``. A transformation cannot see where it sits in a chain, so this check
    is the cheap way to catch it: call it on the host every few hundred steps, or once after
    the first pruning turn. It counts on the devices that hold the weights, about one pass over
    them, and brings only the counts to the host (under ``jax.distributed``, call it in every
    process). (The wrapper form, :func:`jaxprune.sparse`, owns the inner optimizer and cannot
    be misplaced.)

    Masks are matched to params by path (flax.nnx wrappers are transparent), so it works with
    a linen params dict and the optax state, with ``nnx.state(model, nnx.Param)`` and an
    ``nnx.Optimizer``'s ``opt_state``, and with flax's ``TrainState``. Pruning states whose
    masks apply in the forward pass only (the straight-through family) keep dense weights by
    design and are not checked.

    Args:
      params: the params after ``optax.apply_updates``.
      opt_state: the optimizer state holding the pruning state.

    Raises:
      PrunedWeightsNotZeroError: (a ``ValueError``) naming each leaf with non-zero pruned
        weights, how many, and the likely cause.
      ValueError: if ``opt_state`` holds no pruning state, or its masks do not match
        ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
      >>> prune = jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
      >>> good = optax.chain(optax.sgd(0.1), prune)
      >>> state = good.init(params)
      >>> updates, state = good.update(params, state, params)
      >>> jp.check_pruned_zero(optax.apply_updates(params, updates), state)  # passes
      >>> bad = optax.chain(prune, optax.adam(0.1))  # pruning is not last
      >>> state = bad.init(params)
      >>> updates, state = bad.update(params, state, params)
      >>> try:
      ...     jp.check_pruned_zero(optax.apply_updates(params, updates), state)
      ... except jp.PrunedWeightsNotZeroError as e:
      ...     print(str(e).splitlines()[0])
      2 pruned weights are not zero: w (2 of 2)
    """
    states = [
        s for s in find_pruning_states(opt_state) if not getattr(s, "straight_through", False)
    ]
    if not states:
        raise ValueError(
            "opt_state holds no pruning state with masks (e.g. from jaxprune.magnitude_pruning)"
        )
    bad = []
    for state in states:
        for path, x, m in pair_with_masks(params, state.masks):
            if np.ndim(m) == 0:
                continue
            # Counted on the devices: under jax.distributed no process holds a whole leaf.
            m = ~jnp.asarray(m, bool)
            pruned = _count(m)
            nonzero = _count(m & (jnp.asarray(x) != 0))
            if nonzero:
                bad.append((path, nonzero, pruned))
    if bad:
        total = sum(n for _, n, _ in bad)
        listing = ", ".join(f"{p} ({n} of {k})" for p, n, k in bad)
        raise PrunedWeightsNotZeroError(
            f"{total} pruned weights are not zero: {listing}\n"
            "The pruning transformation is probably not the last element of the optax chain "
            "(anything after it rescales the -w it emits), or the params were changed outside "
            "the optimizer. Put it last, e.g. optax.chain(optax.adam(1e-3), "
            "jaxprune.magnitude_pruning(schedule)), or use jaxprune.sparse(inner, algorithm)."
        )


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


def count_kept(mask: Any) -> int:
    # On the host: an exact Python int for any size (device int32 sums overflow at 2**31).
    return int(np.count_nonzero(np.asarray(mask)))


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
      that keeps none); ``"<path>/threshold/<j>"`` for each layer ``j`` of a leaf of stacked
      layers (``stacked_axes`` in :func:`jaxprune.magnitude_pruning`);
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
      >>> logs = jp.pruning_summaries(state, params, schedule=schedule)
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
        zeros = size - count_kept(m)
        out[f"{path}/sparsity"] = zeros / size
        if t is not None and np.ndim(t) == 0:
            out[f"{path}/threshold"] = float(np.asarray(t, np.float64))
        elif t is not None:
            # A leaf of stacked layers (magnitude_pruning's stacked_axes): one per layer.
            for j, value in enumerate(np.asarray(t, np.float64).reshape(-1)):
                out[f"{path}/threshold/{j}"] = float(value)
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
