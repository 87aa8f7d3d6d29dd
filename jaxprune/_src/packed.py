"""Bit-packed masks: 1 bit per parameter in ``uint32`` words.

:func:`jaxprune.magnitude_pruning` with ``mask_dtype="packed"`` keeps every pruned leaf's mask
as a :class:`PackedMask` in its optimizer state instead of a ``bool`` array (1 byte per
parameter), so the masks take 8x less memory and a checkpoint holds them packed too.

Bit order: the mask is flattened in row-major (C) order; entry ``i`` of the flat mask is bit
``i % 32`` (bit 0 the least significant) of word ``i // 32``. The last word is padded with zero
bits. A leaf of ``n`` entries takes ``ceil(n / 32)`` words (a 1-D ``uint32`` array).

Why a wrapper rather than bare words: the accessors (:func:`jaxprune.get_masks`,
:func:`jaxprune.pruning_summaries` without params, ...) read masks from the optimizer state
alone, and the words lose the leaf's shape. :class:`PackedMask` is a pytree node whose one
child is the words array and whose static (auxiliary) data is the leaf's shape: ``jax.jit``,
``lax.cond``, ``jax.tree.map`` and ``jax.eval_shape`` see one ``uint32`` leaf per pruned leaf,
and orbax saves it as an ordinary array (named ``.../masks/<leaf path>/words``) and rebuilds the
wrapper from the restore target (built with ``jax.eval_shape``, as for every jaxprune state).
Nothing that is not an array sits in the tree, so no custom orbax handler is needed.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Array, ArrayLike, path_str

WORD_BITS = 32


def num_words(size: int) -> int:
    """The number of ``uint32`` words that hold ``size`` bits: ``ceil(size / 32)``."""
    return -(-int(size) // WORD_BITS)


def pack(mask: ArrayLike) -> Array:
    """A bool mask as a 1-D ``uint32`` array of ``ceil(mask.size / 32)`` words.

    Flat (row-major) entry ``i`` is bit ``i % 32`` of word ``i // 32``; the padding bits of the
    last word are zero. Pure ``jnp``: works under ``jit`` and is exact.

    Examples:
      >>> import jax.numpy as jnp
      >>> pack(jnp.array([True, False, True])).tolist()
      [5]
    """
    flat = jnp.ravel(jnp.asarray(mask, bool))
    n = flat.size
    words = num_words(n)
    flat = jnp.pad(flat, (0, words * WORD_BITS - n))
    bits = flat.reshape(words, WORD_BITS).astype(jnp.uint32)
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[None, :]
    # Distinct powers of two: the sum is their bitwise OR, exact in uint32.
    return jnp.sum(bits << shifts, axis=1, dtype=jnp.uint32)


def unpack(words: ArrayLike, shape: tuple[int, ...]) -> Array:
    """The bool mask of ``shape`` that :func:`pack` packed into ``words``.

    Examples:
      >>> import jax.numpy as jnp
      >>> unpack(jnp.array([5], jnp.uint32), (3,)).tolist()
      [True, False, True]
    """
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    words = jnp.asarray(words, jnp.uint32)
    if words.shape != (num_words(n),):
        raise ValueError(
            f"{num_words(n)} words hold a mask of shape {shape}, got words of shape {words.shape}"
        )
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[None, :]
    bits = (words[:, None] >> shifts) & jnp.uint32(1)
    flat = bits.reshape(-1)
    if flat.size != n:
        flat = flat[:n]
    return flat.astype(bool).reshape(shape)


@jax.tree_util.register_pytree_with_keys_class
class PackedMask:
    """A leaf's mask packed 1 bit per entry: ``words`` (``uint32``) and the leaf's ``shape``.

    A pytree node: ``words`` is its one leaf, ``shape`` static data (see the module docstring
    for the bit order and why the shape travels with the words).
    """

    __slots__ = ("shape", "words")

    def __init__(self, words: Any, shape: tuple[int, ...]):
        self.words = words
        self.shape = tuple(int(d) for d in shape)

    @classmethod
    def from_bool(cls, mask: ArrayLike) -> PackedMask:
        """Packs a bool mask (see :func:`pack`)."""
        return cls(pack(mask), np.shape(mask))

    def unpack(self) -> Array:
        """The bool mask, of ``self.shape``."""
        return unpack(self.words, self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed words (4 per 32 entries)."""
        return 4 * num_words(self.size)

    def tree_flatten_with_keys(self) -> tuple[tuple[tuple[Any, Any], ...], tuple[int, ...]]:
        return ((jax.tree_util.GetAttrKey("words"), self.words),), self.shape

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        return (self.words,), self.shape

    @classmethod
    def tree_unflatten(cls, shape: tuple[int, ...], children: Any) -> PackedMask:
        obj = object.__new__(cls)
        obj.words = children[0]
        obj.shape = shape
        return obj

    def __repr__(self) -> str:
        return f"PackedMask(shape={self.shape}, words={self.words!r})"


def is_packed(x: Any) -> bool:
    return isinstance(x, PackedMask)


def unpack_tree(masks: Any) -> Any:
    """``masks`` with every :class:`PackedMask` replaced by its bool mask (others as they are)."""
    return jax.tree.map(lambda m: m.unpack() if is_packed(m) else m, masks, is_leaf=is_packed)


def has_packed(masks: Any) -> bool:
    """Whether ``masks`` holds a :class:`PackedMask`."""
    return any(is_packed(m) for m in jax.tree.leaves(masks, is_leaf=is_packed))


# ------------------------------------------------------- how a transformation keeps its masks

