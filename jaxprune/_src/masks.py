"""Magnitude masks: pure functions from weights to boolean masks (``True`` = kept).

The rule is TensorFlow Model Optimization's, exactly: for ``n`` weights and sparsity ``s``,

.. math::

    k = \\max(\\mathrm{round\\_half\\_to\\_even}(n (1 - s)), 1), \\qquad
    t = k\\text{-th largest } |w|, \\qquad \\mathrm{mask} = |w| \\ge t

computed in float32. Every weight whose magnitude ties with the threshold is kept, so more than
``k`` entries may survive; all-zero and constant tensors are never pruned; NaN ranks as the
largest magnitude and is kept. The threshold is found by an exact linear-time radix select
(:mod:`jaxprune._src.radix_select`), never a sort.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import leaf_rules, radix_select, trees
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks, Params, check_sparsity


def _check_float(x: Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")


def magnitude_threshold(
    x: ArrayLike, sparsity: ArrayLike, update: Array | None = None
) -> tuple[Array, Array]:
    """The magnitude mask of ``x`` (or of ``x + update``) and its threshold, in x's dtype.

    With ``update``, the weights ``x + update`` are ranked without ever being stored whole.
    """
    x = jnp.asarray(x)
    _check_float(x, "x")
    if x.size == 0:
        return jnp.ones(x.shape, bool), jnp.zeros((), x.dtype)
    return _magnitude_threshold(x, jnp.asarray(sparsity, jnp.float32), update)


# Jitted so that eager calls run as one program, not op by op (inside a jit it is inlined).
@jax.jit
def _magnitude_threshold(x: Array, sparsity: Array, update: Array | None) -> tuple[Array, Array]:
    src = radix_select.magnitude_source(x, radix_select.key_dtype([x.dtype]), update)
    kth = radix_select.kth_largest_key([src], radix_select.kept_count(x.size, sparsity))
    return radix_select.at_least(src, kth), radix_select.key_to_magnitude(kth, x.dtype)


def magnitude_mask(x: ArrayLike, sparsity: ArrayLike) -> Array:
    """Keeps the largest magnitudes of ``x`` so that a fraction ``sparsity`` is pruned.

    The rule and its float32 rounding are tfmot's (``prune_low_magnitude``):
    ``k = max(round_half_to_even(n·(1 − s)), 1)`` entries are kept, the threshold is the k-th
    largest ``|x|``, and every entry with ``|x| >= threshold`` is kept, so ties at the threshold
    all survive. Consequences: an all-zero or constant ``x`` is never pruned, ``sparsity = 1``
    still keeps one entry, and NaN (ranked above ``inf``) is always kept.

    Args:
      x: float array of any rank and float dtype.
      sparsity: fraction to prune in ``[0, 1]``; may be traced.

    Returns:
      A bool array of ``x``'s shape, ``True`` where the entry is kept.

    Raises:
      TypeError: if ``x`` is not a float array.
      ValueError: if a concrete ``sparsity`` is outside ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> jp.magnitude_mask(jnp.array([0.1, -3.0, 0.5, 2.0]), 0.5)
      Array([False,  True, False,  True], dtype=bool)
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    return magnitude_threshold(x, sparsity)[0]


def global_threshold(
    leaves: list[Array], sparsity: ArrayLike, updates: list[Array] | None = None
) -> tuple[list[Array], Array]:
    """Masks for ``leaves`` (or ``leaves + updates``) ranked together under one threshold.

    The threshold is returned in the widest float dtype of ``leaves``.
    """
    return _global_threshold(list(leaves), jnp.asarray(sparsity, jnp.float32), updates)


@jax.jit
def _global_threshold(
    leaves: list[Array], sparsity: Array, updates: list[Array] | None
) -> tuple[list[Array], Array]:
    ktype = radix_select.key_dtype([x.dtype for x in leaves])
    updates = [None] * len(leaves) if updates is None else updates
    kth, threshold = global_key(leaves, sparsity, updates)
    sources = [radix_select.magnitude_source(x, ktype, u) for x, u in zip(leaves, updates)]
    return [radix_select.at_least(src, kth) for src in sources], threshold


