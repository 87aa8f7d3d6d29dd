r"""Scheduled sparse training with scores: STE, SR-STE, random STE, saliency and movement.

Each function returns a :class:`~jaxprune._src.sparse_core.SparseAlgorithm` for
:func:`jaxprune.sparse`, driven by a :class:`jaxprune.PruningSchedule`: at update :math:`t` (the
first is :math:`t = 0`), ``(should_prune, s) = schedule(t)``; when ``should_prune`` holds, the
masks are recomputed inside ``lax.cond`` at sparsity :math:`s`.

Two ways to apply a mask:

* **straight-through** (:func:`magnitude_ste`, :func:`random_ste`, :func:`movement_pruning`):
  the dense weights are kept and keep receiving gradients; the forward pass uses
  :func:`jaxprune.masked_params`, whose gradient is the identity, so a pruned weight keeps
  learning and can come back when the masks are recomputed;
* **zero** (:func:`saliency_pruning`): pruned weights are exactly ``0.0`` after every update.

Scores are ranked with exact counts: each leaf keeps
:math:`k = \max(\mathrm{round\_half\_to\_even}(n (1 - s)), 1)` entries (over all pruned leaves
together with ``scope="global"``), ties broken by position; :func:`magnitude_ste` uses the rule
of :func:`jaxprune.magnitude_mask` (ties at the threshold kept).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import leaf_rules as spec
from jaxprune._src import masks as masks_lib
from jaxprune._src import radix_select as selection
from jaxprune._src import validate
from jaxprune._src.base import Array, LeafRule, Masks, Params
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.sparse_core import (
    SparseAlgorithm,
    SparseMaskState,
    check_key,
    check_schedule,
    lift,
    random_bits,
    signed_keys,
    top_k_sources,
)
from jaxprune._src.transform import call_schedule, register_pruning_state, skip_nan_turn

_SCOPES = ("layer", "global")


@register_pruning_state
class MovementPruningState(NamedTuple):
    """State of :func:`movement_pruning`.

    ``scores`` holds the accumulated movement :math:`-\\sum_t w_t g_t` of every pruned leaf
    (float32, the leaf's shape), and a scalar ``0.0`` for the others.
    """

    count: Array  # shape=(), int32: updates seen so far (the schedule's step)
    masks: Masks  # like params: bool, leaf shape if pruned else shape=()
    scores: Any  # like params: float32, leaf shape if pruned else shape=()


def _pruned(masks: list) -> list[int]:
    return [i for i, m in enumerate(masks) if np.ndim(m) > 0]


def _mask_init(rule: Any, structure: Any = None) -> Any:
    def init(params: Params) -> SparseMaskState:
        paths, leaves, treedef = spec.flatten(params)
        chosen = spec.select(paths, leaves, rule)
        if structure is not None:
            for path, leaf, on in zip(paths, leaves, chosen):
                if on:
                    _check_structure_fits(structure, leaf, path)
        masks = masks_lib.masks_like(params, chosen)
        return SparseMaskState(
            count=jnp.zeros((), jnp.int32), masks=jax.tree_util.tree_unflatten(treedef, masks)
        )

    return init


def _check_structure(structure: Any, scope: str) -> Any:
    """``None``, or a structure that pools scores (``from_scores``); per leaf only."""
    if structure is None:
        return None
    if not callable(getattr(structure, "from_scores", None)):
        raise TypeError(
            "structure must be None or a structure that pools scores: "
            f"jaxprune.BlockSparsity, jaxprune.NMSparsity or jaxprune.UnitSparsity; got "
            f"{structure!r}"
        )
    if scope != "layer":
        raise ValueError(
            f"a structure ranks each leaf's groups on their own: use scope='layer' with "
            f"structure={structure!r}, got scope={scope!r}"
        )
    return structure


def _check_structure_fits(structure: Any, leaf: Any, path: str) -> None:
    """Traces the structure on the leaf's shape, so a misfit fails at init with the path."""
    try:
        out = jax.eval_shape(
            structure.from_scores,
            jax.ShapeDtypeStruct(np.shape(leaf), jnp.float32),
            jnp.float32(0.5),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"structure {structure!r} does not fit leaf {path!r}: {e}") from e
    if tuple(out[0].shape) != tuple(np.shape(leaf)):
        raise ValueError(
            f"structure {structure!r} gives a mask of shape {tuple(out[0].shape)} for leaf "
            f"{path!r} of shape {tuple(np.shape(leaf))}"
        )


def _check_scope(scope: Any) -> str:
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    return scope


def _check_lambda(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"sr_ste_lambda must be a float >= 0, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 0.0):
        raise ValueError(f"sr_ste_lambda must be a finite float >= 0, got {value!r}")
    return float(value)


def _turn(schedule: Any) -> Any:
    """The schedule's turns, less those whose sparsity is NaN (the masks stay as they were)."""

    def turn(state: Any) -> Array:
        should_prune, sparsity = call_schedule(schedule, state.count)
        return skip_nan_turn(should_prune, sparsity)[0]

    return turn


def _sr_ste(lam: float) -> Any:
    if lam == 0.0:
        return None

    def adjust(state: Any, p: list, g: list) -> list:
        m = jax.tree_util.tree_leaves(state.masks)
        out = list(g)
        for i in _pruned(m):
            gi, w = jnp.asarray(g[i]), jnp.asarray(p[i])
            decay = jnp.where(m[i], jnp.zeros((), w.dtype), w)
            out[i] = gi + (jnp.asarray(lam, gi.dtype) * decay).astype(gi.dtype)
        return out

    return adjust


def _ranked(
    keys: list[selection.KeySource], sizes: list[int], sparsity: Array, scope: str
) -> list[Array]:
    """Exact top-k masks of ``keys`` (computed on the fly), per leaf or over all leaves."""
    if scope == "global" and keys:  # (no pruned leaf: nothing to rank)
        return top_k_sources(keys, selection.kept_count(sum(sizes), sparsity))
    return [top_k_sources([x], selection.kept_count(n, sparsity))[0] for x, n in zip(keys, sizes)]


def magnitude_ste(
    schedule: PruningSchedule | Any,
    *,
    sr_ste_lambda: float = 0.0,
    structure: Any = None,
    prune: LeafRule | None = None,
    recompute_from: str = "updated",
) -> SparseAlgorithm:
    r"""Straight-through magnitude masks, optionally with SR-STE's decay of pruned weights.

    On the schedule's turns the masks are recomputed from the dense weights this step produces,
    :math:`w + u` (``recompute_from="updated"``, the default), or from the weights before this
    step's update, :math:`w` (``"current"``), by the rule of :func:`jaxprune.magnitude_mask` at
    the schedule's sparsity.
    The dense weights are kept: the forward pass uses :func:`jaxprune.masked_params`
    (:math:`m \odot w`), and the gradient of that loss with respect to :math:`w` reaches every
    weight (straight-through estimator). With SR-STE the inner optimizer receives

    .. math::

        \tilde g = g + \lambda \, (1 - m) \odot w,

    which pulls the pruned weights towards zero so the masks settle.

    Args:
      schedule: when to recompute the masks and at what sparsity, e.g.
        :func:`jaxprune.polynomial_decay`; any callable ``step -> (should_prune, sparsity)``.
      sr_ste_lambda: :math:`\lambda \ge 0`; ``0`` (default) is the plain STE.
      structure: ``None`` (single weights), or a structure that pools the magnitudes
        :math:`|w + u|`: :class:`jaxprune.NMSparsity` (SR-STE's setting: ``NMSparsity(2, 4)``
        keeps 2 of every 4 inputs, whatever the schedule's sparsity; the schedule then only says
        when), :class:`jaxprune.BlockSparsity` or :class:`jaxprune.UnitSparsity`.
      prune: which leaves are masked: a regex searched in the leaf path or a predicate
        ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named ``bias``.
      recompute_from: ``"updated"`` (default): rank :math:`w + u`; ``"current"``: rank
        :math:`w`, which does not wait for this step's update (see
        ``docs/sparse-training.md`` for what each costs).

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`; its state is a
      ``SparseMaskState`` (all-``True`` masks until the first turn).

    Raises:
      ValueError: for a negative or non-finite ``sr_ste_lambda``, an unknown
        ``recompute_from``, or (at ``init``) a rule that matches no leaf or a structure that
        does not fit a pruned leaf.
      TypeError: for a non-callable schedule, a non-numeric ``sr_ste_lambda`` or an unknown
        ``structure``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
      >>> sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
      >>> tx = jp.sparse(optax.sgd(1.0), jp.magnitude_ste(sched, sr_ste_lambda=0.1))
      >>> state = tx.init(params)
      >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)  # masks: |w| top 2
      >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
      >>> # -lr * lambda * w on the pruned weights, nothing on the kept ones
      >>> bool(jnp.allclose(updates["w"], jnp.array([[-0.1, 0.0], [-0.05, 0.0]])))
      True

    References:
      Bengio et al., 2013, `Estimating or Propagating Gradients Through Stochastic Neurons
      <https://arxiv.org/abs/1308.3432>`_; Zhou et al., 2021, `Learning N:M Fine-grained
      Structured Sparse Neural Networks From Scratch <https://arxiv.org/abs/2102.04010>`_.
    """
    check_schedule(schedule)
    lam = _check_lambda(sr_ste_lambda)
    structure = _check_structure(structure, "layer")
    rule = spec.compile_rule(prune, "prune")
    validate.check_recompute_from(recompute_from)

    def recompute(plan: Any, state: Any, p: list, g: Any, u: Any) -> list[Array]:
        del plan, g, u  # p: w + u with "updated_params" in reads, else w
        s = call_schedule(schedule, state.count)[1]
        m = list(jax.tree_util.tree_leaves(state.masks))
        idx = _pruned(m)
        if structure is not None:
            for i in idx:
                m[i] = structure.from_scores(jnp.abs(jnp.asarray(p[i])), s)[0].astype(bool)
            return m
        if len(idx) > 1:  # one batched selection for all leaves
            got = masks_lib.layer_thresholds([p[i] for i in idx], s)[0]
        else:
            got = [masks_lib.magnitude_threshold(p[i], s)[0] for i in idx]
        for i, new in zip(idx, got):
            m[i] = new
        return m

    return SparseAlgorithm(
        name="magnitude_ste",
        init=_mask_init(rule, structure),
        turn=_turn(schedule),
        recompute=recompute,
        reads=frozenset({"updated_params"}) if recompute_from == "updated" else frozenset(),
        straight_through=True,
        adjust_grads=_sr_ste(lam),
    )


def random_ste(
    schedule: PruningSchedule | Any,
    *,
    key: Any,
    sr_ste_lambda: float = 0.0,
    prune: LeafRule | None = None,
) -> SparseAlgorithm:
    r"""Straight-through random masks, redrawn on the schedule's turns (a baseline).

    On a turn at step :math:`t` with sparsity :math:`s`, each masked leaf of :math:`n` weights
    keeps exactly :math:`k = \max(\mathrm{round\_half\_to\_even}(n (1 - s)), 1)` entries drawn
    uniformly at random from ``fold_in(fold_in(key, t), i)`` (leaf ``i`` in flattening order).
    Otherwise as :func:`magnitude_ste`: dense weights kept, forward pass through
    :func:`jaxprune.masked_params`, SR-STE's :math:`\lambda (1 - m) \odot w` added to the
    gradient when ``sr_ste_lambda > 0``.

    Args:
      schedule: when to redraw the masks and at what sparsity.
      key: a PRNG key, e.g. ``jax.random.key(0)``.
      sr_ste_lambda: :math:`\lambda \ge 0`.
      prune: which leaves are masked (regex or predicate); default: float leaves of rank >= 2
        not named ``bias``.

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`.

    Raises:
      ValueError: for a missing key or a bad ``sr_ste_lambda``.
      TypeError: for a non-callable schedule or a key that is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> sched = jp.constant_sparsity(0.75, begin_step=0, frequency=1)
      >>> tx = jp.sparse(optax.sgd(0.1), jp.random_ste(sched, key=jax.random.key(0)))
      >>> params = {"w": jnp.ones((4, 4))}
      >>> state = tx.init(params)
      >>> _, state = tx.update({"w": jnp.ones((4, 4))}, state, params)
      >>> int(jp.get_masks(state)["w"].sum())
      4

    References:
      Zhou et al., 2021, `Learning N:M Fine-grained Structured Sparse Neural Networks From
      Scratch <https://arxiv.org/abs/2102.04010>`_.
    """
    check_schedule(schedule)
    key = check_key(key)
    lam = _check_lambda(sr_ste_lambda)
    rule = spec.compile_rule(prune, "prune")

    def recompute(plan: Any, state: Any, p: list, g: Any, u: Any) -> list[Array]:
        del plan, g, u
        s = call_schedule(schedule, state.count)[1]
        m = list(jax.tree_util.tree_leaves(state.masks))
        step_key = jax.random.fold_in(key, state.count)
        for i in _pruned(m):
            shape = np.shape(p[i])
            bits = random_bits(jax.random.fold_in(step_key, i), shape)
            src = selection.KeySource((bits,), lambda b: b)
            m[i] = top_k_sources([src], selection.kept_count(math.prod(shape), s))[0]
        return m

    return SparseAlgorithm(
        name="random_ste",
        init=_mask_init(rule),
        turn=_turn(schedule),
        recompute=recompute,
        straight_through=True,
        adjust_grads=_sr_ste(lam),
    )


def saliency_pruning(
    schedule: PruningSchedule | Any,
    *,
    scope: str = "layer",
    structure: Any = None,
    prune: LeafRule | None = None,
) -> SparseAlgorithm:
    r"""Prunes the weights of smallest saliency :math:`|w \odot g|` on a schedule.

    On a turn at sparsity :math:`s` the score of a weight is :math:`|w_i g_i|` (float32), with
    :math:`g` the raw gradient given to ``update`` at the weights :math:`w` it was computed at:
    the first-order estimate of the change in loss when :math:`w_i` is set to zero. The
    :math:`k` weights of largest score are kept, per leaf (``scope="layer"``) or over all pruned
    leaves together (``scope="global"``); weights already pruned rank below every kept one, so
    they stay pruned while the schedule's sparsity grows. Pruned weights are exactly ``0.0``
    after every update, and the optimizer sees :math:`g \odot m`.

    Args:
      schedule: when to prune and at what sparsity, e.g. :func:`jaxprune.polynomial_decay`.
      scope: ``"layer"`` or ``"global"``.
      structure: ``None`` (single weights), or a structure that pools the saliencies per
        group: :class:`jaxprune.BlockSparsity` (mean or max per block),
        :class:`jaxprune.NMSparsity` or :class:`jaxprune.UnitSparsity` (L2 per unit); per leaf
        only (``scope="layer"``). Pruned weights score 0, so they rank last in their group.
      prune: which leaves are pruned (regex or predicate); default: float leaves of rank >= 2
        not named ``bias``.

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`.

    Raises:
      ValueError: for an unknown ``scope``, a structure with ``scope="global"``, or (at
        ``init``) a rule that matches no leaf or a structure that does not fit a pruned leaf.
      TypeError: for a non-callable schedule or an unknown ``structure``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
      >>> tx = jp.sparse(optax.sgd(0.1), jp.saliency_pruning(sched))
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> grads = {"w": jnp.array([[4.0, 0.1], [1.0, 0.0]])}   # |w g| = 4, 0.2, 3, 0
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> jp.get_masks(state)["w"].tolist()
      [[True, False], [True, False]]

    References:
      Mozer & Smolensky, 1989, `Skeletonization: A Technique for Trimming the Fat from a Network
      via Relevance Assessment <https://proceedings.neurips.cc/paper/1988/hash/07e1cd7dca89a1678042477183b7ac3f-Abstract.html>`_;
      Molchanov et al., 2017, `Pruning Convolutional Neural Networks for Resource Efficient
      Inference <https://arxiv.org/abs/1611.06440>`_.
    """
    check_schedule(schedule)
    scope = _check_scope(scope)
    structure = _check_structure(structure, scope)
    rule = spec.compile_rule(prune, "prune")

    def recompute(plan: Any, state: Any, p: list, g: list, u: Any) -> list[Array]:
        del plan, u
        s = call_schedule(schedule, state.count)[1]
        m = list(jax.tree_util.tree_leaves(state.masks))
        idx = _pruned(m)
        if structure is not None:
            for i in idx:
                score = jnp.abs(jnp.asarray(p[i], jnp.float32) * jnp.asarray(g[i], jnp.float32))
                m[i] = structure.from_scores(score, s)[0].astype(bool)
            return m

        def saliency_keys(w, g, mask):
            score = jnp.asarray(w, jnp.float32) * jnp.asarray(g, jnp.float32)
            return lift(selection.magnitude_keys(score, jnp.uint32), mask)

        keys = [selection.KeySource((p[i], g[i], m[i]), saliency_keys) for i in idx]
        sizes = [math.prod(np.shape(p[i])) for i in idx]
        for i, new in zip(idx, _ranked(keys, sizes, s, scope)):
            m[i] = new
        return m

    return SparseAlgorithm(
        name="saliency_pruning",
        init=_mask_init(rule, structure),
        turn=_turn(schedule),
        recompute=recompute,
        reads=frozenset({"grads"}),
    )


def movement_pruning(
    schedule: PruningSchedule | Any,
    *,
    scope: str = "layer",
    prune: LeafRule | None = None,
) -> SparseAlgorithm:
    r"""Movement pruning: keep the weights moving away from zero (hard movement, top-v).

    At every update the score of each weight accumulates its movement,

    .. math::

        S_i \leftarrow S_i - w_i \, g_i \qquad (\text{float32, from } S_i = 0),

    with :math:`g` the raw gradient given to ``update`` (with :func:`jaxprune.masked_params` in
    the forward pass, the gradient with respect to the masked weight, as in the paper). On the
    schedule's turns the :math:`k` weights of largest :math:`S` are kept (top-v, :math:`v = 1 -
    s`), per leaf or over all pruned leaves (``scope="global"``). The dense weights are kept and
    keep training; the forward pass applies the masks (straight-through, as in STE), so a pruned
    weight can come back. The scores cost 4 bytes per pruned parameter.

    Args:
      schedule: when to recompute the masks and at what sparsity; the paper uses a cubic
        schedule, ``jaxprune.polynomial_decay(..., power=3)``.
      scope: ``"layer"`` or ``"global"``.
      prune: which leaves are masked (regex or predicate); default: float leaves of rank >= 2
        not named ``bias``.

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`; its state is a
      :class:`MovementPruningState`.

    Raises:
      ValueError: for an unknown ``scope``, or (at ``init``) a rule that matches no leaf.
      TypeError: for a non-callable schedule.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> sched = jp.constant_sparsity(0.5, begin_step=1, frequency=1)
      >>> tx = jp.sparse(optax.sgd(0.0), jp.movement_pruning(sched))
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> grads = {"w": jnp.array([[-1.0, 1.0], [-0.1, 0.0]])}  # -w g = 1, -2, 0.3, 0
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     _, state = tx.update(grads, state, params)
      >>> jp.get_masks(state)["w"].tolist()
      [[True, False], [True, False]]

    References:
      Sanh et al., 2020, `Movement Pruning: Adaptive Sparsity by Fine-Tuning
      <https://arxiv.org/abs/2005.07683>`_.
    """
    check_schedule(schedule)
    scope = _check_scope(scope)
    rule = spec.compile_rule(prune, "prune")

    def init(params: Params) -> MovementPruningState:
        paths, leaves, treedef = spec.flatten(params)
        chosen = spec.select(paths, leaves, rule)
        masks = masks_lib.masks_like(params, chosen)
        scores = [
            jnp.zeros(np.shape(x), jnp.float32) if on else jnp.zeros((), jnp.float32)
            for x, on in zip(leaves, chosen)
        ]
        return MovementPruningState(
            count=jnp.zeros((), jnp.int32),
            masks=jax.tree_util.tree_unflatten(treedef, masks),
            scores=jax.tree_util.tree_unflatten(treedef, scores),
        )

    def observe(state: MovementPruningState, p: list, g: list) -> MovementPruningState:
        treedef = jax.tree_util.tree_structure(state.masks)
        m = treedef.flatten_up_to(state.masks)
        scores = treedef.flatten_up_to(state.scores)
        for i in _pruned(m):
            move = jnp.asarray(p[i], jnp.float32) * jnp.asarray(g[i], jnp.float32)
            scores[i] = scores[i] - move
        return state._replace(scores=jax.tree_util.tree_unflatten(treedef, scores))

    def recompute(plan: Any, state: MovementPruningState, p: list, g: Any, u: Any) -> list:
        del plan, g, u
        s = call_schedule(schedule, state.count)[1]
        treedef = jax.tree_util.tree_structure(state.masks)
        m = treedef.flatten_up_to(state.masks)
        scores = treedef.flatten_up_to(state.scores)
        idx = _pruned(m)
        keys = [selection.KeySource((scores[i],), signed_keys) for i in idx]
        sizes = [math.prod(np.shape(p[i])) for i in idx]
        for i, new in zip(idx, _ranked(keys, sizes, s, scope)):
            m[i] = new
        return m

    return SparseAlgorithm(
        name="movement_pruning",
        init=init,
        turn=_turn(schedule),
        recompute=recompute,
        straight_through=True,
        observe=observe,
    )


__all__ = [
    "MovementPruningState",
    "magnitude_ste",
    "random_ste",
    "saliency_pruning",
    "movement_pruning",
]
