"""Params and masks as trees: leaf paths, flax.nnx wrappers, and matching masks to params.

One representation of masks is used everywhere in jaxprune: a tree with the params' leaves in
the same places, holding a bool array of the leaf's shape for a pruned leaf and a scalar ``True``
for a leaf that is not pruned, with no framework wrappers. Masks are matched to params **by leaf
path** (the ``/``-joined pytree path), and flax.nnx ``Variable`` wrappers are transparent: the
masks that :func:`jaxprune.get_masks` reads from an ``nnx.Optimizer`` state (plain arrays) work
with ``nnx.state(model, nnx.Param)`` (``Param`` wrappers), with its pure-dict form and with a
linen params dict alike, and every function that returns params keeps the wrappers it was given.
With ``jax.tree.map``, pass the masks first: they are a prefix of the params tree, so
``jax.tree.map(lambda m, p: ..., masks, params)`` works whether or not the params hold wrappers.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxprune._src.base import Params, path_str
from jaxprune._src.packed import is_packed


def is_variable(x: Any) -> bool:
    """Whether ``x`` is a flax.nnx ``Variable`` (e.g. ``nnx.Param``) wrapping an array."""
    return type(x).__module__.startswith("flax.nnx") and hasattr(x, "get_value")


def unwrap(x: Any) -> Any:
    """The array inside a flax.nnx ``Variable``; any other value as it is."""
    if is_packed(x):
        return x.unpack()
    if hasattr(x, "get_value"):
        return x.get_value()
    return getattr(x, "value", x)


def flat_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs, with flax.nnx ``Variable`` wrappers read as their value.

    So ``nnx.state(model)`` names its kernel ``"kernel"``, not ``"kernel/value"``, as the
    masks in an ``nnx.Optimizer`` state do. A ``PackedMask`` (from
    ``magnitude_pruning(mask_dtype="packed")``, ``jaxprune._src.packed``) is one leaf, read
    as its bool mask.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: is_variable(x) or is_packed(x)
    )
    return [(path_str(p), unwrap(x)) for p, x in flat]


def pair_with_masks(params: Params, masks: Any, name: str = "masks") -> list[tuple[str, Any, Any]]:
    """``(path, param, mask)`` for every leaf of ``params``, masks matched by path.

    Raises:
      ValueError: if the masks do not have the leaves of ``params`` (naming the paths missing
        on either side), or a non-scalar mask does not have its leaf's shape exactly (a mask
        that would only broadcast to the leaf is an error too).
    """
    p_flat, m_flat = flat_leaves(params), flat_leaves(masks)
    p_paths, m_paths = [p for p, _ in p_flat], [p for p, _ in m_flat]
    if p_paths != m_paths:
        missing = [p for p in p_paths if p not in set(m_paths)]
        extra = [p for p in m_paths if p not in set(p_paths)]
        detail = (
            f"leaves without a mask: {missing}; masks without a leaf: {extra}"
            if missing or extra
            else f"the same paths in another order: params {p_paths}, {name} {m_paths}"
        )
        raise ValueError(f"params do not match the {name} ({detail})")
    out = []
    for (path, x), (_, m) in zip(p_flat, m_flat, strict=True):
        if np.ndim(m) and np.shape(m) != np.shape(x):
            raise ValueError(
                f"the mask of {path!r} in {name} has shape {np.shape(m)}, but the param has "
                f"shape {np.shape(x)}; a mask is a scalar or has exactly its leaf's shape"
            )
        out.append((path, x, m))
    return out


def rebuild(params: Params, new_leaves: list[Any]) -> Params:
    """``params`` with its leaves replaced in flattening order (flax.nnx wrappers kept)."""
    treedef = jax.tree.structure(params)
    if treedef.num_leaves != len(new_leaves):
        raise ValueError(
            f"cannot rebuild a tree of {treedef.num_leaves} leaves from {len(new_leaves)} "
            "(a flax.nnx Variable that holds several arrays is not supported)"
        )
    return jax.tree.unflatten(treedef, new_leaves)
