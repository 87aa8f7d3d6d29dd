r"""Sparse training as a wrapper around an optimizer: ``sparse(inner_tx, algorithm)``.

A sparse-training algorithm (RigL, SET, static masks, STE, saliency, movement) needs more than
a link in an ``optax.chain`` can see: the *raw* gradients (RigL grows where the dense gradient
is large; SR-STE adds a term to the gradient before the optimizer), the optimizer's own state
(moments of regrown weights must be reset) and the updates it produces (pruned weights must stay
exactly ``0.0``). :func:`sparse` therefore wraps the optimizer instead of following it::

    tx = jp.sparse(optax.adam(1e-3), jp.rigl(0.9, key=key, end_step=10_000))

Wrapping is safer than chaining: a pruning link placed before the optimizer in a chain would
have its exact zeros rescaled by Adam, one placed after it never sees the raw gradients, and a
second optimizer link after it would undo the masks. A wrapper has one place to be, and it is the
right one by construction.

At every update :func:`sparse` runs these steps, in this order (``t`` is the number of updates
seen so far; the first update is ``t = 0``):

1. ``observe``: the algorithm may update its own state from the raw gradients ``g`` and the
   weights ``w`` (movement pruning accumulates its scores here);
2. the gradients given to the inner optimizer are, for the *zero-weight* algorithms (pruned
   weights are exactly ``0.0``), :math:`g \odot m` — the gradient of the masked weights, as in
   the reference RigL implementation, so pruned weights gather no momentum; for the
   *straight-through* algorithms (dense weights kept, the forward pass masks them), ``g``,
   possibly adjusted by the algorithm (SR-STE adds :math:`\lambda (1 - m) \odot w`);
3. the inner optimizer runs: ``u, inner_state = inner_tx.update(g', inner_state, w)``;
4. on the algorithm's turns (a traced bool), the masks are recomputed inside ``lax.cond`` from
   what the algorithm declares it reads (weights, raw gradients, the updates ``u``). An
   algorithm may ask that the inner update be skipped on its turns (``jaxprune.rigl(...,
   skip_update_on_turn=True)``, as the reference implementation): ``u`` is then zero and the
   inner state is left as it was;
5. *regrowth* (algorithms that grow weights: RigL, SET): a weight is **newly grown** when its
   mask turns from ``False`` to ``True`` at this step. Every leaf of the inner optimizer's
   state that sits in a params-shaped subtree of that state (a subtree with the params' tree
   structure, such as Adam's ``mu`` and ``nu`` or a momentum ``trace``) and has the shape of
   the corresponding weight is set to ``0`` at the newly grown entries; other leaves (step
   counts, Adafactor's factored moments) are left alone. For these algorithms the masks are
   chosen before the inner update of step 3 (an algorithm that ranks ``u`` gets it computed
   inside the turn's branch from the state as it was), and the reset applies to the state the
   inner update starts from: a newly grown entry has gradient ``0`` (its mask was ``False``),
   so for optimizers whose state is ``0`` after a zero gradient on a zero state (SGD with
   momentum, Adam, RMSProp, Adagrad, Lion) it is still ``0`` after the update. Resetting the
   state the optimizer returns instead would make XLA compute it twice on every step;
6. the updates returned: for zero-weight algorithms, :math:`u_i` where the weight was kept
   before *and* after this step, and :math:`-w_i` everywhere else, so after
   ``optax.apply_updates`` every pruned weight is exactly ``0.0`` and every newly grown weight
   starts at exactly ``0.0`` (a weight dropped and grown back at the same step keeps its value
   and its optimizer state); for straight-through algorithms, ``u`` unchanged.

Forward passes should use :func:`masked_params`, which applies the current masks with a
straight-through gradient: the loss sees masked weights, while the gradient reaches every
weight (RigL needs the dense gradient; STE trains the pruned weights). For the zero-weight
algorithms it changes no value once the params start from ``masked_params``, so their forward
pass may read the params directly (the same outputs and gradients, one pass less).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune._src import leaf_rules as spec
from jaxprune._src import packed as packed_lib
from jaxprune._src import radix_select as selection
from jaxprune._src import summaries as summaries_lib
from jaxprune._src import trees
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks, Params, is_float_array
from jaxprune._src.link_core import zero_pruned
from jaxprune._src.transform import register_pruning_state


class SparseState(NamedTuple):
    """State of :func:`sparse`: the inner optimizer's state and the algorithm's state."""

    inner: Any  # the inner optimizer's state, as inner_tx.init made it
    algorithm: Any  # the algorithm's state (a NamedTuple with ``count`` and ``masks``)


@register_pruning_state
class SparseMaskState(NamedTuple):
    """State of the sparse-training algorithms that keep only masks and a step count.

    ``masks`` has the structure of the params: a bool array of the leaf's shape for a pruned
    leaf (one byte per parameter), a scalar ``True`` for the others.
    """

    count: Array  # shape=(), int32: updates seen so far
    masks: Masks  # like params: bool, leaf shape if pruned else shape=()


@dataclasses.dataclass(frozen=True)
class SparseAlgorithm:
    """A sparse-training policy that :func:`sparse` runs around an inner optimizer.

    The functions work on flat lists of leaves in the params' flattening order (``p``: weights,
    ``g``: raw gradients, ``u``: the inner optimizer's updates, ``m``: masks, scalar ``True``
    for leaves that are not pruned). The state must be a NamedTuple with ``count`` (int32) and
    ``masks`` fields, registered with ``register_pruning_state``; :func:`sparse` increments
    ``count`` and stores the masks.

    Attributes:
      name: the public function's name, used in error messages.
      init: ``params -> state``; validates the params (a bad rule raises here).
      turn: ``state -> bool scalar``, whether the masks are recomputed at this step.
      recompute: ``(plan, state, p, g, u) -> masks``, run inside ``lax.cond`` on turns; ``g`` is
        ``None`` unless ``"grads" in reads`` and ``u`` ``None`` unless ``"updates" in reads``.
        With ``"updated_params" in reads`` (straight-through algorithms only), ``p`` holds the
        weights this step produces, :math:`w + u` as ``optax.apply_updates`` computes them,
        instead of :math:`w`. ``None``: the masks never change.
      plan: ``params -> plan``, static Python facts about the leaves (e.g. per-leaf counts)
        computed at every update outside the traced branches and given to ``recompute``.
      reads: what ``recompute`` reads besides the state and the weights.
      straight_through: ``True``: dense weights are kept and the forward pass masks them;
        ``False``: pruned weights are exactly ``0.0``.
      skip_update_on_turn: the inner update is not applied on turns (RigL).
      regrows: the algorithm grows weights; the inner state is reset where it does.
      adjust_grads: ``(state, p, g) -> g`` before the inner optimizer (straight-through only).
      observe: ``(state, p, g) -> state`` at every step, before anything else.
    """

    name: str
    init: Callable[[Params], Any]
    turn: Callable[[Any], Array]
    recompute: Callable[..., list[Array]] | None
    plan: Callable[[Params], Any] = lambda params: None
    reads: frozenset = frozenset()
    straight_through: bool = False
    skip_update_on_turn: bool = False
    regrows: bool = False
    adjust_grads: Callable[..., list[Array]] | None = None
    observe: Callable[..., Any] | None = None


def _is_pruned(mask: Any) -> bool:
    return np.ndim(mask) > 0


def _reset_grown(inner_state: Any, treedef: Any, p_leaves: list, grown: list) -> Any:
    """Zeroes newly grown entries in every params-shaped subtree of the inner state."""

    def params_like(x: Any) -> bool:
        try:
            return jax.tree_util.tree_structure(x) == treedef
        except Exception:  # noqa: BLE001 (an object jax cannot flatten is not params-like)
            return False

    def reset(x: Any) -> Any:
        if not params_like(x):
            return x
        leaves = treedef.flatten_up_to(x)
        out = []
        for v, p, gr in zip(leaves, p_leaves, grown):
            if gr is not None and np.shape(v) == np.shape(p):
                v = jnp.where(gr, jnp.zeros((), jnp.asarray(v).dtype), v)
            out.append(v)
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.tree.map(reset, inner_state, is_leaf=params_like)


def sparse(
    inner_tx: optax.GradientTransformation,
    algorithm: SparseAlgorithm,
    *,
    mask_dtype: str = "bool",
) -> optax.GradientTransformationExtraArgs:
    r"""Trains sparse: runs ``algorithm``'s masks around the optimizer ``inner_tx``.

    At update ``t`` with raw gradients :math:`g`, weights :math:`w` and masks :math:`m`
    (zero-weight algorithms: RigL, SET, static, saliency):

    .. math::

        u, s' = \mathrm{inner}(g \odot m, s, w), \qquad
        m' = \begin{cases} \mathrm{recompute}(\dots) & \text{on a turn} \\ m & \text{else}
        \end{cases}, \qquad
        \Delta w = \begin{cases} u & m \wedge m' \\ -w & \text{else} \end{cases}

    so pruned and newly grown weights are exactly ``0.0`` after ``optax.apply_updates``, and the
    inner state ``s'`` is zeroed at newly grown entries (:math:`m' \wedge \neg m`). For the
    straight-through algorithms (STE, SR-STE, movement) :math:`\Delta w = u` with
    :math:`u, s' = \mathrm{inner}(\tilde g, s, w)`, :math:`\tilde g` being ``g`` or the
    algorithm's adjusted gradient, and the forward pass uses :func:`masked_params`.

    Use it as the whole optimizer, not inside an ``optax.chain`` after another optimizer: it
    must see the raw gradients and own the optimizer's state, which a chain position cannot
    guarantee. Transformations that only rescale or clip gradients can go inside ``inner_tx``.

    Args:
      inner_tx: the optimizer, e.g. ``optax.adam(1e-3)`` (any ``GradientTransformation``,
        chains included).
      algorithm: a sparse-training algorithm such as :func:`jaxprune.rigl`,
        :func:`jaxprune.set_training`, :func:`jaxprune.static_sparse`,
        :func:`jaxprune.magnitude_ste` or :func:`jaxprune.movement_pruning`.
      mask_dtype: ``"bool"`` (default): the state's masks are bool arrays, 1 byte per
        parameter. ``"packed"``: 1 bit per parameter in ``uint32`` words (a ``PackedMask`` per
        pruned leaf, as :func:`jaxprune.magnitude_pruning` offers), in the optimizer state and
        in checkpoints; the algorithm sees bool masks, and the masks are bit for bit those of
        ``"bool"`` (the weights agree to float rounding: XLA may fuse the arithmetic around
        the unpacking differently).
        The accessors (:func:`jaxprune.get_masks`, :func:`jaxprune.masked_params`, ...) return
        bool masks either way.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SparseState`;
      ``update`` needs ``params`` and passes extra arguments on to ``inner_tx``.

    Raises:
      TypeError: if ``inner_tx`` has no ``init``/``update`` or ``algorithm`` is not a sparse
        training algorithm.
      ValueError: for an unknown ``mask_dtype``.
      ValueError: at ``update``, when ``params`` is not given.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jnp.zeros(8)}
      >>> tx = jp.sparse(optax.adam(1e-2), jp.static_sparse(0.75, key=jax.random.key(1)))
      >>> state = tx.init(params)
      >>> params = jp.masked_params(params, state)  # start from the sparse weights
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> int(jnp.sum(params["w"] == 0)), int(jnp.sum(params["b"] == 0))
      (48, 0)

    References:
      Evci et al., 2020, `Rigging the Lottery: Making All Tickets Winners
      <https://arxiv.org/abs/1911.11134>`_ (the wrapper design of the reference code).
    """
    if not (
        callable(getattr(inner_tx, "init", None)) and callable(getattr(inner_tx, "update", None))
    ):
        raise TypeError(f"inner_tx must be an optax GradientTransformation, got {inner_tx!r}")
    if not isinstance(algorithm, SparseAlgorithm):
        raise TypeError(
            "algorithm must be a sparse-training algorithm such as jaxprune.rigl(...), "
            f"jaxprune.set_training(...) or jaxprune.magnitude_ste(...), got {algorithm!r}"
        )
    packed = packed_lib.check_mask_dtype(mask_dtype)
    alg = algorithm

    def init_fn(params: Params) -> SparseState:
        astate = alg.init(params)
        if packed:
            # Stored without flax.nnx wrappers around the words (see packed.stored_masks):
            # nnx.Optimizer would give a wrapped PackedMask back as a plain mapping.
            flat = jax.tree_util.tree_structure(params).flatten_up_to(astate.masks)
            astate = astate._replace(masks=packed_lib.stored_masks(params, flat, True))
        return SparseState(inner=inner_tx.init(params), algorithm=astate)

    def update_fn(
        updates: Any, state: SparseState, params: Params = None, **extra_args: Any
    ) -> tuple[Any, SparseState]:
        if params is None:
            raise ValueError(
                f"sparse({alg.name}) needs the current params: call tx.update(grads, state, params)"
            )
        _, p_leaves, treedef = spec.flatten(params)
        astate = state.algorithm
        stored, masks_def = packed_lib.read_masks(astate.masks, treedef, packed, p_leaves)
        g_leaves = treedef.flatten_up_to(updates)
        words = None
        if packed:
            # The algorithm works on bool masks; the state keeps the words (and a step that
            # keeps its masks passes the words on, an eighth of the bytes of bool masks).
            words = stored
            bools = [packed_lib.as_bool(m) for m in words]
            astate = astate._replace(masks=jax.tree_util.tree_unflatten(treedef, bools))
        if alg.observe is not None:
            astate = alg.observe(astate, p_leaves, g_leaves)
        m_leaves = treedef.flatten_up_to(astate.masks)
        pruned = [i for i, m in enumerate(m_leaves) if _is_pruned(m)]

        def inner_update(inner_state: Any) -> tuple[list, Any]:
            """The inner optimizer on the gradients it is given (step 2), as flat updates."""
            if alg.straight_through:
                g_in = g_leaves
                if alg.adjust_grads is not None:
                    g_in = alg.adjust_grads(astate, p_leaves, g_leaves)
            else:
                g_in = list(g_leaves)
                for i in pruned:
                    g = jnp.asarray(g_leaves[i])
                    g_in[i] = jnp.where(m_leaves[i], g, jnp.zeros((), g.dtype))
            u_tree, new_inner = inner_tx.update(
                jax.tree_util.tree_unflatten(treedef, g_in), inner_state, params, **extra_args
            )
            return treedef.flatten_up_to(u_tree), new_inner

        if alg.recompute is None:
            new_m = m_leaves
            u_leaves, inner = inner_update(state.inner)
        else:
            turn = alg.turn(astate)
            plan = alg.plan(params)

            # Only the new masks come out of the cond, and only arrays that exist anyway go in
            # (weights, raw gradients, the algorithm's and the inner optimizer's states): an
            # operand or a result of a cond is a buffer of its own, so passing the inner
            # updates or the inner state through it would write them out on every step instead
            # of fusing the optimizer's arithmetic into optax.apply_updates. An algorithm that
            # ranks the updates gets them computed again inside the branch, from the same
            # inputs (the same values); a step that is not a turn costs a copy of the masks.
            def on_turn(st, p_read):
                u = inner_update(state.inner)[0] if "updates" in alg.reads else None
                g = g_leaves if "grads" in alg.reads else None
                got = list(alg.recompute(plan, st, p_read, g, u))
                if packed:
                    got = packed_lib.pack_pruned(got)
                return got

            in_words = words

            def off_turn(st, p_read):
                return list(in_words) if packed else list(treedef.flatten_up_to(st.masks))

            def new_masks(p_read):
                out = lax.cond(turn, on_turn, off_turn, astate, p_read)
                return out, [packed_lib.as_bool(m) for m in out] if packed else out

            if alg.regrows:
                # The masks first, then the inner update on a state whose newly grown entries
                # are already zero: their gradient g * m is zero too, so the optimizer's new
                # state is zero there (for optimizers whose state is a function of past
                # gradients that is 0 at 0: momentum, Adam, RMSProp, ...). Zeroing the state
                # the optimizer returns instead would select between two versions of each
                # moment, which XLA computes twice and copies (benchmarks/state_select.py).
                words, new_m = new_masks(p_leaves)
                grown = [None] * len(p_leaves)
                for i in pruned:
                    grown[i] = new_m[i] & ~m_leaves[i]
                inner_in = _reset_grown(state.inner, treedef, p_leaves, grown)
                u_leaves, inner = inner_update(inner_in)
            else:
                u_leaves, inner = inner_update(state.inner)
                p_read = p_leaves
                if "updated_params" in alg.reads and alg.straight_through:
                    # The updates are returned as they are, so this is the array the train
                    # step's optax.apply_updates computes: XLA stores it once, as the new
                    # weights, and the turn reads it from there (nothing kept alive for it,
                    # nothing recomputed).
                    p_read = [
                        jnp.asarray(w + u).astype(jnp.asarray(w).dtype)
                        for w, u in zip(p_leaves, u_leaves)
                    ]
                words, new_m = new_masks(p_read)
                inner_in = state.inner
            if alg.skip_update_on_turn:
                # On a turn the inner update is skipped: its state kept (newly grown entries
                # zeroed), its updates zero. Elementwise, but it selects between two versions
                # of the optimizer's state on every step (the cost of this option).
                inner = jax.tree.map(lambda old, new: jnp.where(turn, old, new), inner_in, inner)
                u_leaves = [
                    jnp.where(turn, jnp.zeros((), jnp.asarray(u).dtype), u) for u in u_leaves
                ]

        if alg.straight_through:
            out = u_leaves
        else:
            both = list(new_m)
            if alg.recompute is not None:
                for i in pruned:
                    both[i] = new_m[i] & m_leaves[i]
            out = zero_pruned(u_leaves, p_leaves, both, pruned)

        new_astate = astate._replace(
            count=optax.safe_int32_increment(astate.count),
            masks=(
                jax.tree_util.tree_unflatten(masks_def, words)
                if packed
                else jax.tree_util.tree_unflatten(treedef, new_m)
            ),
        )
        return jax.tree_util.tree_unflatten(treedef, out), SparseState(inner, new_astate)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- forward pass


@jax.custom_jvp
def _straight_through(w: Array, m: Array) -> Array:
    return jnp.where(m, w, jnp.zeros((), w.dtype))


@_straight_through.defjvp
def _straight_through_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    w, m = primals
    # The derivative is the identity in w: the gradient reaches pruned weights too.
    return _straight_through(w, m), tangents[0]


def masked_params(params: Params, opt_state: Any) -> Params:
    r"""The weights the forward pass uses: ``params`` with the current masks applied.

    :math:`\tilde w = m \odot w` in the forward pass, with a straight-through gradient
    :math:`\partial \tilde w / \partial w = 1`: the loss sees the masked weights, while
    ``jax.grad`` with respect to ``params`` reaches every weight, pruned or not. That is what
    each algorithm of :func:`sparse` needs: STE, SR-STE and movement pruning train the dense
    weights; RigL grows where the dense gradient is large. For the zero-weight algorithms the
    pruned weights are already ``0.0`` after every update, so the forward values do not change;
    call it once after ``init`` to start from sparse weights.

    Args:
      params: the params tree given to the optimizer.
      opt_state: an optimizer state holding exactly one pruning state (the state of
        :func:`sparse`, of :func:`jaxprune.magnitude_pruning`, or a chain holding either).

    Returns:
      A tree like ``params``: pruned entries ``0.0``, others unchanged.

    Raises:
      ValueError: if ``opt_state`` holds no pruning state or more than one, or if the masks
        do not have the structure of ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxprune as jp
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
      >>> sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
      >>> tx = jp.sparse(optax.sgd(0.1), jp.magnitude_ste(sched))
      >>> state = tx.init(params)
      >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
      >>> jp.masked_params(params, state)["w"].tolist()
      [[0.0, -2.0], [0.0, 3.0]]
      >>> loss = lambda p: jnp.sum(jp.masked_params(p, state)["w"])
      >>> jax.grad(loss)(params)["w"].tolist()  # straight through: every weight gets one
      [[1.0, 1.0], [1.0, 1.0]]
    """
    masks = summaries_lib.get_pruning_state(opt_state).masks
    # Matched by path, flax.nnx Variable wrappers read as their values on either side (the
    # masks of an nnx.Optimizer keep them; params split inside nnx.jit may not).
    try:
        pairs = trees.pair_with_masks(params, masks)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the masks in opt_state do not have the structure of params: {e}") from e
    return trees.rebuild(params, [_straight_through(x, m) for _, x, m in pairs])


# --------------------------------------------------------------------------- shared helpers


# Up to this many keys in all, top_k_masks ranks by a stable sort: for small leaves a sort is as
# fast as the radix select and compiles in a tenth of its time (a model of many small leaves
# compiles one selection per leaf). Both give the same masks.
SORT_MAX = 1 << 12


# Jitted so that eager calls run as one program; inlined inside a jit.
@jax.jit
def top_k_masks(keys: list[Array], k: ArrayLike) -> list[Array]:
    """Exactly ``k`` entries kept over all ``keys`` together: the largest keys first.

    Ties at the k-th largest key are broken by position: leaves in order, then lower flat
    index first. ``1 <= k <=`` total size (may be traced); keys are unsigned integers.
    """
    return top_k_sources([selection.KeySource((x,), lambda a: a) for x in keys], k)


def top_k_sources(sources: list[selection.KeySource], k: ArrayLike) -> list[Array]:
    """:func:`top_k_masks` of keys computed on the fly (:class:`selection.KeySource`).

    The keys are computed from the arrays the sources hold in every pass (two counting passes
    and the mask), never stored whole: ranking ``lift(|w|, m)`` costs no n-sized temporary.
    """
    k = jnp.asarray(k, jnp.int32)
    if sum(src.arrays[0].size for src in sources) <= SORT_MAX:
        return sorted_top_k([src.keys(*src.arrays) for src in sources], k)
    # need: how many of the keys equal to the k-th are kept; the selection counts them.
    kth, need, n_ties = selection.kth_largest_key(sources, k, counts=True)

    def all_ties(arrays):
        return [
            selection.at_least(selection.KeySource(a, src.keys), kth)
            for src, a in zip(sources, arrays)
        ]

    def first_ties(arrays):  # by position: a running count of the ties, chunk by chunk
        out = []
        offset = jnp.zeros((), jnp.int32)
        for src, a in zip(sources, arrays):
            mask, offset = _first_ties(src.keys, a, kth, need, offset)
            out.append(mask)
        return out

    # Keys of continuous values rarely tie at the k-th: then no cumulative sum is needed.
    arrays = [src.arrays for src in sources]
    return lax.cond(need == n_ties, all_ties, first_ties, arrays)


# Ties are ranked in chunks of this many keys: a cumulative sum over a whole leaf would need
# n-sized int32 temporaries, and on CPU every call pays page faults for fresh temporaries.
_TIE_CHUNK = 1 << 16
# Rows of at least this many keys (and at most _TIE_CHUNK) let the ties be ranked by rows.
_TIE_ROW_MIN = 1 << 8


def _tie_rows(shape: tuple[int, ...]) -> int | None:
    """A row length for ranking the ties of a leaf of ``shape``, or ``None``.

    The product of the last few axes, the smallest with at least :data:`_TIE_ROW_MIN` keys, if
    it has at most :data:`_TIE_CHUNK` and there are at least two rows; otherwise a power of two
    in that range that divides the size (the leaf read flat, in rows of that length).
    """
    size = math.prod(shape)
    length = 1
    for d in reversed(shape):
        length *= d
        if length >= _TIE_ROW_MIN:
            break
    if _TIE_ROW_MIN <= length <= _TIE_CHUNK and size > length:
        return length
    for log2 in range(12, 17):  # 4096 .. 65536 first: fewer rows to count
        if size % (1 << log2) == 0 and size > 1 << log2:
            return 1 << log2
    for log2 in range(11, 7, -1):
        if size % (1 << log2) == 0 and size > 1 << log2:
            return 1 << log2
    return None


def _first_ties(
    keys_fn: Callable[..., Array], arrays: tuple, kth: Array, need: Array, offset: Array
) -> tuple[Array, Array]:
    """``keys > kth``, plus the ties at ``kth`` of rank ``<= need`` (rank ``offset`` + i).

    Returns the mask (the arrays' shape) and ``offset`` plus the number of ties seen.

    The last tie kept lies at some flat position ``P`` of the leaf, and the mask is
    ``keys > kth | (keys == kth & position <= P)``. ``P`` comes from the number of ties in
    each row (one counting pass) and a cumulative sum over the one row that holds it: two
    passes over the keys, where a cumulative sum over the whole leaf costs some twenty.
    """
    shape = np.shape(arrays[0])
    length = _tie_rows(shape)
    if length is None:
        return _first_ties_chunked(keys_fn, arrays, kth, need, offset)
    size = math.prod(shape)
    rows = size // length
    grid = [jnp.asarray(a).reshape(rows, length) for a in arrays]
    keys = keys_fn(*grid)
    tie = keys == kth
    per_row = jnp.sum(tie, axis=1, dtype=jnp.int32)
    upto = jnp.cumsum(per_row, dtype=jnp.int32)  # ties in rows 0..r
    total = upto[-1]
    room = need - offset  # how many of this leaf's ties are kept
    # The row holding the room-th tie: the first whose running count reaches room.
    r = jnp.minimum(jnp.sum(upto < room, dtype=jnp.int32), rows - 1)
    before = jnp.where(r > 0, upto[jnp.maximum(r - 1, 0)], 0)
    row = keys_fn(*[lax.dynamic_index_in_dim(g, r, keepdims=False) for g in grid])
    rank = jnp.cumsum(row == kth, dtype=jnp.int32)
    last = r * length + jnp.sum(rank < room - before, dtype=jnp.int32)
    last = jnp.where(room <= 0, -1, jnp.where(room >= total, size, last))
    position = lax.broadcasted_iota(jnp.int32, (rows, length), 0) * length + lax.broadcasted_iota(
        jnp.int32, (rows, length), 1
    )
    mask = (keys > kth) | (tie & (position <= last))
    return mask.reshape(shape), offset + total


def _first_ties_chunked(
    keys_fn: Callable[..., Array], arrays: tuple, kth: Array, need: Array, offset: Array
) -> tuple[Array, Array]:
    """:func:`_first_ties` for leaves without rows to rank by: a running count, chunk by chunk."""
    shape = np.shape(arrays[0])
    flat = [jnp.asarray(a).reshape(-1) for a in arrays]
    size = math.prod(shape)

    def piece(chunk, offset):
        x = keys_fn(*chunk)
        tie = x == kth
        rank = offset + jnp.cumsum(tie, dtype=jnp.int32)
        return (x > kth) | (tie & (rank <= need)), offset + jnp.sum(tie, dtype=jnp.int32)

    if size <= _TIE_CHUNK:
        mask, offset = piece(flat, offset)
        return mask.reshape(shape), offset
    full, tail = divmod(size, _TIE_CHUNK)

    def body(i, carry):
        mask, offset = carry
        start = i * _TIE_CHUNK
        chunk = [lax.dynamic_slice_in_dim(a, start, _TIE_CHUNK) for a in flat]
        got, offset = piece(chunk, offset)
        return lax.dynamic_update_slice_in_dim(mask, got, start, 0), offset

    mask = jnp.zeros((size,), bool)
    mask, offset = lax.fori_loop(0, full, body, (mask, offset))
    if tail:
        got, offset = piece([a[full * _TIE_CHUNK :] for a in flat], offset)
        mask = lax.dynamic_update_slice_in_dim(mask, got, full * _TIE_CHUNK, 0)
    return mask.reshape(shape), offset


def sorted_top_k(keys: list[Array], k: ArrayLike) -> list[Array]:
    """:func:`top_k_masks` by a stable sort of all keys (largest first, then by position)."""
    flat = jnp.concatenate([x.reshape(-1) for x in keys])
    order = jnp.argsort(~flat, stable=True)  # ~ reverses the order of unsigned keys
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    keep = rank < jnp.asarray(k, jnp.int32)
    out, start = [], 0
    for x in keys:
        out.append(keep[start : start + x.size].reshape(x.shape))
        start += x.size
    return out


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, bit for bit, as one elementwise pass.

    For a threefry key (the default) with ``jax_threefry_partitionable`` (the default), each
    entry is the Threefry-2x32 hash of its flat index under the key, the two output words
    XOR-ed. On CPU JAX runs the hash's 20 rounds as a loop over whole arrays (two n-sized
    arrays written and read back per round); written out here, XLA fuses the rounds into one
    pass that keeps everything in registers, several times faster, and the consumer of the
    bits (a histogram pass, a comparison) can fuse with it. Other keys and settings use
    ``jax.random.bits`` itself.
    """
    size = math.prod(shape)
    if (
        jax.random.key_impl(key) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or not 0 < size < 2**32
    ):
        return jax.random.bits(key, shape, jnp.uint32)

    def rotl(v, d):
        return (v << jnp.uint32(d)) | (v >> jnp.uint32(32 - d))

    k1, k2 = jax.random.key_data(key)[0], jax.random.key_data(key)[1]
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    # The counter of entry i is the 64-bit i: high word 0, low word i.
    x0 = jnp.broadcast_to(ks[0], (size,))
    x1 = lax.iota(jnp.uint32, size) + ks[1]
    for j in range(5):
        for r in _ROTATIONS[j % 2]:
            x0 = x0 + x1
            x1 = rotl(x1, r) ^ x0
        x0 = x0 + ks[(j + 1) % 3]
        x1 = x1 + ks[(j + 2) % 3] + jnp.uint32(j + 1)
    return (x0 ^ x1).reshape(shape)


def lift(keys: Array, mask: Array) -> Array:
    """Keys where ``mask`` holds, shifted up by one; ``0`` elsewhere (ranked strictly last)."""
    return jnp.where(mask, keys + jnp.ones((), keys.dtype), jnp.zeros((), keys.dtype))


def signed_keys(x: Array) -> Array:
    """Unsigned keys ordered as the float32 values of ``x`` (NaN largest, ``-0.0 == +0.0``)."""
    x = jnp.asarray(x, jnp.float32)
    # -0.0 as +0.0. Not by adding 0.0: XLA folds x + 0.0 into x under jit.
    x = jnp.where(x == 0, jnp.float32(0.0), x)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    sign = jnp.uint32(1 << 31)
    keys = jnp.where(bits >= sign, ~bits, bits | sign)
    return jnp.where(jnp.isnan(x), jnp.uint32(0xFFFFFFFF), keys)


def kept(size: int, sparsity: float) -> int:
    """:func:`selection.kept_count` on the host, for a concrete sparsity."""
    k = np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))
    return int(min(max(k, 1.0), size))


