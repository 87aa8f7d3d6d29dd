r"""Dynamic sparse training from a random sparse start: static masks, SET and RigL.

Each function returns a :class:`~jaxprune._src.sparse_core.SparseAlgorithm` for
:func:`jaxprune.sparse`. Every pruned leaf starts from a random mask that keeps exactly
:math:`k = \max(\mathrm{round\_half\_to\_even}(n (1 - s)), 1)` of its :math:`n` weights (the
count rule of :func:`jaxprune.magnitude_mask`); the count of every leaf then never changes.

The mask-update turns of SET and RigL are the updates :math:`t` (the first update is
:math:`t = 0`) with :math:`t > 0`, :math:`t \bmod \Delta T = 0` and :math:`t < T_{end}`. On a
turn, with the cosine-annealed drop fraction (computed in float32)

.. math::

    f_t = \frac{\alpha}{2} \left(1 + \cos\frac{\pi t}{T_{end}}\right), \qquad
    d = \lfloor f_t \, k \rfloor,

each pruned leaf drops the :math:`d` active weights of smallest magnitude and grows :math:`d`
weights among those inactive after the drop: those of largest raw-gradient magnitude (RigL) or
at random (SET). A weight dropped and grown back at the same turn keeps its value and its
optimizer state; a truly new connection starts at exactly ``0.0`` with its optimizer state
zeroed. Ties are broken by position (lower flat index ranks first), so the counts are exact.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import radix_select as selection
from jaxprune._src import validate
from jaxprune._src.base import Array, LeafRule, Params
from jaxprune._src.sparse_core import (
    SparseAlgorithm,
    SparseMaskState,
    check_key,
    check_sparsity_arg,
    kept,
    leaf_sparsities,
    lift,
    random_bits,
    sorted_top_k,
    top_k_sources,
)


def _plan(params: Params, sparsity: Any, rule: Any) -> list[int | None]:
    """Per leaf, how many weights it keeps (``None``: not pruned)."""
    sparsities = leaf_sparsities(params, sparsity, rule)
    leaves = jax.tree_util.tree_leaves(params)
    return [
        None if s is None else kept(math.prod(np.shape(x)), s) for x, s in zip(leaves, sparsities)
    ]


def _random_init(key: Array, params: Params, ks: list[int | None]) -> list[Array]:
    """A random mask per pruned leaf keeping exactly ``k`` entries; scalar ``True`` elsewhere."""
    shapes = tuple(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(params))
    return list(_random_masks(key, shapes, tuple(ks)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random_masks(key: Array, shapes: tuple, ks: tuple) -> list[Array]:
    """Leaf ``i`` keeps the ``k`` largest of the uint32 bits drawn from ``fold_in(key, i)``.

    One program for all leaves, run once at ``init``; the ``k`` largest are found by a sort at
    any size (the mask :func:`top_k_masks` gives), which compiles in a fraction of the radix
    select's time.
    """
    out = []
    for i, (shape, k) in enumerate(zip(shapes, ks)):
        if k is None:
            out.append(jnp.ones((), bool))
            continue
        bits = random_bits(jax.random.fold_in(key, i), shape)
        out.append(sorted_top_k([bits], k)[0])
    return out


def _init_fn(key: Array, sparsity: Any, rule: Any) -> Any:
    def init(params: Params) -> SparseMaskState:
        ks = _plan(params, sparsity, rule)
        masks = _random_init(key, params, ks)
        return SparseMaskState(
            count=jnp.zeros((), jnp.int32),
            masks=jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), masks),
        )

    return init


def _drop_keys(ktype: Any, w: Array, m: Array, u: Array | None = None) -> Array:
    """Keys of the active weights by magnitude (of ``w + u`` with ``u``), inactive ones 0."""
    if u is not None:
        w = selection.added(w, u)
    return lift(selection.magnitude_keys(w, ktype), m)


def _grow_keys(ktype: Any, survive: Array, g: Array) -> Array:
    """Survivors first (the largest key), then the candidates by gradient magnitude."""
    top = jnp.asarray(np.iinfo(ktype).max, ktype)
    return jnp.where(survive, top, selection.magnitude_keys(g, ktype))


def _random_grow_keys(survive: Array, bits: Array) -> Array:
    """Survivors first (the largest key), then the candidates by 31 random bits."""
    return jnp.where(survive, jnp.uint32(np.iinfo(np.uint32).max), bits >> 1)


def drop_fraction_at(step: Any, drop_fraction: float, end_step: int) -> Array:
    r"""The cosine-annealed drop fraction :math:`\frac{\alpha}{2}(1 + \cos(\pi t / T_{end}))`.

    In float32, for :math:`t` clipped to :math:`[0, T_{end}]`.
    """
    t = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(end_step))
    angle = jnp.float32(math.pi) * t / jnp.float32(end_step)
    return jnp.float32(drop_fraction) * jnp.float32(0.5) * (jnp.float32(1.0) + jnp.cos(angle))


def _dynamic(
    name: str,
    sparsity: Any,
    key: Any,
    drop_fraction: Any,
    update_every: Any,
    end_step: Any,
    prune: LeafRule | None,
    grow: str,
    skip_update_on_turn: bool = False,
    recompute_from: str = "current",
) -> SparseAlgorithm:
    sparsity, rule = check_sparsity_arg(sparsity, prune)
    key = check_key(key)
    if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float, np.floating)):
        raise TypeError(f"drop_fraction must be a float in (0, 1), got {drop_fraction!r}")
    if not 0.0 < float(drop_fraction) < 1.0:
        raise ValueError(f"drop_fraction must be in range (0, 1), got {drop_fraction!r}")
    drop_fraction = float(drop_fraction)
    update_every = validate.check_int(update_every, "update_every", 1)
    end_step = validate.check_int(end_step, "end_step", 1)
    if end_step <= update_every:
        raise ValueError(
            f"end_step={end_step} leaves no mask update: the first one is at step "
            f"update_every={update_every}, and updates happen at steps < end_step"
        )
    grow_key = jax.random.fold_in(key, 0x5E7)  # SET's regrowth stream, apart from the init's

    def turn(state: SparseMaskState) -> Array:
        t = state.count
        return (t > 0) & (t % update_every == 0) & (t < end_step)

    def recompute(ks: list, state: SparseMaskState, p: list, g: Any, u: Any) -> list[Array]:
        m = jax.tree_util.tree_leaves(state.masks)
        f = drop_fraction_at(state.count, drop_fraction, end_step)
        out = list(m)
        for i, k in enumerate(ks):
            if k is None:
                continue
            w = jnp.asarray(p[i])
            n_drop = jnp.floor(f * jnp.float32(k)).astype(jnp.int32)
            # Active weights ranked by magnitude, inactive ones strictly last; the keys are
            # computed on the fly from the weights (and SET's updates) in every pass.
            ktype = selection.key_dtype([w.dtype])
            if u is None:
                drop = selection.KeySource((w, m[i]), functools.partial(_drop_keys, ktype))
            else:  # SET ranks the weights this step produces, as its reference
                drop = selection.KeySource(
                    (w, m[i], jnp.asarray(u[i])), functools.partial(_drop_keys, ktype)
                )
            survive = top_k_sources([drop], k - n_drop)[0]
            if grow == "gradient":
                gi = jnp.asarray(g[i])
                gtype = selection.key_dtype([gi.dtype])
                grow_keys = selection.KeySource((survive, gi), functools.partial(_grow_keys, gtype))
            else:
                bits = random_bits(
                    jax.random.fold_in(jax.random.fold_in(grow_key, state.count), i), np.shape(w)
                )
                grow_keys = selection.KeySource((survive, bits), _random_grow_keys)
            # Survivors rank above every candidate; the top k are the survivors and the d
            # candidates of largest score.
            out[i] = top_k_sources([grow_keys], k)[0]
        return out

    if grow == "gradient":
        reads = frozenset({"grads"})
    else:
        reads = frozenset({"updates"}) if recompute_from == "updated" else frozenset()
    return SparseAlgorithm(
        name=name,
        init=_init_fn(key, sparsity, rule),
        plan=lambda params: _plan(params, sparsity, rule),
        turn=turn,
        recompute=recompute,
        reads=reads,
        skip_update_on_turn=skip_update_on_turn,
        regrows=True,
    )


def static_sparse(
    sparsity: float | dict[str, float], *, key: Any, prune: LeafRule | None = None
) -> SparseAlgorithm:
    r"""A fixed random sparse mask from initialisation; pruned weights stay exactly ``0.0``.

    Each pruned leaf of :math:`n` weights keeps exactly
    :math:`k = \max(\mathrm{round\_half\_to\_even}(n (1 - s)), 1)` entries, drawn uniformly at
    random from ``key`` (leaf ``i`` of the flattened params uses ``fold_in(key, i)``). The masks
    never change; the optimizer sees :math:`g \odot m`.

    Args:
      sparsity: a float in ``[0, 1)`` for every leaf ``prune`` selects, or a dict
        ``{leaf path: sparsity}`` with exact ``/``-joined paths, e.g. from
        ``jaxprune.erk_sparsities``.
      key: a PRNG key, e.g. ``jax.random.key(0)``.
      prune: with a float sparsity, which leaves are pruned: a regex searched in the leaf path or
        a predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named
        ``bias``.

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`; its state is a
      ``SparseMaskState``.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, a missing key, ``prune`` given with a dict,
        or (at ``init``) a dict path that names no leaf.
      TypeError: for a non-numeric sparsity or a key that is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jnp.ones((10, 10)), "b": jnp.ones(10)}
      >>> tx = jp.sparse(optax.sgd(0.1), jp.static_sparse(0.9, key=jax.random.key(0)))
      >>> masks = jp.get_masks(tx.init(params))
      >>> int(masks["w"].sum()), masks["b"].shape
      (10, ())

    References:
      Frankle & Carbin, 2019, `The Lottery Ticket Hypothesis
      <https://arxiv.org/abs/1803.03635>`_ (random sparse baselines).
    """
    sparsity, rule = check_sparsity_arg(sparsity, prune)
    key = check_key(key)
    return SparseAlgorithm(
        name="static_sparse",
        init=_init_fn(key, sparsity, rule),
        turn=lambda state: jnp.zeros((), bool),
        recompute=None,
    )


def set_training(
    sparsity: float | dict[str, float],
    *,
    key: Any,
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int,
    prune: LeafRule | None = None,
    recompute_from: str = "updated",
) -> SparseAlgorithm:
    r"""Sparse Evolutionary Training: drop the smallest weights, regrow as many at random.

    On each turn (see the module docs: :math:`t > 0`, :math:`t \bmod \Delta T = 0`,
    :math:`t < T_{end}`), after the inner optimizer's update :math:`u` has been computed, each
    pruned leaf ranks the weights this step produces, :math:`w + u`, drops the
    :math:`d = \lfloor f_t k \rfloor` active ones of smallest magnitude, with
    :math:`f_t = \frac{\alpha}{2}(1 + \cos(\pi t / T_{end}))`, and grows :math:`d` weights chosen
    uniformly at random among those inactive after the drop. As in the reference
    implementation, the optimizer's update is applied on turns too (to the weights that stay).
    New connections start at exactly ``0.0`` and their optimizer state is zeroed, before the
    update that they take no gradient from (so it stays zero for SGD with momentum, Adam,
    RMSProp and the like); :math:`u` is the update computed from the state before that reset,
    the same at the weights that stay for any optimizer that works entry by entry.

    Args:
      sparsity: a float in ``[0, 1)`` for every leaf ``prune`` selects, or a dict
        ``{leaf path: sparsity}`` with exact paths (e.g. ``jaxprune.erk_sparsities(...)``).
      key: a PRNG key: the initial masks and the regrowth draws derive from it.
      drop_fraction: :math:`\alpha`, the fraction dropped at :math:`t = 0` of the cosine, in
        ``(0, 1)``.
      update_every: :math:`\Delta T`, steps between mask updates, ``>= 1``.
      end_step: :math:`T_{end}`; no mask update at or after it. Must exceed ``update_every``.
      prune: with a float sparsity, which leaves are pruned (regex or predicate); default:
        float leaves of rank >= 2 not named ``bias``.
      recompute_from: ``"updated"`` (default): the drop ranks :math:`w + u`, as above;
        ``"current"``: it ranks :math:`w`, the weights before this step's update, so the turn
        does not compute the inner update a second time (a turn of the benchmark MLP: 1.81-2.05x
        a plain Adam step against 2.38-2.51x, ``docs/sparse-training.md``).

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`.

    Raises:
      ValueError: for ``drop_fraction`` outside ``(0, 1)``, ``update_every < 1``,
        ``end_step <= update_every``, a sparsity outside ``[0, 1)``, a missing key or an
        unknown ``recompute_from``.
      TypeError: for arguments of the wrong type.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (16, 16))}
      >>> alg = jp.set_training(0.8, key=jax.random.key(1), update_every=2, end_step=10)
      >>> tx = jp.sparse(optax.sgd(0.1), alg)
      >>> state = tx.init(params)
      >>> params = jp.masked_params(params, state)
      >>> step = jax.jit(tx.update)
      >>> for _ in range(4):
      ...     updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> int(jp.get_masks(state)["w"].sum()), int((params["w"] != 0).sum()) <= 51
      (51, True)

    References:
      Mocanu et al., 2018, `Scalable training of artificial neural networks with adaptive
      sparse connectivity inspired by network science
      <https://www.nature.com/articles/s41467-018-04316-3>`_.
    """
    validate.check_recompute_from(recompute_from)
    args = (sparsity, key, drop_fraction, update_every, end_step, prune)
    return _dynamic("set_training", *args, "random", recompute_from=recompute_from)


def rigl(
    sparsity: float | dict[str, float],
    *,
    key: Any,
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int,
    prune: LeafRule | None = None,
    skip_update_on_turn: bool = False,
) -> SparseAlgorithm:
    r"""RigL: drop the smallest weights, grow where the dense gradient is largest.

    On each turn (:math:`t > 0`, :math:`t \bmod \Delta T = 0`, :math:`t < T_{end}`), each pruned
    leaf with :math:`k` active weights drops the :math:`d = \lfloor f_t k \rfloor` active
    weights of smallest magnitude,
    :math:`f_t = \frac{\alpha}{2}(1 + \cos(\pi t / T_{end}))` (float32), then grows the
    :math:`d` weights of largest raw-gradient magnitude :math:`|g|` among those inactive after
    the drop (the raw gradient is the one given to ``update``; with
    :func:`jaxprune.masked_params` in the forward pass it is the dense gradient). A weight
    dropped and grown back keeps its value and optimizer state; a new connection starts at
    exactly ``0.0`` with its optimizer state (e.g. Adam's moments) zeroed.

    The masks are chosen first, from the weights and the raw gradients, and **the optimizer's
    update is then applied on a turn too** (to :math:`g \odot m` with the masks before the
    turn, to the weights kept before and after it), with the state of new connections zeroed
    before the update: they get a zero gradient, so their state stays zero (for optimizers
    such as SGD with momentum, Adam and RMSProp, whose state is zero after a zero gradient on
    a zero state). The reference implementation applies no update on a turn; pass
    ``skip_update_on_turn=True`` for that (the updates then only zero the dropped weights, and
    the inner state, its step count included, is left as it was apart from the reset). It
    costs every step, not only turns: the state a step stores is then a choice between two
    versions of the optimizer's state, which XLA computes twice (about 1.15x a plain Adam step
    between turns on the benchmark MLP, against about 1.05x with the default).

    Args:
      sparsity: a float in ``[0, 1)`` for every leaf ``prune`` selects, or a dict
        ``{leaf path: sparsity}`` with exact paths (e.g. ``jaxprune.erk_sparsities(...)``).
      key: a PRNG key for the random initial masks.
      drop_fraction: :math:`\alpha`, in ``(0, 1)``.
      update_every: :math:`\Delta T`, ``>= 1``.
      end_step: :math:`T_{end}`, greater than ``update_every``.
      prune: with a float sparsity, which leaves are pruned (regex or predicate); default:
        float leaves of rank >= 2 not named ``bias``.
      skip_update_on_turn: ``True``: no optimizer update on a turn, as the reference
        implementation. Default ``False``: the update is applied on turns too (see above).

    Returns:
      A sparse-training algorithm for :func:`jaxprune.sparse`.

    Raises:
      ValueError: for ``drop_fraction`` outside ``(0, 1)``, ``update_every < 1``,
        ``end_step <= update_every``, a sparsity outside ``[0, 1)`` or a missing key.
      TypeError: for arguments of the wrong type (``skip_update_on_turn`` not a bool).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (16, 16)), "b": jnp.zeros(16)}
      >>> alg = jp.rigl(0.9, key=jax.random.key(1), drop_fraction=0.5, update_every=1,
      ...               end_step=100)
      >>> tx = jp.sparse(optax.adam(1e-3), alg)
      >>> state = tx.init(params)
      >>> params = jp.masked_params(params, state)
      >>> before = jp.get_masks(state)["w"]
      >>> grads = {"w": jnp.arange(256.0).reshape(16, 16), "b": jnp.ones(16)}
      >>> _, state = tx.update(grads, state, params)   # step 0: not a turn
      >>> _, state = tx.update(grads, state, params)   # step 1: drop 12, grow 12
      >>> after = jp.get_masks(state)["w"]
      >>> int(before.sum()), int(after.sum())  # the count never changes
      (26, 26)
      >>> bool(jnp.all(grads["w"][after & ~before] > 200))  # grown where |g| is large
      True

    References:
      Evci et al., 2020, `Rigging the Lottery: Making All Tickets Winners
      <https://arxiv.org/abs/1911.11134>`_.
    """
    if not isinstance(skip_update_on_turn, bool):
        raise TypeError(f"skip_update_on_turn must be a bool, got {skip_update_on_turn!r}")
    args = (sparsity, key, drop_fraction, update_every, end_step, prune)
    return _dynamic("rigl", *args, "gradient", skip_update_on_turn=skip_update_on_turn)


__all__ = ["static_sparse", "set_training", "rigl"]
