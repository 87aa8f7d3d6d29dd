r"""Structured masks: blocks, N:M groups and whole units (``True`` = kept).

Three ways to prune weights in groups instead of one by one:

* **blocks** (:func:`block_mask`): a rank-2 weight is cut into ``bh × bw`` tiles aligned at
  ``(0, 0)``; each tile is scored by the average or maximum of its ``|w|`` and tiles are kept by
  tfmot's magnitude rule applied to the scores (TensorFlow's ``block_size`` /
  ``block_pooling_type``; where jaxprune departs from it is listed in :func:`block_mask`);
* **N:M** (:func:`nm_mask`): in every run of ``m`` consecutive weights along the input-feature
  axis, the ``n`` largest magnitudes are kept (tfmot's ``sparsity_m_by_n``, which counts the
  pruned entries instead: see :func:`nm_mask`);
* **units** (:func:`unit_mask`): whole slices along one axis (for a Flax ``(in, out)`` kernel,
  output neurons) are kept or pruned by their L2 norm.

Blocks and units rank their scores with the exact radix select of
:mod:`jaxprune._src.radix_select`, never a sort. N:M needs the n-th largest of every small group
of ``m``: for groups of up to 32 entries each entry is ranked within its group by comparisons
with the others (elementwise, so a sharded leaf is ranked where it lies, with no gather), and
for larger groups the n-th largest key comes from ``lax.top_k`` over the last axis (only its
value is used). Ties are broken by index explicitly, so the result does not depend on how a
backend orders equal keys. All masks are exact and deterministic with and without ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import radix_select
from jaxprune._src.base import Array, ArrayLike, check_sparsity

POOLINGS = ("AVG", "MAX")


# ----- validation helpers -----


def _as_float_array(x: ArrayLike, name: str = "x") -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    return x


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or isinstance(value, (float, np.floating)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as e:
        raise TypeError(f"{name} must be an int, got {value!r}") from e


def check_pooling(pooling: Any) -> str:
    """Normalises ``pooling`` to ``"AVG"`` or ``"MAX"`` (any case); ``ValueError`` otherwise."""
    if isinstance(pooling, str) and pooling.upper() in POOLINGS:
        return pooling.upper()
    raise ValueError(f"pooling must be one of 'avg', 'max' (any case), got {pooling!r}")


def check_block_shape(block_shape: Any) -> tuple[int, int]:
    """Validates a ``(height, width)`` block shape; ``-1`` stands for the whole axis."""
    if isinstance(block_shape, (str, bytes)) or not isinstance(block_shape, Sequence):
        raise ValueError(f"block_shape must be a pair (height, width) of ints, got {block_shape!r}")
    if len(block_shape) != 2:
        raise ValueError(f"block_shape must be a pair (height, width) of ints, got {block_shape!r}")
    dims = tuple(_check_int(d, "block_shape") for d in block_shape)
    for d in dims:
        if d < 1 and d != -1:
            raise ValueError(
                f"block_shape entries must be >= 1, or -1 for the whole axis, got {block_shape!r}"
            )
    return dims  # type: ignore[return-value]


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The rank-2 shape block masks see for a weight of ``shape``.

    A rank-2 shape is used as it is (size-1 dimensions included). Any other shape has its
    size-1 dimensions squeezed, as TensorFlow does (e.g. a ``(1, 1, in, out)`` 1×1-convolution
    kernel is blocked as ``(in, out)``); if that does not leave rank 2 it is an error.
    """
    shape = tuple(shape)
    if len(shape) == 2:
        return shape  # type: ignore[return-value]
    squeezed = tuple(d for d in shape if d != 1)
    if len(squeezed) != 2:
        raise ValueError(
            f"block masks need a rank-2 weight (or one that is rank 2 once its size-1 "
            f"dimensions are squeezed), got shape {shape}"
        )
    return squeezed  # type: ignore[return-value]


def resolve_block_shape(block_shape: Any, shape: Sequence[int]) -> tuple[int, int]:
    """``block_shape`` with every ``-1`` replaced by the size of that axis of ``shape``."""
    dims = check_block_shape(block_shape)
    h, w = matrix_shape(shape)
    return (h if dims[0] == -1 else dims[0]), (w if dims[1] == -1 else dims[1])


