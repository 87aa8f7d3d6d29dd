"""Magnitude pruning as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import leaf_rules, link_core, radix_select, validate
from jaxprune._src import masks as masks_lib
from jaxprune._src import packed as packed_lib
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks, is_float_array
from jaxprune._src.schedules import PruningSchedule

_SCOPES = ("layer", "global")


class MagnitudePruningState(NamedTuple):
    """State of :func:`magnitude_pruning`.

    ``masks`` and ``thresholds`` have the structure of the params: a pruned leaf has a bool mask
    of its own shape (one byte per parameter) and its last threshold, a scalar of its dtype; a
    leaf that is not pruned has a scalar ``True`` mask and a zero threshold. With
    ``magnitude_pruning(..., mask_dtype="packed")`` a pruned leaf's mask is a ``PackedMask``
    (``jaxprune._src.packed``) instead: 1 bit per parameter in ``uint32`` words, the leaf's
    shape kept as static pytree data; :func:`jaxprune.get_masks` and the other accessors
    unpack it, so they return bool masks either way.
    ``skipped_turns`` counts the pruning turns that were skipped, masks unchanged, because the
    schedule's sparsity was NaN (see "NaN sparsities" in the docs).
    """

    count: Array  # shape=(), int32: updates seen so far (the schedule's step)
    masks: Masks  # like params: bool, leaf shape (or a PackedMask) if pruned else shape=()
    thresholds: Any  # like params: shape=(), the leaf's float dtype (float32 for others)
    skipped_turns: Array = np.zeros((), np.int32)  # shape=(), int32: turns skipped (NaN)


# State types whose ``masks`` and ``thresholds`` are params-shaped; jaxprune.get_masks and the
# other accessors find any of them inside an optimizer state. Transformations defined in other
# modules add their state type with register_pruning_state.
PRUNING_STATE_TYPES: list[type] = [MagnitudePruningState]


def register_pruning_state(cls: type) -> type:
    """Lets :func:`jaxprune.get_masks` find states of ``cls`` (a NamedTuple with ``masks``).

    For a custom pruning transformation or :class:`jaxprune.SparseAlgorithm` with a state type
    of its own (a NamedTuple with a params-shaped ``masks`` field, and ``thresholds`` or
    ``count`` if it keeps them): once registered, :func:`jaxprune.get_masks`,
    :func:`jaxprune.check_pruned_zero`, :func:`jaxprune.strip`, the summaries and the
    checkpoint helpers find it inside any optimizer state. Usable as a class decorator;
    returns ``cls``.

    Raises:
      TypeError: if ``cls`` is not a NamedTuple class with a ``masks`` field.

    Examples:
      >>> from typing import Any, NamedTuple
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> @jp.register_pruning_state
      ... class MyState(NamedTuple):
      ...     count: Any
      ...     masks: Any
      >>> state = (MyState(jnp.int32(0), {"w": jnp.array([True, False])}),)
      >>> jp.get_masks(state)["w"].tolist()
      [True, False]
    """
    if "masks" not in getattr(cls, "_fields", ()):
        raise TypeError(f"{cls.__name__} must be a NamedTuple with a 'masks' field")
    if cls not in PRUNING_STATE_TYPES:
        PRUNING_STATE_TYPES.append(cls)
    return cls


def initial_thresholds(leaves: list[Any]) -> list[Array]:
    """A zero threshold per leaf, in the leaf's float dtype (float32 for other leaves)."""
    return [jnp.zeros((), x.dtype if is_float_array(x) else jnp.float32) for x in leaves]


class _ScaledSchedule(PruningSchedule):
    """Another schedule's timing, with its sparsity curve rescaled to end at ``target``.

    ``s_leaf(step) = s(step) · target / s_final``: the rule of TensorFlow's
    ``weight_sparsity_map``.
    """

    def __init__(self, base: Callable, target: float, final: float):
        self.base, self.target, self.final = base, target, final

    @property
    def final_sparsity_value(self) -> float:
        return self.target

    def __call__(self, step: ArrayLike) -> tuple[Array, Array]:
        should_prune, sparsity = self.base(step)
        return should_prune, sparsity * jnp.float32(self.target / self.final)


