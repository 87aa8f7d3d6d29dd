r"""Greedy Fisher pruning: remove the one feature whose loss of signal is cheapest.

Given the signals :math:`s_k` of every feature still alive (the running average of
:math:`\frac{1}{N}\sum_n g_{nk}^2`, see :mod:`jaxprune._src.fisher_signals`) and, optionally,
each feature's marginal cost :math:`c_k` (the FLOPs that removing it saves), one step removes

.. math::

    k^\star = \operatorname*{arg\,min}_{k \text{ alive}} \; s_k - \beta\, c_k
    \qquad\text{or, hyperparameter-free,}\qquad
    k^\star = \operatorname*{arg\,min}_{k \text{ alive}} \; s_k / c_k

over all layers at once. The first rule is the greedy step on the paper's penalised objective
(loss :math:`+\,\beta\,` cost); since :math:`s_k = 2\Delta_k`, the ``beta`` here is twice the
paper's :math:`\beta` when both count the cost in the same units. The second ranks features by
loss per FLOP saved and needs no :math:`\beta`.

References:
  Theis, Korshunova, Tejani, Huszár, "Faster gaze prediction with dense networks and Fisher
  pruning", 2018, https://arxiv.org/abs/1801.05787
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import ArrayLike
from jaxprune._src.fisher_checks import check_like_masks, check_masks

CRITERIA = ("difference", "ratio")

# A mask entry above this value counts as a feature still alive (the paper's reference code's
# rule).
ALIVE_THRESHOLD = 0.5


def check_beta(beta: Any) -> None:
    """Raises unless a concrete ``beta`` is a finite real number >= 0."""
    if isinstance(beta, jax.core.Tracer):
        return
    try:
        value = float(np.asarray(beta))
    except (TypeError, ValueError) as e:
        raise TypeError(f"beta must be a real number >= 0, got {beta!r}") from e
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")


def _is_zero(beta: Any) -> bool:
    return not isinstance(beta, jax.core.Tracer) and float(np.asarray(beta)) == 0.0


def check_options(costs: Any, beta: Any, criterion: Any) -> None:
    """Host-side validation of the ranking options shared by fisher_prune and fisher_pruning."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    check_beta(beta)
    if criterion == "ratio":
        if costs is None:
            raise ValueError(
                "criterion='ratio' ranks features by signal / cost and needs costs (a tree of "
                "marginal FLOPs, or a function masks -> FLOPs)"
            )
        if not _is_zero(beta):
            raise ValueError(
                f"criterion='ratio' has no hyperparameter; beta must be 0, got {beta!r}"
            )
    elif costs is None and not _is_zero(beta):
        raise ValueError(
            f"beta={beta!r} trades signals against costs, but costs is None: give costs (a "
            "tree of marginal FLOPs, or a function masks -> FLOPs)"
        )


def marginal_costs(costs: Any, masks: Any) -> Any:
    """A tree of per-feature costs: ``costs`` itself, or ``jax.grad(costs)(masks)``."""
    if callable(costs):
        grads = jax.grad(costs)(masks)
        check_like_masks(grads, masks, "grad of costs")
        return grads
    check_like_masks(costs, masks, "costs")
    return costs


def _scores(signal, mask, cost, beta, criterion):
    signal = jnp.asarray(signal, jnp.float32)
    if cost is None:
        score = signal
    else:
        cost = jnp.asarray(cost, jnp.float32)
        if criterion == "ratio":
            # A feature that saves nothing is never worth its loss: rank it last.
            score = jnp.where(cost > 0, signal / jnp.where(cost > 0, cost, 1.0), jnp.inf)
        else:
            score = signal - jnp.asarray(beta, jnp.float32) * cost
    alive = jnp.asarray(mask) > ALIVE_THRESHOLD
    # The last feature of a layer is never removed: that would cut the network in two.
    candidate = alive & (jnp.sum(alive) > 1)
    score = jnp.where(jnp.isnan(score), jnp.inf, score)
    return jnp.where(candidate, score, jnp.inf), candidate


