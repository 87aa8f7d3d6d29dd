"""Framework objects from a compaction: a smaller Flax NNX model.

:func:`compact` returns plain arrays and a function; NNX users want a model. An NNX model is
its graph definition and its state, and ``nnx.merge`` takes a state whose arrays have new
shapes: the layers compute with the arrays they hold. Only their size attributes
(``Linear.out_features``, ``BatchNorm.num_features``, ...) would still give the old sizes, so
:func:`compact_nnx` sets them from the new arrays for the standard layers and refuses, by name,
any other layer whose parameters changed shape.
"""

from __future__ import annotations

from typing import Any

from jaxprune._src.graph.compact import compact


def nnx_function(model: Any) -> tuple[Any, Any]:
    """``(fn, state)`` with ``fn(state, *args) == model(*args)``, for :func:`dependency_groups`.

    Groups found on this function are in the order :func:`compact_nnx` expects for ``keep``.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    def fn(st: Any, *args: Any) -> Any:
        return nnx.merge(graphdef, st)(*args)

    return fn, state


def _shape(variable: Any) -> tuple[int, ...]:
    return tuple(variable.get_value().shape)


def _fix(module: Any, nnx: Any) -> bool:
    """Sets the size attributes of a standard layer from its arrays; False if not standard."""
    if isinstance(module, nnx.Linear):
        module.in_features, module.out_features = _shape(module.kernel)
    elif isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
        shape = _shape(module.kernel)
        groups = getattr(module, "feature_group_count", 1) or 1
        module.in_features, module.out_features = shape[-2] * groups, shape[-1]
    elif isinstance(module, nnx.LinearGeneral):
        shape = _shape(module.kernel)
        n_in = len(module.in_features)
        module.in_features, module.out_features = shape[:n_in], shape[n_in:]
    elif isinstance(module, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
        held = [v for v in (getattr(module, n, None) for n in ("scale", "bias", "mean")) if v]
        if held:
            module.num_features = _shape(held[0])[-1]
    elif isinstance(module, nnx.Embed):
        module.num_embeddings, module.features = _shape(module.embedding)
    elif isinstance(module, nnx.MultiHeadAttention):
        q = _shape(module.query.kernel)  # (in_features, heads, head_dim)
        module.in_features = q[0]
        module.num_heads, module.head_dim = q[-2], q[-1]
        module.qkv_features = q[-2] * q[-1]
        module.out_features = _shape(module.out.kernel)[-1]
    else:
        return False
    return True


def _own_shapes(module: Any, nnx: Any) -> dict[str, tuple[int, ...]]:
    return {
        name: _shape(value)
        for name, value in vars(module).items()
        if isinstance(value, nnx.Variable) and hasattr(value.get_value(), "shape")
    }


def compact_nnx(model: Any, keep: Any, *example_args: Any) -> Any:
    """A smaller copy of an NNX model with the pruned channels removed (:func:`compact`).

    ``keep`` is one bool vector per group of ``dependency_groups(*nnx_function(model),
    *example_args)`` (or a mapping keyed by group name). The returned model is a new
    ``nnx.Module`` of the same classes, holding the sliced arrays; its ``Linear``, ``Conv``,
    ``LinearGeneral``, ``BatchNorm``/``LayerNorm``/``RMSNorm``/``GroupNorm``, ``Embed`` and
    ``MultiHeadAttention`` layers report their new sizes. It computes what the model with the
    pruned channels zeroed computes, and trains, saves and restores like any NNX model. The
    original model is left unchanged.

    Args:
      model: an ``nnx.Module`` called as ``model(*example_args)``.
      keep: the channels to keep, as :func:`compact` takes them.
      *example_args: example inputs.

    Returns:
      The smaller model.

    Raises:
      ValueError: as :func:`compact` does for ``keep``, and for a layer of another type whose
        parameters changed shape (its size attributes cannot be known): the message names
        the layer's path and type.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from flax import nnx
      >>> import jaxprune as jp
      >>> from jaxprune.structural import compact_nnx, nnx_function
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
      ...                        nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
      >>> x = jnp.ones((1, 4))
      >>> groups = jp.dependency_groups(*nnx_function(model), x)
      >>> small = compact_nnx(model, [np.arange(8) < 3], x)
      >>> small.layers[0].out_features, small.layers[2].in_features
      (3, 3)
    """
    from flax import nnx

    fn, state = nnx_function(model)
    small_state, _ = compact(fn, state, keep, *example_args)
    graphdef = nnx.graphdef(model)
    small = nnx.merge(graphdef, small_state)
    before = {path: _own_shapes(m, nnx) for path, m in nnx.iter_modules(model)}
    for path, module in nnx.iter_modules(small):
        if _own_shapes(module, nnx) == before.get(path):
            continue
        if not _fix(module, nnx):
            name = "/".join(str(p) for p in path) or "(the model itself)"
            raise ValueError(
                f"compact_nnx cannot rebuild {type(module).__name__} at {name!r}: its parameters "
                "changed shape and jaxprune does not know its size attributes. Use "
                "jaxprune.compact(*nnx_function(model), keep, *example_args), whose small_fn "
                "runs any layer."
            )
    return small