def check_key(key: Any, name: str = "key") -> Array:
    """A typed PRNG key from ``key`` (a typed key or a legacy ``uint32[2]`` key)."""
    if key is None:
        raise ValueError(f"{name} is required: pass a PRNG key such as jax.random.key(0)")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0), got {key!r}")


def check_sparsity_arg(sparsity: Any, prune: LeafRule | None) -> tuple[Any, Any]:
    """Validates ``sparsity`` (a float in [0, 1) or ``{path: float}``) and ``prune``."""
    rule = spec.compile_rule(prune, "prune")
    if isinstance(sparsity, Mapping):
        if prune is not None:
            raise ValueError(
                "prune= selects leaves for a float sparsity; a dict sparsity names its leaves "
                "by path already: give one or the other"
            )
        if not sparsity:
            raise ValueError("sparsity is an empty dict: name at least one leaf path")
        out = {}
        for path, value in sparsity.items():
            if not isinstance(path, str):
                raise TypeError(f"sparsity dict keys must be leaf paths (str), got {path!r}")
            out[path] = _check_float_sparsity(value, f"sparsity[{path!r}]")
        return out, rule
    return _check_float_sparsity(sparsity, "sparsity"), rule


def _check_float_sparsity(value: Any, name: str) -> float:
    if isinstance(value, (bool, str)) or np.ndim(value) != 0:
        raise TypeError(
            f"{name} must be a float in [0, 1) or a dict {{leaf path: float}}, got {value!r}"
        )
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r}") from e
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in range [0, 1), got {value!r}")
    return v