def _score_dtype(dtype: Any) -> Any:
    # Scores are accumulated in float32 (float64 for float64 weights): an average of float16
    # magnitudes in float16 would lose the low bits that rank nearly equal blocks.
    return jnp.float64 if jnp.dtype(dtype).itemsize > 4 else jnp.float32


# ----- blocks -----


def block_scores(x: ArrayLike, block_shape: Sequence[int], pooling: str = "avg") -> Array:
    r"""The score of every block of ``x``: the mean or max of ``|x|`` over its real cells.

    For an ``(H, W)`` weight and blocks of ``(bh, bw)`` (``-1`` = the whole axis), block
    ``(i, j)`` covers rows ``[i·bh, (i+1)·bh)`` and columns ``[j·bw, (j+1)·bw)``, clipped to
    the weight. Blocks at the ends may be partial: they are scored over their real cells only,

    .. math::

        s_{ij} = \frac{1}{|B_{ij}|} \sum_{(r, c) \in B_{ij}} |x_{rc}| \quad (\text{avg}),
        \qquad s_{ij} = \max_{(r, c) \in B_{ij}} |x_{rc}| \quad (\text{max}).

    This is TensorFlow's SAME-padded pooling where its window is the block that gets masked
    (see :func:`block_mask` for where it is not). Scores are float32 (float64 for float64
    weights); a block holding a NaN scores NaN.

    Args:
      x: float weight of rank 2, or one that is rank 2 once size-1 dimensions are squeezed.
      block_shape: ``(bh, bw)``; ``-1`` means the whole axis.
      pooling: ``"avg"`` or ``"max"`` (any case).

    Returns:
      The ``(ceil(H/bh), ceil(W/bw))`` array of scores.

    Raises:
      TypeError: if ``x`` is not a float array or a block dimension is not an int.
      ValueError: for a bad ``block_shape``, ``pooling`` or shape of ``x``.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, -3.0, 2.0], [5.0, 0.0, -4.0]])
      >>> block_scores(x, (2, 2), "avg").tolist()
      [[2.25, 3.0]]
      >>> block_scores(x, (2, 2), "max").tolist()
      [[5.0, 4.0]]
    """
    x = _as_float_array(x)
    return pool_blocks(jnp.abs(x), block_shape, pooling)


