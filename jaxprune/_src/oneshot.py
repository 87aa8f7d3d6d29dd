"""One-shot pruning: prune a trained model now, without a schedule or an optimizer.

The TensorFlow recipes users know (``weight_pruning`` and ``unit_pruning`` from the well-known
Stack Overflow answer) zero the ``k%`` smallest weights or columns of one matrix. Here the same
is done over a whole params tree, with tfmot's kept-count rule (:mod:`jaxprune._src.masks`) and
the leaf selection rules of the rest of jaxprune (:mod:`jaxprune._src.leaf_rules`).

:func:`magnitude_prune` is the one implementation of magnitude pruning: :func:`prune_weights`
and ``prune_oneshot(method="magnitude")`` both call it.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import leaf_rules, structured
from jaxprune._src import masks as masks_lib
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks, Params, check_sparsity

_SCOPES = ("layer", "global")


@jax.jit
def _layer_masks(leaves: list[Array], sparsity: ArrayLike) -> list[Array]:
    return [masks_lib.magnitude_threshold(x, sparsity)[0] for x in leaves]


@jax.jit
def _global_masks(leaves: list[Array], sparsity: ArrayLike) -> list[Array]:
    return masks_lib.global_threshold(leaves, sparsity)[0]


def _zero_pruned(x: Array, mask: Array) -> Array:
    return jnp.where(mask, x, jnp.zeros((), x.dtype))


def magnitude_masks(
    leaves: list[Array],
    sparsity: ArrayLike,
    *,
    scope: str = "layer",
    n_m: tuple[int, int] | None = None,
    axes: list[int] | None = None,
) -> list[Array]:
    """The magnitude masks of :func:`prune_weights` and ``prune_oneshot(method="magnitude")``.

    Unstructured (``n_m=None``): tfmot's rule per leaf (``scope="layer"``) or over all leaves
    together (``"global"``). N:M: :func:`jaxprune.nm_mask` of each leaf along ``axes[i]``.
    Arguments are validated by the callers.
    """
    if n_m is None:
        compute = _layer_masks if scope == "layer" else _global_masks
        return list(compute(list(leaves), sparsity))
    n, m = n_m
    axes = [-2] * len(leaves) if axes is None else axes
    return [structured.nm_mask(x, n, m, axis=a) for x, a in zip(leaves, axes, strict=True)]


def magnitude_prune(
    leaves: list[Array],
    sparsity: ArrayLike,
    *,
    scope: str = "layer",
    n_m: tuple[int, int] | None = None,
    axes: list[int] | None = None,
) -> tuple[list[Array], list[Array]]:
    """``(pruned leaves, masks)``: :func:`magnitude_masks`, pruned entries set to ``+0``.

    The one implementation of magnitude pruning behind :func:`prune_weights` and
    ``prune_oneshot(method="magnitude")``.
    """
    masks = magnitude_masks(leaves, sparsity, scope=scope, n_m=n_m, axes=axes)
    return [_zero_pruned(x, mk) for x, mk in zip(leaves, masks, strict=True)], masks


def _assemble(params: Params, rule: Any, compute: Any) -> tuple[Params, Masks]:
    paths, leaves, treedef = leaf_rules.flatten(params)
    chosen = leaf_rules.select(paths, leaves, rule)
    picked = [jnp.asarray(x) for x, on in zip(leaves, chosen, strict=True) if on]
    new_masks = iter(
        compute(picked, [p for p, on in zip(paths, chosen, strict=True) if on]) if picked else []
    )
    out_params, out_masks = [], []
    for x, on in zip(leaves, chosen, strict=True):
        if on:
            m = next(new_masks)
            out_params.append(_zero_pruned(jnp.asarray(x), m))
            out_masks.append(m)
        else:
            out_params.append(x)
            out_masks.append(jnp.ones((), bool))
    unflatten = jax.tree_util.tree_unflatten
    return unflatten(treedef, out_params), unflatten(treedef, out_masks)


def prune_weights(
    params: Params,
    sparsity: ArrayLike,
    *,
    scope: str = "layer",
    prune: LeafRule | None = None,
) -> tuple[Params, Masks]:
    r"""Zeroes the smallest-magnitude weights of ``params`` now (one shot, no schedule).

    The rule is :func:`jaxprune.magnitude_mask`'s (tfmot's): with ``n`` weights ranked
    together, :math:`k = \max(\mathrm{round\_half\_to\_even}(n(1 - s)), 1)` are kept and every
    weight with :math:`|w| \ge` the k-th largest magnitude survives (ties kept).
    ``scope="layer"`` ranks each selected leaf on its own; ``scope="global"`` ranks all
    selected leaves together (:func:`jaxprune.global_magnitude_masks`).
    :func:`jaxprune.prune_oneshot` with ``method="magnitude"`` runs the same code on the
    layers it finds (per layer, as ``scope="layer"``).

    Args:
      params: a pytree of arrays (e.g. a Flax ``params`` dict).
      sparsity: fraction to prune, in ``[0, 1]``.
      scope: ``"layer"`` or ``"global"``.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path, or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2.

    Returns:
      ``(pruned_params, masks)``: ``params`` with pruned entries set to ``0.0`` (leaves that
      are not pruned are returned as they are), and masks shaped like ``params`` (bool arrays
      for pruned leaves, scalar ``True`` elsewhere).

    Raises:
      ValueError: for a sparsity outside ``[0, 1]``, an unknown ``scope``, or a rule that
        matches no leaf.
      TypeError: if the rule selects a non-float leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.1, -2.0], [3.0, 0.2]]), "b": jnp.array([0.0, 1.0])}
      >>> pruned, masks = prune_weights(params, 0.5)
      >>> pruned["w"].tolist()
      [[0.0, -2.0], [3.0, 0.0]]
      >>> bool(masks["b"])
      True
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    rule = leaf_rules.compile_rule(prune, "prune")
    return _assemble(
        params, rule, lambda leaves, paths: magnitude_masks(leaves, sparsity, scope=scope)
    )