def leaf_sparsities(params: Params, sparsity: Any, rule: Any) -> list[float | None]:
    """Per leaf (flattening order) its sparsity, or ``None`` for a leaf that is not pruned.

    A float applies to the leaves ``rule`` selects (default: float leaves of rank >= 2 not
    named ``bias``); a dict gives exact paths, and an unknown path is a ``ValueError``.
    """
    paths, leaves, _ = spec.flatten(params)
    if not isinstance(sparsity, dict):
        chosen = spec.select(paths, leaves, rule)
        if not any(chosen):
            which = (
                "by default (float leaves of rank >= 2 not named 'bias')"
                if rule is None
                else "by the prune= rule"
            )
            raise ValueError(f"no leaf of params is pruned {which}; leaf paths are {paths}")
        return [sparsity if on else None for on in chosen]
    unknown = sorted(set(sparsity) - set(paths))
    if unknown:
        raise ValueError(f"sparsity names unknown leaf paths {unknown}; leaf paths are {paths}")
    out: list[float | None] = []
    for path, leaf in zip(paths, leaves):
        if path not in sparsity:
            out.append(None)
            continue
        if not is_float_array(leaf):
            raise TypeError(f"sparsity names {path!r}, which is not a floating-point array")
        if np.ndim(leaf) == 0 or math.prod(np.shape(leaf)) == 0:
            raise ValueError(f"sparsity names {path!r}, a scalar or empty leaf: nothing to prune")
        out.append(sparsity[path])
    return out


def check_schedule(schedule: Any) -> None:
    if not callable(schedule):
        raise TypeError(
            "schedule must be a PruningSchedule such as jaxprune.polynomial_decay(...) or a "
            f"callable step -> (should_prune, sparsity), got {schedule!r}"
        )


__all__ = ["SparseAlgorithm", "SparseMaskState", "SparseState", "masked_params", "sparse"]
