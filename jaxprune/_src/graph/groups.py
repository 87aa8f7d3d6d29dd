"""Dependency groups: the parameter axes that must lose the same channels together.

Removing output channel ``c`` of a convolution also removes element ``c`` of its
bias, of the batch norm after it (scale, offset, running mean and variance),
input channel ``c`` of the next layer's kernel, and — through a residual add —
channel ``c`` of every layer whose output joins that add. A *dependency group*
lists all of these ``(leaf path, axis)`` pairs. :func:`dependency_groups` finds
them from the program itself (``jax.make_jaxpr``), so it works for any model
library; :func:`group_scores` and :func:`group_masks` choose the channels to
keep, and :func:`jaxprune._src.graph.compact.compact` removes the others.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.base import check_sparsity, path_str
from jaxprune._src.graph import analysis as _analysis
from jaxprune._src.graph.trace import trace

Layout = _analysis.Layout


@dataclasses.dataclass(frozen=True)
class Group:
    """Parameter axes that index the same channels and are pruned together.

    Attributes:
      name: a unique name, ``"<leaf path>:<axis>"`` of the layer that produces
        the channels (the first one, for groups that residual adds join).
      size: the number of channels.
      members: ``(leaf path, axis)`` pairs, in the order of the parameter leaves.
      layouts: for each member, ``None`` when channel ``c`` is index ``c`` of the
        axis, otherwise ``(offset, stride, loops)``: channel ``c`` sits at
        positions ``offset + c * stride + sum_k o_k * step_k`` for
        ``o_k < count_k``, ``loops = ((count_k, step_k), ...)`` (a dense layer
        after a flatten, or a layer after a concatenation).
    """

    name: str
    size: int
    members: tuple[tuple[str, int], ...]
    layouts: tuple[Layout | None, ...]

    def positions(self, i: int) -> np.ndarray:
        """Positions of every channel along member ``i``'s axis, shape ``(size, m)``."""
        layout = self.layouts[i] or _analysis.IDENTITY
        return _analysis.positions(layout, self.size)


class BlockedAxis(NamedTuple):
    """A parameter axis that carries channels but that no group may prune.

    Attributes:
      path: the leaf path, e.g. ``params/LayerNorm_0/scale``.
      axis: the axis of that leaf.
      reason: why its channels cannot be removed (e.g. a layer norm reduces
        over it, it reaches the model output).
    """

    path: str
    axis: int
    reason: str


class DependencyGroups(tuple):
    """The groups of a function (a tuple of :class:`Group`), with what was left out.

    Attributes:
      blocked: a tuple of :class:`BlockedAxis`, every parameter axis that an
        activation carries but that no group contains, with the reason.
    """

    blocked: tuple[BlockedAxis, ...]

    def __new__(cls, groups: Sequence[Group], blocked: Sequence[BlockedAxis] = ()):
        obj = super().__new__(cls, groups)
        obj.blocked = tuple(blocked)
        return obj

    def by_name(self) -> dict[str, Group]:
        """The groups keyed by name."""
        return {g.name: g for g in self}


def _check_params(fn, params):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("params has no leaves; pass every variable fn reads.")
    paths = []
    for path, leaf in flat:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"params leaf {path_str(path)!r} is a {type(leaf).__name__}; every leaf must "
                "be an array (jax.Array, numpy array or jax.ShapeDtypeStruct)."
            )
        paths.append(path_str(path))
    return paths


def _arg_names(args) -> list[str]:
    names = []
    for i, arg in enumerate(args):
        flat, _ = jax.tree_util.tree_flatten_with_path(arg)
        for path, _ in flat:
            sub = path_str(path)
            names.append(f"args[{i}]" + (f"/{sub}" if sub else ""))
    return names


