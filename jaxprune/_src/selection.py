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

The result is bit for bit the value a full descending sort would put at position ``k - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxprune._src.base import Array, ArrayLike

_DIGIT_BITS = 16
_NUM_BINS = 1 << _DIGIT_BITS


def key_dtype(dtypes: Sequence[jnp.dtype]) -> jnp.dtype:
    """The unsigned key type able to rank every float dtype in ``dtypes`` together."""
    return (
        jnp.dtype(jnp.uint64)
        if any(jnp.dtype(d).itemsize > 4 for d in dtypes)
        else jnp.dtype(jnp.uint32)
    )


def _float_for(ktype: jnp.dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if ktype == jnp.uint64 else jnp.dtype(jnp.float32)


def _nan_key(ktype: jnp.dtype) -> Array:
    # The largest key whose sign bit is clear: above +inf (exponent all ones, mantissa 0).
    return jnp.asarray((1 << (8 * ktype.itemsize - 1)) - 1, ktype)


def magnitude_keys(x: ArrayLike, ktype: jnp.dtype | None = None) -> Array:
    """Unsigned integer keys ordered as ``|x|``, with every NaN mapped to the largest key."""
    x = jnp.asarray(x)
    ktype = key_dtype([x.dtype]) if ktype is None else jnp.dtype(ktype)
    a = jnp.abs(x.astype(_float_for(ktype)))
    bits = lax.bitcast_convert_type(a, ktype)
    return jnp.where(jnp.isnan(a), _nan_key(ktype), bits)


def key_to_magnitude(key: Array, dtype: jnp.dtype) -> Array:
    """The magnitude a key stands for, in ``dtype`` (NaN for the NaN key)."""
    ktype = key.dtype
    value = lax.bitcast_convert_type(key, _float_for(ktype))
    value = jnp.where(key == _nan_key(ktype), jnp.nan, value)
    return value.astype(dtype)


def _count_from_top(counts: Array, k: Array) -> tuple[Array, Array]:
    """The largest index ``i`` with ``sum(counts[i:]) >= k``, and ``sum(counts[i + 1:])``."""
    at_least = jnp.cumsum(counts[::-1])[::-1]  # non-increasing
    i = jnp.maximum(jnp.sum(at_least >= k) - 1, 0)
    return i, at_least[i] - counts[i]


def _pick_digit(hist: Array, k: Array) -> tuple[Array, Array]:
    """The digit holding the k-th largest candidate, and how many candidates lie above it.

    Two levels of 256 (rows, then the cells of one row): a cumulative sum over 65536 bins costs
    about as much as a histogram pass over a million-entry leaf.
    """
    side = 1 << (_DIGIT_BITS // 2)
    grid = hist.reshape(side, side)
    row, above_row = _count_from_top(grid.sum(axis=1), k)
    col, above_col = _count_from_top(grid[row], k - above_row)
    return row * side + col, above_row + above_col


class KeySource(NamedTuple):
    """Keys computed on the fly: ``keys(*(a.reshape(-1)[i:j] for a in arrays))``.

    The arrays share one size; ``keys`` maps equal-length flat slices of them to unsigned keys
    elementwise. Keys are produced chunk by chunk and never stored whole, so ranking ``w + u``
    costs no copy of ``w + u``.
    """

    arrays: tuple[Array, ...]
    keys: Callable[..., Array]


def magnitude_source(x: Array, ktype: jnp.dtype, update: Array | None = None) -> KeySource:
    """Keys of ``|x|`` (or of ``|x + update|``, added in x's dtype as optax does)."""
    if update is None:
        return KeySource((x,), lambda a: magnitude_keys(a, ktype))
    return KeySource(
        (x, update), lambda a, b: magnitude_keys(jnp.asarray(a + b).astype(a.dtype), ktype)
    )


# On CPU the histogram passes stream over chunks of this many entries: XLA's CPU runtime maps
# fresh pages for every temporary buffer on every call, and page faults on an n-sized key or
# index array cost more than the histogram itself. Other backends take each leaf whole.
_CPU_CHUNK = 1 << 18


def _replicated(x: Array) -> NamedSharding | None:
    """A replicated sharding on ``x``'s mesh when that mesh has explicit axes, else ``None``.

    Under explicit sharding (the default of ``jax.make_mesh`` in recent JAX) a scatter from
    sharded keys into the replicated histogram must name its output sharding.
    """
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "explicit_axes", ()):
        return None
    return NamedSharding(mesh, PartitionSpec())


def _add_to_hist(hist: Array, keys: Array, shift: int, prefix: Array | None) -> Array:
    digit = (keys >> shift) & (_NUM_BINS - 1)
    out_sharding = _replicated(keys)
    if prefix is None:
        return hist.at[digit].add(1, mode="promise_in_bounds", out_sharding=out_sharding)
    # Only keys that share the digits found so far take part; the others go to an
    # out-of-range bin and are dropped.
    match = (keys >> (shift + _DIGIT_BITS)) == prefix
    index = jnp.where(match, digit, _NUM_BINS)
    return hist.at[index].add(1, mode="drop", out_sharding=out_sharding)


def _hist_pass(
    hist: Array, src: KeySource, shift: int, prefix: Array | None, chunk: int | None
) -> Array:
    size = src.arrays[0].size
    if chunk is None or size <= chunk:
        # Keys keep the arrays' own shape: flattening an array sharded along an inner axis
        # would gather it onto every device.
        return _add_to_hist(hist, src.keys(*src.arrays), shift, prefix)
    flat = [a.reshape(-1) for a in src.arrays]
    full, tail = divmod(size, chunk)

    def body(i, h):
        pieces = [lax.dynamic_slice_in_dim(a, i * chunk, chunk) for a in flat]
        return _add_to_hist(h, src.keys(*pieces), shift, prefix)

    hist = lax.fori_loop(0, full, body, hist)
    if tail:
        hist = _add_to_hist(hist, src.keys(*[a[full * chunk :] for a in flat]), shift, prefix)
    return hist


def _histogram(sources: Sequence[KeySource], shift: int, prefix: Array | None) -> Array:
    def build(chunk, *arrays):
        hist = jnp.zeros((_NUM_BINS,), jnp.int32)
        it = iter(arrays)
        for src in sources:
            own = KeySource(tuple(next(it) for _ in src.arrays), src.keys)
            hist = _hist_pass(hist, own, shift, prefix, chunk)
        return hist

    arrays = [a for src in sources for a in src.arrays]
    # Chunks are dynamic slices, which would gather an array sharded over several devices, so
    # they are used only where there is one device.
    single = jax.device_count() == 1 and all(_replicated(a) is None for a in arrays)
    cpu_chunk = _CPU_CHUNK if single else None
    return lax.platform_dependent(
        *arrays,
        cpu=lambda *a: build(cpu_chunk, *a),
        default=lambda *a: build(None, *a),
    )


def kth_largest_key(sources: Sequence[KeySource | Array], k: ArrayLike) -> Array:
    """The exact ``k``-th largest key (1-based) among all keys of all ``sources``.

    Args:
      sources: :class:`KeySource` s, or arrays of keys, of one unsigned key dtype, ranked
        together.
      k: traced or concrete int, ``1 <= k <= total size`` (:func:`kept_count` gives such a
        k). Outside that range the result is not a key of the input: clamp ``k`` first.

    Returns:
      A scalar of the key dtype.
    """
    if not sources:
        raise ValueError("kth_largest_key needs at least one source of keys")
    sources = [s if isinstance(s, KeySource) else KeySource((s,), lambda a: a) for s in sources]
    ktypes = {
        jax.eval_shape(s.keys, *[jax.ShapeDtypeStruct((1,), a.dtype) for a in s.arrays]).dtype
        for s in sources
    }
    if len(ktypes) != 1 or not jnp.issubdtype(next(iter(ktypes)), jnp.unsignedinteger):
        raise TypeError(f"all keys must share one unsigned dtype, got {sorted(map(str, ktypes))}")
    ktype = jnp.dtype(next(iter(ktypes)))
    nbits = 8 * ktype.itemsize
    k = jnp.asarray(k, jnp.int32)
    prefix = None
    for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
        hist = _histogram(sources, shift, prefix)
        digit, above = _pick_digit(hist, k)
        k = k - above
        digit = digit.astype(ktype)
        prefix = digit if prefix is None else (prefix << _DIGIT_BITS) | digit
    return prefix


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
