r"""Fisher pruning inside a training loop, as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune._src import validate
from jaxprune._src.base import Array, ArrayLike
from jaxprune._src.fisher_checks import check_decay, check_like_masks, check_masks
from jaxprune._src.fisher_prune import ALIVE_THRESHOLD, _is_zero, check_options, fisher_prune
from jaxprune._src.fisher_signals import (
    DEFAULT_DECAY,
    fisher_batch_signals,
    update_fisher_signals,
)


class FisherPruningState(NamedTuple):
    """State of :func:`fisher_pruning`.

    Read the current masks in a training step with
    ``optax.tree.get(opt_state, "channel_masks")``.
    """

    count: Array  # shape=(), int32: updates seen so far
    channel_masks: Any  # like the masks: shape=(C,), the masks' float dtype; 1 kept, 0 removed
    signals: Any  # like the masks: shape=(C,), float32: moving average of mean_n g_nk^2
    flops: Array  # shape=(), float32: cost_fn(channel_masks), 0 when there is no cost_fn
    num_pruned: Array  # shape=(), int32: features removed by this transformation so far
    # Pruning turns skipped, masks unchanged, because a signal of an alive feature was NaN.
    skipped_turns: Array = np.zeros((), np.int32)  # shape=(), int32


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > validate.INT32_MAX:
        raise ValueError(f"{name} must be <= {validate.INT32_MAX} (steps are int32), got {value}")
    return int(value)


def _flops_of(cost_fn: Callable[[Any], ArrayLike] | None, masks: Any) -> Array:
    if cost_fn is None:
        return jnp.zeros((), jnp.float32)
    value = jnp.asarray(cost_fn(masks), jnp.float32)
    if value.shape != ():
        raise TypeError(f"cost_fn must return a scalar FLOP count, got shape {value.shape}")
    return value


def fisher_pruning(
    masks: Any,
    *,
    frequency: int,
    burn_in: int = 0,
    decay: float = DEFAULT_DECAY,
    cost_fn: Callable[[Any], ArrayLike] | None = None,
    beta: float | ArrayLike = 0.0,
    criterion: str = "difference",
    target_flops: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Fisher-prunes channels during training: one feature every ``frequency`` steps.

    At update ``t`` (the first update is ``t = 0``), given the per-example mask gradients
    :math:`g_{nk}` of this batch as the extra argument ``mask_grads``:

    1. the signals are averaged, :math:`\bar s \leftarrow \gamma \bar s + (1-\gamma)
       \frac{1}{B}\sum_n g_{nk}^2` (the reference code's update, from zeros,
       :math:`\gamma` = ``decay``);
    2. if ``t >= burn_in``, ``(t - burn_in) % frequency == 0`` and the FLOPs of the current
       masks are still above ``target_flops``, one feature is removed by
       :func:`jaxprune.fisher.fisher_prune` with the marginal costs of the current masks
       (``jax.grad(cost_fn)``), inside ``lax.cond`` (no host round-trip), and the FLOPs are
       recounted.

    The parameter updates pass through unchanged: a removed feature's mask entry is 0, so the
    model ignores it and the weights that produce it get zero gradients. The training step
    reads the masks from the state and computes the gradients with
    :func:`jaxprune.fisher.fisher_value_and_grad` (one backward pass for both):

    .. code-block:: python

        masks = optax.tree.get(opt_state, "channel_masks")
        loss, (grads, mask_grads) = jp.fisher.fisher_value_and_grad(loss_fn)(params, masks, batch)
        updates, opt_state = tx.update(grads, opt_state, params, mask_grads=mask_grads)

    Args:
      masks: the initial channel masks, a pytree of float ``(C,)`` arrays (usually ones).
      frequency: updates between two removals, ``>= 1``.
      burn_in: updates before the first removal, ``>= 0``; lets the moving average fill
        (:math:`1 - \gamma^t` of its weight after ``t`` updates).
      decay: :math:`\gamma` in ``[0, 1)``, 0.96 by default (the paper's reference code's).
      cost_fn: ``masks -> FLOPs``, a JAX function of the masks, e.g. built on
        :func:`jaxprune.count_flops` with ``channel_argnums`` and one example's input; needed
        for ``beta > 0``, ``criterion="ratio"`` and ``target_flops``.
      beta: the trade-off of :math:`s_k - \beta c_k`, ``>= 0``; may be a traced value
        (e.g. one per run of a ``jax.vmap``), when the transformation is built inside the
        traced function.
      criterion: ``"difference"`` or ``"ratio"`` (:math:`s_k / c_k`), see
        :func:`jaxprune.fisher.fisher_prune`.
      target_flops: stop removing features once ``cost_fn(masks) <= target_flops``; ``None``
        prunes until every layer has one feature left.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      :class:`FisherPruningState`, its ``update`` needs the keyword argument ``mask_grads``
      (per-example mask gradients, leaves of shape ``(B, C)``) and ignores ``params``.

    Raises:
      ValueError: for empty or non-1-D masks, ``frequency < 1``, ``burn_in < 0``, ``decay``
        outside ``[0, 1)``, ``beta < 0``, an unknown ``criterion``, or ``beta > 0``,
        ``"ratio"`` or ``target_flops`` without ``cost_fn``; at update time, for missing or
        misshapen ``mask_grads``.
      TypeError: for arguments of the wrong type, or a ``cost_fn`` that does not return a
        scalar.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxprune._src.fisher import fisher_pruning, fisher_value_and_grad, mask_channels
      >>> def loss_fn(params, masks, x):
      ...     h = mask_channels(jnp.tanh(x @ params["w1"]), masks["h"])
      ...     return jnp.sum((h @ params["w2"] - 1.0) ** 2)
      >>> params = {"w1": jnp.ones((3, 4)) * jnp.arange(4.0)[None, :],  # feature 0: always 0
      ...           "w2": jnp.array([[1.0], [1.0], [0.1], [1.0]])}  # feature 2 barely counts
      >>> tx = optax.chain(optax.sgd(1e-2),
      ...                  fisher_pruning({"h": jnp.ones(4)}, frequency=2, burn_in=1))
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state, x):
      ...     masks = optax.tree.get(state, "channel_masks")
      ...     _, (grads, mask_grads) = fisher_value_and_grad(loss_fn)(params, masks, x)
      ...     updates, state = tx.update(grads, state, params, mask_grads=mask_grads)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(4):  # removes a feature at updates 1 and 3
      ...     params, state = step(params, state, jnp.ones((8, 3)))
      >>> optax.tree.get(state, "channel_masks")["h"].tolist()
      [0.0, 1.0, 0.0, 1.0]

    References:
      Theis, Korshunova, Tejani, Huszár, "Faster gaze prediction with dense networks and
      Fisher pruning", 2018, https://arxiv.org/abs/1801.05787
    """
    check_masks(masks)
    frequency = _check_int(frequency, "frequency", 1)
    burn_in = _check_int(burn_in, "burn_in", 0)
    check_decay(decay)
    if cost_fn is not None and not callable(cost_fn):
        raise TypeError(f"cost_fn must be a function masks -> FLOPs, got {cost_fn!r}")
    check_options(cost_fn, beta, criterion)
    if target_flops is not None:
        if cost_fn is None:
            raise ValueError("target_flops needs cost_fn, the FLOPs as a function of the masks")
        if isinstance(target_flops, bool) or not isinstance(
            target_flops, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"target_flops must be a number, got {target_flops!r}")
        if not target_flops > 0:
            raise ValueError(f"target_flops must be > 0, got {target_flops!r}")
    initial_masks = jax.tree.map(jnp.asarray, masks)
    # Counting now validates cost_fn against the masks at construction time.
    initial_flops = _flops_of(cost_fn, initial_masks)
    # A traced beta (one per vmapped run, say) may be > 0: its costs are computed.
    use_costs = criterion == "ratio" or not _is_zero(beta)

    def init_fn(params: Any) -> FisherPruningState:
        del params
        return FisherPruningState(
            count=jnp.zeros((), jnp.int32),
            channel_masks=initial_masks,
            signals=jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), initial_masks),
            flops=initial_flops,
            num_pruned=jnp.zeros((), jnp.int32),
            skipped_turns=jnp.zeros((), jnp.int32),
        )

    def update_fn(
        updates: Any,
        state: FisherPruningState,
        params: Any = None,
        *,
        mask_grads: Any = None,
        **extra_args: Any,
    ) -> tuple[Any, FisherPruningState]:
        del params, extra_args
        if mask_grads is None:
            raise ValueError(
                "fisher_pruning needs the per-example mask gradients: call "
                "tx.update(grads, state, params, mask_grads=mask_grads), with mask_grads from "
                "jaxprune.fisher.fisher_value_and_grad (leaves of shape (B, C)). flax's "
                "TrainState.apply_gradients passes no extra arguments: call tx.update yourself, "
                "or keep the signals with update_fisher_signals and prune with fisher_prune"
            )
        check_like_masks(mask_grads, state.channel_masks, "mask_grads", leading=(None,))
        signals = update_fisher_signals(
            state.signals, fisher_batch_signals(mask_grads), decay=decay
        )
        t = state.count
        should_prune = (t >= burn_in) & ((t - burn_in) % frequency == 0)
        if target_flops is not None:
            should_prune = should_prune & (state.flops > target_flops)
        nan = jnp.any(
            jnp.stack(
                [
                    jnp.any(jnp.isnan(s) & (jnp.asarray(m) > ALIVE_THRESHOLD))
                    for s, m in zip(
                        jax.tree.leaves(signals), jax.tree.leaves(state.channel_masks), strict=True
                    )
                ]
            )
        )
        skipped = should_prune & nan
        should_prune = should_prune & ~nan

        def prune(operand):
            masks, _ = operand
            new = fisher_prune(
                signals,
                masks,
                costs=cost_fn if use_costs else None,
                beta=beta,
                criterion=criterion,
            )
            changed = jnp.any(
                jnp.stack(
                    [
                        jnp.any(a != b)
                        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(masks), strict=True)
                    ]
                )
            )
            return new, _flops_of(cost_fn, new), changed.astype(jnp.int32)

        def keep(operand):
            masks, flops = operand
            return masks, flops, jnp.zeros((), jnp.int32)

        new_masks, flops, removed = lax.cond(
            should_prune, prune, keep, (state.channel_masks, state.flops)
        )
        new_state = FisherPruningState(
            count=optax.safe_int32_increment(t),
            channel_masks=new_masks,
            signals=signals,
            flops=flops,
            num_pruned=state.num_pruned + removed,
            skipped_turns=jnp.asarray(state.skipped_turns, jnp.int32) + skipped.astype(jnp.int32),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