def analyze(fn: Callable[..., Any], params: Any, args: Sequence[Any]):
    """Traces ``fn(params, *args)`` and returns ``(analysis, groups, roots)``.

    ``roots[i]`` is the union-find class of ``groups[i]``.
    """
    paths = _check_params(fn, params)
    prog = trace(fn, params, *args)
    an = _analysis.Analysis(prog, len(paths), paths + _arg_names(args))
    groups, roots, used = [], [], set()
    in_group = set()
    blocked_reasons: dict[tuple[int, int], list[str]] = {}
    for root in an.roots():
        if root in an.comp or not an.is_carried(root):
            continue
        members = an.members(root)
        if not members:
            continue
        if root in an.reason:
            for i, a, _ in members:
                reasons = blocked_reasons.setdefault((i, a), [])
                if an.reason[root] not in reasons:
                    reasons.append(an.reason[root])
            continue
        size = an.size(root)
        seen: dict[tuple[int, int], Layout] = {}
        for i, a, lay in members:
            if seen.setdefault((i, a), lay) != lay:
                raise ValueError(
                    f"parameter {paths[i]!r} axis {a} holds the same channels in two layouts; "
                    "it cannot be pruned consistently."
                )
        order = sorted(seen)
        pairs = tuple((paths[i], a) for i, a in order)
        layouts = tuple(None if seen[k] == _analysis.IDENTITY else seen[k] for k in order)
        produced = [k for k in order if k in an.produced and seen[k] == _analysis.IDENTITY]
        first = produced[0] if produced else order[0]
        name = f"{paths[first[0]]}:{first[1]}"
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}#{n}"
        used.add(name)
        in_group.update(order)
        groups.append(Group(name, size, pairs, layouts))
        roots.append(root)
    order = sorted(range(len(groups)), key=lambda j: _sort_key(groups[j], paths))
    groups = [groups[j] for j in order]
    roots = [roots[j] for j in order]
    blocked = [
        BlockedAxis(paths[i], a, "; ".join(rs))
        for (i, a), rs in sorted(blocked_reasons.items())
        if (i, a) not in in_group
    ]
    return an, DependencyGroups(groups, blocked), roots


def _sort_key(group: Group, paths: list[str]):
    path, axis = group.name.split("#")[0].rsplit(":", 1)
    return (paths.index(path), int(axis), group.name)


def dependency_groups(fn: Callable[..., Any], params: Any, *example_args: Any) -> DependencyGroups:
    """Finds the groups of parameter axes that must be pruned together.

    ``fn(params, *example_args)`` is traced once with ``jax.make_jaxpr`` (calls
    through ``jit``, ``custom_jvp``/``custom_vjp`` and ``remat`` are followed, and
    so are ``lax.scan`` bodies: the layers of a stacked parameter share its groups,
    and its leading layer axis is blocked).
    Every axis of every value is mapped to a channel index space, and spaces
    that must agree are joined: a dense or convolution kernel's output axis with
    the bias added to it, the element-wise ops after it, a norm's scale, offset
    and running statistics, and the next layer's input (contracted) axis;
    residual adds join the groups they add; a depthwise convolution ties its
    input channels to its output channels. A concatenation along the channel
    axis, or a flatten of ``(H, W, C)`` into one axis, places each group's
    channels at known positions of the consumer's axis (see :class:`Group`).

    Axes that cannot be compacted without changing the kept outputs are left
    out of every group and listed, with the reason, in ``.blocked``: axes tied
    to the model inputs or outputs (the logits are never a group), axes a
    reduction runs over (a layer norm over features, a softmax), axes a
    reshape mixes with others, grouped convolutions, slices and gathers, axes
    contracted between two activations, and every axis of an equation the
    analysis does not follow.

    Args:
      fn: the function, called as ``fn(params, *example_args)``.
      params: every variable ``fn`` reads as a pytree of arrays (for linen,
        ``{"params": ..., "batch_stats": ...}``).
      *example_args: example inputs (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      A :class:`DependencyGroups`: a tuple of :class:`Group` ordered by the
      leaf that produces each group, with ``.blocked`` attached.

    Raises:
      TypeError: if ``fn`` is not callable or a ``params`` leaf is not an array.
      ValueError: if ``params`` is empty.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.graph.groups import dependency_groups
      >>> def mlp(p, x):
      ...     h = jnp.maximum(x @ p["w1"] + p["b1"][None, :], 0.0)
      ...     return h @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 8)), "b1": jnp.zeros(8), "w2": jnp.ones((8, 2))}
      >>> (g,) = dependency_groups(mlp, p, jnp.ones((4, 3)))
      >>> g.name, g.size, g.members
      ('w1:1', 8, (('b1', 0), ('w1', 1), ('w2', 0)))
    """
    return analyze(fn, params, example_args)[1]


def _leaves_by_path(params) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {path_str(p): leaf for p, leaf in flat}


def _check_groups(groups) -> None:
    if not all(isinstance(g, Group) for g in groups):
        raise TypeError("groups must be the result of dependency_groups (a sequence of Group).")


