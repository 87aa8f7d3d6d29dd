r"""TensorFlow's legacy pruning (``tf.contrib.model_pruning``, lingvo) as an optax transformation.

:func:`pruning_from_config` reproduces the algorithm that ``Pruning(hparams,
global_step).conditional_mask_update_op()`` runs, from a
:class:`~jaxprune.tf.PruningConfig`:

* **when**: at step ``t`` the masks are updated when
  ``begin_pruning_step <= t`` (and ``t <= end_pruning_step`` unless it is ``-1``) and at least
  ``pruning_frequency`` steps have passed since the last update, ``last_update + frequency <= t``,
  where ``last_update`` starts at 0. So nothing happens before ``t = pruning_frequency`` even
  with ``begin_pruning_step = 0``, and skipped steps never shift the later updates;
* **how much**: the sparsity follows its own window, ``sparsity_function_begin_step`` to
  ``sparsity_function_end_step``, with tfmot's polynomial formula;
* **which**: the threshold is found by a histogram of ``|w|`` (``nbins`` bins,
  strict ``>``) or by the exact k-th largest ``|w|`` (``>=``), and smoothed by
  ``threshold_decay`` across updates;
* **where**: ``weight_sparsity_map`` rescales the sparsity of some weights,
  ``block_dims_map`` / ``block_height × block_width`` prune rank-2 weights in blocks.

The step ``t`` is optax's update count: the update that receives the weights after ``t``
optimizer steps is step ``t`` (the first update is step 0). It plays TensorFlow's
``global_step``: TensorFlow's training loop runs ``mask_update_op`` after ``train_op``, when
``global_step`` already counts that step, on the weights after ``global_step`` steps, and the
new masks take effect in the next training step. Here the masks of step ``t`` are computed at
the start of update ``t`` from the same weights (the ``params`` passed to ``update``) and
applied to the weights update ``t`` produces. The two timelines have the same step numbers.

Part of the TensorFlow-compatibility wing (:mod:`jaxprune.tf`): nothing outside the wing imports
this module.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import leaf_rules, link_core, radix_select, structured
from jaxprune._src import masks as masks_lib
from jaxprune._src import packed as packed_lib
from jaxprune._src.base import Array, ArrayLike, LeafRule, Masks
from jaxprune._src.config import THRESHOLDS, PruningConfig, warn_timeline
from jaxprune._src.schedules import PolynomialDecay
from jaxprune._src.transform import initial_thresholds, register_pruning_state

__all__ = ["LegacyPruningState", "pruning_from_config"]


class LegacyPruningState(NamedTuple):
    """State of :func:`pruning_from_config`.

    ``masks`` and ``thresholds`` have the structure of the params, as in
    :class:`jaxprune.MagnitudePruningState`: a pruned leaf has a bool mask of its own shape (a
    ``PackedMask`` of 1 bit per parameter with ``mask_dtype="packed"``) and
    its smoothed threshold (a pooled block score for block-pruned leaves), a scalar of its
    dtype; a leaf that is not pruned has a scalar ``True`` mask and a zero threshold.
    """

    count: Array  # shape=(), int32: updates seen so far; this update's step (global_step)
    last_update_step: Array  # shape=(), int32: step of the last mask update, 0 before any
    masks: Masks  # like params: bool, leaf shape if pruned else shape=()
    thresholds: Any  # like params: shape=(), the leaf's float dtype (float32 for others)


register_pruning_state(LegacyPruningState)


def _score_dtype(dtype: Any) -> Any:
    return jnp.float64 if jnp.dtype(dtype).itemsize > 4 else jnp.float32


def _check_nbins(nbins: Any) -> int:
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)):
        raise TypeError(f"nbins must be an int, got {nbins!r}")
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}")
    return int(nbins)


def histogram_threshold(scores: ArrayLike, sparsity: ArrayLike, nbins: int) -> Array:
    r"""The legacy histogram threshold of non-negative ``scores`` (before smoothing).

    With :math:`M = \max a`, every score falls in bin
    :math:`\min(\lfloor n_{bins} a_i / M \rfloor, n_{bins} - 1)` (computed in float32, so
    :math:`a_i = M` lands in the last bin); ``cdf`` is the cumulative histogram divided by its
    last value, and

    .. math::

        t = \frac{\#\{b : \mathrm{cdf}_b < s\}}{n_{bins}} M,

    the start of the first bin where the cumulative distribution reaches ``s``: a multiple of
    :math:`M / n_{bins}` at or below the exact quantile. All-zero scores (``M = 0``) give 0.

    Args:
      scores: non-negative float array (``|w|``, or pooled block scores), any shape.
      sparsity: the fraction to prune; may be traced.
      nbins: number of bins, ``>= 1``.

    Returns:
      The threshold, a scalar of ``scores``' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> # Bins of width 1; bins 0 to 3 hold 4/9 < 50% of the scores, bin 4 reaches 5/9.
      >>> float(histogram_threshold(jnp.arange(9.0), 0.5, nbins=8))
      4.0
    """
    nbins = _check_nbins(nbins)
    return _histogram_threshold(jnp.asarray(scores), sparsity, nbins)


# Compiled once per shape (as structured.py does), so eager calls do not dispatch op by op;
# under an outer jit these are ordinary nested calls.
@functools.partial(jax.jit, static_argnums=(2,))
def _histogram_threshold(scores: Array, sparsity: ArrayLike, nbins: int) -> Array:
    a = scores.reshape(-1)
    dtype = a.dtype
    top = jnp.max(a)
    # M = 0 (all zero) would divide 0 by 0; every score is then 0 and belongs in bin 0.
    denominator = jnp.where(top > 0, top, jnp.ones((), dtype))
    index = jnp.floor(jnp.asarray(nbins, dtype) * a / denominator)
    index = jnp.clip(index, 0, nbins - 1).astype(jnp.int32)
    hist = jnp.zeros((nbins,), jnp.int32).at[index].add(1, mode="drop")
    # Counted in int32 (TensorFlow counts in float32, which is the same below 2**24 entries).
    cdf = jnp.cumsum(hist)
    cdf = cdf.astype(dtype) / cdf[-1].astype(dtype)
    below = jnp.sum(cdf < jnp.asarray(sparsity, jnp.float32).astype(dtype), dtype=jnp.int32)
    return below.astype(dtype) / jnp.asarray(nbins, dtype) * top


def topk_threshold(scores: ArrayLike, sparsity: ArrayLike) -> Array:
    r"""The legacy top-k threshold of ``scores`` (before smoothing): the k-th largest.

    :math:`k = \mathrm{round\_half\_to\_even}(n (1 - s))` in float32, TensorFlow 1.15's rule,
    without tfmot's ``max(k, 1)``; ``k = 0`` (a crash in TensorFlow) is taken as ``k = 1``,
    the largest score. The selection is the exact radix select of jaxprune, not a sort.

    Args:
      scores: non-negative float array, any shape.
      sparsity: the fraction to prune; may be traced.

    Returns:
      The threshold, a scalar of ``scores``' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(topk_threshold(jnp.array([0.5, 3.0, 1.0, 2.0]), 0.5))
      2.0
    """
    return _topk_threshold(jnp.asarray(scores), sparsity)


@jax.jit
def _topk_threshold(a: Array, sparsity: ArrayLike) -> Array:
    s = jnp.asarray(sparsity, jnp.float32)
    k = jnp.round(jnp.float32(a.size) * (jnp.float32(1.0) - s))
    k = jnp.clip(k, 1.0, float(a.size)).astype(jnp.int32)
    src = radix_select.magnitude_source(a, radix_select.key_dtype([a.dtype]))
    return radix_select.key_to_magnitude(radix_select.kth_largest_key([src], k), a.dtype)


def legacy_mask(
    x: ArrayLike,
    sparsity: ArrayLike,
    threshold: ArrayLike,
    *,
    method: str = "histogram",
    threshold_decay: float = 0.9,
    nbins: int = 256,
    block_shape: tuple[int, int] | None = None,
    pooling: str = "AVG",
) -> tuple[Array, Array]:
    r"""One legacy mask update of one weight: the new mask and the new smoothed threshold.

    .. math::

        t_{new} = t_{cur} (1 - d) + t_{prev} d, \qquad
        \mathrm{mask} = a > t_{new} \ (\text{histogram}) \quad\text{or}\quad
        a \ge t_{new} \ (\text{top-k})

    where :math:`a = |x|` (or the pooled block scores, the block mask then expanded to
    ``x``'s shape) and :math:`t_{cur}` is :func:`histogram_threshold` or
    :func:`topk_threshold` of :math:`a` at ``sparsity``.

    Args:
      x: float weight.
      sparsity: the fraction to prune; may be traced.
      threshold: the previous smoothed threshold :math:`t_{prev}` (0 before the first update).
      method: ``"histogram"`` or ``"topk"``.
      threshold_decay: :math:`d`, in ``[0, 1)``.
      nbins: histogram bins.
      block_shape: ``(bh, bw)`` to prune a rank-2 weight in blocks, or ``None``.
      pooling: ``"AVG"`` or ``"MAX"``, the block score.

    Returns:
      ``(mask, threshold)``: a bool array of ``x``'s shape, and :math:`t_{new}` in ``x``'s
      dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, 1.0])
      >>> mask, thr = legacy_mask(x, 0.5, 0.0, method="topk", threshold_decay=0.0)
      >>> mask.astype(int).tolist(), round(float(thr), 4)
      ([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], 0.6)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    if method not in THRESHOLDS:
        raise ValueError(f"method must be one of {THRESHOLDS}, got {method!r}")
    if not 0.0 <= threshold_decay < 1.0:
        raise ValueError(f"threshold_decay must be in range [0,1), got {threshold_decay!r}")
    nbins = _check_nbins(nbins)
    if block_shape is not None:
        block_shape = structured.resolve_block_shape(block_shape, x.shape)
        pooling = structured.check_pooling(pooling)
    return _legacy_mask(
        x, sparsity, threshold, method, float(threshold_decay), nbins, block_shape, pooling
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _legacy_mask(
    x: Array,
    sparsity: ArrayLike,
    threshold: ArrayLike,
    method: str,
    threshold_decay: float,
    nbins: int,
    block_shape: tuple[int, int] | None,
    pooling: str,
) -> tuple[Array, Array]:
    dtype = _score_dtype(x.dtype)
    if block_shape is None:
        scores = jnp.abs(x.astype(dtype))
    else:
        scores = structured.block_scores(x, block_shape, pooling)
    if method == "histogram":
        current = _histogram_threshold(scores, sparsity, nbins)
    else:
        current = _topk_threshold(scores, sparsity)
    # TensorFlow multiplies by the Python float 1 - decay, rounded once to float32.
    keep_weight = jnp.asarray(1.0 - threshold_decay, dtype)
    previous = jnp.asarray(threshold, dtype)
    new = current * keep_weight + previous * jnp.asarray(threshold_decay, dtype)
    keep = scores > new if method == "histogram" else scores >= new
    if block_shape is not None:
        keep = structured.expand_block_mask(keep, block_shape, x.shape)
    return keep.reshape(x.shape), new.astype(x.dtype)


def sparsity_function(config: PruningConfig) -> PolynomialDecay:
    """The legacy sparsity curve of ``config`` as a schedule: ``step -> (_, s)``.

    tfmot's polynomial formula over ``sparsity_function_begin_step`` to
    ``sparsity_function_end_step`` (the hparams docstring's frequency-quantised formula was
    never implemented by any TensorFlow version). Only the sparsity is used; when masks are
    updated is :func:`should_update`'s business.
    """
    return PolynomialDecay(
        config.initial_sparsity,
        config.target_sparsity,
        config.sparsity_function_begin_step,
        config.sparsity_function_end_step,
        power=config.sparsity_function_exponent,
        frequency=1,
    )


def should_update(config: PruningConfig, step: ArrayLike, last_update_step: ArrayLike) -> Array:
    """The legacy update rule: in the window, and ``frequency`` steps since the last one.

    Examples:
      >>> from jaxprune._src.config import THRESHOLDS, PruningConfig, warn_timeline
      >>> config = PruningConfig(begin_pruning_step=5, end_pruning_step=40)
      >>> [t for t in range(50) if should_update(config, t, 0)][:3]
      [10, 11, 12]
      >>> bool(should_update(config, 19, 10)), bool(should_update(config, 20, 10))
      (False, True)
    """
    step = jnp.asarray(step, jnp.int32)
    in_range = step >= config.begin_pruning_step
    if config.end_pruning_step >= 0:
        in_range = jnp.logical_and(in_range, step <= config.end_pruning_step)
    # step - last >= f is TensorFlow's last + f <= step without an int32 overflow.
    due = step - jnp.asarray(last_update_step, jnp.int32) >= config.pruning_frequency
    return jnp.logical_and(in_range, due)


def _check_rescaled_sparsities(config: PruningConfig) -> None:
    r"""Rejects a ``weight_sparsity_map`` value that takes the curve to a sparsity >= 1.

    A mapped weight follows :math:`s(t) \cdot v / s_f`; the curve runs between
    ``initial_sparsity`` and ``target_sparsity`` (and holds them outside its window), so its
    largest rescaled value is :math:`\max(s_i, s_f) \cdot v / s_f`, computed here in float32
    as the transformation computes it.
    """
    target = config.target_sparsity
    f32 = np.float32
    # The curve at p = 0 as the schedule computes it: (s_i - s_f) * 1 + s_f, in float32.
    start = f32(f32(config.initial_sparsity - target) + f32(target))
    top = max(start, f32(target))
    for pattern, value in config.weight_sparsity_map:
        reached = f32(top * f32(value / target))
        if reached >= 1.0:
            raise ValueError(
                f"weight_sparsity_map entry {pattern}:{value} rescales the sparsity curve by "
                f"{value}/target_sparsity={value}/{target}, which takes "
                f"initial_sparsity={config.initial_sparsity} to {float(reached):.6g} >= 1: the "
                "matched weights would be pruned entirely. The rescaling is TensorFlow's, exact "
                "only for initial_sparsity=0; lower initial_sparsity or the map value (it must "
                f"be below {target / max(float(top), target):.6g} here)"
            )


# TensorFlow's variable names (tf.contrib layers and slim, Keras, lingvo) and Flax's for the same
# parameters, for the hint of a regex that matches nothing.
_TF_TO_FLAX = (
    ("moving_variance", "var"),
    ("moving_mean", "mean"),
    ("embeddings", "embedding"),
    ("weights", "kernel"),
    ("biases", "bias"),
    ("gamma", "scale"),
    ("beta", "bias"),
)


def _tf_name_hint(pattern: str, paths: list[str]) -> str:
    """A sentence on TensorFlow names in ``pattern`` that Flax spells differently, or ``""``."""
    found = [(tf, flax) for tf, flax in _TF_TO_FLAX if tf in pattern]
    hints = []
    if found:
        translated = pattern
        for tf, flax in found:
            translated = translated.replace(tf, flax)
        names = ", ".join(f"{tf!r} -> {flax!r}" for tf, flax in found)
        hint = f" TensorFlow's variable names differ from Flax's ({names})"
        try:
            hits = [p for p in paths if re.search(translated, p)]
        except re.error:
            hits = []
        if hits:
            hint += f": {translated!r} would match {hits}"
        hints.append(hint + ".")
    try:
        folded = [p for p in paths if re.search(pattern, p, re.IGNORECASE)]
    except re.error:
        folded = []
    if folded:
        hints.append(
            f" Ignoring case it matches {folded}: Flax's module names are capitalised "
            "(Dense_0, Conv_0) where Keras's are not (dense, conv2d)."
        )
    return "".join(hints)


def _check_map_matches(
    entries: list[tuple[re.Pattern, Any]], paths: list[str], chosen: list[bool], name: str
) -> None:
    pruned = [p for p, on in zip(paths, chosen) if on]
    for rx, _ in entries:
        if not any(rx.search(p) for p in pruned):
            raise ValueError(
                f"{name} entry {rx.pattern!r} matches no pruned leaf; pruned leaves are "
                f"{pruned}.{_tf_name_hint(rx.pattern, pruned)}"
            )


def _check_rule_matches(rule: Any, paths: list[str]) -> None:
    if isinstance(rule, re.Pattern) and not any(rule.search(p) for p in paths):
        raise ValueError(
            f"prune={rule.pattern!r} matches no leaf; leaf paths are {paths}."
            f"{_tf_name_hint(rule.pattern, paths)}"
        )


class _Leaf(NamedTuple):
    scale: float | None  # weight_sparsity_map value / target_sparsity
    block_shape: tuple[int, int] | None


def _block_shape(
    config: PruningConfig, path: str, leaf: Any, from_map: tuple[int, int] | None
) -> tuple[int, int] | None:
    dims = from_map if from_map is not None else (config.block_height, config.block_width)
    if tuple(dims) == (1, 1):
        return None
    try:
        resolved = structured.resolve_block_shape(dims, leaf.shape)
    except ValueError:
        if from_map is None:
            # TensorFlow's rule: the default block shape applies to rank-2 weights, and the
            # others (convolution kernels) are pruned elementwise.
            return None
        raise ValueError(
            f"block_dims_map gives {path!r} blocks of {dims}, but its shape {leaf.shape} is not "
            "rank 2 (nor rank 2 once size-1 dimensions are squeezed); narrow the regex"
        ) from None
    return None if resolved == (1, 1) else resolved


def pruning_from_config(
    config: PruningConfig | str, *, prune: LeafRule | None = None, mask_dtype: str = "bool"
) -> optax.GradientTransformationExtraArgs:
    r"""TensorFlow's legacy ``model_pruning`` from its hyperparameters; place it last in a chain.

    At update ``t`` (the first update is ``t = 0``; see below for TensorFlow's ``global_step``):

    1. the masks are updated (inside ``lax.cond``, no host round-trip) when
       ``begin_pruning_step <= t``, ``t <= end_pruning_step`` (or ``end_pruning_step = -1``) and
       ``last_update + pruning_frequency <= t``, where ``last_update`` (in the state) starts at 0
       and becomes ``t``. With ``begin 0, frequency 10`` the first update is at ``t = 10``;
       with ``begin 5, end 40, frequency 10`` the updates are at 10, 20, 30 and 40;
    2. the sparsity is tfmot's polynomial curve over the sparsity-function window,
       :math:`s = (s_i - s_f)(1 - p)^{e} + s_f` with
       :math:`p = \mathrm{clip}((t - b_s)/(e_s - b_s), 0, 1)`, rescaled for the weights of
       ``weight_sparsity_map`` to :math:`s \cdot v / s_f` (TensorFlow's rule, exact when
       ``initial_sparsity = 0``);
    3. each weight's threshold is found from the current weights ``w`` (the ``params`` passed
       to ``update``) by :func:`legacy_mask`: a histogram of ``|w|`` with ``nbins`` bins, or
       the exact k-th largest (``threshold="topk"``); it is smoothed,
       :math:`t = t_{cur}(1 - d) + t_{prev} d` with ``d = threshold_decay``, and the mask keeps
       ``|w| > t`` (histogram) or ``|w| >= t`` (top-k). Rank-2 weights are pruned in blocks of
       ``block_dims_map`` (or ``block_height × block_width``), scored by their mean or max
       ``|w|``;
    4. on every step the updates become :math:`u_i` where the mask keeps entry ``i`` and
       :math:`-w_i` where it prunes it, so after ``optax.apply_updates`` every pruned weight is
       exactly ``0.0``.

    **The step.** TensorFlow's loop runs ``mask_update_op`` after ``train_op``: at
    ``global_step = t`` it ranks the weights after ``t`` training steps, and the next training
    step uses the new masks. Update ``t`` here ranks the same weights (after ``t`` updates) at
    the same step number and masks what it produces, so a hyperparameter string gives the
    same timeline: no shift of the step hyperparameters is needed.

    **Differences from TensorFlow**:

    * TensorFlow never overwrites the weight variable (it multiplies by the mask in the forward
      pass), so a pruned weight keeps its value and can come back; here pruned weights are
      exactly zero and enter the histogram as zeros. With the histogram threshold (strict
      ``>``) a pruned weight therefore stays pruned.
    * Block scores are pooled over the block that is masked, aligned at ``(0, 0)``; TensorFlow's
      SAME padding scores a shifted window when an axis needs a padding of 2 or more.
      ``-1`` in a block shape is the whole axis of each weight (TensorFlow reused the first
      weight's size for later ones).
    * The default ``block_height × block_width`` applies to rank-2 weights and others are
      pruned elementwise, as in TensorFlow; but a ``block_dims_map`` entry that matches a weight
      that is not rank 2 is an error (TensorFlow silently pruned it elementwise).
    * A map entry that matches no pruned leaf is an error, as two entries that match one leaf
      are (TensorFlow ignored the first case).
    * top-k: ``k = 0`` is taken as 1 (TensorFlow crashed).
    * ``name`` and ``use_tpu`` have no effect.

    Args:
      config: a :class:`~jaxprune.tf.PruningConfig`, or its hparams string (parsed
        with ``PruningConfig.parse``).
      prune: which leaves are pruned: a regex searched in the ``/``-joined leaf path, or a
        predicate ``(path, leaf) -> bool``. Default: float leaves of
        rank >= 2 (kernels and embeddings). Map regexes are searched in the same paths.
      mask_dtype: ``"bool"`` (default): a pruned leaf's mask is a bool array, 1 byte per
        parameter. ``"packed"``: 1 bit per parameter in ``uint32`` words, in the state and in
        checkpoints, as :func:`jaxprune.magnitude_pruning` offers; masks, thresholds and
        trajectories are bit for bit those of ``"bool"``, and the accessors return bool masks
        either way.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`LegacyPruningState`; ``update`` needs ``params``.

    Raises:
      ValueError: for a bad config string, an unknown ``mask_dtype``, or (at ``init``) a rule
        or map entry that matches no leaf, a leaf matched by two map entries, or blocks for a
        weight that is not rank 2.
      TypeError: for a config of another type, or a rule that selects a non-float leaf.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxprune._src.legacy import pruning_from_config
      >>> tx = optax.chain(optax.sgd(0.1), pruning_from_config(
      ...     "pruning_frequency=1,threshold=topk,threshold_decay=0.0,target_sparsity=0.75,"
      ...     "sparsity_function_end_step=1"))
      >>> params = {"w": jnp.arange(64.0).reshape(8, 8) - 31.5, "b": jnp.zeros(8)}
      >>> state = tx.init(params)
      >>> update = jax.jit(tx.update)
      >>> for _ in range(2):   # the first mask update is at step 1
      ...     grads = jax.tree.map(jnp.ones_like, params)
      ...     updates, state = update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> pruning_state = state[1]
      >>> int(jnp.sum(params["w"] == 0)), int(pruning_state.last_update_step)
      (48, 1)
    """
    if isinstance(config, str):
        config = PruningConfig.parse(config)
    if not isinstance(config, PruningConfig):
        raise TypeError(
            f"config must be a PruningConfig or its hparams string, got {type(config).__name__}"
        )
    _check_rescaled_sparsities(config)
    packed = packed_lib.check_mask_dtype(mask_dtype)
    warn_timeline(config, stacklevel=2)
    rule = leaf_rules.compile_rule(prune, "prune")
    curve = sparsity_function(config)
    sparsity_entries = leaf_rules.compile_map(
        {rx: v / config.target_sparsity for rx, v in config.weight_sparsity_map},
        "weight_sparsity_map",
    )
    block_entries = leaf_rules.compile_map(dict(config.block_dims_map), "block_dims_map")

    def plan(params: Any) -> tuple[list[Any], Any, list[bool], list[_Leaf]]:
        paths, leaves, treedef = leaf_rules.flatten(params)
        _check_rule_matches(rule, paths)
        chosen = leaf_rules.select(paths, leaves, rule)
        _check_map_matches(sparsity_entries, paths, chosen, "weight_sparsity_map")
        _check_map_matches(block_entries, paths, chosen, "block_dims_map")
        scales = leaf_rules.lookup(sparsity_entries, paths, chosen, "weight_sparsity_map")
        dims = leaf_rules.lookup(block_entries, paths, chosen, "block_dims_map")
        per_leaf = [
            _Leaf(scale, _block_shape(config, path, x, d) if on else None)
            for path, x, on, scale, d in zip(paths, leaves, chosen, scales, dims)
        ]
        return leaves, treedef, chosen, per_leaf

    def init_fn(params: Any) -> LegacyPruningState:
        leaves, treedef, chosen, _ = plan(params)
        thresholds = initial_thresholds(leaves)
        return LegacyPruningState(
            count=jnp.zeros((), jnp.int32),
            last_update_step=jnp.zeros((), jnp.int32),
            masks=packed_lib.stored_masks(params, masks_lib.masks_like(params, chosen), packed),
            thresholds=jax.tree_util.tree_unflatten(treedef, thresholds),
        )

    def update_fn(
        updates: Any, state: LegacyPruningState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, LegacyPruningState]:
        del extra_args
        link_core.needs_params(params, "pruning_from_config")
        p_leaves, treedef, chosen, per_leaf = plan(params)
        u_leaves = treedef.flatten_up_to(updates)
        m_leaves, masks_def = packed_lib.read_masks(state.masks, treedef, packed, p_leaves)
        t_leaves = treedef.flatten_up_to(state.thresholds)
        idx = [i for i, on in enumerate(chosen) if on]

        step = state.count
        fire = should_update(config, step, state.last_update_step)
        _, sparsity = curve(step)

        def recompute(operands: tuple, masks: list[Array]) -> tuple[list[Array], list[Array]]:
            del masks  # ranked from the weights alone
            p, t, s = operands
            out_m, out_t = [], []
            for x, thr, i in zip(p, t, idx):
                leaf = per_leaf[i]
                # TensorFlow multiplies by the Python float value / target, rounded to float32.
                s_leaf = s if leaf.scale is None else s * jnp.float32(leaf.scale)
                m, new_t = legacy_mask(
                    x,
                    s_leaf,
                    thr,
                    method=config.threshold,
                    threshold_decay=config.threshold_decay,
                    nbins=config.nbins,
                    block_shape=leaf.block_shape,
                    pooling=config.block_pooling_function,
                )
                out_m.append(m)
                out_t.append(new_t)
            return out_m, out_t

        if idx:
            operands = (
                [jnp.asarray(p_leaves[i]) for i in idx],
                [t_leaves[i] for i in idx],
                sparsity,
            )
            turns = [link_core.Turn(idx, fire, recompute, operands)]
            m_leaves, t_leaves = link_core.run_turns(turns, m_leaves, t_leaves, packed=packed)

        out = link_core.zeroed_updates(u_leaves, p_leaves, m_leaves, idx)
        new_state = LegacyPruningState(
            count=optax.safe_int32_increment(state.count),
            last_update_step=jnp.where(fire, step, state.last_update_step),
            masks=link_core.unflatten(masks_def, m_leaves),
            thresholds=link_core.unflatten(treedef, t_leaves),
        )
        return link_core.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
