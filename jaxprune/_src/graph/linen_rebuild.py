"""A smaller flax.linen module after compaction: the same classes with smaller size fields.

A linen module keeps its sizes in dataclass fields (``nn.Dense(features=64)``, a model's
``widths=(32, 64)`` or ``heads=8``), and the layers an ``@nn.compact`` body creates take their
sizes from those fields. No generic code can read which field sets which axis. So
:func:`compact_linen` searches for them: a field is a candidate when its value is the old size
of an axis that compaction changed, and it may take that axis's new size. The candidates are
fields of the module and of every module held in its fields (``nn.Sequential``'s layers, a
block passed as an attribute), integers and integers inside tuples or lists. Each assignment is
checked by tracing ``init`` of the clone (``jax.eval_shape``: nothing is computed): the first
clone whose variables have exactly the compacted shapes is returned. When none does, the error
names the leaves that no assignment gives the compacted shape, and :func:`compact`'s
``small_fn`` remains the way to run the smaller model.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import numpy as np

from jaxprune._src.base import path_str
from jaxprune._src.graph.compact import compact

# At most this many clones are traced before giving up.
MAX_TRIES = 256


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(p): tuple(np.shape(x)) for p, x in flat}


def _size_changes(dense: dict, small: dict) -> dict[int, set[int]]:
    """Old size -> the sizes its axes have after compaction (itself where one stayed)."""
    out: dict[int, set[int]] = {}
    for path, old in dense.items():
        for a, b in zip(old, small[path], strict=True):
            out.setdefault(a, set()).add(b)
    return {a: news for a, news in out.items() if news != {a}}


def _fields(module: Any, nn: Any):
    return [
        f
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name") and f.init and hasattr(module, f.name)
    ]


def _slots(module: Any, nn: Any, changes: dict[int, set[int]], out: list) -> None:
    """Appends ``(where, old, options)`` for every integer field a changed size may set."""

    def visit(value, where):
        if isinstance(value, bool):
            return
        if isinstance(value, (int, np.integer)) and int(value) in changes:
            old = int(value)
            # New sizes first; the old one too, for a field that only happens to be equal.
            out.append((where, old, sorted(changes[old]) + [old]))
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                visit(v, f"{where}[{i}]")
        elif isinstance(value, nn.Module):
            for f in _fields(value, nn):
                visit(getattr(value, f.name), f"{where}.{f.name}")

    for f in _fields(module, nn):
        visit(getattr(module, f.name), f"{type(module).__name__}.{f.name}")


def _rebuild(module: Any, nn: Any, changes: dict[int, set[int]], values: list[int]) -> Any:
    """``module`` with its slots (in :func:`_slots` order) set to ``values``."""
    it = iter(values)

    def rebuild(value):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, np.integer)) and int(value) in changes:
            return next(it)
        if isinstance(value, (tuple, list)):
            return type(value)(rebuild(v) for v in value)
        if isinstance(value, nn.Module):
            return value.clone(
                **{f.name: rebuild(getattr(value, f.name)) for f in _fields(value, nn)}
            )
        return value

    return rebuild(module)


def compact_linen(module: Any, variables: Any, keep: Any, *example_args: Any) -> tuple[Any, Any]:
    """A smaller linen module and its variables, with the pruned channels removed.

    :func:`compact` slices ``variables`` (``keep`` as it takes it, for the groups of
    ``dependency_groups(module.apply, variables, *example_args)``); this function also finds
    the module with the matching sizes: a clone of ``module`` whose integer fields (and those
    of the modules held in its fields, such as ``nn.Sequential``'s layers) are set to the new
    sizes, checked by tracing its ``init``. ``small_module.apply(small_variables, *args)``
    computes what ``module`` computes with the pruned channels zeroed, and the pair trains,
    saves and restores like any linen model.

    Args:
      module: an unbound ``flax.linen.Module``, called as ``module.apply(variables, *args)``.
      variables: every variable collection ``apply`` reads (``{"params": ...,
        "batch_stats": ...}``).
      keep: the channels to keep, as :func:`compact` takes them.
      *example_args: example inputs.

    Returns:
      ``(small_module, small_variables)``.

    Raises:
      TypeError: if ``module`` is not a linen module.
      ValueError: as :func:`compact` does for ``keep``; if ``module`` is bound; and if no
        assignment of its size fields gives the compacted shapes (sizes computed in the
        module's code rather than held in fields): the message names the leaves, and
        :func:`compact`'s ``small_fn`` runs the smaller model regardless.

    Examples:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jaxprune.structural import compact_linen
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
      >>> x = jnp.ones((1, 4))
      >>> variables = model.init(jax.random.key(0), x)
      >>> small_model, small = compact_linen(model, variables, [np.arange(8) < 3], x)
      >>> small_model.layers[0].features, small["params"]["layers_2"]["kernel"].shape
      (3, (3, 2))
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module).__name__}.")
    if module.scope is not None:
        raise ValueError(
            "module must be unbound (the model definition, not the result of module.bind or "
            "of a call inside another module's apply)."
        )
    small, _ = compact(module.apply, variables, keep, *example_args)
    dense_shapes, want = _shapes(variables), _shapes(small)
    if dense_shapes == want:
        return module, small
    changes = _size_changes(dense_shapes, want)
    slots: list = []
    _slots(module, nn, changes, slots)
    collections = set(variables) if isinstance(variables, dict) else None

    def shapes_of(candidate) -> dict[str, tuple[int, ...]] | None:
        try:
            out = jax.eval_shape(lambda: candidate.init(jax.random.key(0), *example_args))
        except Exception:  # a clone whose sizes do not fit together: not the one
            return None
        if collections is not None:
            out = {k: v for k, v in out.items() if k in collections}
        return _shapes(out)

    first = None
    options = [opts for _, _, opts in slots]
    for values in itertools.islice(itertools.product(*options), MAX_TRIES):
        candidate = _rebuild(module, nn, changes, list(values))
        got = shapes_of(candidate)
        if got == want:
            return candidate, small
        if first is None and got is not None:
            first = got
    fields = ", ".join(f"{where}={old}" for where, old, _ in slots) or "none"
    if first is None:
        detail = "no clone with new sizes could be initialized"
    else:
        wrong = [
            f"{p}: {first.get(p)} instead of {s}" for p, s in want.items() if first.get(p) != s
        ]
        detail = "e.g. " + "; ".join(wrong[:4])
    raise ValueError(
        f"compact_linen found no size fields of {type(module).__name__} that give the "
        f"compacted shapes ({detail}). Fields tried: {fields}. Sizes computed in the "
        "module's code, not held in its fields, cannot be changed from outside; use "
        "jaxprune.compact(module.apply, variables, keep, *example_args), whose small_fn runs "
        "the smaller model."
    )