def group_scores(
    params: Any,
    groups: Sequence[Group],
    *,
    criterion: str = "l2",
    exclude: str | None = None,
    grads: Any = None,
) -> list[jax.Array]:
    """Scores every channel of every group by its weights (and gradients) in all members.

    The score of channel ``c`` of a group is computed over channel ``c``'s
    slices of every member: with ``criterion="l2"`` the norm of their
    concatenation, :math:`\\sqrt{\\sum_m \\lVert W_m[c]\\rVert_2^2}`; with ``"l1"``,
    :math:`\\sum_m \\lVert W_m[c]\\rVert_1`; with ``"taylor"``, the first-order
    Taylor estimate of the change in loss when the channel is removed,
    :math:`\\lvert \\sum_m \\sum W_m[c] \\odot G_m[c] \\rvert` with :math:`G` the gradients
    of the loss (Molchanov et al. 2019, on the whole group): removing the channel
    moves every member's weights by :math:`-W_m[c]`. With ``"fisher"``, the
    Fisher estimate of that change (Theis et al. 2018, on the whole group):
    :math:`\\tfrac{1}{2N} \\sum_n d_{n,c}^2` with
    :math:`d_{n,c} = \\sum_m \\sum W_m[c] \\odot G_{n,m}[c]` from per-example gradients
    :math:`G_n` (``jax.vmap`` of ``jax.grad``): :math:`d_{n,c}` is the derivative of
    example :math:`n`'s loss along scaling all of channel :math:`c`'s slices by a
    factor :math:`\\mu`, at :math:`\\mu = 1`, which the Taylor score averages before
    squaring and the Fisher score squares before averaging.

    Args:
      params: the parameters the groups were found on.
      groups: the result of :func:`dependency_groups`.
      criterion: ``"l2"``, ``"l1"``, ``"taylor"`` or ``"fisher"``.
      exclude: a regex searched in member leaf paths; matching members do not
        count (e.g. ``"batch_stats"`` leaves linen's running statistics out:
        they have no gradient).
      grads: for ``"taylor"`` only (required there): the gradients of the loss
        with respect to ``params``, a tree with the same leaf paths (e.g.
        ``jax.grad(loss)(params)``, summed or averaged over a calibration batch).
        For ``"fisher"`` (required there): per-example gradients, each leaf with a
        leading example axis (``jax.vmap(jax.grad(loss), in_axes=(None, 0))(params,
        batch)`` with ``loss`` of one example).

    Returns:
      One float32 array of shape ``(group.size,)`` per group.

    Raises:
      ValueError: if ``criterion`` is unknown or a member is missing from ``params``.
      TypeError: if ``groups`` is not a sequence of :class:`Group`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.graph.groups import dependency_groups, group_scores
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.array([[3.0, 0.0]]), "w2": jnp.array([[4.0], [1.0]])}
      >>> groups = dependency_groups(f, p, jnp.ones((1, 1)))
      >>> [s.tolist() for s in group_scores(p, groups)]
      [[5.0, 1.0]]
    """
    if criterion not in ("l2", "l1", "taylor", "fisher"):
        raise ValueError(f"criterion must be 'l2', 'l1', 'taylor' or 'fisher', got {criterion!r}.")
    needs_grads = criterion in ("taylor", "fisher")
    if (grads is None) == needs_grads:
        raise ValueError(
            "grads must be given with criterion='taylor' (the gradients of the loss with respect "
            "to params) or 'fisher' (per-example gradients) and only then; got "
            f"criterion={criterion!r} and grads {'None' if grads is None else 'given'}."
        )
    per_example = criterion == "fisher"
    _check_groups(groups)
    leaves = _leaves_by_path(params)
    grad_leaves = None if grads is None else _leaves_by_path(grads)
    rx = re.compile(exclude) if exclude is not None else None
    out = []
    examples = None
    if per_example:
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in grad_leaves.values()}
        if len(sizes) != 1 or None in sizes or 0 in sizes:
            raise ValueError(
                "grads: criterion='fisher' needs per-example gradients, every leaf with the "
                f"same leading example axis (of at least 1 example); got leading sizes {sizes}."
            )
        (examples,) = sizes
    out = []
    for g in groups:
        # With per-example gradients, one row per example (summed over them at the end).
        total = jnp.zeros((examples, g.size) if per_example else (g.size,), jnp.float32)
        for i, (path, axis) in enumerate(g.members):
            if rx is not None and rx.search(path):
                continue
            if path not in leaves:
                raise ValueError(f"group {g.name!r}: member {path!r} is not a leaf of params.")
            w = jnp.asarray(leaves[path], jnp.float32)
            if grad_leaves is not None:
                want = (examples, *w.shape) if per_example else w.shape
                if path not in grad_leaves or np.shape(grad_leaves[path]) != want:
                    raise ValueError(
                        f"grads: group {g.name!r} needs a gradient for {path!r} of shape "
                        f"{want}; exclude= leaves out members without one (e.g. "
                        "'batch_stats')."
                    )
                w = (w[None] if per_example else w) * jnp.asarray(grad_leaves[path], jnp.float32)
            elif criterion == "l1":
                w = jnp.abs(w)
            else:
                w = jnp.square(w)
            lead = 1 if per_example else 0
            others = tuple(a for a in range(lead, w.ndim) if a != axis + lead)
            per_index = jnp.sum(w, axis=others)
            total = total + jnp.sum(per_index[..., g.positions(i)], axis=-1)
        if criterion == "l2":
            total = jnp.sqrt(total)
        elif criterion == "taylor":
            total = jnp.abs(total)
        elif per_example:
            total = 0.5 * jnp.mean(jnp.square(total), axis=0)
        out.append(total)
    return out