def pool_blocks(scores: ArrayLike, block_shape: Sequence[int], pooling: str = "avg") -> Array:
    """Pools non-negative elementwise ``scores`` over blocks: the mean or max of each block.

    The pooling of :func:`block_scores`, for any score (``|w|``, ``|w·g|``, ...): blocks of
    ``(bh, bw)`` aligned at ``(0, 0)``, partial blocks at the ends pooled over their real
    cells; float32 (float64 for float64 scores).

    Examples:
      >>> import jax.numpy as jnp
      >>> pool_blocks(jnp.array([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]]), (2, 2), "max").tolist()
      [[5.0, 4.0]]
    """
    scores = _as_float_array(scores, "scores")
    pooling = check_pooling(pooling)
    bh, bw = resolve_block_shape(block_shape, scores.shape)
    h, w = matrix_shape(scores.shape)
    nh, nw = -(-h // bh), -(-w // bw)
    # Scores are >= 0, so zero padding changes neither the sums nor the maxima of real cells.
    a = scores.reshape(h, w).astype(_score_dtype(scores.dtype))
    a = jnp.pad(a, ((0, nh * bh - h), (0, nw * bw - w)))
    tiles = a.reshape(nh, bh, nw, bw)
    if pooling == "MAX":
        return tiles.max(axis=(1, 3))
    rows = np.minimum(bh, h - bh * np.arange(nh))
    cols = np.minimum(bw, w - bw * np.arange(nw))
    cells = jnp.asarray(np.outer(rows, cols), a.dtype)
    return tiles.sum(axis=(1, 3)) / cells


def expand_block_mask(
    block_mask: ArrayLike, block_shape: Sequence[int], shape: Sequence[int]
) -> Array:
    """Expands a per-block mask to the full weight mask (blocks aligned at ``(0, 0)``).

    Each entry of the ``(ceil(H/bh), ceil(W/bw))`` block mask fills its ``bh × bw`` tile,
    and the result is cut to ``(H, W)`` (TensorFlow's ``expand_tensor`` and slice) and
    reshaped to ``shape`` (which may carry size-1 dimensions, see :func:`block_mask`).

    Args:
      block_mask: bool (or 0/1) array of the block grid's shape.
      block_shape: ``(bh, bw)``; ``-1`` means the whole axis of ``shape``.
      shape: the weight's shape.

    Returns:
      A bool array of ``shape``.

    Raises:
      ValueError: for a bad ``block_shape`` or ``shape``, or a ``block_mask`` whose shape is not
        the block grid of ``shape``.

    Examples:
      >>> import jax.numpy as jnp
      >>> expand_block_mask(jnp.array([[True, False]]), (2, 2), (2, 3)).astype(int).tolist()
      [[1, 1, 0], [1, 1, 0]]
    """
    block_mask = jnp.asarray(block_mask)
    shape = tuple(shape)
    bh, bw = resolve_block_shape(block_shape, shape)
    h, w = matrix_shape(shape)
    nh, nw = -(-h // bh), -(-w // bw)
    if block_mask.shape != (nh, nw):
        raise ValueError(
            f"block_mask has shape {block_mask.shape}, but a weight of shape {shape} in blocks "
            f"of {(bh, bw)} has a block grid of {(nh, nw)}"
        )
    full = jnp.broadcast_to(block_mask.astype(bool)[:, None, :, None], (nh, bh, nw, bw))
    return full.reshape(nh * bh, nw * bw)[:h, :w].reshape(shape)


def block_threshold(
    x: ArrayLike, sparsity: ArrayLike, block_shape: Sequence[int], pooling: str = "avg"
) -> tuple[Array, Array]:
    """The block mask of ``x`` and its pooled threshold (the rule of :func:`block_mask`).

    Args:
      x: float weight, rank 2 (or rank 2 after squeezing size-1 dimensions).
      sparsity: fraction of blocks to prune, in ``[0, 1]``; may be traced.
      block_shape: ``(bh, bw)`` ints ``>= 1``, or ``-1`` for the whole axis.
      pooling: ``"avg"`` or ``"max"`` (any case).

    Returns:
      ``(mask, threshold)``: the bool mask of ``x``'s shape, and the k-th largest block score
      cast to ``x``'s dtype (as tfmot returns it: a pooled value, not a weight magnitude).
      An empty ``x`` gives an all-``True`` mask and a zero threshold.

    Raises:
      TypeError, ValueError: as :func:`block_mask`.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 1.0, 9.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
      >>> float(block_threshold(x, 0.5, (2, 2), "avg")[1])
      2.25
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    x = _as_float_array(x)
    pooling = check_pooling(pooling)
    dims = check_block_shape(block_shape)
    matrix_shape(x.shape)
    if x.size == 0:
        return jnp.ones(x.shape, bool), jnp.zeros((), x.dtype)
    return _block_select(jnp.abs(x), sparsity, dims, pooling, x.dtype)


# Compiled once per shape and structure, so eager calls (one-shot pruning) do not dispatch the
# selection op by op; under an outer jit this is an ordinary nested call.
@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _block_select(
    scores: Array, sparsity: ArrayLike, block_shape: tuple[int, int], pooling: str, dtype: Any
) -> tuple[Array, Array]:
    pooled = pool_blocks(scores, block_shape, pooling)
    keys = radix_select.magnitude_keys(pooled)
    kth = radix_select.kth_largest_key([keys], radix_select.kept_count(pooled.size, sparsity))
    mask = expand_block_mask(keys >= kth, block_shape, scores.shape)
    return mask, radix_select.key_to_magnitude(kth, dtype)


def block_mask(
    x: ArrayLike, sparsity: ArrayLike, block_shape: Sequence[int], pooling: str = "avg"
) -> Array:
    r"""Prunes whole ``bh × bw`` blocks of a rank-2 weight, by pooled magnitude.

    Each block is scored by :func:`block_scores` (mean or max of ``|x|`` over its real cells;
    blocks aligned at ``(0, 0)``, partial blocks at the ends), then tfmot's magnitude rule is
    applied to the ``B = ceil(H/bh)·ceil(W/bw)`` scores:

    .. math::

        k = \max(\mathrm{round\_half\_to\_even}(B (1 - s)), 1), \qquad
        t = k\text{-th largest score}, \qquad \text{block kept} \iff \text{score} \ge t

    so ties at the threshold are all kept and at least one block survives; the block mask is
    then expanded to the weight's shape.

    Differences from TensorFlow (also in "What differs from TensorFlow" of
    ``docs/migrating-from-tensorflow.md``):

    * tfmot pools with SAME padding, which splits the padding of an axis into
      ``pad_before = total // 2`` and the rest after. When an axis needs a total pad of 2 or
      more (e.g. width 18 in blocks of 4), tfmot's pooling windows are shifted ``pad_before``
      entries towards the start, while its mask is laid out from 0, so it scores one window
      and masks another. jaxprune scores the block it masks. Where the shapes are divisible
      by the block, or the total pad of every axis is 1, the two agree exactly.
    * ``-1`` in ``block_shape`` means the whole axis, and blocks as large as an axis (a block
      grid with a size-1 side) work; tfmot raises there.
    * A weight of rank other than 2 is accepted when squeezing its size-1 dimensions leaves
      rank 2 (TensorFlow squeezes too); the mask has the weight's original shape.

    Args:
      x: float weight, rank 2 (or rank 2 after squeezing size-1 dimensions).
      sparsity: fraction of blocks to prune, in ``[0, 1]``; may be traced.
      block_shape: ``(bh, bw)`` ints ``>= 1``, or ``-1`` for the whole axis.
      pooling: ``"avg"`` or ``"max"`` (any case).

    Returns:
      A bool array of ``x``'s shape, ``True`` where the entry is kept.

    Raises:
      TypeError: if ``x`` is not a float array or a block dimension is not an int.
      ValueError: for a bad ``block_shape`` or ``pooling``, a concrete sparsity outside
        ``[0, 1]``, or a weight that is not rank 2 (the message names the shape).

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 1.0, 9.0, 0.0],
      ...                [1.0, 1.0, 0.0, 0.0]])
      >>> block_mask(x, 0.5, (2, 2), "avg").astype(int).tolist()   # block scores 1.0 and 2.25
      [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    return block_threshold(x, sparsity, block_shape, pooling)[0]


# ----- N:M -----


def check_nm(n: Any, m: Any) -> tuple[int, int]:
    """Validates an N:M pattern: ints with ``1 <= n <= m``."""
    n, m = _check_int(n, "n"), _check_int(m, "m")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > m:
        raise ValueError(f"n must be <= m (n of every m weights are kept), got n={n}, m={m}")
    return n, m


def _check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    axis = _check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim}")
    return axis % ndim


