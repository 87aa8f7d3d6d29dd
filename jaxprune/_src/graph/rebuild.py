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


def equinox_function(model: Any) -> tuple[Any, Any]:
    """``(fn, params)`` with ``fn(params, *args) == model(*args)``: the model's arrays as
    ``params`` (``eqx.partition(model, eqx.is_array)``), for :func:`dependency_groups`."""
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_array)

    def fn(p: Any, *args: Any) -> Any:
        return eqx.combine(p, static)(*args)

    return fn, params


def _eqx_children(module: Any, eqx: Any) -> list[tuple[str, Any, Any]]:
    """``(label, getter, child)`` for the modules directly inside ``module``."""
    out = []

    def visit(value: Any, label: str, getter: Any) -> None:
        if isinstance(value, eqx.Module):
            out.append((label, getter, value))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{label}[{i}]", lambda m, g=getter, i=i: g(m)[i])
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{label}[{k!r}]", lambda m, g=getter, k=k: g(m)[k])

    for name in getattr(module, "__dataclass_fields__", {}):
        visit(getattr(module, name, None), name, lambda m, name=name: getattr(m, name))
    return out


def _eqx_modules(model: Any, eqx: Any) -> list[tuple[str, Any, Any]]:
    """``(path, getter, module)`` for every module in ``model``, parents before children."""
    out = [("", lambda m: m, model)]
    i = 0
    while i < len(out):
        path, getter, module = out[i]
        for label, child_getter, child in _eqx_children(module, eqx):
            name = f"{path}.{label}" if path else label
            out.append((name, lambda m, g=getter, c=child_getter: c(g(m)), child))
        i += 1
    return out


def _eqx_arrays(module: Any, eqx: Any) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(getattr(module, name).shape)
        for name in getattr(module, "__dataclass_fields__", {})
        if eqx.is_array(getattr(module, name, None))
    }


def _eqx_resized(module: Any, eqx: Any) -> Any:
    """A copy of a standard layer with its size fields set from its arrays, or None."""
    import copy

    sizes: dict[str, Any] = {}
    if isinstance(module, eqx.nn.Linear):
        w = module.weight.shape  # (out, in), or (in,)/(out,) for "scalar" features
        if len(w) == 2:
            sizes = {"out_features": w[0], "in_features": w[1]}
    elif isinstance(module, eqx.nn.Conv):
        w = module.weight.shape  # (out, in / groups, *kernel)
        sizes = {"out_channels": w[0], "in_channels": w[1] * module.groups}
    elif isinstance(module, (eqx.nn.LayerNorm, eqx.nn.RMSNorm)):
        held = module.weight if module.weight is not None else module.bias
        if held is not None:
            sizes = {"shape": tuple(held.shape)}
    elif isinstance(module, eqx.nn.Embedding):
        sizes = dict(zip(("num_embeddings", "embedding_size"), module.weight.shape))
    if not sizes:
        return None
    out = copy.copy(module)
    for name, value in sizes.items():
        object.__setattr__(out, name, value)
    return out


def compact_equinox(model: Any, keep: Any, *example_args: Any) -> Any:
    """A smaller copy of an Equinox model with the pruned channels removed (:func:`compact`).

    ``keep`` is one bool vector per group of ``dependency_groups(*equinox_function(model),
    *example_args)``. The model's arrays are sliced; ``eqx.nn.Linear``, ``Conv`` (all
    dimensions), ``LayerNorm``, ``RMSNorm`` and ``Embedding`` report their new sizes. A layer
    of another type whose arrays changed shape is refused by path and type (stateful layers
    such as ``eqx.nn.BatchNorm`` keep their running statistics outside the model, which a
    compaction of the model cannot slice). The original model is unchanged.

    Args:
      model: an ``eqx.Module`` called as ``model(*example_args)``.
      keep: the channels to keep, as :func:`compact` takes them.
      *example_args: example inputs.

    Returns:
      The smaller model.

    Raises:
      ValueError: as :func:`compact` does for ``keep``, and for a layer it cannot rebuild.

    Examples:
      >>> import equinox as eqx, jax, jax.numpy as jnp, numpy as np
      >>> import jaxprune as jp
      >>> from jaxprune.structural import compact_equinox, equinox_function
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> model = eqx.nn.Sequential([eqx.nn.Linear(4, 8, key=k1), eqx.nn.Lambda(jax.nn.relu),
      ...                            eqx.nn.Linear(8, 2, key=k2)])
      >>> x = jnp.ones(4)
      >>> groups = jp.dependency_groups(*equinox_function(model), x)
      >>> small = compact_equinox(model, [np.arange(8) < 3], x)
      >>> small.layers[0].out_features, small.layers[2].in_features
      (3, 3)
    """
    import equinox as eqx

    fn, params = equinox_function(model)
    small_params, _ = compact(fn, params, keep, *example_args)
    static = eqx.partition(model, eqx.is_array)[1]
    small = eqx.combine(small_params, static)
    before = {path: _eqx_arrays(m, eqx) for path, _, m in _eqx_modules(model, eqx)}
    # Deepest first, so that replacing a module keeps the getters of its parents valid.
    for path, getter, module in reversed(_eqx_modules(small, eqx)):
        if _eqx_arrays(module, eqx) == before.get(path):
            continue
        resized = _eqx_resized(module, eqx)
        if resized is None:
            raise ValueError(
                f"compact_equinox cannot rebuild {type(module).__name__} at "
                f"{path or '(the model itself)'!r}: its arrays changed shape and jaxprune does "
                "not know its size fields. Use jaxprune.compact(*equinox_function(model), keep, "
                "*example_args), whose small_fn runs any layer."
            )
        small = resized if not path else eqx.tree_at(getter, small, resized)
    return small
