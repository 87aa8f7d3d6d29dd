"""Inspection: find the pruning state in an optimizer state, and count sparsity exactly."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Masks, Params, is_float_array, path_str
from jaxprune._src.transform import MagnitudePruningState

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


def find_pruning_states(opt_state: Any) -> list[MagnitudePruningState]:
    """Every :class:`MagnitudePruningState` inside ``opt_state`` (a chain, MultiSteps, nnx...)."""
    found: list[MagnitudePruningState] = []

    def visit(x: Any) -> Any:
        if isinstance(x, MagnitudePruningState):
            found.append(jax.tree.map(_unwrap, x, is_leaf=_is_opt_state_variable))
        return x

    jax.tree.map(visit, opt_state, is_leaf=lambda x: isinstance(x, MagnitudePruningState))
    return found


def get_pruning_state(opt_state: Any) -> MagnitudePruningState:
    """The one :class:`MagnitudePruningState` in ``opt_state``.

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
    flat = x.reshape(-1)
    zeros = 0
    for start in range(0, max(size, 1), _CHUNK):
        zeros += int(jnp.sum(flat[start : start + _CHUNK] == 0))
    return zeros, size


def _float_leaves(params: Params) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)
    return [(path_str(p), _unwrap(x)) for p, x in flat if is_float_array(_unwrap(x))]


def sparsity_summary(params: Params) -> dict[str, float]:
    """The fraction of exact zeros in every float leaf, and ``"overall"`` across them.

    Counts are exact integers (summed on the host), so the figures hold for any model size.

    Returns:
      ``{leaf path: sparsity, ..., "overall": sparsity}``; paths are ``/``-joined.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> jp.sparsity_summary({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(4)})
      {'b': 0.0, 'w': 0.75, 'overall': 0.375}
    """
    out: dict[str, float] = {}
    total_zeros = total = 0
    for path, x in _float_leaves(params):
        zeros, size = _zeros_and_size(x)
        out[path] = zeros / size if size else 0.0
        total_zeros += zeros
        total += size
    out["overall"] = total_zeros / total if total else 0.0
    return out


def sparsity_table(params: Params) -> str:
    """A readable per-leaf table: shape, parameters, non-zero, sparsity, and a total row.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> print(jp.sparsity_table({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(4)}))
      leaf   shape   params  non-zero  sparsity
      b      (4,)         4         4     0.00%
      w      (2, 2)       4         1    75.00%
      total               8         5    37.50%
    """
    rows = []
    total = nonzero_total = 0
    for path, x in _float_leaves(params):
        zeros, size = _zeros_and_size(x)
        rows.append((path, str(tuple(np.shape(x))), size, size - zeros))
        total += size
        nonzero_total += size - zeros
    rows.append(("total", "", total, nonzero_total))
    header = ("leaf", "shape", "params", "non-zero", "sparsity")
    cells = [
        (name, shape, f"{n:,}", f"{nz:,}", f"{(1 - nz / n) * 100 if n else 0.0:.2f}%")
        for name, shape, n, nz in rows
    ]
    widths = [max(len(r[c]) for r in [header, *cells]) for c in range(5)]
    lines = []
    for r in [header, *cells]:
        left = [r[c].ljust(widths[c]) for c in range(2)]
        right = [r[c].rjust(widths[c]) for c in range(2, 5)]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines)
