"""Validation for Fisher pruning: masks, batches, loss functions and options.

Everything here runs on the host, on static shapes, when a function is called or traced (under
``jax.jit`` once per compilation), so bad input fails early with a message that names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxprune._src.base import path_str

ROUTES = ("vmap", "backward")

LossFn = Callable[..., Any]


def check_masks(masks: Any, name: str = "masks") -> list[tuple[str, Any]]:
    """Raises unless ``masks`` is a non-empty pytree of 1-D float arrays; returns (path, leaf)."""
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    if not flat:
        raise ValueError(
            f"{name} has no leaves: Fisher pruning needs at least one channel mask, a float "
            "array of shape (C,)"
        )
    out = []
    for path, leaf in flat:
        where = path_str(path) or "<root>"
        shape = np.shape(leaf)
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(
                f"{name}[{where!r}] has shape {shape}; a channel mask is 1-D, shape (C,) with "
                "C >= 1"
            )
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{name}[{where!r}] must be a float array of ones and zeros (so that it can be "
                f"differentiated), got dtype {dtype}"
            )
        out.append((where, leaf))
    return out


def check_like_masks(tree: Any, masks: Any, name: str, *, leading: tuple = ()) -> None:
    """Raises unless ``tree`` has the structure of ``masks`` and leaves of shape leading + (C,)."""
    if jax.tree.structure(tree) != jax.tree.structure(masks):
        raise ValueError(
            f"{name} must have the tree structure of the masks, got {jax.tree.structure(tree)} "
            f"for masks {jax.tree.structure(masks)}"
        )
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    for (path, m), t in zip(flat, jax.tree.leaves(tree), strict=True):
        shape = tuple(np.shape(t))
        want = tuple(leading) + tuple(np.shape(m))
        if len(shape) != len(want) or any(
            w is not None and s != w for s, w in zip(shape, want, strict=True)
        ):
            expected = "(" + ", ".join("B" if w is None else str(w) for w in want) + ")"
            raise ValueError(
                f"{name}[{path_str(path)!r}] has shape {shape}, expected {expected} to match its "
                "mask"
            )


def check_decay(decay: Any) -> None:
    """Raises unless a concrete ``decay`` is a real number in [0, 1)."""
    if isinstance(decay, jax.core.Tracer):
        return
    try:
        value = float(np.asarray(decay))
    except (TypeError, ValueError) as e:
        raise TypeError(f"decay must be a real number in [0, 1), got {decay!r}") from e
    if not 0.0 <= value < 1.0:
        raise ValueError(f"decay must be in range [0, 1), got {decay!r}")


def check_route(route: Any) -> None:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")


def batch_size_of(batch: Any) -> int:
    """The common size of the leading axis of every leaf of ``batch``."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch has no array leaves; it must hold arrays with a batch axis")
    sizes = set()
    for leaf in leaves:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                "every leaf of batch needs a leading batch axis; got a scalar leaf "
                f"({leaf!r}); close over constants in loss_fn instead"
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"the leaves of batch disagree on the batch size: {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise ValueError("batch is empty (batch size 0)")
    return int(size)


def _spec(x: Any) -> jax.ShapeDtypeStruct:
    x = x if hasattr(x, "dtype") else jnp.asarray(x)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def example_spec(batch: Any) -> Any:
    """Shapes and dtypes of one example: ``batch`` without its leading axis."""
    return jax.tree.map(lambda x: _spec(x[0]), batch)


def _live_inputs(closed, num_outputs: int) -> list[bool]:
    """Which inputs the first outputs of a jaxpr depend on (sub-jaxprs taken as a whole)."""
    jaxpr = closed.jaxpr
    live = {v for v in jaxpr.outvars[:num_outputs] if not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(o in live for o in eqn.outvars):
            live.update(v for v in eqn.invars if not isinstance(v, Literal))
    return [v in live for v in jaxpr.invars]


def check_loss_fn(
    loss_fn: LossFn, params: Any, masks: Any, data: Any, *, out_shape: tuple, has_aux: bool
) -> None:
    """Traces ``loss_fn(params, masks, data)`` abstractly: shape of the loss, masks all used.

    Runs at trace time only (under ``jax.jit`` once per compilation). A mask the loss does not
    depend on would get a zero signal and be pruned first, so it is an error.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")
    args = jax.tree.map(_spec, (params, masks, data))
    closed, out = jax.make_jaxpr(loss_fn, return_shape=True)(*args)
    if has_aux:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError("with has_aux=True, loss_fn must return a pair (loss, aux)")
        out = out[0]
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != tuple(out_shape):
        what = "a scalar" if out_shape == () else f"per-example losses of shape {out_shape}"
        got = f"shape {tuple(shape)}" if shape is not None else type(out).__name__
        raise TypeError(f"loss_fn must return {what}, got {got}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a float loss, got dtype {out.dtype}")
    n_params = len(jax.tree.leaves(params))
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    # The loss is the first output (aux, if any, comes after it): a mask used only in aux
    # does not count.
    live = _live_inputs(closed, 1)[n_params : n_params + len(flat)]
    names = [path_str(path) or "<root>" for path, _ in flat]
    unused = [name for name, used in zip(names, live, strict=True) if not used]
    if unused:
        raise ValueError(
            "the loss does not depend on the channel masks "
            + ", ".join(repr(u) for u in unused)
            + ": each mask must multiply an activation of the model (mask_channels or a "
            "ChannelMask module) whose feature axis has the mask's shape"
        )