def skip_nan_turn(should_prune: ArrayLike, sparsity: ArrayLike) -> tuple[Array, Array]:
    """``(prune, skipped)``: a turn whose sparsity is NaN is skipped (masks left unchanged).

    Every pruning transformation runs its turn through this, so a NaN sparsity never prunes
    everything, and counts ``skipped`` in its state.
    """
    should_prune = jnp.asarray(should_prune, bool)
    nan = jnp.any(jnp.isnan(jnp.asarray(sparsity, jnp.float32)))
    return should_prune & ~nan, should_prune & nan


def _per_slice(structure: Any, axis: int | None) -> Any:
    """``structure`` applied to every slice along ``axis`` (thresholds: one per slice)."""
    if axis is None:
        return structure
    return jax.vmap(structure, in_axes=(axis, None), out_axes=(axis, 0))


def check_structure(structure: Any, leaf: Any, path: str, axis: int | None = None) -> None:
    """Traces ``structure(leaf, 0.5)`` abstractly: it must return a mask of the leaf's shape.

    So a structure the leaf cannot take, or a custom structure with a wrong mask shape, fails at
    ``init`` with the leaf's path in the message, not inside ``lax.cond`` at the first turn.
    """
    out = jax.eval_shape(structure, leaf, jnp.float32(0.5))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"the structure for {path!r} must return (mask, threshold), got {out!r} "
            f"from {structure!r}"
        )
    shape = tuple(np.shape(leaf))
    t_shape = () if axis is None else (shape[axis],)
    if tuple(out[0].shape) != shape or tuple(out[1].shape) != t_shape:
        raise ValueError(
            f"the structure {structure!r} for {path!r} returns a mask of shape "
            f"{tuple(out[0].shape)} and a threshold of shape {tuple(out[1].shape)}; the leaf "
            f"needs a mask of shape {shape} and a threshold of shape {t_shape}"
        )


def _check_schedule(schedule: Any, name: str) -> None:
    if not callable(schedule):
        raise TypeError(
            f"{name} must be a PruningSchedule or a callable step -> (should_prune, sparsity), "
            f"got {schedule!r}"
        )


def call_schedule(schedule: Any, step: Any) -> tuple[Array, Array]:
    """``schedule(step)``, checked to be a pair of scalars ``(should_prune, sparsity)``.

    Raises:
      TypeError: for a custom schedule that returns anything else, naming what it returned
        (at the first trace of the update, not deep inside the step).
    """
    out = schedule(step)
    ok = isinstance(out, (tuple, list)) and len(out) == 2
    if ok:
        should_prune, sparsity = out
        ok = not isinstance(should_prune, str) and not isinstance(sparsity, str)
    if ok:
        try:
            should_prune, sparsity = jnp.asarray(should_prune), jnp.asarray(sparsity)
        except (TypeError, ValueError):  # e.g. None
            ok = False
    if not ok or should_prune.shape != () or sparsity.shape != ():
        raise TypeError(
            "a schedule must return a pair of scalars (should_prune: bool, sparsity: float), "
            f"got {out!r} from {schedule!r}"
        )
    # A float flag is read as a bool (nonzero: prune), as before the check.
    if not (
        jnp.issubdtype(should_prune.dtype, jnp.bool_)
        or jnp.issubdtype(should_prune.dtype, jnp.integer)
        or jnp.issubdtype(should_prune.dtype, jnp.floating)
    ) or not (
        jnp.issubdtype(sparsity.dtype, jnp.floating) or jnp.issubdtype(sparsity.dtype, jnp.integer)
    ):
        raise TypeError(
            "a schedule must return (should_prune: bool, sparsity: float), got dtypes "
            f"({should_prune.dtype}, {sparsity.dtype}) from {schedule!r}"
        )
    return should_prune, sparsity


