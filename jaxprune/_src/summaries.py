"""Inspection: find the pruning state in an optimizer state, and count sparsity exactly."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Masks, Params, is_float_array, path_str
from jaxprune._src.transform import PRUNING_STATE_TYPES, MagnitudePruningState

# Counting is done per chunk so that int32 device counts never overflow.
_CHUNK = 2**30


def _unwrap(x: Any) -> Any:
    # flax.nnx wraps arrays in Variable objects; read their values.
    if hasattr(x, "get_value"):
        return x.get_value()
    return getattr(x, "value", x)


def _is_variable(x: Any) -> bool:
    return type(x).__module__.startswith("flax.nnx") and hasattr(x, "get_value")


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
    """
    found: list[Any] = []

    def visit(x: Any) -> Any:
        if _is_pruning_state(x):
            found.append(jax.tree.map(_unwrap, x, is_leaf=_is_opt_state_variable))
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
            f"expected exactly one magnitude_pruning state in opt_state, found {len(states)}; "
            "pass the part of the optimizer state that holds it"
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
      >>> masks["w"].dtype, masks["w"].shape
      (dtype('bool'), (2, 2))
    """
    return get_pruning_state(opt_state).masks


def _zeros_and_size(x: Any) -> tuple[int, int]:
    x = jnp.asarray(x)
    size = math.prod(x.shape)
    if size < _CHUNK or x.ndim < 2:
        return int(jnp.sum(x == 0)), size
    # Per-row counts stay far below 2**31; the total is summed in int64 on the host. No
    # reshape, so a leaf sharded along any axis is counted where it lives.
    rows = jnp.sum(x == 0, axis=tuple(range(1, x.ndim)), dtype=jnp.int32)
    return int(np.asarray(rows, np.int64).sum()), size


def _rows(params: Params, masks: Masks | None) -> list[tuple[str, tuple, int, int, bool]]:
    """``(path, shape, size, zeros, pruned)`` for every float leaf of ``params``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)
    pruned = [False] * len(flat)
    if masks is not None:
        try:
            mask_leaves = treedef.flatten_up_to(masks)
        except (ValueError, TypeError) as e:
            raise ValueError(f"masks must have the tree structure of params: {e}") from e
        pruned = [np.ndim(_unwrap(m)) > 0 for m in mask_leaves]
    rows = []
    for (path, x), on in zip(flat, pruned):
        x = _unwrap(x)
        if is_float_array(x):
            zeros, size = _zeros_and_size(x)
            rows.append((path_str(path), tuple(np.shape(x)), size, zeros, on))
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
