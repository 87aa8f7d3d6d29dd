r"""One-shot pruning of one trained linear layer from calibration statistics.

Three criteria from the post-training pruning literature, for a Flax dense kernel ``w`` of
shape ``(in, out)`` (the PyTorch reference code stores ``nn.Linear.weight`` as ``(out, in)``,
the transpose; every rule below is stated in Flax's layout):

* :func:`wanda_mask` (Sun et al. 2024): score :math:`|w_{ij}| \cdot \|X_i\|_2`, pruned within
  each output unit.
* :func:`sparsegpt_prune` (Frantar & Alistarh 2023): prunes and updates the remaining weights
  to compensate, from the layer Hessian :math:`H = \tfrac{2}{N} X^\top X`
  (:func:`hessian_from_inputs`).
* :func:`owl_sparsities` (Yin et al. 2024): per-layer sparsities from the layers' share of
  outlier Wanda scores.

Sparsities and N:M patterns are static Python values (they fix array shapes and counts);
weights, norms and Hessians may be traced, so every function runs under ``jax.jit``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import radix_select, sparse_core
from jaxprune._src.base import Array, ArrayLike

_HIGHEST = lax.Precision.HIGHEST


# ----- validation -----


def _is_concrete(*xs: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def check_static_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    """A concrete sparsity in ``[0, 1)`` as a Python float."""
    if isinstance(sparsity, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a concrete number in [0, 1) (it sets how many weights are pruned, "
            "a static count), got a traced value"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real | np.ndarray):
        raise TypeError(f"{name} must be a real number in [0, 1), got {sparsity!r}")
    value = float(np.asarray(sparsity))
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in range [0, 1), got {sparsity!r}")
    return value


def check_n_m(n_m: Any, in_features: int | None = None) -> tuple[int, int]:
    """Validates ``n_m=(n, m)``: ints with ``1 <= n < m`` and ``m`` dividing ``in_features``."""
    if not isinstance(n_m, tuple | list) or len(n_m) != 2:
        raise TypeError(f"n_m must be a pair (n, m) of ints, got {n_m!r}")
    n, m = n_m
    for v, nm in ((n, "n"), (m, "m")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"n_m={n_m!r}: {nm} must be an int, got {v!r}")
    n, m = int(n), int(m)
    if not 1 <= n < m:
        raise ValueError(
            f"n_m=(n, m) keeps n of every m inputs and needs 1 <= n < m, got n={n}, m={m}"
        )
    if in_features is not None and in_features % m:
        raise ValueError(
            f"n_m=({n}, {m}): m={m} must divide the number of inputs, got {in_features} inputs"
        )
    return n, m


def _sparsity_or_n_m(sparsity: Any, n_m: Any, in_features: int) -> tuple[float, Any]:
    if (sparsity is None) == (n_m is None):
        raise ValueError(
            "pass exactly one of sparsity (unstructured) and n_m=(n, m) (N:M), got "
            f"sparsity={sparsity!r}, n_m={n_m!r}"
        )
    if n_m is not None:
        return 0.0, check_n_m(n_m, in_features)
    return check_static_sparsity(sparsity), None


def _kernel(w: ArrayLike, name: str = "w") -> Array:
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating-point dtype, got {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (in, out) kernel, got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {w.shape}): there is nothing to prune")
    return w


def _all(fn: Callable[..., Array], *xs: Any) -> bool:
    """``all(fn(*xs))`` for concrete ``xs``, computed now even inside a ``jit`` trace (arrays
    closed over by a jitted function are concrete there, and ``bool`` of a traced result would
    fail)."""
    with jax.ensure_compile_time_eval():
        return bool(jnp.all(fn(*xs)))


def _check_finite(x: Array, name: str, what: str) -> None:
    if _is_concrete(x) and not _all(jnp.isfinite, x):
        raise ValueError(f"{name} contains NaN or inf ({what})")


# ----- Wanda -----


# Slices of up to this many entries are ranked by comparisons within the slice (elementwise);
# longer ones by the exact radix selection, one row per slice.
_COMPARE_MAX = 32


def _lowest(scores: Array, axis: int, count: int) -> Array:
    """``True`` at the ``count`` lowest scores of every slice along ``axis``.

    Equal scores rank by index, the lower index first: the entries whose 0-based rank in a
    stable ascending sort of their slice is below ``count`` (NaN ranks last, ``-0.0`` equals
    ``0.0``). No sort: a slice of up to 32 entries ranks each entry by comparisons with the
    others; longer slices take their ``count``-th lowest key with the radix selection (one row
    per slice, all rows at once) and count ties by index only when the k-th key is tied.
    """
    n = scores.shape[axis]
    if count <= 0:
        return jnp.zeros(scores.shape, bool)
    if count >= n:
        return jnp.ones(scores.shape, bool)
    # Reversed keys: the lowest scores have the largest keys.
    keys = ~sparse_core.signed_keys(jnp.moveaxis(scores, axis, -1))
    if n <= _COMPARE_MAX:
        low = radix_select.top_n_in_groups(keys, count)
    else:
        rows = keys.reshape(-1, n)
        part = radix_select.Part(radix_select.KeySource((rows,), lambda a: a), 0, True)
        k = jnp.full((rows.shape[0],), count, jnp.int32)
        kth, need, ties = radix_select.kth_largest_keys([part], k, counts=True)
        above, tied = rows > kth[:, None], rows == kth[:, None]

        def first_ties(_):
            rank = jnp.cumsum(tied, axis=1, dtype=jnp.int32)
            return above | (tied & (rank <= need[:, None]))

        # Continuous scores rarely tie at the k-th: then no cumulative sum is needed.
        low = lax.cond(jnp.all(need == ties), lambda _: above | tied, first_ties, None)
        low = low.reshape(keys.shape)
    return jnp.moveaxis(low, -1, axis)


@functools.partial(jax.jit, static_argnames=("pruned", "n_m"))
def _wanda_mask(w: Array, norms: Array, pruned: int, n_m: Any) -> Array:
    scores = jnp.abs(w.astype(jnp.float32)) * norms.astype(jnp.float32)[:, None]
    if n_m is None:
        return ~_lowest(scores, 0, pruned)
    n, m = n_m
    d_in, d_out = scores.shape
    groups = scores.reshape(d_in // m, m, d_out)
    return ~_lowest(groups, 1, m - n).reshape(d_in, d_out)


def wanda_mask(
    w: ArrayLike,
    input_norms: ArrayLike,
    sparsity: float | None = None,
    *,
    n_m: tuple[int, int] | None = None,
) -> Array:
    r"""The Wanda mask of a dense kernel: weight magnitude times input norm, per output unit.

    With :math:`\|X_i\|_2` the L2 norm of input feature :math:`i` over all calibration tokens,
    every weight is scored

    .. math:: S_{ij} = |w_{ij}| \cdot \|X_i\|_2

    and ranked against the other weights of its output unit (column ``j`` of the Flax
    ``(in, out)`` kernel; a row of PyTorch's ``(out, in)`` weight):

    * unstructured: the :math:`\lfloor \mathrm{in} \cdot s \rfloor` lowest scores of every
      column are pruned (the count is ``int(in * sparsity)`` in float64, as the reference code
      computes it), so every output unit has exactly that many zeros;
    * ``n_m=(n, m)``: in every group of ``m`` consecutive inputs of a column the ``m - n``
      lowest scores are pruned and ``n`` kept. The reference code's ``prune_n`` counts pruned
      entries, so its ``(prune_n, prune_m) = (2, 4)`` is ``n_m=(2, 4)`` here, but ``(1, 4)``
      there is ``n_m=(3, 4)`` here.

    **Ties**: among equal scores, the lower input index is pruned first (the reference code's
    stable sort does the same). NaN scores rank highest (kept). Scores are computed in float32.
    The norms may be scaled by any positive constant (the reference uses the root mean square)
    without changing the mask.

    Args:
      w: float kernel of shape ``(in, out)``.
      input_norms: shape ``(in,)``, the L2 norm of each input feature over the calibration
        data, non-negative and finite.
      sparsity: fraction pruned in each output unit, a Python float in ``[0, 1)``; leave it
        out when ``n_m`` is given.
      n_m: ``(n, m)`` with ``1 <= n < m`` and ``m`` dividing ``in``: keep ``n`` of every ``m``.

    Returns:
      A bool array of ``w``'s shape, ``True`` where the weight is kept.

    Raises:
      TypeError: if ``w`` is not a float array, or ``sparsity``/``n_m`` have the wrong type or
        are traced.
      ValueError: for a kernel that is not 2-D, ``input_norms`` of the wrong shape or with
        negative, NaN or inf entries, a sparsity outside ``[0, 1)``, an invalid ``n_m``, or
        both/neither of ``sparsity`` and ``n_m``.

    Examples:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[1.0, -4.0], [2.0, 1.0], [-3.0, 0.5], [0.5, 2.0]])
      >>> norms = jnp.array([1.0, 3.0, 0.1, 0.2])
      >>> wanda_mask(w, norms, 0.5).astype(int).tolist()
      [[1, 1], [1, 1], [0, 0], [0, 0]]
      >>> wanda_mask(w, norms, n_m=(1, 2)).astype(int).tolist()
      [[0, 1], [1, 0], [1, 0], [0, 1]]

    References:
      Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language
      Models* (ICLR 2024), https://arxiv.org/abs/2306.11695; reference code
      https://github.com/locuslab/wanda
    """
    w = _kernel(w)
    norms = jnp.asarray(input_norms)
    if norms.shape != (w.shape[0],):
        raise ValueError(
            f"input_norms must have shape (in,) = ({w.shape[0]},) for a kernel of shape "
            f"{w.shape}, got {norms.shape}"
        )
    if _is_concrete(norms) and not _all(lambda n: jnp.isfinite(n) & (n >= 0), norms):
        raise ValueError("input_norms must be finite and >= 0 (NaN or inf in calibration data?)")
    sparsity, n_m = _sparsity_or_n_m(sparsity, n_m, w.shape[0])
    pruned = int(w.shape[0] * sparsity)
    return _wanda_mask(w, norms, pruned, n_m)


# ----- SparseGPT -----


def check_sparsegpt_options(
    block_size: Any, damping: Any, n_m: tuple[int, int] | None, prefix: str = ""
) -> None:
    """Refuses a ``block_size`` that is not a positive int (a multiple of ``m`` with N:M) or a
    ``damping`` that is not a finite float > 0; ``prefix`` names the options' owner's spelling
    of them (e.g. ``"owl_"``), empty for :func:`sparsegpt_prune`."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(f"{prefix}block_size must be an int, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"{prefix}block_size must be >= 1, got {block_size}")
    if n_m is not None and block_size % n_m[1]:
        raise ValueError(
            f"{prefix}block_size={block_size} must be a multiple of m={n_m[1]} so that N:M "
            "groups do not cross blocks"
        )
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real):
        raise TypeError(f"{prefix}damping must be a float, got {damping!r}")
    if not (math.isfinite(damping) and damping > 0):
        raise ValueError(f"{prefix}damping must be a finite float > 0, got {damping!r}")


