r"""Fisher pruning signals: per-example gradients of the loss with respect to channel masks.

A *channel mask* is a float array :math:`m \in \{0, 1\}^C` that multiplies the feature (last)
axis of an activation (:func:`mask_channels`). Removing feature :math:`k` sets :math:`m_k = 0`.
Theis et al. (2018) estimate the increase of the loss that this causes by a second-order
Taylor expansion around :math:`m = 1` in which the Hessian is replaced by the empirical Fisher
information. With :math:`g_{nk} = \partial \ell_n / \partial m_k`, the gradient of the loss of
example :math:`n` (a negative log-likelihood) with respect to the mask entry:

.. math::

    \Delta_k = \frac{1}{2N} \sum_{n=1}^{N} g_{nk}^2 .

jaxprune follows the paper's reference code (the authors' TensorFlow implementation) and
calls *signal* the batch mean of the squared per-example gradients,

.. math::

    s_k = \frac{1}{N} \sum_{n=1}^{N} g_{nk}^2 = 2 \Delta_k ,

so rankings by :math:`s` and :math:`\Delta` agree; only a cost trade-off
:math:`s_k - \beta c_k` sees the factor 2 (see :func:`jaxprune.fisher.fisher_prune`). Across
training steps the batch signals are averaged with decay :math:`\gamma` (0.96 by default):
:math:`\bar s \leftarrow \gamma \bar s + (1 - \gamma) s`.

Two routes compute the :math:`g_{nk}`, from one function ``loss_fn(params, masks, example)``
that returns the loss of one example:

* ``"vmap"``: ``jax.vmap(jax.grad(loss_fn, argnums=1))`` over the examples;
* ``"backward"``: the reference code's *extended mask*. Every mask is repeated once per
  example, shape ``(B, C)``, the forward pass reads row :math:`n` for example :math:`n`, and one
  backward pass of the summed loss gives row :math:`n` of the gradient equal to
  :math:`g_{n\cdot}`, because the loss of example :math:`n` depends on no other row. The same
  backward pass also gives the parameter gradients, which is what a training step wants
  (:func:`fisher_value_and_grad`).

Both need examples that do not interact (no batch statistics in the loss, e.g. batch norm in
training mode), as the reference code does.

References:
  Theis, Korshunova, Tejani, Huszár, "Faster gaze prediction with dense networks and Fisher
  pruning", 2018, https://arxiv.org/abs/1801.05787
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import Array, ArrayLike, path_str
from jaxprune._src.fisher_checks import (
    LossFn,
    batch_size_of,
    check_decay,
    check_like_masks,
    check_loss_fn,
    check_masks,
    check_route,
    example_spec,
)

DEFAULT_DECAY = 0.96


# ---------------------------------------------------------------------------
# Masks on activations.


def mask_channels(x: ArrayLike, mask: ArrayLike) -> Array:
    r"""Multiplies the feature (last) axis of an activation by a channel mask.

    .. math::

        y_{\ldots c} = x_{\ldots c} \, m_c \qquad \text{or, per example,} \qquad
        y_{n \ldots c} = x_{n \ldots c} \, m_{nc} .

    The plain-function form of the mask modules in :mod:`jaxprune._src.nn`: call it on any
    activation of any JAX model, with the mask passed in as an argument, so that the mask can
    be differentiated (:func:`fisher_signals`) and counted (:func:`jaxprune.count_flops` with
    ``channel_argnums``). The mask is broadcast explicitly, so it works under
    ``jax_numpy_rank_promotion="raise"``, and it is cast to the activation's float dtype.

    Args:
      x: the activation, shape ``(..., C)``.
      mask: shape ``(C,)``, one mask for all examples; or ``(B, C)`` with ``x`` of shape
        ``(B, ..., C)``, one mask per example (the extended mask of the single-backward route,
        broadcast over the axes between the batch and the features like the reference
        code's ``extend_mask``).

    Returns:
      ``x`` times the mask, of ``x``'s shape.

    Raises:
      ValueError: if the mask's shape matches neither ``(C,)`` nor ``(B, C)`` for ``x``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import mask_channels
      >>> x = jnp.ones((2, 3, 4))
      >>> mask_channels(x, jnp.array([1.0, 0.0, 1.0, 1.0]))[0, 0].tolist()
      [1.0, 0.0, 1.0, 1.0]
      >>> mask_channels(x, jnp.ones((2, 4))).shape
      (2, 3, 4)
    """
    x = jnp.asarray(x)
    mask = jnp.asarray(mask)
    xs, ms = tuple(x.shape), tuple(mask.shape)
    if x.ndim >= 1 and ms == xs[-1:]:
        shape = (1,) * (x.ndim - 1) + ms
    elif x.ndim >= 2 and ms == (xs[0], xs[-1]):
        shape = (xs[0],) + (1,) * (x.ndim - 2) + (xs[-1],)
    else:
        hint = f"({xs[-1]},)" if x.ndim else "(C,)"
        if x.ndim >= 2:
            hint += f" or ({xs[0]}, {xs[-1]}) with one mask per example"
        raise ValueError(
            f"a channel mask of shape {ms} matches no axis of the activation of shape {xs}: "
            f"channel masks multiply the last (feature) axis, so the mask's shape must be {hint}"
        )
    if jnp.issubdtype(x.dtype, jnp.floating) and mask.dtype != x.dtype:
        mask = mask.astype(x.dtype)
    return x * mask.reshape(shape)


def extend_masks(masks: Any, batch_size: int) -> Any:
    """Repeats every mask once per example: ``(C,)`` becomes ``(batch_size, C)``.

    The extended masks of the single-backward route: pass them to a model written with
    :func:`mask_channels` (or the mask modules) on a batch, and the gradient of the summed loss
    with respect to row ``n`` is the gradient of example ``n``'s loss.

    Args:
      masks: a pytree of channel masks, shape ``(C,)`` each.
      batch_size: the number of examples, ``>= 1``.

    Returns:
      A pytree like ``masks`` with leaves of shape ``(batch_size, C)``.

    Raises:
      ValueError: if ``masks`` is empty or holds a leaf that is not 1-D, or ``batch_size < 1``.
      TypeError: if a mask is not a float array or ``batch_size`` not an int.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import extend_masks
      >>> extend_masks({"a": jnp.array([1.0, 0.0])}, 3)["a"].tolist()
      [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_masks(masks)
    return jax.tree.map(lambda m: jnp.broadcast_to(m, (int(batch_size),) + m.shape), masks)


# ---------------------------------------------------------------------------
# Signals.


def per_example_mask_grads(
    loss_fn: LossFn, params: Any, masks: Any, batch: Any, *, route: str = "vmap"
) -> Any:
    r"""Per-example gradients :math:`g_{nk} = \partial \ell_n / \partial m_k` of the loss.

    Args:
      loss_fn: ``loss_fn(params, masks, example) -> loss``, the scalar loss of one example (an
        example is ``batch`` without its leading axis), with ``masks`` applied to the model's
        activations by :func:`mask_channels` or a mask module.
      params: the parameters (any pytree), shared by all examples.
      masks: a pytree of channel masks, float arrays of shape ``(C,)``.
      batch: a pytree of arrays with a common leading batch axis of size ``B``.
      route: ``"vmap"`` (``jax.vmap`` of ``jax.grad``) or ``"backward"`` (one backward pass of
        the summed loss through masks repeated per example); they agree to float rounding.

    Returns:
      A pytree like ``masks`` with leaves of shape ``(B, C)``.

    Raises:
      ValueError: for empty or non-1-D masks, a batch without a common batch axis, an unknown
        ``route``, a mask the loss does not depend on, or one whose shape matches no activation.
      TypeError: if ``loss_fn`` does not return a float scalar, or a mask is not float.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import per_example_mask_grads
      >>> def loss_fn(params, masks, x):  # one feature per input: loss = sum_k w_k x_k m_k
      ...     return jnp.sum(params * x * masks["h"])
      >>> g = per_example_mask_grads(loss_fn, jnp.array([1.0, 2.0]), {"h": jnp.ones(2)},
      ...                            jnp.array([[1.0, 1.0], [3.0, 0.0]]))
      >>> g["h"].tolist()
      [[1.0, 2.0], [3.0, 0.0]]
    """
    check_route(route)
    check_masks(masks)
    n = batch_size_of(batch)
    example = example_spec(batch)
    check_loss_fn(loss_fn, params, masks, example, out_shape=(), has_aux=False)
    if route == "vmap":
        grad_fn = jax.grad(loss_fn, argnums=1)
        return jax.vmap(grad_fn, in_axes=(None, None, 0))(params, masks, batch)

    def summed(extended):
        return jnp.sum(jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, extended, batch))

    return jax.grad(summed)(extend_masks(masks, n))


def fisher_batch_signals(mask_grads: Any) -> Any:
    r"""The signal of one batch: :math:`s_k = \frac{1}{B}\sum_n g_{nk}^2`, the reference code's.

    This is twice the paper's :math:`\Delta_k = \frac{1}{2N}\sum_n g_{nk}^2` on the batch.

    Args:
      mask_grads: per-example mask gradients, a pytree of ``(B, C)`` arrays (from
        :func:`per_example_mask_grads` or :func:`fisher_value_and_grad`).

    Returns:
      A pytree of float32 ``(C,)`` arrays.

    Raises:
      ValueError: if a leaf is not 2-D or the tree is empty.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import fisher_batch_signals
      >>> fisher_batch_signals({"h": jnp.array([[1.0, 2.0], [3.0, 0.0]])})["h"].tolist()
      [5.0, 2.0]
    """
    flat = jax.tree_util.tree_flatten_with_path(mask_grads)[0]
    if not flat:
        raise ValueError("mask_grads has no leaves")
    for path, g in flat:
        if np.ndim(g) != 2:
            raise ValueError(
                f"mask_grads[{path_str(path)!r}] has shape {np.shape(g)}; per-example mask "
                "gradients have shape (B, C)"
            )
    return jax.tree.map(
        lambda g: jnp.mean(jnp.square(jnp.asarray(g, jnp.float32)), axis=0), mask_grads
    )


def fisher_signals(
    loss_fn: LossFn, params: Any, masks: Any, batch: Any, *, route: str = "vmap"
) -> Any:
    r"""Fisher pruning signals of a batch: :math:`s_k = \frac{1}{B}\sum_n g_{nk}^2`.

    :math:`g_{nk}` is the gradient of example :math:`n`'s loss with respect to mask entry
    :math:`k`, so :math:`s_k = 2\Delta_k` with the paper's estimate
    :math:`\Delta_k = \frac{1}{2N}\sum_n g_{nk}^2` of the increase in loss when feature
    :math:`k` is removed (the factor 2 is the reference code's convention; rankings are the
    same). Average it over steps with :func:`update_fisher_signals`, then remove the feature
    with the smallest signal with :func:`jaxprune.fisher.fisher_prune`.

    Args:
      loss_fn: ``loss_fn(params, masks, example) -> loss``, the scalar loss (negative
        log-likelihood) of one example, ``batch`` without its leading axis.
      params: the parameters (any pytree).
      masks: a pytree of channel masks, float arrays of shape ``(C,)``.
      batch: a pytree of arrays with a common leading batch axis.
      route: ``"vmap"`` or ``"backward"``; see :func:`per_example_mask_grads`.

    Returns:
      A pytree like ``masks`` of float32 ``(C,)`` signals.

    Raises:
      ValueError: as :func:`per_example_mask_grads`.
      TypeError: as :func:`per_example_mask_grads`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src.fisher import fisher_signals, mask_channels
      >>> def loss_fn(params, masks, x):
      ...     h = mask_channels(jnp.tanh(x @ params["w1"]), masks["hidden"])
      ...     return jnp.sum((h @ params["w2"]) ** 2)
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 1))}
      >>> masks = {"hidden": jnp.ones(4)}
      >>> s = fisher_signals(loss_fn, params, masks, jnp.ones((8, 3)))
      >>> s["hidden"].shape
      (4,)
      >>> s2 = jax.jit(fisher_signals, static_argnums=0, static_argnames="route")(
      ...     loss_fn, params, masks, jnp.ones((8, 3)), route="backward")
      >>> bool(jnp.allclose(s["hidden"], s2["hidden"]))
      True

    References:
      Theis et al., 2018, https://arxiv.org/abs/1801.05787
    """
    grads = per_example_mask_grads(loss_fn, params, masks, batch, route=route)
    return fisher_batch_signals(grads)


def update_fisher_signals(
    signals: Any, batch_signals: Any, *, decay: float | ArrayLike = DEFAULT_DECAY
) -> Any:
    r"""One step of the moving average of the signals: :math:`\gamma \bar s + (1-\gamma) s`.

    The reference code's update, started from zeros and not bias-corrected: after :math:`t`
    steps the average weighs the batches by :math:`(1-\gamma)\gamma^{t-i}` and sums to
    :math:`1-\gamma^t`, so prune after a burn-in of a few :math:`1/(1-\gamma)` steps
    (25 for the default decay) when the signal is traded against costs.

    Args:
      signals: the running average, a pytree of ``(C,)`` arrays (zeros at the start).
      batch_signals: this batch's signals (:func:`fisher_batch_signals`), same structure.
      decay: :math:`\gamma` in ``[0, 1)``; ``0`` keeps only the last batch.

    Returns:
      The new running average, float32, like ``signals``.

    Raises:
      ValueError: if ``decay`` is outside ``[0, 1)`` or the trees differ.
      TypeError: if ``decay`` is not a real number.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import update_fisher_signals
      >>> s = update_fisher_signals({"h": jnp.zeros(2)}, {"h": jnp.array([1.0, 2.0])}, decay=0.5)
      >>> {k: v.tolist() for k, v in s.items()}
      {'h': [0.5, 1.0]}
    """
    check_decay(decay)
    check_like_masks(batch_signals, signals, "batch_signals")
    decay = jnp.asarray(decay, jnp.float32)
    return jax.tree.map(
        lambda s, f: (
            decay * jnp.asarray(s, jnp.float32) + (1.0 - decay) * jnp.asarray(f, jnp.float32)
        ),
        signals,
        batch_signals,
    )


def fisher_value_and_grad(
    loss_fn: LossFn, *, batched: bool = False, has_aux: bool = False
) -> Callable[[Any, Any, Any], tuple[Any, tuple[Any, Any]]]:
    r"""Loss, parameter gradients and per-example mask gradients from one backward pass.

    The returned function computes, for a batch of :math:`B` examples,

    .. math::

        L = \frac{1}{B}\sum_n \ell_n, \qquad \nabla_\theta L, \qquad
        g_{nk} = \frac{\partial \ell_n}{\partial m_k}

    by repeating every mask once per example (:func:`extend_masks`) and differentiating the
    mean loss with respect to the parameters and the extended masks together; the extended
    masks' gradient is :math:`g_{nk}/B`, rescaled to :math:`g_{nk}`. The parameter gradients
    are those of a plain training step; the Fisher signals cost one extra element-wise product
    and reduction per mask.

    Args:
      loss_fn: with ``batched=False``, ``loss_fn(params, masks, example) -> loss`` for one
        example (masks of shape ``(C,)``), vectorised with ``jax.vmap``. With
        ``batched=True``, ``loss_fn(params, masks, batch) -> losses``, the ``(B,)`` per-example
        losses of a model written on batches, which receives masks of shape ``(B, C)`` and
        applies them with :func:`mask_channels` or a mask module.
      batched: which of the two forms ``loss_fn`` has.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is returned as is (with a
        leading batch axis when ``batched=False``).

    Returns:
      A function ``(params, masks, batch) -> (loss, (grads, mask_grads))``, or
      ``((loss, aux), (grads, mask_grads))`` with ``has_aux``: ``loss`` is the mean loss,
      ``grads`` the gradient of the mean loss with respect to ``params``, ``mask_grads`` a
      pytree like ``masks`` of ``(B, C)`` per-example gradients (pass them to
      :func:`fisher_batch_signals` or to the :func:`jaxprune.fisher_pruning` transformation).

    Raises:
      ValueError: (when called) for empty or non-1-D masks, a batch without a common batch
        axis, a mask the loss does not depend on or whose shape matches no activation.
      TypeError: if ``loss_fn`` is not callable or returns the wrong shape.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src.fisher import fisher_value_and_grad, mask_channels
      >>> def loss_fn(params, masks, x):  # one example
      ...     h = mask_channels(jnp.tanh(x @ params["w1"]), masks["hidden"])
      ...     return jnp.sum((h @ params["w2"]) ** 2)
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 1))}
      >>> step = jax.jit(fisher_value_and_grad(loss_fn))
      >>> loss, (grads, mask_grads) = step(params, {"hidden": jnp.ones(4)}, jnp.ones((8, 3)))
      >>> grads["w1"].shape, mask_grads["hidden"].shape
      ((3, 4), (8, 4))
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")

    def value_and_grad_fn(params: Any, masks: Any, batch: Any):
        check_masks(masks)
        n = batch_size_of(batch)
        extended = extend_masks(masks, n)
        if batched:
            check_loss_fn(loss_fn, params, extended, batch, out_shape=(n,), has_aux=has_aux)
            losses_fn = loss_fn
        else:
            example = example_spec(batch)
            check_loss_fn(loss_fn, params, masks, example, out_shape=(), has_aux=has_aux)
            losses_fn = jax.vmap(loss_fn, in_axes=(None, 0, 0))

        def mean_loss(p, e):
            out = losses_fn(p, e, batch)
            losses, aux = out if has_aux else (out, None)
            return jnp.mean(losses), aux

        (loss, aux), (grads, ext_grads) = jax.value_and_grad(
            mean_loss, argnums=(0, 1), has_aux=True
        )(params, extended)
        # d mean / d row n = g_n / B: scale the small (B, C) arrays rather than the parameters.
        mask_grads = jax.tree.map(lambda g: g * jnp.asarray(n, g.dtype), ext_grads)
        value = (loss, aux) if has_aux else loss
        return value, (grads, mask_grads)

    return value_and_grad_fn