def fisher_prune(
    signals: Any,
    masks: Any,
    *,
    costs: Any | Callable[[Any], ArrayLike] | None = None,
    beta: float | ArrayLike = 0.0,
    criterion: str = "difference",
) -> Any:
    r"""Removes exactly one more feature: the alive one with the smallest score, over all layers.

    .. math::

        \text{score}_k = s_k - \beta\, c_k \quad (\texttt{criterion="difference"}), \qquad
        \text{score}_k = s_k / c_k \quad (\texttt{criterion="ratio"}),

    with :math:`s_k` the Fisher signal and :math:`c_k` the FLOPs that removing feature
    :math:`k` saves. A feature is alive while its mask entry is above 0.5; removed features
    are never chosen again, and a layer's last alive feature is never removed. Ties go to the
    first leaf in flattening order, then the lowest index. With ``"ratio"`` a feature whose
    cost is not positive ranks last, and a NaN score from the costs ranks last too. If no layer
    has two alive features the masks are returned unchanged. **If the signal of any alive
    feature is NaN, nothing is removed**: NaN signals mean a diverged loss or gradient, and
    ranking on them would remove an arbitrary feature. Pure and jit-able; ``beta`` may be
    traced.

    **Costs.** Use the FLOPs of one example's forward pass (the paper's reference code divides its
    count by the batch size), so that ``beta`` does not depend on the batch size. A function
    ``masks -> FLOPs`` built with :func:`jaxprune.count_flops` (``channel_argnums`` naming the
    masks) is differentiated here, so the costs are those of the current masks: after each
    removal the neighbours of a pruned feature become cheaper, and the count follows.

    Args:
      signals: a pytree like ``masks`` of ``(C,)`` signals (:func:`jaxprune.fisher.fisher_signals`,
        usually averaged with :func:`jaxprune.fisher.update_fisher_signals`).
      masks: a pytree of channel masks, float arrays of shape ``(C,)`` with entries 1 (kept)
        and 0 (removed).
      costs: ``None``; a pytree like ``masks`` of marginal costs; or a function
        ``masks -> FLOPs`` whose gradient gives them.
      beta: the trade-off :math:`\beta \ge 0` of ``"difference"``; 0 ranks by signal alone.
      criterion: ``"difference"`` (:math:`s - \beta c`) or ``"ratio"`` (:math:`s / c`, the
        hyperparameter-free rule; needs ``costs`` and ``beta=0``).

    Returns:
      New masks like ``masks`` (same dtypes) with one more entry set to 0.

    Raises:
      ValueError: if ``masks`` is empty or not 1-D, ``signals`` or ``costs`` do not match it,
        ``beta < 0``, ``beta > 0`` without ``costs``, or ``criterion`` is unknown or
        ``"ratio"`` without ``costs``.
      TypeError: if a mask is not a float array or ``beta`` is not a number.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.fisher import fisher_prune
      >>> masks = {"a": jnp.ones(3), "b": jnp.ones(2)}
      >>> signals = {"a": jnp.array([0.5, 0.2, 0.9]), "b": jnp.array([0.3, 0.1])}
      >>> fisher_prune(signals, masks)["b"].tolist()  # the smallest signal overall: b[1]
      [1.0, 0.0]

      Features of "a" cost 10 FLOPs each, of "b" 1 FLOP: with beta = 0.02, a[1] is the
      cheaper loss (0.2 - 0.02 * 10 = 0.0 < 0.1 - 0.02 * 1 = 0.08).

      >>> costs = {"a": jnp.full(3, 10.0), "b": jnp.ones(2)}
      >>> fisher_prune(signals, masks, costs=costs, beta=0.02)["a"].tolist()
      [1.0, 0.0, 1.0]
      >>> # criterion="ratio": a[1] is cheaper too, as 0.2 / 10 < 0.1 / 1
      >>> fisher_prune(signals, masks, costs=costs, criterion="ratio")["a"].tolist()
      [1.0, 0.0, 1.0]

    References:
      Theis et al., 2018, https://arxiv.org/abs/1801.05787
    """
    check_masks(masks)
    check_like_masks(signals, masks, "signals")
    check_options(costs, beta, criterion)
    cost_tree = None if costs is None else marginal_costs(costs, masks)

    m_leaves, treedef = jax.tree.flatten(masks)
    s_leaves = treedef.flatten_up_to(signals)
    c_leaves = [None] * len(m_leaves) if cost_tree is None else treedef.flatten_up_to(cost_tree)
    scored = [
        _scores(s, m, c, beta, criterion)
        for s, m, c in zip(s_leaves, m_leaves, c_leaves, strict=True)
    ]
    nan_signal = jnp.any(
        jnp.stack(
            [
                jnp.any(jnp.isnan(jnp.asarray(s, jnp.float32)) & (jnp.asarray(m) > ALIVE_THRESHOLD))
                for s, m in zip(s_leaves, m_leaves, strict=True)
            ]
        )
    )
    scores = jnp.concatenate([s for s, _ in scored])
    candidates = jnp.concatenate([c for _, c in scored])
    best = jnp.argmin(scores)  # the first minimum: deterministic tie-breaking
    # Every candidate may score +inf (e.g. "ratio" with no positive cost): take the first one.
    best = jnp.where(candidates[best], best, jnp.argmax(candidates))
    found = jnp.any(candidates) & ~nan_signal

    out = []
    offset = 0
    for m in m_leaves:
        m = jnp.asarray(m)
        size = m.shape[0]
        hit = found & (jnp.arange(size) + offset == best)
        out.append(jnp.where(hit, jnp.zeros((), m.dtype), m))
        offset += size
    return jax.tree.unflatten(treedef, out)