def hessian_from_inputs(x: ArrayLike) -> Array:
    r"""The layer Hessian SparseGPT uses, :math:`H = \tfrac{2}{N} X^\top X`, in float32.

    ``x`` holds the layer's inputs, one row per token: shape ``(..., in)``, all leading axes
    flattened into :math:`N` rows. Products are accumulated in float32 whatever ``x``'s dtype
    (the reference code casts its inputs to float32 too). SparseGPT's result does not depend
    on the scale of :math:`H`, so sums over several batches (``Σ XᵀX``) work as well.

    Args:
      x: float array of shape ``(..., in)``.

    Returns:
      A float32 array of shape ``(in, in)``.

    Raises:
      TypeError: if ``x`` is not a float array.
      ValueError: if ``x`` is a scalar, has no rows, or contains NaN or inf.

    Examples:
      >>> import jax.numpy as jnp
      >>> hessian_from_inputs(jnp.array([[1.0, 0.0], [1.0, 2.0]])).tolist()
      [[2.0, 2.0], [2.0, 4.0]]

    References:
      Frantar, Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot* (ICML 2023), https://arxiv.org/abs/2301.00774
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have shape (..., in), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"x has no input features (shape {x.shape})")
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    if x.shape[0] == 0:
        raise ValueError("x has no rows (no calibration tokens)")
    _check_finite(x, "x", "calibration inputs")
    return (2.0 / x.shape[0]) * jnp.matmul(x.T, x, precision=_HIGHEST)


def _upper_inverse_factor(h: Array, damping: float) -> tuple[Array, Array]:
    """Dead inputs fixed, damped, then the upper Cholesky factor ``U`` of ``H⁻¹ = UᵀU``."""
    diag = jnp.diagonal(h)
    dead = diag == 0
    h = h + jnp.diag(jnp.where(dead, 1.0, 0.0).astype(h.dtype))
    h = h + damping * jnp.mean(jnp.diagonal(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
    low = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((low, True), jnp.eye(h.shape[0], dtype=h.dtype))
    # Symmetrise before the second factorisation: cho_solve's result is symmetric only up to
    # rounding. The upper triangle is made exact so that rows of U leave earlier inputs alone.
    hinv = 0.5 * (hinv + hinv.T)
    return jnp.triu(jnp.linalg.cholesky(hinv).T), dead


def _sparsegpt_block(
    w1: Array, u1: Array, real: Array, kth: Array, sparsity: float, n_m: Any
) -> tuple[Array, ...]:
    """One block of inputs, in the reference's (out, in) layout: (q1, err1, pruned1).

    ``real`` marks the block's real inputs (the last block is padded to ``block_size``);
    ``kth`` is the reference's threshold index ``int(numel * sparsity)`` for this block.
    """
    d = jnp.diagonal(u1)
    if n_m is None and sparsity > 0:
        score = jnp.where(real[None, :], w1**2 / d[None, :] ** 2, jnp.inf)
        # The reference rule: every score <= the sorted score at int(numel * s) is pruned,
        # all output units of the block ranked together (ties at the threshold all pruned).
        # Padding scores are +inf, after every real score, so the index is the same. The
        # score at sorted index kth is the (kth + 1)-th largest of the reversed keys, found by
        # the exact radix selection instead of a sort; key order is score order. NaN scores
        # (a failed factorisation) sort last, with the reversed key 0: a NaN threshold
        # (top == 0) prunes nothing, as `score <= NaN` did.
        keys = ~sparse_core.signed_keys(score)
        top = radix_select.kth_largest_key([keys.reshape(-1)], kth + 1)
        pruned = (keys >= top) & (top > 0) & real[None, :]
    else:
        pruned = jnp.zeros(w1.shape, bool)

    def step(i, carry):
        w1, q1, err1, pruned = carry
        if n_m is not None:
            n, m = n_m
            # At the first input of each group of m, choose its m - n pruned entries from the
            # current (already error-corrected) weights. Groups never cross a block boundary.
            grp = lax.dynamic_slice_in_dim(w1, i, m, axis=1)
            dg = lax.dynamic_slice_in_dim(d, i, m)
            fresh = _lowest(grp**2 / dg[None, :] ** 2, 1, m - n)
            old = lax.dynamic_slice_in_dim(pruned, i, m, axis=1)
            pruned = lax.dynamic_update_slice_in_dim(
                pruned, jnp.where(i % m == 0, fresh, old), i, axis=1
            )
        col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        off = lax.dynamic_index_in_dim(pruned, i, axis=1, keepdims=False)
        q = jnp.where(off, 0.0, col)
        urow = lax.dynamic_index_in_dim(u1, i, axis=0, keepdims=False)
        e = (col - q) / urow[i]
        # U is upper triangular, so this leaves the inputs before i unchanged (their entries
        # of urow are exactly 0); the reference updates w1[:, i:] only.
        w1 = w1 - e[:, None] * urow[None, :]
        q1 = lax.dynamic_update_index_in_dim(q1, q, i, axis=1)
        err1 = lax.dynamic_update_index_in_dim(err1, e, i, axis=1)
        return w1, q1, err1, pruned

    zeros = jnp.zeros_like(w1)
    _, q1, err1, pruned = lax.fori_loop(0, w1.shape[1], step, (w1, zeros, zeros, pruned))
    return q1, err1, pruned


@functools.partial(jax.jit, static_argnames=("sparsity", "n_m", "block_size", "damping"))
def _sparsegpt(
    w: Array, h: Array, sparsity: float, n_m: Any, block_size: int, damping: float
) -> tuple[Array, Array]:
    dtype = w.dtype
    u, dead = _upper_inverse_factor(h.astype(jnp.float32), damping)
    big = w.astype(jnp.float32).T  # the reference layout: (out, in)
    big = jnp.where(dead[None, :], 0.0, big)
    rows, cols = big.shape
    bs = min(block_size, cols)
    blocks = -(-cols // bs)
    pad = blocks * bs - cols
    # One scan over equal blocks (one compiled block body whatever the number of blocks).
    # Padded inputs have U = identity there and weights 0: they never change a real input.
    big = jnp.pad(big, ((0, 0), (0, pad)))
    u = jnp.pad(u, ((0, pad), (0, pad))) + jnp.diag(jnp.arange(blocks * bs) >= cols)
    real = (jnp.arange(blocks * bs) < cols).reshape(blocks, bs)
    # The reference's threshold index int(numel * sparsity), computed in float64 per block.
    kth = np.array(
        [int(rows * (min(cols, i1 + bs) - i1) * sparsity) for i1 in range(0, cols, bs)], np.int32
    )

    def block(big, xs):
        b, real_b, kth_b = xs
        i1 = b * bs
        w1 = lax.dynamic_slice_in_dim(big, i1, bs, axis=1)
        u1 = lax.dynamic_slice(u, (i1, i1), (bs, bs))
        q1, err1, pruned1 = _sparsegpt_block(w1, u1, real_b, kth_b, sparsity, n_m)
        # Rows of U are 0 left of the block (upper triangular), and the block's own columns
        # are overwritten by q1 next: only the later inputs change, as in the reference.
        urows = lax.dynamic_slice_in_dim(u, i1, bs, axis=0)
        big = big - jnp.matmul(err1, urows, precision=_HIGHEST)
        big = lax.dynamic_update_slice_in_dim(big, q1, i1, axis=1)
        return big, pruned1

    big, pruned = lax.scan(block, big, (jnp.arange(blocks), real, jnp.asarray(kth)))
    pruned = jnp.moveaxis(pruned, 0, 1).reshape(rows, blocks * bs)[:, :cols]
    return big[:, :cols].T.astype(dtype), ~pruned.T


def sparsegpt_prune(
    w: ArrayLike,
    hessian: ArrayLike,
    sparsity: float | None = None,
    *,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[Array, Array]:
    r"""Prunes a dense kernel with SparseGPT and updates the kept weights to compensate.

    The reference algorithm (``SparseGPT.fasterprune`` in the authors' code), transposed to
    Flax's ``(in, out)`` layout. With :math:`H = \tfrac{2}{N} X^\top X` over the calibration
    inputs (:func:`hessian_from_inputs`):

    1. *Dead inputs* (:math:`H_{ii} = 0`) get :math:`H_{ii} = 1` and their weights set to 0.
    2. *Damping*: :math:`H \leftarrow H + \delta I` with
       :math:`\delta = \mathrm{damping} \cdot \mathrm{mean}(\mathrm{diag}\, H)`.
    3. :math:`U` is the upper Cholesky factor of :math:`H^{-1} = U^\top U`.
    4. Inputs are processed in blocks of ``block_size`` (the last block may be shorter). In a
       block, with :math:`d_i = U_{ii}`, weight :math:`w_{ij}` scores
       :math:`w_{ij}^2 / d_i^2`, and every entry whose score is :math:`\le` the sorted block
       score at index ``int(numel · sparsity)`` (``numel`` = entries of the block, all output
       units ranked together) is pruned. So each block loses at least
       ``int(numel · sparsity) + 1`` entries, more with ties at the threshold; ``sparsity=0``
       prunes nothing here (the reference's rule would still remove each block's lowest
       score). With ``n_m=(n, m)`` the mask is chosen instead at every ``m``-th input from
       the current weights: the ``m - n`` lowest scores of each output unit in that group of
       ``m`` inputs are pruned (ties: lower input index first).
    5. Input by input, the pruned row is :math:`q_i` (0 where pruned, :math:`w_i` elsewhere),
       its error :math:`e_i = (w_i - q_i) / d_i` is subtracted from the later inputs of the
       block, :math:`w_k \mathrel{-}= e_i U_{ik}` (:math:`k > i`), and after the block the
       block's errors from all later inputs, :math:`W_{>} \mathrel{-}= U_{\mathrm{blk},>}^\top
       E_{\mathrm{blk}}` in the reference's notation.

    Everything is computed in float32 (matrix products at the highest precision), and the
    weights are returned in ``w``'s dtype (bf16 in, bf16 out). Pruned weights are exactly 0.

    Args:
      w: float kernel of shape ``(in, out)``.
      hessian: ``(in, in)`` Hessian of the layer's inputs, e.g. :func:`hessian_from_inputs`
        (any positive scale gives the same result).
      sparsity: a Python float in ``[0, 1)``; leave it out when ``n_m`` is given.
      n_m: ``(n, m)`` with ``1 <= n < m``, ``m`` dividing ``in`` and ``block_size``: keep ``n``
        of every ``m`` consecutive inputs per output unit.
      block_size: inputs per block (the reference's ``blocksize``), a positive int.
      damping: relative damping (the reference's ``percdamp``), a float ``> 0``.

    Returns:
      ``(new_w, mask)``: the updated kernel (``w``'s dtype and shape) and a bool mask, ``True``
      where the weight is kept; ``new_w`` is 0 wherever ``mask`` is ``False``.

    Raises:
      TypeError: for a non-float ``w`` or ``hessian``, or parameters of the wrong type.
      ValueError: for a kernel that is not 2-D, a Hessian that is not ``(in, in)`` or
        (when not traced) contains NaN or inf, a sparsity outside ``[0, 1)``, an invalid
        ``n_m``, a ``block_size`` < 1 or not a multiple of ``m``, ``damping <= 0``, or (when not
        traced) a damped Hessian that is not positive definite.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 4))
      >>> new_w, mask = sparsegpt_prune(w, hessian_from_inputs(x), 0.5)
      >>> int(mask.sum())  # 32 weights, one block: int(32 * 0.5) + 1 = 17 pruned
      15
      >>> bool(jnp.all(jnp.where(mask, True, new_w == 0)))
      True
      >>> new_w, mask = sparsegpt_prune(w, hessian_from_inputs(x), n_m=(2, 4))
      >>> mask.reshape(2, 4, 4).sum(axis=1).tolist()
      [[2, 2, 2, 2], [2, 2, 2, 2]]

    References:
      Frantar, Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot* (ICML 2023), https://arxiv.org/abs/2301.00774; reference code
      https://github.com/IST-DASLab/sparsegpt
    """
    w = _kernel(w)
    h = jnp.asarray(hessian)
    if not jnp.issubdtype(h.dtype, jnp.floating):
        raise TypeError(f"hessian must have a floating-point dtype, got {h.dtype}")
    d_in = w.shape[0]
    if h.shape != (d_in, d_in):
        raise ValueError(
            f"hessian must have shape (in, in) = ({d_in}, {d_in}) for a kernel of shape "
            f"{w.shape}, got {h.shape}"
        )
    sparsity, n_m = _sparsity_or_n_m(sparsity, n_m, d_in)
    check_sparsegpt_options(block_size, damping, n_m)
    _check_finite(h, "hessian", "NaN or inf in calibration data?")
    _check_finite(w, "w", "NaN or inf weights cannot be pruned by SparseGPT")
    new_w, mask = _sparsegpt(w, h, sparsity, n_m, int(block_size), float(damping))
    if _is_concrete(new_w) and not _all(jnp.isfinite, new_w):
        raise ValueError(
            "the pruned weights are not finite: the damped Hessian is not positive definite (its "
            "Cholesky factorisation failed; increase damping), or the weights' updates overflow "
            f"{jnp.dtype(w.dtype).name} (prune in float32 and cast after)"
        )
    return new_w, mask


# ----- OWL -----


def check_owl_options(threshold: Any, lam: Any, prefix: str = "") -> None:
    """Refuses an OWL ``threshold`` that is not a finite number > 0 or a ``lam`` that is not a
    finite number >= 0 (``prefix``: the caller's spelling, e.g. ``"owl_"``)."""
    for v, name in ((threshold, "threshold"), (lam, "lam")):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{prefix}{name} must be a real number, got {v!r}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"{prefix}threshold must be a finite number > 0, got {threshold!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"{prefix}lam must be a finite number >= 0, got {lam!r}")


def owl_sparsities(
    scores_per_layer: Sequence[ArrayLike],
    sparsity: float,
    *,
    threshold: float = 5.0,
    lam: float = 0.08,
) -> np.ndarray:
    r"""Per-layer sparsities from the layers' outlier ratios (OWL, Yin et al. 2024).

    Layer :math:`l` with Wanda scores :math:`S^{(l)}` (e.g. ``|w| * input_norms[:, None]``)
    has outlier ratio :math:`D_l`, the share of its scores above ``threshold`` times their
    mean. The ratios are mapped linearly onto :math:`[0, 2\lambda]`, more outliers giving a
    *lower* sparsity, and shifted so that the mean sparsity is the target :math:`s`:

    .. math::
       a_l = 2\lambda \frac{D_l - \min D}{\max D - \min D}, \qquad
       s_l = s - a_l + \frac{\sum_k n_k a_k}{\sum_k n_k}

    with :math:`n_l` the number of scores (weights) of layer :math:`l`. The reference code
    prunes equal-size transformer blocks and takes the plain mean; here the mean is weighted
    by layer size, so that the total fraction of pruned weights is :math:`s` also for layers of
    unequal sizes (for equal sizes the two agree). When all ratios are equal every layer gets
    :math:`s`. To match the reference's grouping, concatenate the scores of all linear layers
    of a block into one entry.

    This is a planning step on the host: the result is a NumPy array (float64), and it is
    validated, so a sparsity that would fall outside ``[0, 1)`` raises rather than clips (the
    reference code silently raises a sparsity <= 0 to 0.01, which changes the total).

    Args:
      scores_per_layer: one float array of non-negative scores per layer (any shape).
      sparsity: target mean sparsity, a float in ``[0, 1)``.
      threshold: outlier threshold :math:`M` relative to the layer's mean score, ``> 0``.
      lam: half-width :math:`\lambda` of the sparsity range, ``>= 0``.

    Returns:
      A float64 NumPy array with one sparsity per layer.

    Raises:
      ValueError: for no layers, an empty layer, NaN or inf scores, a sparsity outside
        ``[0, 1)``, ``threshold <= 0``, ``lam < 0``, or a resulting layer sparsity outside
        ``[0, 1)`` (lower ``lam``).
      TypeError: for traced inputs (the sparsities are Python-side hyperparameters).

    Examples:
      >>> import numpy as np
      >>> flat = np.ones(100)                              # no outliers
      >>> spiky = np.r_[np.full(90, 0.1), np.full(10, 9.0)]  # 10% outliers
      >>> owl_sparsities([flat, spiky], 0.5, lam=0.1).round(6).tolist()
      [0.6, 0.4]

    References:
      Yin et al., *Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
      LLMs to High Sparsity* (ICML 2024), https://arxiv.org/abs/2310.05175; reference code
      https://github.com/luuyin/OWL
    """
    sparsity = check_static_sparsity(sparsity)
    check_owl_options(threshold, lam)
    if isinstance(scores_per_layer, jax.Array | np.ndarray) or not len(scores_per_layer):
        raise ValueError("scores_per_layer must be a non-empty sequence of per-layer arrays")
    ratios, sizes = [], []
    for i, s in enumerate(scores_per_layer):
        if isinstance(s, jax.core.Tracer):
            raise TypeError("owl_sparsities runs on the host; got a traced score array")
        s = jnp.asarray(s, jnp.float32)
        if s.size == 0:
            raise ValueError(f"scores_per_layer[{i}] is empty")
        _check_finite(s, f"scores_per_layer[{i}]", "NaN or inf in calibration data?")
        if not _all(lambda a: a >= 0, s):
            raise ValueError(
                f"scores_per_layer[{i}] has negative entries; OWL's scores are magnitudes "
                "(e.g. |w| times the input norm), >= 0"
            )
        count = jnp.sum(s > threshold * jnp.mean(s), dtype=jnp.int32)
        ratios.append(int(count) / s.size)
        sizes.append(s.size)
    ratios_np, sizes_np = np.asarray(ratios), np.asarray(sizes, np.float64)
    spread = ratios_np.max() - ratios_np.min()
    if spread == 0:
        return np.full(len(ratios), sparsity)
    a = (ratios_np - ratios_np.min()) / spread * (2.0 * lam)
    out = sparsity - a + np.sum(sizes_np * a) / np.sum(sizes_np)
    bad = np.flatnonzero((out < 0) | (out >= 1))
    if bad.size:
        raise ValueError(
            f"OWL gives layer sparsities outside [0, 1) for layers {bad.tolist()} "
            f"({out[bad].tolist()}) with sparsity={sparsity} and lam={lam}; lower lam"
        )
    return out


__all__ = [
    "check_n_m",
    "check_static_sparsity",
    "hessian_from_inputs",
    "owl_sparsities",
    "sparsegpt_prune",
    "wanda_mask",
]