def _leaf_schedules(schedule: Any, sparsity_map: Mapping[str, Any] | None) -> Any:
    """Validates ``sparsity_map`` and returns a function ``(paths, chosen) -> schedules``."""
    entries = leaf_rules.compile_map(sparsity_map, "sparsity_map")
    resolved = []
    for rx, value in entries:
        if isinstance(value, PruningSchedule) or callable(value):
            resolved.append((rx, value))
            continue
        PruningSchedule.validate_sparsity(value, f"sparsity_map[{leaf_rules.shown(rx)!r}]")
        final = getattr(schedule, "final_sparsity_value", None)
        if not final:
            raise ValueError(
                f"sparsity_map[{leaf_rules.shown(rx)!r}] is a float, which rescales the schedule's "
                "curve to end at that value; that needs a schedule with a final sparsity > 0 (got "
                f"{final!r} from {schedule!r}). Give a schedule as the value instead."
            )
        initial = float(getattr(schedule, "initial_sparsity", 0.0))
        if max(initial, float(final)) * float(value) / float(final) >= 1.0:
            raise ValueError(
                f"sparsity_map[{leaf_rules.shown(rx)!r}] = {value!r} rescales the schedule by "
                f"{value}/{final}, which takes its initial sparsity {initial} to 1 or more; "
                "give a schedule as the value instead"
            )
        resolved.append((rx, _ScaledSchedule(schedule, float(value), float(final))))

    def per_leaf(paths: list[str], chosen: list[bool]) -> list[Any]:
        found = leaf_rules.lookup(resolved, paths, chosen, "sparsity_map")
        return [schedule if s is None else s for s in found]

    return per_leaf


def _leaf_structures(structure: Any) -> Any:
    """Validates ``structure``; returns a function ``(paths, chosen) -> per-leaf structures``."""
    if structure is None or callable(structure):

        def same(paths: list[str], chosen: list[bool]) -> list[Any]:
            return [structure if on else None for on in chosen]

        return same
    if not isinstance(structure, Mapping):
        raise TypeError(
            "structure must be None, a structure such as jaxprune.BlockSparsity((4, 4)), "
            f"or a mapping from regex to structure; got {structure!r}"
        )
    entries = leaf_rules.compile_map(structure, "structure")
    for rx, value in entries:
        if not callable(value):
            raise TypeError(
                f"structure[{leaf_rules.shown(rx)!r}] must be a structure such as "
                f"jaxprune.NMSparsity(2, 4), got {value!r}"
            )

    def per_leaf(paths: list[str], chosen: list[bool]) -> list[Any]:
        return leaf_rules.lookup(entries, paths, chosen, "structure")

    return per_leaf


def _leaf_axes(stacked_axes: Mapping[str, int] | None) -> Any:
    """Validates ``stacked_axes``; returns ``(paths, leaves, chosen) -> per-leaf axis``."""
    if stacked_axes is None:
        return lambda paths, leaves, chosen: [None] * len(paths)
    if not isinstance(stacked_axes, Mapping):
        raise TypeError(
            f"stacked_axes must be a mapping from regex to axis, e.g. {{'layers/': 0}}; got "
            f"{stacked_axes!r}"
        )
    entries = leaf_rules.compile_map(stacked_axes, "stacked_axes")
    for rx, value in entries:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"stacked_axes[{leaf_rules.shown(rx)!r}] must be an int axis, got {value!r}"
            )

    def per_leaf(paths: list[str], leaves: list[Any], chosen: list[bool]) -> list[Any]:
        out = []
        for path, leaf, axis in zip(
            paths, leaves, leaf_rules.lookup(entries, paths, chosen, "stacked_axes")
        ):
            if axis is None:
                out.append(None)
                continue
            ndim = np.ndim(leaf)
            if not -ndim <= axis < ndim:
                raise ValueError(
                    f"stacked_axes: {axis} is not an axis of {path!r}, of shape {np.shape(leaf)}"
                )
            out.append(int(axis) % ndim)
        return out

    return per_leaf


