r"""Sparsity distributions: how a total sparsity is split among the pruned leaves.

A distribution maps a params tree and a target sparsity ``s`` to one sparsity per pruned leaf,
``{path: sparsity}``, keyed by the leaf's ``/``-joined path (``params/Dense_0/kernel``). The
result feeds any transformation that takes per-leaf targets, e.g. ``sparsity_map=`` of
:func:`jaxprune.random_pruning`.

* **Uniform**: every pruned leaf gets ``s``.
* **Erdős–Rényi–Kernel (ERK)** (Evci et al. 2020, after Mocanu et al. 2018): the density
  (fraction kept) of a leaf of shape :math:`(n_1, \dots, n_r)` is proportional to

  .. math::

      \rho_\ell = \epsilon \left(\frac{\sum_i n_i}{\prod_i n_i}\right)^{p}

  (all dimensions, so a conv kernel's spatial extent counts; ``p`` is ``power_scale``), with
  :math:`\epsilon` chosen so that the parameter-weighted total sparsity is exactly ``s``:
  :math:`\sum_\ell N_\ell (1 - \rho_\ell) = s \sum_\ell N_\ell`. Small layers get denser,
  large ones sparser. A leaf whose density would exceed 1 is kept dense (sparsity 0) and
  :math:`\epsilon` is solved again over the others, until no density exceeds 1.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from jaxprune._src import leaf_rules, validate
from jaxprune._src.base import LeafRule


def _matches(rule: Any, path: str, leaf: Any) -> bool:
    if isinstance(rule, re.Pattern):
        return rule.search(path) is not None
    return bool(rule(path, leaf))


def pruned_shapes(
    params: Any, prune: LeafRule | None = None, exclude: LeafRule | None = None
) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of the leaves that are pruned under ``prune`` minus ``exclude``.

    Raises:
      ValueError: if ``prune`` or ``exclude`` matches no leaf, or no leaf is left to prune.
      TypeError: for a rule of the wrong type, or ``prune`` selecting a non-float leaf.
    """
    rule = leaf_rules.compile_rule(prune, "prune")
    drop = leaf_rules.compile_rule(exclude, "exclude")
    paths, leaves, _ = leaf_rules.flatten(params)
    chosen = leaf_rules.select(paths, leaves, rule)
    if drop is not None:
        dropped = [_matches(drop, p, x) for p, x in zip(paths, leaves)]
        if not any(dropped):
            raise ValueError(
                f"exclude={leaf_rules.describe(drop)} matches no leaf; leaf paths are {paths}"
            )
        chosen = [on and not d for on, d in zip(chosen, dropped)]
    out = {p: tuple(int(d) for d in np.shape(x)) for p, x, on in zip(paths, leaves, chosen) if on}
    if not out:
        raise ValueError(
            "no leaf is pruned (the default rule prunes float leaves of rank >= 2 not named "
            f"'bias'; prune= and exclude= change it); leaf paths are {paths}"
        )
    return out


def uniform_sparsities(
    params: Any,
    sparsity: float,
    *,
    prune: LeafRule | None = None,
    exclude: LeafRule | None = None,
) -> dict[str, float]:
    r"""The same sparsity for every pruned leaf.

    .. math::

        s_\ell = s \quad \text{for every pruned leaf } \ell

    Args:
      params: a pytree of arrays (or ``jax.ShapeDtypeStruct`` s: only shapes and dtypes are
        read).
      sparsity: the target, in ``[0, 1)``.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named
        ``bias``.
      exclude: leaves to leave out of the result, a regex or predicate as ``prune``.

    Returns:
      ``{path: sparsity}`` for every pruned leaf, in flattening order, Python floats.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, a rule that matches no leaf, or a tree
        with no leaf to prune.
      TypeError: for a non-numeric sparsity or a rule of the wrong type.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
      ...           "head": {"kernel": jnp.ones((3, 2))}}
      >>> uniform_sparsities(params, 0.5)
      {'dense/kernel': 0.5, 'head/kernel': 0.5}
      >>> uniform_sparsities(params, 0.5, exclude="head")
      {'dense/kernel': 0.5}

    References:
      Zhu & Gupta, `To prune, or not to prune <https://arxiv.org/abs/1710.01878>`_, 2017.
    """
    value = validate.check_fraction(sparsity, "sparsity")
    return {path: value for path in pruned_shapes(params, prune, exclude)}