MASK_DTYPES = ("bool", "packed")


def check_mask_dtype(mask_dtype: Any) -> bool:
    """Validates a transformation's ``mask_dtype`` argument; ``True`` for ``"packed"``."""
    if not isinstance(mask_dtype, str) or mask_dtype not in MASK_DTYPES:
        raise ValueError(f"mask_dtype must be one of {MASK_DTYPES}, got {mask_dtype!r}")
    return mask_dtype == "packed"


def as_bool(mask: Any) -> Any:
    """A mask leaf as the transformations use it: a :class:`PackedMask` unpacked, else itself."""
    return mask.unpack() if is_packed(mask) else mask


def pack_pruned(masks: list[Any]) -> list[Any]:
    """Every pruned leaf's bool mask (rank >= 1) packed; scalar masks kept as they are."""
    return [PackedMask.from_bool(m) if np.ndim(m) > 0 else m for m in masks]


def stored_masks(params: Any, masks: list[Any], packed: bool) -> Any:
    """The ``masks`` field of a state from flat masks in the params' order.

    Bool masks take the params' tree structure (flax.nnx ``Variable`` wrappers included).
    Packed masks take it without the wrappers: ``nnx.Optimizer`` wraps each array of the state
    in a ``Variable``, and a :class:`PackedMask` inside one would come back from ``nnx.update``
    as a plain mapping, its shape lost.
    """
    from jaxprune._src import trees  # trees imports this module

    if not packed:
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), masks)
    bare = jax.tree.map(trees.unwrap, params, is_leaf=trees.is_variable)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(bare), pack_pruned(masks))


def read_masks(
    state_masks: Any, treedef: Any, packed: bool, leaves: list[Any]
) -> tuple[list[Any], Any]:
    """``(flat masks as stored, the tree structure to store them with)`` of a state.

    ``treedef`` is the params' tree structure and ``leaves`` their leaves. Packed masks stay
    packed: unpack them (:func:`as_bool`) where they are used, so XLA fuses the bit extraction
    into that use.

    Raises:
      ValueError: if the masks do not have the tree structure of the params (see
        :func:`check_params_tree`), or a pruned leaf's mask does not have the leaf's shape.
    """
    masks_def = check_params_tree(state_masks, treedef, leaves)
    if packed:
        flat = jax.tree_util.tree_leaves(state_masks, is_leaf=is_packed)
    else:
        flat, masks_def = treedef.flatten_up_to(state_masks), treedef
    for i, (m, x) in enumerate(zip(flat, leaves)):
        shape = m.shape if is_packed(m) else tuple(np.shape(m))
        if shape and shape != tuple(np.shape(x)):
            path = _paths(jax.tree_util.tree_unflatten(treedef, leaves))[i]
            raise ValueError(
                f"update was given a leaf {path!r} of shape {tuple(np.shape(x))}, but the state "
                f"holds a mask of shape {shape} for it (from the params init was given); pass "
                "the params the state was made for, or call init again"
            )
    return flat, masks_def


def _paths(tree: Any) -> list[str]:
    """The ``/``-joined leaf paths of ``tree`` (a :class:`PackedMask` is one leaf)."""
    return [
        path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_packed)[0]
    ]


def check_params_tree(state_masks: Any, treedef: Any, leaves: list[Any]) -> Any:
    """The masks' tree structure, checked against the params' (``treedef`` and ``leaves``).

    A pruning state's masks have a leaf (a bool array, a scalar or a :class:`PackedMask`) in
    the place of every leaf of the params its ``init`` was given (packed masks without flax.nnx
    ``Variable`` wrappers, see :func:`stored_masks`). Params of another structure at ``update``
    would otherwise pair masks with the wrong leaves, or fail deep inside the step.

    Raises:
      ValueError: naming the leaf paths that only one of the two has (or, with the same paths,
        both structures).
    """
    from jaxprune._src import trees  # trees imports this module

    masks_def = jax.tree_util.tree_structure(state_masks, is_leaf=is_packed)
    if masks_def == treedef:
        return masks_def
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    bare = jax.tree.map(trees.unwrap, params, is_leaf=trees.is_variable)
    if masks_def == jax.tree_util.tree_structure(bare):
        return masks_def
    p_paths, m_paths = _paths(bare), _paths(state_masks)
    missing = [p for p in p_paths if p not in set(m_paths)]
    extra = [p for p in m_paths if p not in set(p_paths)]
    detail = (
        f"leaves of the params that the state has no mask for: {missing}; masks in the state "
        f"for no leaf of the params: {extra}"
        if missing or extra
        else f"the same leaf paths in other containers: params {treedef}, state {masks_def}"
    )
    raise ValueError(
        "update was given params with another tree structure than the params init was given "
        f"({detail}); pass the params the state was made for, or call init again"
    )


def or_not(mask: Any, flag: ArrayLike) -> Any:
    """``mask | ~flag`` (every entry kept where ``flag`` is false), packed or not."""
    if not is_packed(mask):
        return jnp.logical_or(mask, jnp.logical_not(flag))
    full, tail = divmod(mask.size, WORD_BITS)
    # All bits set, but the last word's padding bits, which stay zero (computed, not a
    # constant as large as the words).
    i = jax.lax.iota(jnp.int32, num_words(mask.size))
    ones = jnp.where(i < full, jnp.uint32(0xFFFFFFFF), jnp.uint32((1 << tail) - 1))
    fill = jnp.where(flag, jnp.zeros((), jnp.uint32), ones)
    return PackedMask(mask.words | fill, mask.shape)
