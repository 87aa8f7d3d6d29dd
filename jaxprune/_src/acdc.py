"""AC/DC: alternating compressed and decompressed training, as an optax transformation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import leaf_rules as spec
from jaxprune._src import link_core, validate
from jaxprune._src import masks as masks_lib
from jaxprune._src import packed as packed_lib
from jaxprune._src import transform as transform_lib
from jaxprune._src.base import Array, LeafRule, Masks, is_float_array

_SCOPES = ("layer", "global")


class ACDCState(NamedTuple):
    """State of :func:`acdc`.

    ``masks`` has the structure of the params: a pruned leaf has a bool mask of its own shape
    (all ``True`` outside compressed phases; a ``PackedMask`` of 1 bit per parameter with
    ``mask_dtype="packed"``), a leaf that is not pruned a scalar ``True``.
    """

    count: Array  # shape=(), int32: updates seen so far
    masks: Masks  # like params: bool, leaf shape if pruned else shape=()


transform_lib.register_pruning_state(ACDCState)


def acdc_phases(
    step: Any, *, warmup_steps: int, phase_steps: int, final_start: int
) -> tuple[Array, Array]:
    """``(compressed, starts)`` at ``step``: whether the step is compressed, and begins a phase."""
    t = jnp.asarray(step, jnp.int32)
    cycling = jnp.logical_and(t >= warmup_steps, t < final_start)
    rel = jnp.remainder(t - warmup_steps, 2 * phase_steps)
    compressed = jnp.logical_or(jnp.logical_and(cycling, rel < phase_steps), t >= final_start)
    starts = jnp.logical_or(jnp.logical_and(cycling, rel == 0), t == final_start)
    return compressed, starts


def acdc(
    sparsity: float | Mapping[str, float],
    *,
    warmup_steps: int,
    phase_steps: int,
    final_compressed_steps: int,
    total_steps: int,
    scope: str = "layer",
    prune: LeafRule | None = None,
    mask_dtype: str = "bool",
    recompute_from: str = "current",
) -> optax.GradientTransformationExtraArgs:
    r"""Alternating Compressed/DeCompressed training (AC/DC); place it last in an optax chain.

    With :math:`W` = ``warmup_steps``, :math:`P` = ``phase_steps``, :math:`F` =
    ``final_compressed_steps``, :math:`T` = ``total_steps`` and
    :math:`C = (T - W - F) / (2P)` cycles (an integer), update ``t`` (the first update is
    ``t = 0``) falls in::

        t:  0 ........ W ..... W+P ..... W+2P ... W+2CP = T-F ............ T ...
            |  dense   | compr. | dense  | ... C cycles ... | final compressed ...>

    * a **dense warm-up** :math:`[0, W)`, then :math:`C` cycles of a **compressed** phase
      :math:`[W + 2cP, W + (2c + 1)P)` and a **decompressed** phase
      :math:`[W + (2c + 1)P, W + 2(c + 1)P)`, then the **final compressed** phase from
      :math:`T - F` on (it does not end at :math:`T`: later updates stay compressed).
    * At the first update of a compressed phase, the masks are chosen by magnitude from the
      weights before that update, :math:`w` (``recompute_from="updated"``: from the weights
      that update produces, :math:`w + u`), by the rule of
      :func:`jaxprune.magnitude_mask` at the target sparsity (per leaf, or one threshold over
      all pruned leaves with ``scope="global"``); they stay fixed for the whole phase, and every
      update of the phase makes the pruned weights exactly ``0.0`` (:math:`u_i \to -w_i`).
    * In dense phases the masks are all ``True`` and the updates pass through unchanged:
      weights pruned in the last compressed phase restart from ``0.0``.

    Optimizer statistics (e.g. Adam's moments) of pruned weights keep running in the
    transformations before this one; the weights themselves stay zero.

    Args:
      sparsity: the target of compressed phases, a float in ``[0, 1)``, or per-leaf targets
        ``{path: sparsity}`` keyed by exact leaf paths (e.g. from
        :func:`jaxprune.erk_sparsities`): then the map's leaves are the
        pruned ones, and ``prune`` must be ``None`` and ``scope`` ``"layer"``.
      warmup_steps: dense updates before the first compressed phase, ``>= 0``.
      phase_steps: length of each compressed and each decompressed phase, ``>= 1``.
      final_compressed_steps: length of the final compressed phase, ``>= 1`` (the paper
        makes it longer than ``phase_steps``).
      total_steps: the planned number of updates; ``total_steps - warmup_steps -
        final_compressed_steps`` must be a multiple of ``2 * phase_steps`` (``>= 0``).
      scope: ``"layer"`` prunes each leaf to the target; ``"global"`` ranks all pruned leaves
        together under one threshold.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of rank >= 2 not named
        ``bias``.
      mask_dtype: ``"bool"`` (default): a pruned leaf's mask is a bool array, 1 byte per
        parameter. ``"packed"``: 1 bit per parameter in ``uint32`` words, in the state and in
        checkpoints, as :func:`jaxprune.magnitude_pruning` offers; masks and trajectories are
        bit for bit those of ``"bool"``, and the accessors return bool masks either way.
      recompute_from: ``"current"`` (default) ranks the weights before the update that starts
        a compressed phase, as :func:`jaxprune.magnitude_pruning` does by default; then the
        phase's masks need nothing from the inner optimizer's update, and XLA fuses that
        update into ``optax.apply_updates`` on every step. ``"updated"`` ranks the weights the
        update produces, :math:`w + u` (the only behaviour before this argument existed):
        its turn reads this step's updates, which XLA then writes out on every step.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is an :class:`ACDCState`;
      ``update`` needs ``params``.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, step counts out of range or that do not
        fit the timeline, an unknown ``scope``, ``mask_dtype`` or ``recompute_from``, a
        per-leaf map with ``prune`` or global scope, or (at ``init``) a rule that matches no
        leaf or a map path that is not a float leaf.
      TypeError: for arguments of the wrong type, or a rule that selects a non-float leaf.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jnp.zeros(8)}
      >>> tx = optax.chain(optax.sgd(0.01), acdc(
      ...     0.75, warmup_steps=2, phase_steps=2, final_compressed_steps=3, total_steps=9))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> update = jax.jit(tx.update)
      >>> zeros = []
      >>> for _ in range(9):
      ...     updates, state = update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      ...     zeros.append(int(jnp.sum(params["w"] == 0)))
      >>> zeros  # dense, dense, compressed x2, dense x2, final compressed
      [0, 0, 48, 48, 0, 0, 48, 48, 48]

    References:
      Peste et al., `AC/DC: Alternating Compressed/DeCompressed Training of Deep Neural
      Networks <https://arxiv.org/abs/2106.12379>`_, NeurIPS 2021.
    """
    warmup = validate.check_int(warmup_steps, "warmup_steps", 0)
    phase = validate.check_int(phase_steps, "phase_steps", 1)
    final = validate.check_int(final_compressed_steps, "final_compressed_steps", 1)
    total = validate.check_int(total_steps, "total_steps", 1)
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    packed = packed_lib.check_mask_dtype(mask_dtype)
    validate.check_recompute_from(recompute_from)
    cycling = total - warmup - final
    if cycling < 0 or cycling % (2 * phase):
        cycles = max(cycling, 0) // (2 * phase)
        fit = ", ".join(str(warmup + 2 * phase * c + final) for c in (cycles, cycles + 1))
        raise ValueError(
            "total_steps - warmup_steps - final_compressed_steps must be a multiple of "
            f"2 * phase_steps (>= 0), got {total} - {warmup} - {final} = {cycling} with "
            f"phase_steps={phase}; total_steps={fit} would fit"
        )
    if total >= 2**31 - 1:
        raise ValueError(f"total_steps must be < 2**31 - 1 (int32 step counts), got {total}")
    final_start = total - final

    per_leaf: dict[str, float] | None = None
    if isinstance(sparsity, Mapping):
        if prune is not None:
            raise ValueError(
                "prune must be None when sparsity is a per-leaf map: the map's paths are the "
                "pruned leaves"
            )
        if scope != "layer":
            raise ValueError('a per-leaf sparsity map needs scope="layer", got scope="global"')
        if not sparsity:
            raise ValueError("sparsity is an empty map: give at least one leaf path")
        per_leaf = {}
        for path, value in sparsity.items():
            if not isinstance(path, str):
                raise TypeError(f"sparsity map keys must be leaf paths (str), got {path!r}")
            per_leaf[path] = validate.check_fraction(value, f"sparsity[{path!r}]")
    else:
        target = validate.check_fraction(sparsity, "sparsity")
    rule = spec.compile_rule(prune, "prune")

    def plan(params: Any) -> tuple[list[str], list[Any], Any, list[bool], list[float]]:
        paths, leaves, treedef = spec.flatten(params)
        if per_leaf is None:
            chosen = spec.select(paths, leaves, rule)
            return paths, leaves, treedef, chosen, [target] * len(leaves)
        unknown = [p for p in per_leaf if p not in paths]
        if unknown:
            raise ValueError(f"sparsity map paths {unknown} are not leaves; leaf paths are {paths}")
        for p, x in zip(paths, leaves):
            if p in per_leaf and not (is_float_array(x) and np.ndim(x) > 0):
                raise TypeError(
                    f"sparsity map path {p!r} is not a floating-point array of rank >= 1"
                )
        chosen = [p in per_leaf and np.size(x) > 0 for p, x in zip(paths, leaves)]
        return paths, leaves, treedef, chosen, [per_leaf.get(p, 0.0) for p in paths]

    def init_fn(params: Any) -> ACDCState:
        _, _, treedef, chosen, _ = plan(params)
        return ACDCState(
            count=jnp.zeros((), jnp.int32),
            masks=packed_lib.stored_masks(params, masks_lib.masks_like(params, chosen), packed),
        )

    def update_fn(
        updates: Any, state: ACDCState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, ACDCState]:
        del extra_args
        link_core.needs_params(params, "acdc")
        _, p_leaves, treedef, chosen, targets = plan(params)
        u_leaves = treedef.flatten_up_to(updates)
        m_leaves, masks_def = packed_lib.read_masks(state.masks, treedef, packed, p_leaves)
        idx = [i for i, on in enumerate(chosen) if on]
        compressed, starts = acdc_phases(
            state.count, warmup_steps=warmup, phase_steps=phase, final_start=final_start
        )

        def recompute(operands: tuple, masks: list[Array]) -> tuple[list[Array], None]:
            del masks  # chosen from the weights alone
            p, u = operands
            u = [None] * len(p) if u is None else u  # None: the weights before the update
            if scope == "global" and p:  # (no pruned leaf: nothing to rank)
                return masks_lib.global_threshold(p, target, u)[0], None
            got = [
                masks_lib.magnitude_threshold(x, targets[i], ux)[0] for i, x, ux in zip(idx, p, u)
            ]
            return got, None

        # Only what the turn reads enters its cond (the updates only with "updated": an
        # operand of a cond is written out on every step).
        updated = [u_leaves[i] for i in idx] if recompute_from == "updated" else None
        operands = ([p_leaves[i] for i in idx], updated)
        turns = [link_core.Turn(idx, starts, recompute, operands)]
        m_leaves, _ = link_core.run_turns(turns, m_leaves, None, packed=packed)
        for i in idx:
            # Outside compressed phases every mask is all True.
            m_leaves[i] = packed_lib.or_not(m_leaves[i], compressed)

        out = link_core.zeroed_updates(u_leaves, p_leaves, m_leaves, idx)
        new_state = ACDCState(
            count=optax.safe_int32_increment(state.count),
            masks=link_core.unflatten(masks_def, m_leaves),
        )
        return link_core.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["acdc", "ACDCState"]
