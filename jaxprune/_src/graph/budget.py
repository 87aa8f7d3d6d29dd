"""Channel masks for a FLOP budget: the ranking of :func:`group_masks`, cut where the
compacted model's FLOPs fit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxprune._src.flops import count_flops
from jaxprune._src.graph.compact import compact
from jaxprune._src.graph.groups import Group, group_masks

# Bisection steps over the channel sparsity: 2**-30 is finer than one channel of any model.
_STEPS = 30


def group_masks_for_flops(
    fn: Callable[..., Any],
    params: Any,
    groups: Sequence[Group],
    scores: Sequence[Any],
    *example_args: Any,
    flops: float,
    scope: str = "global",
) -> tuple[list[np.ndarray], float]:
    """The channels to keep so that the compacted model costs at most a fraction of the FLOPs.

    Channels are ranked as :func:`group_masks` ranks them (``scope="global"``: one ranking
    over all groups; ``"group"``: the same fraction of every group), and the cut is the
    smallest channel sparsity whose compacted model (:func:`compact`) costs at most
    ``flops`` times the FLOPs of ``fn`` (:func:`jaxprune.count_flops`, counted on
    ``example_args``), found by bisection. No group is emptied.

    Args:
      fn: the model, called as ``fn(params, *example_args)``.
      params: every variable ``fn`` reads.
      groups: the result of :func:`dependency_groups` on the same function.
      scores: one 1-D score array per group (:func:`group_scores`).
      *example_args: example inputs; FLOPs are counted for these shapes.
      flops: the fraction of the dense model's FLOPs allowed, in ``(0, 1]``.
      scope: ``"global"`` or ``"group"``.

    Returns:
      ``(keep, fraction)``: one bool vector per group (``True`` = kept), as :func:`compact`
      takes it, and the fraction of the dense FLOPs that the compacted model costs.

    Raises:
      ValueError: if ``flops`` is not in ``(0, 1]``, or no cut reaches it (removing all but
        one channel of every group still costs more; the message gives that fraction).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> from jaxprune.structural import group_masks_for_flops
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((8, 4)), "w2": jnp.ones((4, 8))}
      >>> x = jnp.ones((1, 8))
      >>> groups = jp.dependency_groups(f, p, x)
      >>> scores = [jnp.array([1.0, 4.0, 3.0, 2.0])]
      >>> keep, fraction = group_masks_for_flops(f, p, groups, scores, x, flops=0.5)
      >>> keep[0].tolist(), fraction
      ([False, True, True, False], 0.5)
    """
    if isinstance(flops, bool) or not isinstance(flops, (int, float, np.floating)):
        raise TypeError(f"flops must be a fraction in (0, 1], got {flops!r}")
    if not (0.0 < float(flops) <= 1.0) or math.isnan(flops):
        raise ValueError(f"flops must be a fraction in (0, 1], got {flops!r}")
    dense = float(count_flops(fn, params, *example_args))
    if dense <= 0:
        raise ValueError("fn costs no FLOPs on example_args: there is nothing to budget")
    cache: dict[tuple, float] = {}

    def cut(sparsity: float) -> tuple[list[np.ndarray], float]:
        keep = group_masks(scores, groups, sparsity=sparsity, scope=scope)
        key = tuple(bytes(np.packbits(k)) for k in keep)
        if key not in cache:
            small, small_fn = compact(fn, params, keep, *example_args)
            cache[key] = float(count_flops(small_fn, small, *example_args)) / dense
        return keep, cache[key]

    lo, hi = 0.0, 1.0 - 2.0**-_STEPS
    best = cut(lo)
    if best[1] <= flops:
        return best
    last = cut(hi)
    if last[1] > flops:
        raise ValueError(
            f"no cut reaches flops={flops}: keeping one channel of every group still costs "
            f"{last[1]:.4f} of the dense FLOPs (the ungrouped layers and the channels no group "
            "may remove)"
        )
    best = last
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        got = cut(mid)
        if got[1] <= flops:
            hi, best = mid, got
        else:
            lo = mid
    return best