def global_key(leaves: list[Array], sparsity: Array, updates: list[Any]) -> tuple[Array, Array]:
    """The k-th largest magnitude key over all ``leaves`` (+ ``updates``) and the threshold
    (in the widest dtype); the key dtype is ``key_dtype`` of the leaves' dtypes."""
    dtypes = [x.dtype for x in leaves]
    ktype = radix_select.key_dtype(dtypes)
    total = sum(x.size for x in leaves)
    if stackable(leaves + updates):
        counted = _stacked_sources(leaves, updates, ktype)
    else:
        counted = [radix_select.magnitude_source(x, ktype, u) for x, u in zip(leaves, updates)]
    kth = radix_select.kth_largest_key(counted, radix_select.kept_count(total, sparsity))
    widest = max(dtypes, key=lambda d: jnp.dtype(d).itemsize)
    return kth, radix_select.key_to_magnitude(kth, widest)


def _stacked_sources(
    leaves: list[Array], updates: list[Any], ktype: jnp.dtype
) -> list[radix_select.KeySource]:
    """The keys of ``leaves`` (or ``leaves + updates``), small leaves of one shape stacked.

    Ranked together, the keys of a hundred same-shaped leaves are one array to count, not a
    hundred: the traced and compiled program does not grow with the number of leaves.
    """
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(leaves):
        if 0 < x.size <= _STACK_MAX:
            groups.setdefault((x.shape, jnp.dtype(x.dtype)), []).append(i)
    grouped = {i for same in groups.values() if len(same) > 1 for i in same}
    out = [
        radix_select.magnitude_source(x, ktype, u)
        for i, (x, u) in enumerate(zip(leaves, updates))
        if i not in grouped
    ]
    for same in groups.values():
        if len(same) > 1:
            out.append(radix_select.magnitude_source(_stack(leaves, updates, same), ktype))
    return out


def _stack(leaves: list[Array], updates: list[Any], which: list[int]) -> Array:
    """``leaves[i]`` (or ``leaves[i] + updates[i]`` in the leaf's dtype, as optax adds them)
    for ``i`` in ``which``, stacked on a new leading axis."""
    stack = jnp.stack(
        [
            leaves[i] if updates[i] is None else radix_select.added(leaves[i], updates[i])
            for i in which
        ]
    )
    # Materialised once, not recomputed in every counting pass.
    return jax.lax.optimization_barrier(stack)


# Leaves up to this size are stacked by shape and dtype for a batched selection, which costs a
# copy of them during the selection; larger leaves take part in place, one counting step each.
_STACK_MAX = 1 << 20


def stackable(arrays: list[Any]) -> bool:
    # Stacking same-shaped leaves is only safe where nothing is sharded: leaves of one shape may
    # be split over devices differently, and stacking them would move data between devices.
    return jax.device_count() == 1 and all(
        radix_select._replicated(a) is None for a in arrays if a is not None
    )


def layer_rows(
    leaves: list[Any], stackable: bool, axes: list[int | None] | None = None
) -> dict[Any, list[list[int]]]:
    """How :func:`layer_kth` ranks ``leaves``: per key dtype, its parts (lists of leaf indices).

    The leaves of one part are stacked (one row each, in order); rows are numbered part after
    part. A leaf with an axis in ``axes`` is a part of its own with one row per slice along that
    axis (:func:`row_sizes`). Empty leaves take part in no selection.
    """
    axes = [None] * len(leaves) if axes is None else axes
    out: dict[Any, list[list[int]]] = {}
    by_shape: dict[Any, list[int]] = {}
    for i, x in enumerate(leaves):
        if x.size == 0:
            continue
        ktype = radix_select.key_dtype([x.dtype])
        if stackable and x.size <= _STACK_MAX:
            by_shape.setdefault((ktype, x.shape, jnp.dtype(x.dtype), axes[i]), []).append(i)
        else:
            out.setdefault(ktype, []).append([i])
    for (ktype, _, _, _), same in by_shape.items():
        out.setdefault(ktype, []).append(same)
    return out


