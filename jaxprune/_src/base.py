"""Shared type aliases and small helpers used across jaxprune."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Params = Any  # a pytree of arrays
Masks = Any  # a pytree shaped like Params; pruned leaves are bool arrays, others scalar True
# A rule that says which leaves to prune: a regex searched in the leaf path, or a predicate
# ``(path, leaf) -> bool``.
LeafRule = str | re.Pattern | Callable[[str, Any], bool]


def path_str(path: tuple) -> str:
    """Joins a pytree key path with ``/``: ``params/Dense_0/kernel``."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(str(key.name))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # e.g. NamedTupleKey or a custom key type
            name = getattr(key, "name", None) or getattr(key, "key", None)
            parts.append(str(name) if name is not None else str(key).strip(".[]'\""))
    return "/".join(parts)


def leaf_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[str]:
    """The ``/``-joined path of every leaf of ``tree``, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [path_str(path) for path, _ in flat]


def is_float_array(x: Any) -> bool:
    """Whether ``x`` has a floating-point dtype (float16, bfloat16, float32, float64)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def check_sparsity(value: Any, name: str, *, allow_one: bool = False) -> None:
    """Raises ``ValueError`` unless a concrete sparsity lies in ``[0, 1)`` (or ``[0, 1]``).

    Traced values are accepted as they are: they cannot be checked without a host round-trip.
    """
    if isinstance(value, jax.core.Tracer):
        return
    # A bool or a string would convert to a float (True is 1.0, "0.5" is 0.5): refused.
    if isinstance(value, bool | str | bytes) or np.asarray(value).dtype.kind in "bUSO":
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(np.asarray(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real number, got {value!r}") from e
    upper_ok = v <= 1.0 if allow_one else v < 1.0
    if not (v >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in range {interval}, got {value!r}")
