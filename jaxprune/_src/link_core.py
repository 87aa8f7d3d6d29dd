"""The skeleton shared by the pruning links that stand last in an ``optax.chain``.

:func:`jaxprune.magnitude_pruning`, :func:`jaxprune.random_pruning`, :func:`jaxprune.acdc` and
:func:`jaxprune.tf.pruning_from_config` keep masks (and some keep a value per leaf, such as a
threshold) in their state, recompute them on their turns and make every pruned weight exactly
``0.0`` after every update. Each of them is a *policy*: which leaves it prunes, when a turn
comes, and how a turn computes new masks from what it reads. This module is the rest, written
once:

1. the updates, masks and per-leaf values are flattened in the params' order, masks in the form
   the state stores them (bool arrays, or :class:`jaxprune._src.packed.PackedMask` words with
   ``mask_dtype="packed"``);
2. each :class:`Turn` runs inside one ``lax.cond``: on the turn, its ``recompute`` gets the
   operands the policy chose and the current masks as bool arrays, and returns new bool masks
   (packed here when the state packs them) and new per-leaf values; otherwise the stored masks
   and values pass through unchanged. Only what the policy puts in the operands enters the
   cond (an operand of a cond is a buffer of its own, so nothing is passed "just in case").
   A policy may give some masks in threshold form (``Turn.keyed``): the cond returns the k-th
   largest key of those leaves, and the mask ``key(w) >= kth`` is built outside it, where it
   fuses into step 3 (:func:`jaxprune.magnitude_pruning` does, with bool masks, for leaves of
   2**16 entries or more);
3. the updates become :math:`u_i` where the mask keeps entry ``i`` and :math:`-w_i` where it
   prunes it (:func:`zero_pruned`), packed masks unpacked where they
   are used so that XLA fuses the bit extraction into that update.

The policies keep their own state types and validation; the scoring, structures and exact
selection they call live in ``masks``, ``structured`` and ``radix_select``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune._src import packed as packed_lib
from jaxprune._src.base import Array


class Turn(NamedTuple):
    """One ``lax.cond`` of a pruning link: the masks of ``leaves`` recomputed together.

    Attributes:
      leaves: indices of the pruned leaves in the params' flattening order.
      when: a bool scalar (may be traced): whether this update recomputes them.
      recompute: ``(operands, masks) -> (masks, values)``: ``masks`` the current bool masks of
        ``leaves`` in order; returns their new bool masks and their new per-leaf values (a
        list, or ``None`` for a link that keeps no values).
      operands: what ``recompute`` reads (any pytree of arrays; only it enters the cond).
    """

    leaves: list[int]
    when: Any
    recompute: Callable[[Any, list[Array]], tuple[list[Array], list[Array] | None]]
    operands: Any = None
    keyed: Mapping[int, jax.ShapeDtypeStruct] | None = None
    key_mask: Callable[[int, Array], Array] | None = None


# A turn may give some masks in *threshold form* (``Turn.keyed``, bool masks only): for position
# ``j`` of ``leaves`` its recompute returns a key (a scalar, or a vector for a leaf of ranked
# slices) of the shape and dtype ``keyed[j]`` instead of the mask, and ``key_mask(j, key)``
# builds the mask outside the cond. The cond then returns scalars for those leaves, not masks:
# a step that is not a turn copies no mask, and the mask, an elementwise comparison, fuses into
# the zeroing of the updates (one kernel per leaf shape, as the comparison reads the key as an
# operand, instead of a mask kernel per leaf inside the cond).


def groups_by_schedule(chosen: list[bool], schedules: list[Any]) -> list[tuple[Any, list[int]]]:
    """The pruned leaves grouped by the schedule object they follow, in order of first use.

    Leaves that share a schedule share its turns, so a link recomputes them under one cond.
    """
    groups: dict[int, tuple[Any, list[int]]] = {}
    for i, (on, sch) in enumerate(zip(chosen, schedules)):
        if on:
            groups.setdefault(id(sch), (sch, []))[1].append(i)
    return list(groups.values())


def needs_params(params: Any, name: str) -> None:
    """The error of a link's ``update`` called without ``params``."""
    if params is None:
        raise ValueError(f"{name} needs the current params: call tx.update(updates, state, params)")


def run_turns(
    turns: list[Turn],
    m_leaves: list[Any],
    v_leaves: list[Any] | None,
    *,
    packed: bool,
) -> tuple[list[Any], list[Any] | None]:
    """Masks (as stored) and per-leaf values after the turns, in the params' order.

    ``m_leaves`` are the stored masks of every leaf (see :func:`packed_lib.read_masks`),
    ``v_leaves`` the per-leaf values or ``None``. Turns touch disjoint leaves.
    """
    m_leaves = list(m_leaves)
    v_leaves = None if v_leaves is None else list(v_leaves)
    for turn in turns:
        idx = turn.leaves

        def on_turn(ops: tuple, turn: Turn = turn) -> tuple[list[Any], Any]:
            operands, stored, _ = ops
            masks, values = turn.recompute(operands, [packed_lib.as_bool(m) for m in stored])
            masks = list(masks)
            return (packed_lib.pack_pruned(masks) if packed else masks), values

        keyed = turn.keyed or {}
        if keyed and packed:
            raise ValueError("a turn's masks in threshold form must be bool masks, not packed")

        def off_turn(ops: tuple, keyed: Mapping = keyed) -> tuple[list[Any], Any]:
            _, stored, values = ops
            out = list(stored)
            for j, like in keyed.items():
                out[j] = jnp.zeros(like.shape, like.dtype)  # not read: the old mask is kept
            return out, values

        values = None if v_leaves is None else [v_leaves[i] for i in idx]
        stored = [jnp.zeros((), bool) if j in keyed else m_leaves[i] for j, i in enumerate(idx)]
        new_m, new_v = lax.cond(turn.when, on_turn, off_turn, (turn.operands, stored, values))
        for j, i in enumerate(idx):
            if j in keyed:
                keep = turn.key_mask(j, new_m[j])
                m_leaves[i] = jnp.where(turn.when, keep, m_leaves[i])
            else:
                m_leaves[i] = new_m[j]
            if v_leaves is not None:
                v_leaves[i] = new_v[j]
    return m_leaves, v_leaves


def zero_pruned(
    u_leaves: list[Any], p_leaves: list[Any], m_leaves: list[Any], pruned: list[int]
) -> list[Any]:
    """Updates after which the pruned entries of the leaves ``pruned`` are exactly ``0.0``.

    ``u`` where the mask keeps an entry, ``-w`` where it prunes it: ``w + (-w)`` is exactly
    ``+0.0`` for every finite ``w``, so ``optax.apply_updates`` leaves pruned weights at zero.
    """
    out = list(u_leaves)
    for i in pruned:
        u, p = jnp.asarray(u_leaves[i]), jnp.asarray(p_leaves[i])
        # In the wider of the two dtypes, as apply_updates adds them: -w must stay exact.
        dtype = jnp.result_type(u, p)
        out[i] = jnp.where(m_leaves[i], u.astype(dtype), -p.astype(dtype))
    return out


def zeroed_updates(
    u_leaves: list[Any], p_leaves: list[Any], m_leaves: list[Any], pruned: list[int]
) -> list[Any]:
    """Updates after which the pruned entries are exactly ``0.0`` (masks bool or packed)."""
    return zero_pruned(u_leaves, p_leaves, [packed_lib.as_bool(m) for m in m_leaves], pruned)


def unflatten(treedef: Any, leaves: list[Any]) -> Any:
    return jax.tree_util.tree_unflatten(treedef, leaves)


__all__: list[str] = []