def row_sizes(
    leaves: list[Any], members: list[list[int]], axes: list[int | None]
) -> list[tuple[int, int]]:
    """``(leaf index, entries)`` for every row of ``members``, in row order."""
    out = []
    for same in members:
        for i in same:
            x, axis = leaves[i], axes[i]
            if axis is None:
                out.append((i, x.size))
            else:
                out.extend([(i, x.size // x.shape[axis])] * x.shape[axis])
    return out


def _slices_first(x: Any, axis: int | None) -> Any:
    return x if x is None or axis in (None, 0) else jnp.moveaxis(x, axis, 0)


def layer_kth(
    leaves: list[Array],
    sparsity: Array,
    updates: list[Any],
    rows: dict[Any, list[list[int]]],
    axes: list[int | None] | None = None,
) -> dict[Any, Array]:
    """Per key dtype, the k-th largest key of every row of ``rows`` (:func:`layer_rows`)."""
    axes = [None] * len(leaves) if axes is None else axes
    out = {}
    for ktype, members in rows.items():
        parts, row = [], 0
        for same in members:
            if axes[same[0]] is not None:
                # Slices along the axis are rows of their own (moved to the front: a copy
                # unless the axis is already 0); leaves of one shape stacked in one part.
                moved = [[_slices_first(a, axes[i]) for a in (leaves[i], updates[i])] for i in same]
                if len(same) == 1:
                    src = radix_select.magnitude_source(moved[0][0], ktype, moved[0][1])
                else:
                    both = [[x for x, _ in moved], [u for _, u in moved]]
                    stack = _stack(*both, list(range(len(same))))
                    stack = stack.reshape((-1,) + stack.shape[2:])
                    src = radix_select.magnitude_source(stack, ktype)
                parts.append(radix_select.Part(src, row, True))
                row += len(same) * moved[0][0].shape[0]
                continue
            if len(same) == 1:
                i = same[0]
                src = radix_select.magnitude_source(leaves[i], ktype, updates[i])
                parts.append(radix_select.Part(src, row))
            else:
                # The weights this step produces, added in the leaf's dtype as optax does.
                stack = _stack(leaves, updates, same)
                src = radix_select.magnitude_source(stack, ktype)
                parts.append(radix_select.Part(src, row, True))
            row += len(same)
        sizes = row_sizes(leaves, members, axes)
        # Vectors, not a few scalar operations per leaf: each would be a small program to
        # compile.
        order = np.asarray([i for i, _ in sizes])
        s = sparsity if sparsity.ndim == 0 else sparsity[order]
        k = radix_select.kept_counts([n for _, n in sizes], s)
        out[ktype] = radix_select.kth_largest_keys(parts, k)
    return out


def pick_rows(vector: Array) -> list[Array]:
    """The entries of a 1-D ``vector`` as scalars, each picked with a constant one-hot mask.

    For compile time: XLA compiles one kernel per distinct fused computation, and ``vector[r]``
    fuses a different constant index into every consumer (a mask kernel per leaf, each
    compiled anew). A one-hot array constant is an operand instead, so the kernels of all
    leaves of one shape and dtype are the same program, compiled once. Measured: 48 masks of
    48x48 leaves from one selection compile in a third of the time.
    """
    n = vector.shape[0]
    dtype = vector.dtype
    # The smallest value of the dtype, so that the max is exactly the picked entry (NaN too).
    low = -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min
    low = jnp.asarray(low, dtype)
    return [jnp.max(jnp.where(jnp.asarray(np.arange(n) == r), vector, low)) for r in range(n)]


def layer_masks(
    leaves: list[Array],
    updates: list[Any],
    rows: dict[Any, list[list[int]]],
    kth: dict[Any, Array],
    axes: list[int | None] | None = None,
) -> tuple[list[Array], list[Array]]:
    """Masks and thresholds (in each leaf's dtype) from the keys :func:`layer_kth` found.

    A leaf with an axis in ``axes`` gets one threshold per slice along it, a vector.
    """
    axes = [None] * len(leaves) if axes is None else axes
    keys, thresholds = layer_keys(leaves, rows, kth, axes)
    masks: list[Any] = [jnp.ones(x.shape, bool) for x in leaves]
    for i, (x, key) in enumerate(zip(leaves, keys)):
        if key is None:
            continue
        ktype = key.dtype
        if axes[i] is None:
            masks[i] = radix_select.at_least(
                radix_select.magnitude_source(x, ktype, updates[i]), key
            )
        else:
            masks[i] = mask_at_key(x, updates[i], key, axes[i])
    return masks, thresholds


def layer_keys(
    leaves: list[Array],
    rows: dict[Any, list[list[int]]],
    kth: dict[Any, Array],
    axes: list[int | None],
) -> tuple[list[Array | None], list[Array]]:
    """Per leaf, the k-th largest key :func:`layer_kth` found (a vector of one key per slice
    for a leaf with an axis; ``None`` for an empty leaf) and the threshold in its dtype."""
    keys: list[Any] = [None] * len(leaves)
    thresholds: list[Any] = [
        jnp.zeros(() if a is None else (x.shape[a],), x.dtype) for x, a in zip(leaves, axes)
    ]
    for ktype, members in rows.items():
        sizes = row_sizes(leaves, members, axes)
        # Picked as keys (integers: exact; float max flushes subnormal thresholds to zero).
        keys_of_rows = kth[ktype]
        plain = [r for r, (i, _) in enumerate(sizes) if axes[i] is None]
        # Single leaves take their key with pick_rows (compile time); a leaf of slices takes a
        # slice of the vector.
        vec = keys_of_rows if len(plain) == len(sizes) else keys_of_rows[np.asarray(plain, int)]
        picked = dict(zip(plain, pick_rows(vec))) if plain else {}
        r = 0
        while r < len(sizes):
            i = sizes[r][0]
            if axes[i] is None:
                keys[i] = picked[r]
                r += 1
            else:
                n = leaves[i].shape[axes[i]]
                keys[i] = keys_of_rows[r : r + n]
                r += n
            thresholds[i] = radix_select.key_to_magnitude(keys[i], leaves[i].dtype)
    return keys, thresholds


def mask_from_key(x: Array, update: Array | None, key: Array, axis: int | None = None) -> Array:
    """:func:`mask_at_key`, chunk by chunk on CPU for a whole leaf (``radix_select.at_least``)."""
    if axis is not None:
        return mask_at_key(x, update, key, axis)
    return radix_select.at_least(radix_select.magnitude_source(x, key.dtype, update), key)


def mask_at_key(x: Array, update: Array | None, key: Array, axis: int | None = None) -> Array:
    """``magnitude key of x (+ update) >= key``, elementwise, in ``key``'s key dtype.

    With ``axis``, ``key`` holds one key per slice of ``x`` along that axis.
    """
    ktype = key.dtype
    if axis is None:
        src = radix_select.magnitude_source(x, ktype, update)
        return src.keys(*src.arrays) >= key
    n = x.shape[axis]
    x, u = _slices_first(x, axis), _slices_first(update, axis)
    src = radix_select.magnitude_source(x, ktype, u)
    keep = src.keys(*src.arrays) >= key.reshape((n,) + (1,) * (x.ndim - 1))
    return jnp.moveaxis(keep, 0, axis)


def layer_thresholds(
    leaves: list[Array],
    sparsity: ArrayLike,
    updates: list[Array | None] | None = None,
    axes: list[int | None] | None = None,
) -> tuple[list[Array], list[Array]]:
    """Masks of ``leaves`` (or ``leaves + updates``), each leaf ranked on its own, in one go.

    Gives for every leaf what :func:`magnitude_threshold` gives, but with one batched selection
    for all leaves of one key width (:func:`radix_select.kth_largest_keys`), so that the compiled
    program does not grow with the number of leaves beyond a mask per leaf. ``sparsity`` is a
    scalar or one value per leaf. Thresholds are in each leaf's dtype. A leaf with an axis in
    ``axes`` (non-negative, or ``None``) has each of its slices along that axis ranked on its
    own, as if it were a leaf, and a vector of thresholds, one per slice.
    """
    leaves = [jnp.asarray(x) for x in leaves]
    for x in leaves:
        _check_float(x, "leaves")
    s = jnp.asarray(sparsity, jnp.float32)
    if s.ndim not in (0, 1) or (s.ndim == 1 and s.shape[0] != len(leaves)):
        raise ValueError(
            f"sparsity must be a scalar or have one entry per leaf ({len(leaves)}), got shape "
            f"{s.shape}"
        )
    axes = (None,) * len(leaves) if axes is None else tuple(axes)
    for x, a in zip(leaves, axes):
        if a is not None and not 0 <= a < x.ndim:
            raise ValueError(f"axes: {a} is not an axis of a leaf of shape {x.shape}")
    return _layer_thresholds(leaves, s, updates, axes)


@functools.partial(jax.jit, static_argnums=3)
def _layer_thresholds(
    leaves: list[Array],
    sparsity: Array,
    updates: list[Array | None] | None,
    axes: tuple[int | None, ...],
) -> tuple[list[Array], list[Array]]:
    updates = [None] * len(leaves) if updates is None else list(updates)
    axes = list(axes)
    rows = layer_rows(leaves, stackable(leaves + updates), axes)
    kth = layer_kth(leaves, sparsity, updates, rows, axes)
    return layer_masks(leaves, updates, rows, kth, axes)


def layer_keys_of(
    leaves: list[Array],
    sparsity: Array,
    updates: list[Array | None],
    axes: list[int | None],
) -> tuple[list[Array | None], list[Array]]:
    """:func:`layer_thresholds` with each leaf's k-th largest key in place of its mask.

    For masks built elsewhere with :func:`mask_at_key` (inside a jit, e.g. a pruning link).
    """
    s = jnp.asarray(sparsity, jnp.float32)
    rows = layer_rows(leaves, stackable(leaves + updates), axes)
    kth = layer_kth(leaves, s, updates, rows, axes)
    return layer_keys(leaves, rows, kth, axes)


def global_magnitude_masks(
    params: Params, sparsity: ArrayLike, *, prune: LeafRule | None = None
) -> Masks:
    """Magnitude masks with one threshold shared by all selected leaves of ``params``.

    The same rule as :func:`magnitude_mask`, applied to the magnitudes of all selected leaves
    together: ``k`` is computed from their total size, and every selected entry with
    ``|w| >=`` the k-th largest magnitude is kept. Layers with larger weights therefore keep
    more of them.

    Args:
      params: a pytree of arrays.
      sparsity: fraction of the selected entries to prune, in ``[0, 1]``; may be traced.
      prune: which leaves take part: a regex searched in the ``/``-joined leaf path, or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2.

    Returns:
      A pytree shaped like ``params``: bool arrays of the leaf's shape for selected leaves, and
      a scalar ``True`` for the others, so ``jax.tree.map(jnp.where, masks, params, 0)`` works.

    Raises:
      ValueError: for a sparsity outside ``[0, 1]`` or a rule that matches no leaf.
      TypeError: if the rule selects a non-float leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> params = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]),
      ...           "b": jnp.array([[9.0, 0.5], [0.25, 0.1]])}
      >>> masks = jp.global_magnitude_masks(params, 0.5)
      >>> masks["a"]
      Array([[False,  True],
             [ True,  True]], dtype=bool)
      >>> masks["b"]
      Array([[ True, False],
             [False, False]], dtype=bool)
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    rule = leaf_rules.compile_rule(prune, "prune")
    paths, leaves, treedef = leaf_rules.flatten(params)
    chosen = leaf_rules.select(paths, leaves, rule)
    picked = [jnp.asarray(x) for x, on in zip(leaves, chosen) if on]
    out = [jnp.ones((), bool)] * len(leaves)
    if picked:
        masks, _ = global_threshold(picked, sparsity)
        it = iter(masks)
        out = [next(it) if on else m for on, m in zip(chosen, out)]
    return jax.tree_util.tree_unflatten(treedef, out)


def apply_masks(params: Params, masks: Masks) -> Params:
    """Zeroes the pruned entries of ``params``: ``where(mask, param, 0)`` leaf by leaf.

    Masks are matched to the params by leaf path, with flax.nnx ``Variable`` wrappers
    transparent: the masks :func:`jaxprune.get_masks` returns work with a linen params dict,
    with ``nnx.state(model, nnx.Param)`` and with its pure-dict form, and the result keeps the
    wrappers ``params`` had. A scalar mask applies to its whole leaf (scalar ``True`` leaves it
    as it is).

    Args:
      params: a pytree of arrays (flax.nnx ``Variable`` wrappers allowed).
      masks: bool masks with the leaves of ``params``: each a scalar or exactly its leaf's
        shape.

    Returns:
      ``params`` with the pruned entries set to ``0`` of the leaf's dtype.

    Raises:
      ValueError: if the masks do not have the leaves of ``params``, or a mask is neither a
        scalar nor of its leaf's shape (a mask that would only broadcast is refused: it almost
        always belongs to another leaf).
      TypeError: if a mask is not boolean (a float or int mask is a mistake, not a mask).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> out = jp.apply_masks({"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([False, True])})
      >>> out["w"].tolist()
      [0.0, -2.0]
    """
    new = []
    for path, x, m in trees.pair_with_masks(params, masks):
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            raise TypeError(
                f"the mask of {path!r} has dtype {m.dtype}; masks must be bool (True = kept), "
                "e.g. mask.astype(bool) if that is what you mean"
            )
        x = jnp.asarray(x)
        new.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
    return trees.rebuild(params, new)


def masks_like(params: Params, chosen: list[bool]) -> list[Any]:
    """All-``True`` masks: leaf-shaped for the chosen leaves, scalar ``True`` for the others."""
    leaves = jax.tree_util.tree_leaves(params)
    return [
        # ones_like keeps the leaf's sharding: a sharded kernel gets a sharded mask at init.
        jnp.ones_like(x, dtype=bool) if on else jnp.ones((), bool)
        for x, on in zip(leaves, chosen)
    ]


__all__ = [
    "magnitude_mask",
    "global_magnitude_masks",
    "apply_masks",
]