def prune_units(
    params: Params,
    sparsity: ArrayLike,
    *,
    axis: int = -1,
    prune: LeafRule | None = None,
) -> tuple[Params, Masks]:
    r"""Zeroes whole units (e.g. output neurons) with the smallest L2 norm, in every leaf.

    Each selected leaf is pruned on its own by :func:`unit_mask`: the slices along ``axis``
    (for a Flax ``(in, out)`` kernel and ``axis=-1``, the output neurons ``w[:, j]``; for a
    ``(h, w, in, out)`` convolution kernel, the output channels) are ranked by their norm
    :math:`\|w_{\dots, j}\|_2` and :math:`k = \max(\mathrm{round\_half\_to\_even}(U(1 - s)), 1)`
    of the ``U`` units are kept, with ties at the threshold kept.

    The bias of a pruned neuron is not touched (a rule could select it, but a 1-D bias is
    ranked on its own); to remove neurons from the computation, also zero their biases or
    compact the model.

    Args:
      params: a pytree of arrays.
      sparsity: fraction of units to prune in each selected leaf, in ``[0, 1]``.
      axis: the axis that indexes the units, the same for every selected leaf.
      prune: which leaves are pruned (regex or predicate, see :func:`prune_weights`). Default:
        float leaves of rank >= 2.

    Returns:
      ``(pruned_params, masks)`` as in :func:`prune_weights`.

    Raises:
      ValueError: for a sparsity outside ``[0, 1]``, a rule that matches no leaf, or an
        ``axis`` out of range for a selected leaf (the message names the leaf).
      TypeError: if the rule selects a non-float leaf or ``axis`` is not an int.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"kernel": jnp.array([[3.0, 0.1, 1.0], [4.0, 0.1, 1.0]])}
      >>> pruned, _ = prune_units(params, 0.34)
      >>> pruned["kernel"].tolist()
      [[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]]
    """
    check_sparsity(sparsity, "sparsity", allow_one=True)
    if isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError as e:
        raise TypeError(f"axis must be an int, got {axis!r}") from e
    rule = leaf_rules.compile_rule(prune, "prune")

    def compute(leaves: list[Array], paths: list[str]) -> list[Array]:
        for x, path in zip(leaves, paths, strict=True):
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(
                    f"axis={axis} is out of range for leaf {path!r} of shape {x.shape}"
                )
        return [structured.unit_threshold(x, sparsity, axis=axis)[0] for x in leaves]

    return _assemble(params, rule, compute)


__all__ = ["prune_units", "prune_weights"]
