"""Random pruning on a schedule, as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import leaf_rules as spec
from jaxprune._src import link_core
from jaxprune._src import masks as masks_lib
from jaxprune._src import packed as packed_lib
from jaxprune._src import radix_select as selection
from jaxprune._src import transform as transform_lib
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks
from jaxprune._src.schedules import PruningSchedule
from jaxprune._src.sparse_core import random_bits


class RandomPruningState(NamedTuple):
    """State of :func:`random_pruning`.

    ``masks`` has the structure of the params: a pruned leaf has a bool mask of its own shape
    (one byte per parameter; a ``PackedMask`` of 1 bit per parameter with
    ``mask_dtype="packed"``), a leaf that is not pruned a scalar ``True``. The random scores
    are not stored: they are drawn again from the key on every pruning turn.
    """

    count: Array  # shape=(), int32: updates seen so far (the schedule's step)
    masks: Masks  # like params: bool, leaf shape if pruned else shape=()


transform_lib.register_pruning_state(RandomPruningState)


def as_key(key: Any, name: str = "key") -> Array:
    """A typed PRNG key from a typed key, a legacy ``uint32[2]`` key or an int seed."""
    if key is None:
        raise ValueError(
            f"{name} is required: give a PRNG key such as jax.random.key(0) (or an int seed)"
        )
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"{name} must be a single PRNG key, got shape {key.shape}")
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)) or an int "
        f"seed, got {key!r}"
    )


def exact_path_map(
    sparsity_map: Mapping[str, Any] | None, name: str = "sparsity_map"
) -> dict[str, Any] | None:
    """``{path: value}`` with exact leaf paths, as anchored regexes for ``spec.lookup``."""
    if sparsity_map is None:
        return None
    if not isinstance(sparsity_map, Mapping):
        raise TypeError(
            f"{name} must be a mapping from leaf path to sparsity (e.g. the result of "
            f"jaxprune's erk_sparsities), got {sparsity_map!r}"
        )
    out = {}
    for path, value in sparsity_map.items():
        if not isinstance(path, str):
            raise TypeError(f"{name} keys must be leaf paths (str), got {path!r}")
        out[spec.exact_path_pattern(path)] = value
    return out


def random_scores(key: Array, index: int, shape: tuple[int, ...]) -> Array:
    """Fixed random keys of a leaf: nonzero uint32, the same on every call for one leaf."""
    bits = random_bits(jax.random.fold_in(key, index), shape)  # jax.random.bits, fused
    # 0 is reserved for entries already pruned, so they rank below every kept entry.
    return jnp.maximum(bits, jnp.uint32(1))


def nested_random_mask(scores: Array, mask: Array, sparsity: ArrayLike) -> Array:
    """Keeps the ``k`` highest-scored entries among those ``mask`` keeps (tfmot's ``k``)."""
    keys = jnp.where(mask, scores, jnp.uint32(0))
    kth = selection.kth_largest_key([keys], selection.kept_count(scores.size, sparsity))
    # With kth = 0 (the sparsity asks for more entries than are kept) nothing comes back.
    return jnp.logical_and(mask, keys >= kth)


def random_pruning(
    schedule: PruningSchedule | Callable[[ArrayLike], tuple[Array, Array]],
    *,
    key: Any = None,
    prune: LeafRule | None = None,
    sparsity_map: Mapping[str, float | PruningSchedule] | None = None,
    mask_dtype: str = "bool",
) -> optax.GradientTransformationExtraArgs:
    r"""Prunes random weights on a schedule; place it last in an optax chain.

    Every pruned leaf :math:`\ell` gets fixed random scores :math:`r_\ell`, drawn from
    ``fold_in(key, i)`` (``i`` the leaf's index in the flattened params) on every pruning turn
    rather than stored. At update ``t`` (the first update is ``t = 0``) with
    ``(should_prune, s) = schedule(t)``:

    1. if ``should_prune``, the mask keeps the :math:`k` highest scores among the entries the
       mask keeps so far, :math:`k = \max(\mathrm{round\_half\_to\_even}(n (1 - s)), 1)` (the
       count :func:`jaxprune.magnitude_mask` keeps). Masks are therefore nested: a weight
       pruned on one turn stays pruned, and a sparsity lower than the last one prunes nothing
       more;
    2. the updates become :math:`u_i` where the mask keeps entry ``i`` and :math:`-w_i` where it
       prunes it, so after ``optax.apply_updates`` every pruned weight is exactly ``0.0``.

    Random pruning is the baseline every pruning criterion should beat (and, with an ERK
    distribution, the static sparse network of sparse-training papers).

    Args:
      schedule: when to prune and how much, e.g. :func:`jaxprune.polynomial_decay`; any
        callable ``step -> (should_prune, sparsity)`` works.
      key: a PRNG key (``jax.random.key(0)``, a legacy ``jax.random.PRNGKey(0)``) or an int
        seed. Required.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named
        ``bias``.
      sparsity_map: per-leaf final targets ``{path: value}`` keyed by the exact leaf path, such
        as the result of :func:`jaxprune.erk_sparsities`. A float ``v``
        rescales the schedule's curve to end at ``v`` (:math:`s_\ell = s \cdot v / s_{final}`);
        a schedule replaces the schedule for that leaf. Leaves not in the map follow
        ``schedule``.
      mask_dtype: ``"bool"`` (default): a pruned leaf's mask is a bool array, 1 byte per
        parameter. ``"packed"``: 1 bit per parameter in ``uint32`` words, in the state and in
        checkpoints, as :func:`jaxprune.magnitude_pruning` offers; masks and trajectories are
        bit for bit those of ``"bool"``, and the accessors return bool masks either way.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is a :class:`RandomPruningState`;
      ``update`` needs ``params``.

    Raises:
      ValueError: for a missing key, a bad ``sparsity_map`` value, an unknown ``mask_dtype``,
        or (at ``init``) a rule that
        matches no leaf or a ``sparsity_map`` path that is not a pruned leaf.
      TypeError: for a key that is not a key or an int, a non-callable schedule, non-string
        ``sparsity_map`` keys, or a rule that selects a non-float leaf.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jnp.ones((8, 8)), "b": jnp.zeros(8)}
      >>> schedule = jp.polynomial_decay(0.0, 0.75, begin_step=0, end_step=2, frequency=1)
      >>> tx = optax.chain(optax.sgd(0.1),
      ...                  random_pruning(schedule, key=jax.random.key(0)))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.zeros_like, params)
      >>> update = jax.jit(tx.update)
      >>> zeros = []
      >>> for _ in range(3):
      ...     updates, state = update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      ...     zeros.append(int(jnp.sum(params["w"] == 0)))
      >>> zeros, int(jnp.sum(params["b"] == 0))
      ([0, 42, 48], 8)

    References:
      Liu et al., `The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive
      Baseline for Sparse Training <https://arxiv.org/abs/2202.02643>`_, ICLR 2022.
    """
    transform_lib._check_schedule(schedule, "schedule")
    root_key = as_key(key)
    packed = packed_lib.check_mask_dtype(mask_dtype)
    rule = spec.compile_rule(prune, "prune")
    leaf_schedules = transform_lib._leaf_schedules(schedule, exact_path_map(sparsity_map))

    def plan(params: Any) -> tuple[list[Any], Any, list[bool], list[Any]]:
        paths, leaves, treedef = spec.flatten(params)
        chosen = spec.select(paths, leaves, rule)
        return leaves, treedef, chosen, leaf_schedules(paths, chosen)

    def init_fn(params: Any) -> RandomPruningState:
        leaves, treedef, chosen, _ = plan(params)
        return RandomPruningState(
            count=jnp.zeros((), jnp.int32),
            masks=packed_lib.stored_masks(params, masks_lib.masks_like(params, chosen), packed),
        )

    def recompute_group(idx: list[int], shapes: list[tuple[int, ...]]) -> Any:
        def recompute(sparsity: Array, masks: list[Array]) -> tuple[list[Array], None]:
            got = [
                nested_random_mask(random_scores(root_key, i, shape), m, sparsity)
                for i, shape, m in zip(idx, shapes, masks)
            ]
            return got, None

        return recompute

    def update_fn(
        updates: Any, state: RandomPruningState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, RandomPruningState]:
        del extra_args
        link_core.needs_params(params, "random_pruning")
        p_leaves, treedef, chosen, scheds = plan(params)
        u_leaves = treedef.flatten_up_to(updates)
        m_leaves, masks_def = packed_lib.read_masks(state.masks, treedef, packed, p_leaves)

        # Leaves that share a schedule are updated together under one lax.cond.
        turns = []
        for sch, idx in link_core.groups_by_schedule(chosen, scheds):
            should_prune, sparsity = transform_lib.call_schedule(sch, state.count)
            # A turn whose sparsity is NaN is skipped (nested masks would keep every entry
            # anyway; the cond is not even taken).
            should_prune = transform_lib.skip_nan_turn(should_prune, sparsity)[0]
            shapes = [tuple(jnp.shape(p_leaves[i])) for i in idx]
            turns.append(link_core.Turn(idx, should_prune, recompute_group(idx, shapes), sparsity))
        m_leaves, _ = link_core.run_turns(turns, m_leaves, None, packed=packed)

        pruned = [i for i, on in enumerate(chosen) if on]
        out = link_core.zeroed_updates(u_leaves, p_leaves, m_leaves, pruned)
        new_state = RandomPruningState(
            count=optax.safe_int32_increment(state.count),
            masks=link_core.unflatten(masks_def, m_leaves),
        )
        return link_core.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["random_pruning", "RandomPruningState"]