# Leaves of at least this many entries give their masks in threshold form (see link_core):
# for them the mask's comparison fuses into the zeroed updates (a pruning step of the benchmark
# MLP, 1.37x -> 1.24x a plain step); for many small leaves it measured slower (192 leaves of
# 48x48: compile 8.05 s -> 10.97 s, a non-pruning step 1.22x -> 1.46x), so they keep the masks.
_KEYED_MIN_SIZE = 1 << 16


def magnitude_pruning(
    schedule: PruningSchedule | Callable[[ArrayLike], tuple[Array, Array]],
    *,
    scope: str = "layer",
    prune: LeafRule | None = None,
    exclude: LeafRule | None = None,
    sparsity_map: Mapping[str, float | PruningSchedule] | None = None,
    structure: Any = None,
    recompute_from: str = "current",
    stacked_axes: Mapping[str, int] | None = None,
    mask_dtype: str = "bool",
) -> optax.GradientTransformationExtraArgs:
    r"""Prunes the smallest-magnitude weights on a schedule; place it last in an optax chain.

    At update ``t`` (the first update is ``t = 0``) with ``(should_prune, s) = schedule(t)``:

    1. if ``should_prune``, the masks are recomputed (inside ``lax.cond``, no host round-trip)
       from :math:`w`, the weights before this update, as TensorFlow's Keras wrapper does at
       the start of a batch, by the rule of :func:`jaxprune.magnitude_mask` at sparsity ``s``:
       per leaf (``scope="layer"``) or with one threshold over all pruned leaves
       (``scope="global"``). With ``recompute_from="updated"`` they are computed from the
       weights this step produces, :math:`w' = w + u`;
    2. the updates become :math:`u_i` where the mask keeps entry ``i`` and :math:`-w_i` where it
       prunes it, so after ``optax.apply_updates`` every pruned weight is exactly ``0.0``, on
       every step, not only on pruning steps.

    A pruning turn whose sparsity is NaN (a diverged custom schedule, a NaN computed in the
    step) is skipped: the masks stay as they are and ``skipped_turns`` in the state counts it.

    The transformation must be the **last** element of the chain: anything after it (e.g.
    ``optax.clip_by_global_norm`` or a learning-rate scale) changes the ``-w`` it emits, and
    pruned weights are then no longer zero. :func:`jaxprune.check_pruned_zero` verifies it
    in a training loop.

    With ``recompute_from="current"`` (the default) a pruned weight is ranked as ``0`` and
    comes back only if the schedule's sparsity decreases enough; with ``"updated"`` it is
    ranked as ``0 + u``, so it comes back when its update alone ranks among the kept
    magnitudes.

    Args:
      schedule: when to prune and how much, e.g. :func:`jaxprune.polynomial_decay`; any
        callable ``step -> (should_prune, sparsity)`` works.
      scope: ``"layer"`` ranks each leaf on its own (tfmot's behaviour); ``"global"`` ranks all
        pruned leaves together.
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path (e.g.
        ``"kernel"``, ``"Dense_0/kernel"``) or a predicate ``(path, leaf) -> bool``. Default
        (:func:`jaxprune.default_rule`): float leaves of rank >= 2 not named ``bias`` (kernels
        and embeddings; linen's rank-2 attention biases are left alone).
      exclude: leaves to leave out of the selection ``prune`` makes, by the same kind of rule
        (e.g. ``exclude="head"`` keeps the output layer dense).
      sparsity_map: per-leaf overrides ``{regex: value}``. A float ``v`` rescales the
        schedule's curve to end at ``v`` (:math:`s_{leaf} = s \cdot v / s_{final}`, TensorFlow's
        ``weight_sparsity_map`` rule); a schedule replaces the schedule for those leaves. A
        leaf matched by two entries is an error. With ``scope="global"``, overridden leaves
        are ranked on their own and the others share one threshold.
      structure: what is ranked: ``None`` (single weights, the default), or a structure for
        every pruned leaf — :class:`jaxprune.BlockSparsity` (blocks pooled by average or max),
        :class:`jaxprune.NMSparsity` (``n`` of every ``m`` along the input axis, applied on the
        schedule's pruning turns; the schedule's sparsity is ignored) or
        :class:`jaxprune.UnitSparsity` (whole output units by L2 norm) — or a mapping
        ``{regex: structure}`` for some leaves (two entries matching one leaf is an error).
        Structured leaves are always ranked on their own. A structure a leaf cannot take (e.g.
        blocks on a rank-4 kernel), or a custom structure whose mask does not have the leaf's
        shape, raises at ``init``.
      recompute_from: ``"current"`` (default) ranks the weights before this update, as
        tfmot does; ``"updated"`` ranks the weights this step produces, :math:`w + u`.
        ``"current"`` is cheaper on every step: the masks' ``lax.cond`` does not need the
        updates, so XLA fuses the optimizer's arithmetic straight into
        ``optax.apply_updates`` (``benchmarks/step_overhead.py`` measures both: a step that
        does not prune costs 1.03-1.04x a plain Adam step with ``"current"`` and 1.07-1.15x
        with ``"updated"``). In jaxprune 0.1.0 the default was ``"updated"``.

      stacked_axes: leaves that hold several layers stacked along an axis, as flax's
        ``nn.scan`` and ``nnx.scan`` (and ``jax.lax.scan`` over stacked params) store them:
        ``{regex: axis}``, e.g. ``{"layers/": 0}``. With ``scope="layer"`` every slice along
        the axis is ranked on its own, as if it were a leaf, so every layer reaches the
        sparsity, and the leaf's threshold in the state is a vector with one entry per slice.
        A structure is applied to every slice (``jax.vmap`` over the axis). With
        ``scope="global"`` the slices share the one threshold like any other entries, and
        the map only changes how structures are applied. A regex that matches no pruned leaf,
        or an axis the leaf does not have, is an error.
      mask_dtype: how the state holds the masks of pruned leaves. ``"bool"`` (default): a
        bool array of the leaf's shape, 1 byte per parameter. ``"packed"``: a ``PackedMask``
        (``jaxprune._src.packed``), 1 bit per parameter in ``uint32`` words, the leaf's shape
        static pytree data (8x less memory in the optimizer state and in checkpoints).
        Masks are packed after each pruning turn's selection and unpacked, fused into the
        update, where pruned entries are zeroed. Masks, thresholds and trajectories are bit
        for bit those of ``"bool"``, and :func:`jaxprune.get_masks`,
        :func:`jaxprune.pruning_summaries`, :func:`jaxprune.check_pruned_zero`,
        :func:`jaxprune.strip` and the accessors return and use bool masks of the params'
        shapes either way. ``state.masks`` itself holds the packed form (without flax.nnx
        ``Variable`` wrappers): read masks through :func:`jaxprune.get_masks`. Every
        transformation that zeroes weights by masks takes ``mask_dtype`` (also
        :func:`jaxprune.random_pruning`, :func:`jaxprune.acdc`,
        :func:`jaxprune.tf.pruning_from_config` and :func:`jaxprune.sparse`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is a
      :class:`MagnitudePruningState`; ``update`` needs ``params``.

    Raises:
      ValueError: for an unknown ``scope``, ``recompute_from`` or ``mask_dtype``, a bad
        ``sparsity_map`` value, or (at ``init``) a rule that matches no leaf.
      TypeError: for a rule that selects a non-float leaf, or a non-callable schedule.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jnp.zeros(8)}
      >>> tx = optax.chain(
      ...     optax.sgd(0.1),
      ...     jp.magnitude_pruning(jp.constant_sparsity(0.75, begin_step=0, frequency=1)))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> int(jnp.sum(params["w"] == 0)), int(jnp.sum(params["b"] == 0))
      (48, 0)
    """
    _check_schedule(schedule, "schedule")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    validate.check_recompute_from(recompute_from)
    packed = packed_lib.check_mask_dtype(mask_dtype)
    rule = leaf_rules.compile_rule(prune, "prune")
    excluded = leaf_rules.compile_rule(exclude, "exclude")
    leaf_schedules = _leaf_schedules(schedule, sparsity_map)
    leaf_structures = _leaf_structures(structure)
    leaf_axes = _leaf_axes(stacked_axes)

    def together(sch: Any, st: Any) -> bool:
        # With global scope, leaves on the main schedule and without a structure share one
        # threshold; the others are ranked on their own.
        return scope == "global" and sch is schedule and st is None

    def plan(params: Any) -> tuple[list[Any], Any, list[bool], list[Any], list[Any], list[Any]]:
        paths, leaves, treedef = leaf_rules.flatten(params)
        chosen = leaf_rules.select(paths, leaves, rule, exclude=excluded)
        scheds = leaf_schedules(paths, chosen)
        structs = leaf_structures(paths, chosen)
        # The stacking axis of a leaf whose slices are ranked on their own (None otherwise).
        axes = [
            None if a is None or together(sch, st) else a
            for a, sch, st in zip(leaf_axes(paths, leaves, chosen), scheds, structs)
        ]
        return leaves, treedef, chosen, scheds, structs, axes

    def init_fn(params: Any) -> MagnitudePruningState:
        leaves, treedef, chosen, _, structs, axes = plan(params)
        paths = leaf_rules.flatten(params)[0]
        for path, leaf, st, axis in zip(paths, leaves, structs, axes):
            if st is not None:
                # Trace the structure once on the leaf's shape, so a structure the leaf cannot
                # take (e.g. blocks on a rank-4 kernel) fails here rather than inside a step.
                check_structure(_per_slice(st, axis), leaf, path, axis)
        masks = packed_lib.stored_masks(params, masks_lib.masks_like(params, chosen), packed)
        thresholds = [
            t if a is None else jnp.zeros((np.shape(x)[a],), t.dtype)
            for t, x, a in zip(initial_thresholds(leaves), leaves, axes)
        ]
        return MagnitudePruningState(
            count=jnp.zeros((), jnp.int32),
            masks=masks,
            thresholds=jax.tree_util.tree_unflatten(treedef, thresholds),
            skipped_turns=jnp.zeros((), jnp.int32),
        )

    def keyed_leaves(
        p_leaves: list[Any], idx: list[int], scheds: list[Any], structs: list[Any], axes: list[Any]
    ) -> dict[int, jax.ShapeDtypeStruct]:
        """Positions in ``idx`` whose masks a turn gives in threshold form (see link_core).

        Unstructured, non-empty leaves with bool masks: their mask is ``key >= kth``.
        """
        if packed:
            return {}
        shared = [i for i in idx if together(scheds[i], structs[i])]
        ktype_shared = radix_select.key_dtype([p_leaves[i].dtype for i in shared] or [jnp.float32])
        out = {}
        for j, i in enumerate(idx):
            x = p_leaves[i]
            if structs[i] is not None or np.size(x) < _KEYED_MIN_SIZE:
                continue
            ktype = ktype_shared if i in shared else radix_select.key_dtype([x.dtype])
            shape = () if axes[i] is None else (np.shape(x)[axes[i]],)
            out[j] = jax.ShapeDtypeStruct(shape, ktype)
        return out

    def recompute_group(
        idx: list[int], scheds: list[Any], structs: list[Any], axes: list[Any], keyed: Any
    ):
        """A turn's masks and thresholds for the leaves ``idx`` (operands ``(p, u, s)``).

        For the positions in ``keyed`` the k-th largest key replaces the mask.
        """
        shared = [j for j, i in enumerate(idx) if together(scheds[i], structs[i])]

        def recompute(operands: tuple, masks: list[Array]) -> tuple[list[Any], list[Any]]:
            del masks  # ranked from the weights alone
            p, u, s = operands
            # With u, the weights this step produces, p + u, computed as optax.apply_updates
            # does (chunk by chunk, never stored whole).
            u = [None] * len(p) if u is None else u
            new_m: list[Any] = [None] * len(p)
            thrs: list[Any] = [None] * len(p)
            if shared:
                kth, thr = masks_lib.global_key([p[j] for j in shared], s, [u[j] for j in shared])
                for j in shared:
                    x = jnp.asarray(p[j])
                    new_m[j] = kth if j in keyed else masks_lib.mask_from_key(x, u[j], kth)
                    thrs[j] = thr.astype(x.dtype)
            # Unstructured leaves ranked on their own share one batched selection: the program
            # does not grow by a selection per leaf.
            alone = [j for j, i in enumerate(idx) if new_m[j] is None and structs[i] is None]
            if len(alone) > 1 or any(axes[idx[j]] is not None for j in alone):
                leaves = [jnp.asarray(p[j]) for j in alone]
                alone_axes = [axes[idx[j]] for j in alone]
                got = masks_lib.layer_keys_of(leaves, s, [u[j] for j in alone], alone_axes)
                for j, x, a, key, t in zip(alone, leaves, alone_axes, *got):
                    if key is None:  # an empty leaf
                        new_m[j] = jnp.ones(x.shape, bool)
                    elif j in keyed:
                        new_m[j] = key
                    else:
                        new_m[j] = masks_lib.mask_from_key(x, u[j], key, a)
                    thrs[j] = t
            for j, i in enumerate(idx):
                if new_m[j] is not None:
                    continue
                if structs[i] is None:
                    if j in keyed:
                        x = jnp.asarray(p[j])
                        src = radix_select.magnitude_source(x, keyed[j].dtype, u[j])
                        new_m[j] = radix_select.kth_largest_key(
                            [src], radix_select.kept_count(x.size, s)
                        )
                        thrs[j] = radix_select.key_to_magnitude(new_m[j], x.dtype)
                    else:
                        new_m[j], thrs[j] = masks_lib.magnitude_threshold(p[j], s, u[j])
                    continue
                x = p[j] if u[j] is None else radix_select.added(p[j], u[j])
                m, t = _per_slice(structs[i], axes[i])(x, s)
                new_m[j], thrs[j] = m.astype(bool), jnp.asarray(t).astype(p[j].dtype)
            return new_m, thrs

        return recompute

    def update_fn(
        updates: Any, state: MagnitudePruningState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, MagnitudePruningState]:
        del extra_args
        link_core.needs_params(params, "magnitude_pruning")
        p_leaves, treedef, chosen, scheds, structs, axes = plan(params)
        u_leaves = treedef.flatten_up_to(updates)
        m_leaves, masks_def = packed_lib.read_masks(state.masks, treedef, packed, p_leaves)

        # Leaves that share a schedule (and, with global scope, a threshold) are updated
        # together under one lax.cond.
        turns = []
        skipped = jnp.zeros((), bool)
        for sch, idx in link_core.groups_by_schedule(chosen, scheds):
            should_prune, sparsity = call_schedule(sch, state.count)
            should_prune, skip = skip_nan_turn(should_prune, sparsity)
            skipped = skipped | skip
            operands = (
                [p_leaves[i] for i in idx],
                [u_leaves[i] for i in idx] if recompute_from == "updated" else None,
                sparsity,
            )
            keyed = keyed_leaves(p_leaves, idx, scheds, structs, axes)

            def key_mask(j: int, key: Array, idx: list[int] = idx) -> Array:
                i = idx[j]
                u = u_leaves[i] if recompute_from == "updated" else None
                return masks_lib.mask_at_key(jnp.asarray(p_leaves[i]), u, key, axes[i])

            turns.append(
                link_core.Turn(
                    idx,
                    should_prune,
                    recompute_group(idx, scheds, structs, axes, keyed),
                    operands,
                    keyed=keyed,
                    key_mask=key_mask,
                )
            )
        m_leaves, t_leaves = link_core.run_turns(
            turns, m_leaves, treedef.flatten_up_to(state.thresholds), packed=packed
        )
        pruned = [i for i, on in enumerate(chosen) if on]
        out = link_core.zeroed_updates(u_leaves, p_leaves, m_leaves, pruned)
        new_state = MagnitudePruningState(
            count=optax.safe_int32_increment(state.count),
            masks=link_core.unflatten(masks_def, m_leaves),
            thresholds=link_core.unflatten(treedef, t_leaves),
            skipped_turns=jnp.asarray(state.skipped_turns, jnp.int32) + skipped.astype(jnp.int32),
        )
        return link_core.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