def nm_mask(x: ArrayLike, n: int, m: int, *, axis: int = -2) -> Array:
    """Keeps the ``n`` largest magnitudes in every group of ``m`` consecutive entries.

    Groups run along ``axis``: entries ``[g·m, (g+1)·m)`` of that axis, for every position of
    the other axes. The default ``axis=-2`` is the input-feature axis of a Flax ``(in, out)``
    dense kernel and of a ``(h, w, in, out)`` convolution kernel, which is the axis that sparse
    tensor cores (2:4) and tfmot's ``sparsity_m_by_n`` group along. No sparsity argument: the
    pattern fixes it at ``1 - n/m``.

    * **Ties** are broken deterministically: among equal magnitudes the lower index along
      ``axis`` is kept first, so every full group keeps exactly ``n`` entries (tfmot's
      ``top_k`` does the same). NaN ranks as the largest magnitude.
    * **A partial last group** (the axis length is not a multiple of ``m``) keeps
      ``min(n, its size)`` entries, as tfmot's zero padding does.
    * **Migrating from tfmot**: ``sparsity_m_by_n=(a, b)`` prunes ``a`` of every ``b`` weights
      (``a`` counts the pruned entries, not the kept ones), so it is ``nm_mask(x, b - a, b)``
      here; ``(2, 4)`` is ``2:4`` either way, but ``(1, 4)`` keeps 3 of 4.

    Args:
      x: float array of rank >= 1.
      n: entries kept per group, ``1 <= n <= m``.
      m: group size, ``>= 1``.
      axis: the axis the groups run along (keyword-only).

    Returns:
      A bool array of ``x``'s shape, ``True`` where the entry is kept.

    Raises:
      TypeError: if ``x`` is not a float array, or ``n``, ``m`` or ``axis`` is not an int.
      ValueError: if ``n < 1``, ``m < 1``, ``n > m``, ``x`` is a scalar or ``axis`` is out of
        range.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.1, 3.0], [-2.0, 0.0], [0.5, 1.0], [1.0, 1.0]])
      >>> nm_mask(x, 2, 4).astype(int).tolist()       # 2:4 along the rows (axis -2)
      [[0, 1], [1, 0], [0, 1], [1, 0]]
    """
    n, m = check_nm(n, m)
    x = _as_float_array(x)
    if x.ndim == 0:
        raise ValueError("nm_mask needs an array of rank >= 1, got a scalar")
    axis = _check_axis(axis, x.ndim)
    if x.size == 0 or n == m:
        return jnp.ones(x.shape, bool)
    return _nm_mask(x, n, m, axis)