def _keep_count(n: int, sparsity: float) -> int:
    # The project's rule for unstructured masks: round half to even, at least one kept.
    return max(int(np.round(n * (1.0 - sparsity))), 1)


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, NaN first, ties by increasing index."""
    s = np.where(np.isnan(scores), np.inf, scores).astype(np.float64)
    return np.lexsort((np.arange(s.size), -s))


def group_masks(
    scores: Sequence[Any],
    groups: Sequence[Group],
    *,
    sparsity: float,
    scope: str = "group",
) -> list[np.ndarray]:
    """Chooses the channels to keep in every group from their scores.

    With ``scope="group"`` each group keeps its
    ``k = max(round_half_to_even(C * (1 - sparsity)), 1)`` highest-scoring
    channels. With ``scope="global"`` the
    ``max(round_half_to_even(N * (1 - sparsity)), 1)`` highest scores over all
    ``N`` channels of all groups are kept, and any group that would lose every
    channel keeps its best one (so a few more than that may be kept). Ties go
    to the lower index; NaN scores rank highest.

    Args:
      scores: one 1-D score array per group, as :func:`group_scores` returns.
      groups: the groups the scores belong to.
      sparsity: the fraction of channels to remove, in ``[0, 1)``.
      scope: ``"group"`` or ``"global"``.

    Returns:
      One boolean numpy array of shape ``(group.size,)`` per group, ``True`` =
      kept; none is all ``False``.

    Raises:
      ValueError: if ``sparsity`` or ``scope`` is out of range, or the scores do
        not match the groups (count or shapes).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.graph.groups import dependency_groups, group_masks
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((1, 4)), "w2": jnp.ones((4, 1))}
      >>> groups = dependency_groups(f, p, jnp.ones((1, 1)))
      >>> [m.tolist() for m in group_masks([jnp.array([1.0, 4.0, 3.0, 2.0])], groups,
      ...                                  sparsity=0.5)]
      [[False, True, True, False]]
    """
    check_sparsity(sparsity, "sparsity")
    if scope not in ("group", "global"):
        raise ValueError(f"scope must be 'group' or 'global', got {scope!r}.")
    _check_groups(groups)
    if len(scores) != len(groups):
        raise ValueError(f"got {len(scores)} score arrays for {len(groups)} groups.")
    arrays = []
    for s, g in zip(scores, groups, strict=True):
        a = np.asarray(s)
        if a.shape != (g.size,):
            raise ValueError(
                f"scores of group {g.name!r} must have shape ({g.size},), got {a.shape}."
            )
        arrays.append(a)
    sparsity = float(sparsity)
    out = []
    if scope == "group":
        for a in arrays:
            keep = np.zeros(a.size, bool)
            keep[_ranked(a)[: _keep_count(a.size, sparsity)]] = True
            out.append(keep)
        return out
    if not arrays:
        return out
    flat = np.concatenate([a.astype(np.float64) for a in arrays])
    chosen = np.zeros(flat.size, bool)
    chosen[_ranked(flat)[: _keep_count(flat.size, sparsity)]] = True
    start = 0
    for a in arrays:
        keep = chosen[start : start + a.size].copy()
        if not keep.any():
            keep[_ranked(a)[0]] = True
        out.append(keep)
        start += a.size
    return out
