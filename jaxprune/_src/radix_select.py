"""Exact selection of the k-th largest magnitude in linear time.

Every magnitude criterion in jaxprune ends in the same question: what is the k-th largest of
these scores? A full sort answers it in ``O(n log n)`` and, on CPU, costs hundreds of elementwise
passes over the data. Here the question is answered exactly by a radix select over the bit
patterns of the magnitudes:

* ``|x|`` of an IEEE float, read as an unsigned integer of the same width, is ordered like the
  float itself (zeros, subnormals, normals, ``inf``), so ranking the integers ranks the floats.
  NaN is mapped to the largest key, above ``+inf``: it ranks as the largest magnitude and is
  therefore kept by a magnitude mask (a diverged weight stays visible instead of being zeroed).
  ``-0.0`` and ``+0.0`` are the same key.
* float16 and bfloat16 are widened to float32 first (exact and order preserving); float64 uses
  64-bit keys.
* The keys are computed on the fly from the weights (on CPU in chunks of 2**18 entries, so no
  n-sized temporary exists), and the key is found 16 bits at a time, most significant digit
  first: a 65536-bin histogram of the digit among the keys that share the prefix found so far,
  then a cumulative sum from the top picks the digit that holds the k-th largest. Two passes
  for 32-bit keys, four for 64-bit keys, each linear in ``n``, with static shapes, so the
  routine runs under ``jit`` on CPU, GPU and TPU.

Many leaves, each ranked on its own (per-layer pruning), share one selection
(:func:`kth_largest_keys`): rows of one histogram of shape ``(rows, bins)``, narrower digits when
there are many small rows, and one digit pick for all rows per pass, so a model with hundreds of
pruned leaves does not compile hundreds of selections. With three or more passes the passes are
one ``fori_loop`` (the shift and the prefix traced), so their kernels are compiled once.

On GPU and TPU, where scatter-adds into many bins may serialise, the keys are counted without a
scatter: per pass, ``#{keys >= c}`` for the 15 candidates ``c`` of the next 4-bit digit (eight
passes for 32-bit keys), with comparisons and sums only. ``selection_method`` forces either
method (tests run both on CPU).

The result is bit for bit the value a full descending sort would put at position ``k - 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxprune._src.base import Array, ArrayLike


def key_dtype(dtypes: Sequence[jnp.dtype]) -> jnp.dtype:
    """The unsigned key type able to rank every float dtype in ``dtypes`` together."""
    return (
        jnp.dtype(jnp.uint64)
        if any(jnp.dtype(d).itemsize > 4 for d in dtypes)
        else jnp.dtype(jnp.uint32)
    )


def float_for(ktype: jnp.dtype) -> jnp.dtype:
    """The float type whose bits the keys of ``ktype`` are."""
    return jnp.dtype(jnp.float64) if ktype == jnp.uint64 else jnp.dtype(jnp.float32)


def _nan_key(ktype: jnp.dtype) -> Array:
    # The largest key whose sign bit is clear: above +inf (exponent all ones, mantissa 0).
    return jnp.asarray((1 << (8 * ktype.itemsize - 1)) - 1, ktype)


def magnitude_keys(x: ArrayLike, ktype: jnp.dtype | None = None) -> Array:
    """Unsigned integer keys ordered as ``|x|``, with every NaN mapped to the largest key."""
    x = jnp.asarray(x)
    ktype = key_dtype([x.dtype]) if ktype is None else jnp.dtype(ktype)
    a = jnp.abs(x.astype(float_for(ktype)))
    bits = lax.bitcast_convert_type(a, ktype)
    return jnp.where(jnp.isnan(a), _nan_key(ktype), bits)


def key_to_magnitude(key: Array, dtype: jnp.dtype) -> Array:
    """The magnitude a key stands for, in ``dtype`` (NaN for the NaN key)."""
    ktype = key.dtype
    value = lax.bitcast_convert_type(key, float_for(ktype))
    value = jnp.where(key == _nan_key(ktype), jnp.nan, value)
    return value.astype(dtype)


class KeySource(NamedTuple):
    """Keys computed on the fly: ``keys(*(a.reshape(-1)[i:j] for a in arrays))``.

    The arrays share one shape; ``keys`` maps equal-shaped slices of them to unsigned keys
    elementwise. Keys are produced chunk by chunk and never stored whole, so ranking ``w + u``
    costs no copy of ``w + u``.
    """

    arrays: tuple[Array, ...]
    keys: Callable[..., Array]


def at_least(source: KeySource, kth: ArrayLike) -> Array:
    """``keys >= kth`` for every key of ``source``, a bool array of its arrays' shape.

    On one CPU device the mask is computed chunk by chunk from flattened views of the arrays,
    as the counting passes read them: when an array is itself computed in the program (the
    updates ``u`` of ``w + u``), XLA then stores it once, flat, instead of once flat for the
    passes and once in its own shape for the mask.
    """
    arrays = source.arrays
    shape = jnp.shape(arrays[0])
    size = int(np.prod(shape))
    kth = jnp.asarray(kth)
    if size <= _CPU_CHUNK or jax.device_count() > 1 or any(_replicated(a) for a in arrays):
        return source.keys(*arrays) >= kth

    def chunked(*arrays):
        last = -(-size // _CPU_CHUNK) - 1

        def chunk(start):
            return source.keys(*_flat_slices(arrays, start, _CPU_CHUNK)) >= kth

        def body(i, mask):
            # The last chunk ends at the end of the arrays, overlapping the one before it,
            # whose entries get the same mask again. With no tail written after the loop, the
            # loop's buffer is the output: no copy of the mask is made.
            start = jnp.where(i == last, size - _CPU_CHUNK, i * _CPU_CHUNK)
            return lax.dynamic_update_slice_in_dim(mask, chunk(start), start, 0)

        # The mask starts as its first chunk, padded: a buffer of its own. Zeros would do, but
        # XLA merges the zeros of several masks into one array and copies it into each.
        first = jnp.pad(chunk(jnp.int32(0)), (0, size - _CPU_CHUNK))
        return lax.fori_loop(1, last + 1, body, first).reshape(shape)

    return lax.platform_dependent(*arrays, cpu=chunked, default=lambda *a: source.keys(*a) >= kth)


def magnitude_source(x: Array, ktype: jnp.dtype, update: Array | None = None) -> KeySource:
    """Keys of ``|x|`` (or of ``|x + update|``, added in x's dtype as optax does)."""
    if update is None:
        return KeySource((x,), lambda a: magnitude_keys(a, ktype))
    return KeySource((x, update), lambda a, b: magnitude_keys(added(a, b), ktype))


def added(a: Array, b: Array) -> Array:
    """``a + b`` rounded to ``a``'s dtype, as ``optax.apply_updates`` stores it.

    XLA may keep a narrow float sum in float32 (excess precision) when it is not stored, so
    the rounding is forced: ranking the unrounded sum could keep one of two weights that the
    step stores as equal.
    """
    out = jnp.asarray(a + b).astype(a.dtype)
    if jnp.issubdtype(out.dtype, jnp.floating) and out.dtype.itemsize < 4:
        info = jnp.finfo(out.dtype)
        out = lax.reduce_precision(out, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    return out


class Part(NamedTuple):
    """Keys that take part in the selection of one or several rows.

    With ``stacked=False`` every key of ``source`` belongs to row ``row``; with ``stacked=True``
    the source's arrays have a leading axis and slice ``r`` of it belongs to row ``row + r``.
    Several parts may feed one row (their keys are ranked together).
    """

    source: KeySource
    row: int
    stacked: bool = False

    @property
    def rows(self) -> int:
        return self.source.arrays[0].shape[0] if self.stacked else 1

    @property
    def size(self) -> int:
        return self.source.arrays[0].size


# ----------------------------------------------------------------------------- the methods

METHODS = ("auto", "histogram", "compare")
_method = "auto"


@contextlib.contextmanager
def selection_method(method: str) -> Iterator[None]:
    """Forces a counting method for the selections traced inside the ``with`` block.

    ``"histogram"`` counts the digits of the keys with scatter-adds into histograms;
    ``"compare"`` counts keys against a small vector of candidate keys with comparisons and
    sums (no scatter). ``"auto"`` (the default) takes the histogram on CPU and comparisons on
    GPU and TPU, where scatter-adds into many bins may serialise. The choice is read when a
    function is traced: a function already compiled keeps the method it was traced with.
    """
    global _method
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    before, _method = _method, method
    try:
        yield
    finally:
        _method = before


def _resolve(method: str | None) -> str:
    method = _method if method is None else method
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _digits(nbits: int, width: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of each digit of an ``nbits`` key, most significant first."""
    out, top = [], nbits
    while top > 0:
        w = min(width, top)
        out.append((top - w, w))
        top -= w
    return out


def _row_shape(part: Part, ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-row value against keys of ``ndim`` dimensions."""
    return (part.rows,) + (1,) * (ndim - 1) if part.stacked else ()


def _rows_of(part: Part, values: Array) -> Array:
    """The rows of ``values`` (indexed by row on axis 0) that ``part`` feeds."""
    if part.stacked:
        return values[part.row : part.row + part.rows]
    return values[part.row]


# ------------------------------------------------------------------- histogram (scatter-add)

# On CPU the histogram passes stream over chunks of this many entries: XLA's CPU runtime maps
# fresh pages for every temporary buffer on every call, and page faults on an n-sized key or
# index array cost more than the histogram itself. Other backends take each leaf whole.
_CPU_CHUNK = 1 << 18


def _flat_slices(arrays: Sequence[Array], start: Array, length: int) -> list[Array]:
    """Entries ``start .. start + length`` of each array of ``arrays``, flattened.

    XLA's CPU compiler computes bfloat16 reshapes and slices in float32 (float normalization):
    it widens the whole operand first, and in a loop the widened copy, being the same in every
    iteration, is hoisted out of the loop and kept through it (4 bytes per entry). A barrier
    that ties the arrays to ``start`` makes the operand differ from one iteration to the next,
    so the widening stays in the slice's own kernel, which reads only the slice.
    """
    if any(jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize < 4 for a in arrays):
        arrays, start = lax.optimization_barrier((tuple(arrays), start))
    return [lax.dynamic_slice_in_dim(a.reshape(-1), start, length) for a in arrays]


def _replicated(x: Array) -> NamedSharding | None:
    """A replicated sharding on ``x``'s mesh when that mesh has explicit axes, else ``None``.

    Under explicit sharding (the default of ``jax.make_mesh`` in recent JAX) a scatter from
    sharded keys into the replicated histogram must name its output sharding.
    """
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "explicit_axes", ()):
        return None
    return NamedSharding(mesh, PartitionSpec())


# Copies of each histogram that neighbouring keys count into (a power of two).
_LANES = 2


def _add_to_hist(
    hist: Array, keys: Array, part: Part, shift: int, width: int, prefix: Array | None
) -> Array:
    """Adds the digits of ``keys`` to ``hist``, a flat ``(rows, 2**width)`` histogram."""
    nbins = 1 << width
    digit = ((keys >> shift) & (nbins - 1)).astype(jnp.int32)
    if part.stacked:
        row = lax.broadcasted_iota(jnp.int32, keys.shape, 0) + part.row
    else:
        row = part.row
    # Neighbouring keys count into different copies of the histogram (_LANES of them, summed
    # after the pass): many equal keys in a row (the zeros of pruned weights, all in one bin)
    # would otherwise wait on each other's read-modify-write of one counter.
    lane = 0 if keys.ndim == 0 else lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
    lane = lane & (_LANES - 1)
    index = (row * nbins + digit) * _LANES + lane
    out_sharding = _replicated(keys)
    if prefix is None:
        return hist.at[index].add(1, mode="promise_in_bounds", out_sharding=out_sharding)
    # Only keys that share the digits found so far for their row take part; the others go to
    # an out-of-range bin and are dropped.
    want = _rows_of(part, prefix).reshape(_row_shape(part, keys.ndim))
    match = (keys >> (shift + width)) == want
    index = jnp.where(match, index, hist.size)
    return hist.at[index].add(1, mode="drop", out_sharding=out_sharding)


def _hist_pass(
    hist: Array,
    part: Part,
    arrays: Sequence[Array],
    shift: int,
    width: int,
    prefix: Array | None,
    chunk: int | None,
) -> Array:
    size = part.size
    keys_fn = part.source.keys
    if part.stacked or chunk is None or size <= chunk:
        # Keys keep the arrays' own shape: flattening an array sharded along an inner axis
        # would gather it onto every device.
        return _add_to_hist(hist, keys_fn(*arrays), part, shift, width, prefix)
    full, tail = divmod(size, chunk)

    def body(i, h):
        pieces = _flat_slices(arrays, i * chunk, chunk)
        return _add_to_hist(h, keys_fn(*pieces), part, shift, width, prefix)

    hist = lax.fori_loop(0, full, body, hist)
    if tail:
        rest = keys_fn(*_flat_slices(arrays, jnp.int32(full * chunk), tail))
        hist = _add_to_hist(hist, rest, part, shift, width, prefix)
    return hist


def _count_from_top(counts: Array, k: Array) -> tuple[Array, Array]:
    """Per row: the largest ``i`` with ``sum(counts[i:]) >= k``, and ``sum(counts[i + 1:])``."""
    at_least = jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]  # non-increasing along a row
    i = jnp.maximum(jnp.sum(at_least >= k[:, None], axis=1, dtype=jnp.int32) - 1, 0)
    at_i = jnp.take_along_axis(at_least, i[:, None], axis=1)[:, 0]
    count_i = jnp.take_along_axis(counts, i[:, None], axis=1)[:, 0]
    return i, at_i - count_i


def _pick_digits(hist: Array, k: Array, width: int) -> tuple[Array, Array]:
    """Per row, the digit holding the k-th largest candidate and how many lie above it.

    Two levels (groups of bins, then the bins of one group): a cumulative sum over 65536 bins
    costs about as much as a histogram pass over a million-entry leaf.
    """
    lo = 1 << (width - width // 2)
    grid = hist.reshape(k.shape[0], -1, lo)
    group, above_group = _count_from_top(grid.sum(axis=2), k)
    cells = jnp.take_along_axis(grid, group[:, None, None], axis=1)[:, 0]
    cell, above_cell = _count_from_top(cells, k - above_group)
    return group * lo + cell, above_group + above_cell


def _hist_width(nrows: int, total: int) -> int:
    """Digit width for ``nrows`` rows over ``total`` keys: the histograms stay below ~``total``.

    One row takes 16-bit digits (two passes for 32-bit keys); many small rows take narrower
    digits (more passes), so that zeroing and summing ``nrows`` histograms never costs more
    than a pass over the keys.
    """
    for width in (16, 11, 8):
        if nrows << width <= max(total, 1 << 16):
            return width
    return 8


def _count_digits(
    parts: Sequence[Part],
    arrays: Sequence[Array],
    nrows: int,
    shift: ArrayLike,
    width: int,
    prefix: Array | None,
    chunk: int | None,
) -> Array:
    """One pass: the flat ``(rows, 2**width)`` histogram of the digit at ``shift`` of the keys
    that share ``prefix`` (all keys for ``None``), over every part."""
    hist = jnp.zeros(((nrows << width) * _LANES,), jnp.int32)
    it = iter(arrays)
    for part in parts:
        own = [next(it) for _ in part.source.arrays]
        hist = _hist_pass(hist, part, own, shift, width, prefix, chunk)
    return hist.reshape(-1, _LANES).sum(axis=1, dtype=jnp.int32)


def _histogram_select(
    parts: Sequence[Part], k: Array, ktype: jnp.dtype, chunk: int | None, counts: bool, *arrays
):
    nrows = k.shape[0]
    width = _hist_width(nrows, sum(p.size for p in parts))
    nbits = 8 * ktype.itemsize
    if -(-nbits // width) >= 3:
        return _looped_select(parts, k, ktype, chunk, counts, width, arrays)
    prefix = None
    for shift, w in _digits(nbits, width):
        hist = _count_digits(parts, arrays, nrows, shift, w, prefix, chunk)
        digit, above = _pick_digits(hist, k, w)
        k = k - above
        prefix = digit.astype(ktype) if prefix is None else (prefix << w) | digit.astype(ktype)
    if not counts:
        return prefix
    # The last histogram counted the keys equal to the k-th in its bin, and what is left of k
    # is how many of those a top-k keeps: both come free with the selection.
    ties = jnp.take_along_axis(hist.reshape(nrows, -1), digit[:, None], axis=1)[:, 0]
    return prefix, k, ties


def _looped_select(
    parts: Sequence[Part],
    k: Array,
    ktype: jnp.dtype,
    chunk: int | None,
    counts: bool,
    width: int,
    arrays: Sequence[Array],
):
    """:func:`_histogram_select` with its passes in a ``fori_loop``: one compiled pass.

    Every pass counts ``width``-bit digits (the key read as ``passes * width`` bits, the top
    digit narrower), so the passes differ only in traced values (the shift, the prefix) and
    XLA compiles their kernels once instead of once per pass: with many small rows (narrow
    digits, three or four passes) the selection is the bulk of a pruned step's compile time.
    """
    nrows = k.shape[0]
    passes = -(-8 * ktype.itemsize // width)
    top = passes * width

    def one_pass(p, carry):
        prefix, k, _, _ = carry
        shift = (top - (p + 1) * width).astype(ktype)
        hist = _count_digits(parts, arrays, nrows, shift, width, prefix, chunk)
        digit, above = _pick_digits(hist, k, width)
        prefix = (prefix << width) | digit.astype(ktype)
        return prefix, (k - above).astype(jnp.int32), hist, digit.astype(jnp.int32)

    # The prefix of no digits is 0, and every key shifted right by the whole key width is 0,
    # so the first pass counts every key, as it must.
    init = (
        jnp.zeros((nrows,), ktype),
        k.astype(jnp.int32),
        jnp.zeros((nrows << width,), jnp.int32),
        jnp.zeros((nrows,), jnp.int32),
    )
    prefix, k, hist, digit = lax.fori_loop(0, passes, one_pass, init)
    if not counts:
        return prefix
    ties = jnp.take_along_axis(hist.reshape(nrows, -1), digit[:, None], axis=1)[:, 0]
    return prefix, k, ties


def _explicit_counts(
    parts: Sequence[Part], k: Array, kth: Array, *arrays
) -> tuple[Array, Array, Array]:
    """``(kth, need, ties)`` by counting the keys against ``kth`` (one pass over them)."""
    nrows = k.shape[0]
    greater = jnp.zeros((nrows,), jnp.int32)
    ties = jnp.zeros((nrows,), jnp.int32)
    it = iter(arrays)
    for part in parts:
        own = [next(it) for _ in part.source.arrays]
        keys = part.source.keys(*own)
        t = _rows_of(part, kth).reshape(_row_shape(part, keys.ndim))
        axes = tuple(range(1 if part.stacked else 0, keys.ndim))
        g = jnp.sum(keys > t, axis=axes, dtype=jnp.int32).reshape(-1)
        e = jnp.sum(keys == t, axis=axes, dtype=jnp.int32).reshape(-1)
        pad = (part.row, nrows - part.row - part.rows)
        greater, ties = greater + jnp.pad(g, pad), ties + jnp.pad(e, pad)
    return kth, k - greater, ties


# --------------------------------------------------------------- comparisons (scatter-free)

# Digit width of the comparison method: 2**4 - 1 = 15 candidates per pass, 8 passes for 32-bit
# keys. Each pass reads the keys once and compares each with every candidate, so the work is
# (2**w - 1) * 32 / w comparisons per key: 120 at w = 4 against 1020 at w = 8.
_COMPARE_BITS = 4


def _count_at_least(keys: Array, part: Part, cands: Array) -> Array:
    """``(rows, C)``: per row of ``part``, how many of its keys are ``>=`` each candidate."""
    c = _rows_of(part, cands)  # (rows, C) or (C,)
    c = c.reshape(_row_shape(part, keys.ndim) + (cands.shape[1],))
    if not part.stacked:
        c = c.reshape((1,) * keys.ndim + (cands.shape[1],))
    ge = keys[..., None] >= c
    first = 1 if part.stacked else 0
    counts = jnp.sum(ge, axis=tuple(range(first, keys.ndim)), dtype=jnp.int32)
    return counts if part.stacked else counts[None]


def _compare_select(parts: Sequence[Part], k: Array, ktype: jnp.dtype, width: int, *arrays):
    # The k-th largest key is the largest t with #{keys >= t} >= k. It is found digit by digit:
    # with the higher digits known (prefix), the digit is the largest d whose candidate
    # prefix | d << shift still has at least k keys at or above it. Counts are over all keys,
    # so k never changes and no key is filtered by prefix.
    nrows = k.shape[0]
    prefix = jnp.zeros((nrows,), ktype)
    for shift, w in _digits(8 * ktype.itemsize, width):
        steps = jnp.arange(1, 1 << w, dtype=ktype) << shift
        cands = prefix[:, None] | steps[None, :]  # (rows, 2**w - 1)
        counts = jnp.zeros(cands.shape, jnp.int32)
        it = iter(arrays)
        for part in parts:
            own = [next(it) for _ in part.source.arrays]
            c = _count_at_least(part.source.keys(*own), part, cands)
            pad = ((part.row, nrows - part.row - part.rows), (0, 0))
            counts = counts + jnp.pad(c, pad)
        digit = jnp.sum(counts >= k[:, None], axis=1, dtype=jnp.int32)  # counts non-increasing
        prefix = prefix | (digit.astype(ktype) << shift)
    return prefix


# ------------------------------------------------------------------------------- the entry


def _key_dtype_of(parts: Sequence[Part]) -> jnp.dtype:
    ktypes = {
        jax.eval_shape(
            p.source.keys, *[jax.ShapeDtypeStruct((1,), a.dtype) for a in p.source.arrays]
        ).dtype
        for p in parts
    }
    if len(ktypes) != 1 or not jnp.issubdtype(next(iter(ktypes)), jnp.unsignedinteger):
        raise TypeError(f"all keys must share one unsigned dtype, got {sorted(map(str, ktypes))}")
    return jnp.dtype(next(iter(ktypes)))


def top_n_in_groups(keys: Array, n: int) -> Array:
    """``True`` at the ``n`` largest keys of every group along the last axis of ``keys``.

    Equal keys rank by index, the lower index first. An entry's rank is the number of entries
    of its group with a larger key, plus the equal ones at a lower index; the ``n`` of rank
    below ``n`` are kept. Elementwise comparisons only (``m`` per entry for groups of ``m``):
    for small groups, where a sort or ``lax.top_k`` costs far more, and where XLA partitions
    the comparisons over devices without moving a sharded array.
    """
    m = keys.shape[-1]
    other, this = keys[..., None, :], keys[..., :, None]
    before = np.arange(m)[None, :] < np.arange(m)[:, None]  # [i, j]: j < i
    before = jnp.asarray(before).reshape((1,) * (keys.ndim - 1) + (m, m))
    ahead = (other > this) | ((other == this) & before)
    return jnp.sum(ahead, axis=-1, dtype=jnp.int32) < n


def kth_largest_keys(
    parts: Sequence[Part], k: ArrayLike, *, method: str | None = None, counts: bool = False
) -> Array | tuple[Array, Array, Array]:
    """The exact ``k[r]``-th largest key (1-based) of each row ``r``, all rows at once.

    One selection serves every row: each counting pass makes one histogram (or one count
    vector) of shape ``(rows, bins)`` and picks the digits of all rows together, so the program
    does not grow with the number of rows beyond one counting step per :class:`Part`.

    Args:
      parts: the keys of every row (:class:`Part`); all of one unsigned key dtype.
      k: shape ``(rows,)`` ints, traced or concrete, ``1 <= k[r] <=`` the number of keys of row
        ``r``. Outside that range the row's result is not one of its keys.
      method: ``"histogram"``, ``"compare"`` or ``"auto"`` (histogram on CPU, comparisons on
        other platforms); default: the one :func:`selection_method` set, ``"auto"``.
      counts: also return, per row, ``need = k - #{keys > kth}`` (how many keys equal to the
        k-th a top-k keeps) and ``ties = #{keys == kth}``; the histogram method has them from
        its last pass, the comparison method counts them in one more pass.

    Returns:
      Shape ``(rows,)``, of the key dtype; with ``counts``, ``(kth, need, ties)`` (int32).
    """
    if not parts:
        raise ValueError("kth_largest_keys needs at least one part")
    method = _resolve(method)
    ktype = _key_dtype_of(parts)
    k = jnp.asarray(k, jnp.int32)
    nrows = k.shape[0] if k.ndim == 1 else -1
    covered = sorted((p.row, p.row + p.rows) for p in parts)
    if k.ndim != 1 or covered[0][0] != 0 or max(hi for _, hi in covered) != nrows:
        raise ValueError(
            f"k must have one entry per row and the parts must cover rows 0..{nrows - 1}; got k "
            f"of shape {k.shape} and rows {covered}"
        )
    arrays = [a for p in parts for a in p.source.arrays]

    def compare(*a):
        kth = _compare_select(parts, k, ktype, _COMPARE_BITS, *a)
        return _explicit_counts(parts, k, kth, *a) if counts else kth

    if method == "compare":
        return compare(*arrays)
    # Chunks are dynamic slices, which would gather an array sharded over several devices, so
    # they are used only where there is one device.
    single = jax.device_count() == 1 and all(_replicated(a) is None for a in arrays)
    cpu_chunk = _CPU_CHUNK if single else None
    if method == "histogram":
        return lax.platform_dependent(
            *arrays,
            cpu=lambda *a: _histogram_select(parts, k, ktype, cpu_chunk, counts, *a),
            default=lambda *a: _histogram_select(parts, k, ktype, None, counts, *a),
        )
    return lax.platform_dependent(
        *arrays,
        cpu=lambda *a: _histogram_select(parts, k, ktype, cpu_chunk, counts, *a),
        default=compare,
    )


def kth_largest_key(
    sources: Sequence[KeySource | Array],
    k: ArrayLike,
    *,
    method: str | None = None,
    counts: bool = False,
) -> Array | tuple[Array, Array, Array]:
    """The exact ``k``-th largest key (1-based) among all keys of all ``sources``.

    Args:
      sources: :class:`KeySource` s, or arrays of keys, of one unsigned key dtype, ranked
        together.
      k: traced or concrete int, ``1 <= k <= total size`` (:func:`kept_count` gives such a
        k). Outside that range the result is not a key of the input: clamp ``k`` first.
      method: as in :func:`kth_largest_keys`.
      counts: as in :func:`kth_largest_keys`.

    Returns:
      A scalar of the key dtype; with ``counts``, ``(kth, need, ties)`` scalars.
    """
    if not sources:
        raise ValueError("kth_largest_key needs at least one source of keys")
    sources = [s if isinstance(s, KeySource) else KeySource((s,), lambda a: a) for s in sources]
    k = jnp.asarray(k, jnp.int32).reshape(1)
    out = kth_largest_keys([Part(s, 0) for s in sources], k, method=method, counts=counts)
    return tuple(x[0] for x in out) if counts else out[0]


def kept_count(size: int, sparsity: ArrayLike) -> Array:
    """How many entries a sparsity keeps, by tfmot's rule.

    ``k = max(round_half_to_even(float32(size) * (1 - sparsity)), 1)``, computed in float32 as
    TensorFlow does, and at most ``size``. A sparsity of 1 still keeps one entry. A NaN
    sparsity keeps every entry (``k = size``): a diverged schedule or a NaN computed in the
    step never prunes a whole layer.
    """
    if size >= 2**31:
        raise ValueError(
            f"cannot rank {size} entries together: at most 2**31 - 1 are supported (int32 counts)"
        )
    s = jnp.asarray(sparsity, jnp.float32)
    k = jnp.round(jnp.float32(size) * (jnp.float32(1.0) - s))  # jnp.round: half to even
    k = jnp.clip(k, 1.0, float(size))
    k = jnp.where(jnp.isnan(s), jnp.float32(size), k)
    return jnp.minimum(k.astype(jnp.int32), size)


def kept_counts(sizes: Sequence[int], sparsity: ArrayLike) -> Array:
    """:func:`kept_count` for several sizes at once (``sparsity``: a scalar or one per size)."""
    for size in sizes:
        if size >= 2**31:
            raise ValueError(
                f"cannot rank {size} entries together: at most 2**31 - 1 are supported (int32 "
                "counts)"
            )
    n = jnp.asarray(np.asarray(sizes, np.float32))
    s = jnp.asarray(sparsity, jnp.float32)
    k = jnp.round(n * (jnp.float32(1.0) - s))  # the same float32 operations as kept_count
    k = jnp.clip(k, 1.0, n)
    k = jnp.where(jnp.isnan(s), n, k)
    return jnp.minimum(k.astype(jnp.int32), jnp.asarray(np.asarray(sizes, np.int32)))