# Groups up to this size rank their entries by pairwise comparisons (m per entry); larger ones
# take the n-th largest key with lax.top_k.
_NM_COMPARE_MAX = 32


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_mask(x: Array, n: int, m: int, axis: int) -> Array:
    keys = jnp.moveaxis(radix_select.magnitude_keys(x), axis, -1)
    length = keys.shape[-1]
    groups = -(-length // m)
    # Padding keys are 0 (the key of 0.0) and sit after every real entry of the last group,
    # so the lower-index-first tie rule never keeps one in place of a real entry.
    keys = jnp.pad(keys, [(0, 0)] * (keys.ndim - 1) + [(0, groups * m - length)])
    keys = keys.reshape(*keys.shape[:-1], groups, m)
    if m <= _NM_COMPARE_MAX:
        # Comparisons within each group, which XLA partitions without moving data (lax.top_k
        # on a sharded array gathers it).
        keep = radix_select.top_n_in_groups(keys, n)
    else:
        nth = lax.top_k(keys, n)[0][..., n - 1 : n]  # the n-th largest key of each group
        above = keys > nth
        tied = keys == nth
        # Of the entries tied at the n-th key, keep the first (n - #above) by index.
        room = n - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
        keep = above | (tied & (jnp.cumsum(tied, axis=-1, dtype=jnp.int32) <= room))
    keep = keep.reshape(*keep.shape[:-2], groups * m)[..., :length]
    return jnp.moveaxis(keep, -1, axis)


# ----- units -----


def unit_norms(x: ArrayLike, *, axis: int = -1) -> Array:
    """The L2 norm of every slice of ``x`` along ``axis`` (float32; float64 for float64).

    The scores :func:`unit_mask` ranks: ``sqrt(sum(x**2))`` over every axis but ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> unit_norms(jnp.array([[3.0, 1.0], [4.0, 0.0]])).tolist()
      [5.0, 1.0]
    """
    x = _as_float_array(x)
    if x.ndim == 0:
        raise ValueError("unit masks need an array of rank >= 1, got a scalar")
    axis = _check_axis(axis, x.ndim)
    return _pool_units(jnp.abs(x), axis)


def _pool_units(scores: Array, axis: int) -> Array:
    """The L2 norm of non-negative ``scores`` over every axis but ``axis`` (float32/float64)."""
    a = scores.astype(_score_dtype(scores.dtype))
    others = tuple(i for i in range(scores.ndim) if i != axis)
    return jnp.sqrt(jnp.sum(a * a, axis=others))


def unit_threshold(x: ArrayLike, sparsity: ArrayLike, *, axis: int = -1) -> tuple[Array, Array]:
    """The unit mask of ``x`` and its threshold (the rule of :func:`unit_mask`).

    Args:
      x: float array of rank >= 1.
      sparsity: fraction of units to prune, in ``[0, 1]``; may be traced.
      axis: the axis that indexes the units (keyword-only).

    Returns:
      ``(mask, threshold)``: the bool mask of ``x``'s shape, and the k-th largest unit norm
      cast to ``x``'s dtype. An empty ``x`` gives an all-``True`` mask and a zero threshold.

    Raises:
      TypeError, ValueError: as :func:`unit_mask`.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(unit_threshold(jnp.array([[3.0, 1.0], [4.0, 0.0]]), 0.5)[1])   # norms 5 and 1
      5.0
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    x = _as_float_array(x)
    if x.ndim == 0:
        raise ValueError("unit masks need an array of rank >= 1, got a scalar")
    axis = _check_axis(axis, x.ndim)
    if x.size == 0:
        return jnp.ones(x.shape, bool), jnp.zeros((), x.dtype)
    return _unit_select(jnp.abs(x), sparsity, axis, x.dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _unit_select(scores: Array, sparsity: ArrayLike, axis: int, dtype: Any) -> tuple[Array, Array]:
    norms = _pool_units(scores, axis)
    keys = radix_select.magnitude_keys(norms)
    kth = radix_select.kth_largest_key([keys], radix_select.kept_count(norms.size, sparsity))
    index: list[Any] = [None] * scores.ndim
    index[axis] = slice(None)
    mask = jnp.broadcast_to((keys >= kth)[tuple(index)], scores.shape)
    return mask, radix_select.key_to_magnitude(kth, dtype)


def unit_mask(x: ArrayLike, sparsity: ArrayLike, *, axis: int = -1) -> Array:
    r"""Prunes whole units: the slices of ``x`` along ``axis`` with the smallest L2 norm.

    For a Flax ``(in, out)`` kernel and ``axis=-1`` the units are the output neurons, the
    columns ``x[:, j]``; for a ``(h, w, in, out)`` convolution kernel they are the output
    channels. With ``U`` units of norms :math:`\nu_j = \|x_{\dots, j}\|_2` (computed in
    float32), tfmot's magnitude rule is applied to the norms:

    .. math::

        k = \max(\mathrm{round\_half\_to\_even}(U (1 - s)), 1), \qquad
        t = k\text{-th largest } \nu, \qquad \text{unit } j \text{ kept} \iff \nu_j \ge t

    so units tied at the threshold are all kept and at least one unit survives. (The
    Stack Overflow ``unit_pruning`` recipe that TensorFlow users know prunes exactly
    ``round(U·s)`` columns instead, breaking ties by index.)

    Args:
      x: float array of rank >= 1.
      sparsity: fraction of units to prune, in ``[0, 1]``; may be traced.
      axis: the axis that indexes the units (keyword-only).

    Returns:
      A bool array of ``x``'s shape, ``True`` where the entry is kept; constant along every
      axis but ``axis``.

    Raises:
      TypeError: if ``x`` is not a float array or ``axis`` is not an int.
      ValueError: for a concrete sparsity outside ``[0, 1]``, a scalar ``x`` or an
        out-of-range ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[3.0, 0.1, -1.0], [4.0, 0.2, 1.0]])   # column norms 5, 0.22, 1.41
      >>> unit_mask(x, 0.34).astype(int).tolist()
      [[1, 0, 1], [1, 0, 1]]
    """
    return unit_threshold(x, sparsity, axis=axis)[0]


# ----- structure descriptions (static, hashable) -----
#
# A structure groups and pools scores; it never decides what a score is. Each one has
# ``from_scores(scores, sparsity) -> (mask, threshold)`` for elementwise non-negative scores of
# the leaf's shape (|w| for magnitude pruning, |w·g| for saliency, ...), and
# ``__call__(x, sparsity)``, the magnitude rule: ``from_scores(|x|, sparsity)`` with the
# threshold in ``x``'s dtype.


def _check_scores(scores: ArrayLike) -> Array:
    return _as_float_array(scores, "scores")


@dataclasses.dataclass(frozen=True)
class BlockSparsity:
    """Block structure for a pruning transformation: ``block_shape`` tiles, pooled by ``pooling``.

    Hashable and validated on construction, so it can be a static argument. Calling it gives
    ``(mask, threshold)`` like :func:`jaxprune.magnitude_mask`'s threshold variant.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = BlockSparsity((1, 2), "max")
      >>> mask, thr = s(jnp.array([[1.0, 2.0, 0.5, 0.1]]), 0.5)
      >>> mask.astype(int).tolist(), float(thr)
      ([[1, 1, 0, 0]], 2.0)
    """

    block_shape: tuple[int, int]
    pooling: str = "AVG"

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_shape", check_block_shape(self.block_shape))
        object.__setattr__(self, "pooling", check_pooling(self.pooling))

    def __call__(self, x: ArrayLike, sparsity: ArrayLike) -> tuple[Array, Array]:
        return block_threshold(x, sparsity, self.block_shape, self.pooling)

    def from_scores(self, scores: ArrayLike, sparsity: ArrayLike) -> tuple[Array, Array]:
        """``(mask, threshold)`` from elementwise non-negative ``scores`` pooled per block."""
        scores = _check_scores(scores)
        check_sparsity(sparsity, "sparsity", allow_one=True)
        matrix_shape(scores.shape)
        if scores.size == 0:
            return jnp.ones(scores.shape, bool), jnp.zeros((), scores.dtype)
        return _block_select(scores, sparsity, self.block_shape, self.pooling, scores.dtype)


@dataclasses.dataclass(frozen=True)
class NMSparsity:
    """N:M structure: ``n`` kept of every ``m`` consecutive entries along ``axis``.

    Calling it with ``(x, sparsity)`` ignores ``sparsity`` (the pattern fixes it) and gives
    ``(mask, threshold)`` with a zero threshold, so a transformation can treat every
    structure alike.

    Examples:
      >>> import jax.numpy as jnp
      >>> mask, _ = NMSparsity(1, 2, axis=-1)(jnp.array([[1.0, -2.0, 3.0, 0.0]]), None)
      >>> mask.astype(int).tolist()
      [[0, 1, 1, 0]]
    """

    n: int
    m: int
    axis: int = -2

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)
        _check_int(self.axis, "axis")

    def __call__(self, x: ArrayLike, sparsity: ArrayLike = None) -> tuple[Array, Array]:
        del sparsity
        mask = nm_mask(x, self.n, self.m, axis=self.axis)
        return mask, jnp.zeros((), jnp.asarray(x).dtype)

    def from_scores(self, scores: ArrayLike, sparsity: ArrayLike = None) -> tuple[Array, Array]:
        """``(mask, 0)``: the ``n`` largest ``scores`` of every group (``sparsity`` ignored)."""
        del sparsity
        scores = _check_scores(scores)
        # nm_mask ranks |x|, and |scores| = scores: the same rule and tie-breaking.
        return nm_mask(scores, self.n, self.m, axis=self.axis), jnp.zeros((), scores.dtype)


@dataclasses.dataclass(frozen=True)
class UnitSparsity:
    """Unit structure: whole slices along ``axis`` ranked by L2 norm.

    Examples:
      >>> import jax.numpy as jnp
      >>> mask, thr = UnitSparsity()(jnp.array([[3.0, 0.0], [4.0, 1.0]]), 0.5)
      >>> mask.astype(int).tolist(), float(thr)
      ([[1, 0], [1, 0]], 5.0)
    """

    axis: int = -1

    def __post_init__(self) -> None:
        _check_int(self.axis, "axis")

    def __call__(self, x: ArrayLike, sparsity: ArrayLike) -> tuple[Array, Array]:
        return unit_threshold(x, sparsity, axis=self.axis)

    def from_scores(self, scores: ArrayLike, sparsity: ArrayLike) -> tuple[Array, Array]:
        """``(mask, threshold)`` from elementwise non-negative ``scores``, L2-pooled per unit."""
        scores = _check_scores(scores)
        check_sparsity(sparsity, "sparsity", allow_one=True)
        if scores.ndim == 0:
            raise ValueError("unit masks need scores of rank >= 1, got a scalar")
        axis = _check_axis(self.axis, scores.ndim)
        if scores.size == 0:
            return jnp.ones(scores.shape, bool), jnp.zeros((), scores.dtype)
        return _unit_select(scores, sparsity, axis, scores.dtype)


__all__ = [
    "BlockSparsity",
    "NMSparsity",
    "UnitSparsity",
    "block_mask",
    "block_scores",
    "block_threshold",
    "expand_block_mask",
    "nm_mask",
    "pool_blocks",
    "unit_mask",
    "unit_threshold",
]