def erk_sparsities(
    params: Any,
    sparsity: float,
    *,
    power_scale: float = 1.0,
    prune: LeafRule | None = None,
    exclude: LeafRule | None = None,
) -> dict[str, float]:
    r"""Erdős–Rényi–Kernel sparsities: smaller leaves are kept denser.

    For a pruned leaf :math:`\ell` of shape :math:`(n_1, \dots, n_r)` with
    :math:`N_\ell = \prod_i n_i` entries, the raw density is
    :math:`r_\ell = (\sum_i n_i / \prod_i n_i)^{p}` (every dimension counts, conv and
    ``DenseGeneral`` kernels alike). With :math:`D` the set of leaves kept dense (empty at
    first), the other leaves get density :math:`\epsilon r_\ell`, where

    .. math::

        \epsilon = \frac{(1 - s) \sum_\ell N_\ell - \sum_{\ell \in D} N_\ell}
                        {\sum_{\ell \notin D} r_\ell N_\ell},

    so that :math:`\sum_\ell N_\ell s_\ell = s \sum_\ell N_\ell` exactly. While some
    :math:`\epsilon r_\ell > 1`, the leaves with the largest :math:`r_\ell` join :math:`D`
    (sparsity ``0.0``) and :math:`\epsilon` is solved again. The result:
    :math:`s_\ell = 1 - \epsilon r_\ell`, or ``0.0`` for :math:`\ell \in D`.

    RigL's reference code counts each leaf's pruned entries as ``floor(N·s)``; here the target
    is met exactly (up to float64 rounding), so the total differs from RigL's by less than one
    entry per leaf.

    Args:
      params: a pytree of arrays (or ``jax.ShapeDtypeStruct`` s: only shapes are read).
      sparsity: the total target over the pruned leaves, in ``[0, 1)``.
      power_scale: the exponent ``p`` of the raw density, finite and ``> 0``; ``1.0`` is ERK,
        smaller values move towards uniform.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named
        ``bias``.
      exclude: leaves to leave out (not pruned, not counted in the total), a regex or
        predicate as ``prune``.

    Returns:
      ``{path: sparsity}`` for every pruned leaf, in flattening order, Python floats in
      ``[0, 1)``.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, a ``power_scale`` that is not finite and
        positive (or so large that the ratio of two leaves' raw densities underflows), a
        rule that matches no leaf, a tree with no leaf to prune, or a target no distribution
        reaches (every leaf forced dense).
      TypeError: for non-numeric arguments or a rule of the wrong type.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 8))},
      ...           "dense": {"kernel": jnp.ones((128, 10)), "bias": jnp.ones(10)},
      ...           "head": {"kernel": jnp.ones((10, 2))}}
      >>> s = erk_sparsities(params, 0.9)
      >>> {path: round(v, 4) for path, v in s.items()}
      {'conv/kernel': 0.8268, 'dense/kernel': 0.9104, 'head/kernel': 0.5011}
      >>> s = erk_sparsities(params, 0.5)  # the small head would need a density above 1
      >>> {path: round(v, 4) for path, v in s.items()}
      {'conv/kernel': 0.0931, 'dense/kernel': 0.5307, 'head/kernel': 0.0}

    References:
      Evci et al., `Rigging the Lottery: Making All Tickets Winners
      <https://arxiv.org/abs/1911.11134>`_, ICML 2020 (reference code:
      https://github.com/google-research/rigl).
      Mocanu et al., `Scalable training of artificial neural networks with adaptive sparse
      connectivity inspired by network science <https://arxiv.org/abs/1707.04780>`_, 2018.
    """
    target = validate.check_fraction(sparsity, "sparsity")
    if isinstance(power_scale, (bool, str)) or np.ndim(power_scale) != 0:
        raise TypeError(f"power_scale must be a finite real number > 0, got {power_scale!r}")
    try:
        p = float(power_scale)
    except (TypeError, ValueError) as e:
        raise TypeError(f"power_scale must be a finite real number > 0, got {power_scale!r}") from e
    if not (math.isfinite(p) and p > 0.0):
        raise ValueError(f"power_scale must be a finite real number > 0, got {power_scale!r}")
    shapes = pruned_shapes(params, prune, exclude)
    if target == 0.0:
        return {path: 0.0 for path in shapes}

    sizes = {k: math.prod(v) for k, v in shapes.items()}
    # The raw densities ((sum of dims) / size) ** p, divided by the largest of them (in logs):
    # only their ratios matter, and a large p would overflow or underflow them otherwise.
    logs = {k: p * math.log(sum(v) / sizes[k]) for k, v in shapes.items()}
    top_log = max(logs.values())
    raw = {k: math.exp(v - top_log) for k, v in logs.items()}
    if min(raw.values()) == 0.0:
        low = min(raw, key=raw.get)
        raise ValueError(
            f"power_scale={power_scale!r} is too large: the raw density of {low!r} underflows "
            "to 0 against the largest one (a density ratio below 1e-308); use a smaller "
            "power_scale"
        )
    kept_total = (1.0 - target) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [k for k in shapes if k not in dense]
        if not free:  # a guard: with s < 1 the exact maths always leaves a leaf free
            raise ValueError(
                f"erk_sparsities cannot reach sparsity={sparsity!r}: every pruned leaf would "
                "be kept dense"
            )
        budget = kept_total - sum(sizes[k] for k in dense)
        eps = budget / sum(raw[k] * sizes[k] for k in free)
        top = max(raw[k] for k in free)
        # The tolerance keeps float64 rounding from forcing the last leaves dense when the
        # exact density is 1 (a target within rounding of 0).
        if eps * top <= 1.0 + 1e-12:
            break
        # As RigL's reference code: the leaves with the largest raw density (all of them, if
        # they tie) become dense, then eps is solved again over the rest.
        dense.update(k for k in free if raw[k] == top)
    return {k: 0.0 if k in dense else max(float(1.0 - eps * raw[k]), 0.0) for k in shapes}


__all__ = ["uniform_sparsities", "erk_sparsities"]
