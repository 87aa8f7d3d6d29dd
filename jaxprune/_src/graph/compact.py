"""Compaction: remove pruned channels from every member of their group.

:func:`compact` slices the parameters and returns a function that computes on
the smaller arrays. That function does not call ``fn`` again: model code often
reads layer widths from its own attributes (``nn.Dense(features=64)``) and would
reject smaller parameters. Instead the program that ``jax.make_jaxpr`` traced
from ``fn`` is evaluated again, equation by equation, on the sliced arrays; the
few equations whose parameters carry a shape are rewritten to the new sizes
(``broadcast_in_dim``'s ``shape``, ``reshape``'s ``new_sizes``, ``slice``'s
limits, ``split``'s sizes, a depthwise convolution's ``feature_group_count``).
The re-evaluation is wrapped in ``jax.jit``. Every constant the trace baked in
(a ``1 / C`` of a mean over other axes, an epsilon) stays as traced, so the
small function computes exactly what the dense function computes with the
pruned channels' weights zeroed. It is an ordinary JAX function: ``jax.jit``,
``jax.grad`` and ``jax.vmap`` apply. Called with
inputs of other shapes (another batch size), it traces ``fn`` again with the
dense parameter shapes and the new inputs, once per input shape.

Custom derivative rules (``custom_jvp``/``custom_vjp``) and ``remat`` inside
``fn`` are evaluated through their primal computation: gradients of the small
function come from differentiating that computation.

A ``scan`` (stacked layers) is run again with :func:`jax.lax.scan` (same
``length``, ``reverse`` and ``unroll``) over a body that evaluates the traced
body's equations on the sliced per-iteration arrays, with the same shape
rewriting; nested scans recurse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxprune._src.base import path_str
from jaxprune._src.graph import analysis as _analysis
from jaxprune._src.graph.groups import Group, analyze


def _members_text(group: Group) -> str:
    return ", ".join(f"{p}[axis {a}]" for p, a in group.members)


def check_keep(keep: Any, groups: Sequence[Group]) -> list[np.ndarray]:
    """Validates ``keep`` against ``groups``; returns one bool vector per group."""
    if isinstance(keep, Mapping):
        names = {g.name for g in groups}
        unknown = sorted(str(k) for k in keep if k not in names)
        if unknown:
            raise ValueError(
                f"keep names groups that do not exist: {', '.join(unknown)}; the groups are: "
                + ", ".join(g.name for g in groups)
            )
        entries = [keep.get(g.name) for g in groups]
    elif isinstance(keep, Sequence) and not isinstance(keep, str):
        if len(keep) != len(groups):
            raise ValueError(
                f"keep has {len(keep)} entries but there are {len(groups)} groups "
                f"({', '.join(g.name for g in groups)}); pass one bool vector per group, "
                "or a mapping from group name to vector."
            )
        entries = list(keep)
    else:
        raise TypeError(
            "keep must be a sequence of bool vectors (one per group, in the order "
            f"dependency_groups returns) or a mapping from group name; got {type(keep).__name__}."
        )
    out = []
    for g, k in zip(groups, entries, strict=True):
        if k is None:
            out.append(np.ones(g.size, bool))
            continue
        if isinstance(k, jax.core.Tracer):
            raise TypeError(f"keep for group {g.name!r} is traced; compaction needs its values.")
        a = np.asarray(k)
        if a.dtype != np.bool_:
            raise TypeError(
                f"keep for group {g.name!r} must be a bool vector (True = kept), "
                f"got dtype {a.dtype}."
            )
        if a.shape != (g.size,):
            raise ValueError(
                f"keep for group {g.name!r} must have shape ({g.size},), got {a.shape}; "
                f"members: {_members_text(g)}."
            )
        if not a.any():
            raise ValueError(
                f"keep would remove every channel of group {g.name!r}; keep at least one. "
                f"Members: {_members_text(g)}."
            )
        out.append(a)
    return out


class _Plan:
    """Where every axis of a traced program stands after compaction."""

    def __init__(self, an: _analysis.Analysis, roots: list[Any], keeps: list[np.ndarray]):
        self.an = an
        self.prog = an.prog
        self.keep_of = dict(zip(roots, keeps, strict=True))
        self._masks: dict[Any, np.ndarray | None] = {}
        self._shapes: dict[int, tuple[int, ...]] = {}
        # One compiled computation instead of one dispatch per equation.
        self.run = jax.jit(self.evaluate)

    def mask(self, root) -> np.ndarray | None:
        """Kept indices of a class as a bool vector, ``None`` when all are kept."""
        if root in self._masks:
            return self._masks[root]
        self._masks[root] = None  # guards against a cycle of composites
        out = None
        if root in self.keep_of:
            k = self.keep_of[root]
            out = None if k.all() else k
        elif root in self.an.comp:
            m = np.ones(self.an.size(root), bool)
            for part, layout in self.an.comp[root]:
                pm = self.mask(part)
                if pm is not None:
                    pos = _analysis.positions(layout, self.an.size(part))
                    m[pos[~pm].ravel()] = False
            out = None if m.all() else m
        self._masks[root] = out
        return out

    def axis_mask(self, v, axis):
        return self.mask(self.an.find((v, axis)))

    def shape(self, v) -> tuple[int, ...]:
        if isinstance(v, Literal):
            return tuple(getattr(v.aval, "shape", ()))
        out = self._shapes.get(v)
        if out is None:
            old = self.prog.shapes[v]
            out = tuple(
                n if (m := self.axis_mask(v, a)) is None else int(m.sum())
                for a, n in enumerate(old)
            )
            self._shapes[v] = out
        return out

    def slice_input(self, i: int, leaf):
        v = self.prog.inputs[i]
        for a in range(len(self.prog.shapes[v])):
            m = self.axis_mask(v, a)
            if m is not None:
                take = np.take if isinstance(leaf, np.ndarray) else jnp.take
                leaf = take(leaf, np.flatnonzero(m), axis=a)
        return leaf

    def _rewrite(self, node) -> dict:
        name, p = node.name, dict(node.eqn.params)
        old = self.prog.shapes
        if name == "broadcast_in_dim":
            p["shape"] = self.shape(node.outs[0])
        elif name == "reshape":
            p["new_sizes"] = self.shape(node.outs[0])
        elif name == "conv_general_dilated" and p["feature_group_count"] > 1:
            lhs_spec = p["dimension_numbers"][0]
            p["feature_group_count"] = self.shape(node.ins[0])[lhs_spec[1]]
        elif name == "slice":
            src = node.ins[0]
            p["limit_indices"] = tuple(
                new if new != n else lim
                for lim, n, new in zip(p["limit_indices"], old[src], self.shape(src), strict=True)
            )
        elif name == "dynamic_slice":
            src = node.ins[0]
            p["slice_sizes"] = tuple(
                new if new != n else s
                for s, n, new in zip(p["slice_sizes"], old[src], self.shape(src), strict=True)
            )
        elif name == "gather":
            src = node.ins[0]
            p["slice_sizes"] = tuple(
                new if new != n else s
                for s, n, new in zip(p["slice_sizes"], old[src], self.shape(src), strict=True)
            )
        elif name == "split":
            p["sizes"] = tuple(self.shape(o)[p["axis"]] for o in node.outs)
        return p

    def evaluate(self, flat_inputs: Sequence[Any]) -> list[Any]:
        prog = self.prog
        env: dict[int, Any] = dict(prog.consts)
        env.update(zip(prog.inputs, flat_inputs, strict=True))
        self._run(prog.nodes, env)
        return [v.val if isinstance(v, Literal) else env[v] for v in prog.outputs]

    def _run(self, nodes, env: dict[int, Any]) -> None:
        """Evaluates ``nodes`` in order, reading operands from and writing results to ``env``."""
        prog = self.prog
        for node in nodes:
            vals = [v.val if isinstance(v, Literal) else env[v] for v in node.ins]
            if node.body is not None:
                res = self._scan(node, vals)
            else:
                changed = any(
                    self.shape(v) != prog.shapes[v]
                    for v in list(node.ins) + list(node.outs)
                    if not isinstance(v, Literal)
                )
                params = self._rewrite(node) if changed else node.eqn.params
                res = node.eqn.primitive.bind(*vals, **params)
                if not node.eqn.primitive.multiple_results:
                    res = [res]
            for o, r in zip(node.outs, res, strict=True):
                if r is None:
                    continue
                if tuple(r.shape) != self.shape(o):
                    raise RuntimeError(
                        f"compaction: {node.name} produced shape {tuple(r.shape)}, "
                        f"expected {self.shape(o)}."
                    )
                env[o] = r

    def _scan(self, node, vals: list[Any]) -> list[Any]:
        """Runs a scan equation on (possibly sliced) operands with :func:`jax.lax.scan`."""
        p = node.eqn.params
        body = node.body
        nc, ncar = p["num_consts"], p["num_carry"]
        consts, init, xs = vals[:nc], vals[nc : nc + ncar], vals[nc + ncar :]

        def step(carry, x):
            # The body reads only its own inputs and the program's constants.
            env: dict[int, Any] = dict(self.prog.consts)
            env.update(zip(body.ins, [*consts, *carry, *x], strict=True))
            self._run(body.nodes, env)
            outs = [
                jnp.asarray(v.val, v.aval.dtype) if isinstance(v, Literal) else env[v]
                for v in body.outs
                if v is not None
            ]
            return outs[:ncar], outs[ncar:]

        carry, ys = jax.lax.scan(
            step, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
        )
        # Results that nothing reads (body.outs is None there) were not computed.
        ys = iter(ys)
        return [*carry, *(None if v is None else next(ys) for v in body.outs[ncar:])]


def _avals(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def compact(
    fn: Callable[..., Any], params: Any, keep: Any, *example_args: Any
) -> tuple[Any, Callable[..., Any]]:
    """Removes the pruned channels of every group: a smaller model with the same outputs.

    Every member of every group (see :func:`dependency_groups`) is sliced along
    its axis to the kept channels, and the returned function evaluates the
    program traced from ``fn`` on the sliced arrays (the module docstring says
    how). ``small_fn(small_params, *args)`` equals ``fn`` applied to ``params``
    with the pruned channels' entries zeroed in every member (see
    :func:`group_weight_masks`), up to float rounding.

    Args:
      fn: the function, called as ``fn(params, *example_args)``.
      params: every variable ``fn`` reads (for linen, ``{"params": ...,
        "batch_stats": ...}``).
      keep: one bool vector per group, ``True`` = kept: a sequence in the order
        :func:`dependency_groups` returns, or a mapping from group name to
        vector (groups it leaves out keep every channel).
      *example_args: example inputs, as for :func:`dependency_groups`.

    Returns:
      ``(small_params, small_fn)``: the sliced parameters (same tree structure)
      and a function ``small_fn(small_params, *args)``.

    Raises:
      ValueError: if ``keep`` has the wrong number of vectors, names a group
        that does not exist, has a vector of the wrong length, or would empty a
        group; the message names the group and its leaf paths.
      TypeError: if a ``keep`` vector is not boolean or is traced.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from jaxprune._src.graph.compact import compact
      >>> def mlp(p, x):
      ...     return jnp.maximum(x @ p["w1"] + p["b1"][None, :], 0.0) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 8)), "b1": jnp.zeros(8), "w2": jnp.ones((8, 2))}
      >>> x = jnp.ones((4, 3))
      >>> keep = [np.arange(8) < 5]
      >>> small, small_fn = compact(mlp, p, keep, x)
      >>> small["w1"].shape, small["w2"].shape
      ((3, 5), (5, 2))
      >>> small_fn(small, x).tolist()[0]
      [15.0, 15.0]
    """
    an, groups, roots = analyze(fn, params, example_args)
    keeps = check_keep(keep, groups)
    by_name = dict(zip((g.name for g in groups), keeps, strict=True))
    plan = _Plan(an, roots, keeps)
    flat_params, treedef = jax.tree.flatten(params)
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    small_leaves = [plan.slice_input(i, leaf) for i, leaf in enumerate(flat_params)]
    small_params = jax.tree.unflatten(treedef, small_leaves)
    small_shapes = [tuple(np.shape(x)) for x in small_leaves]
    dense_avals = _avals(params)
    plans = {_key(example_args): plan}
    signature = [(g.name, g.size) for g in groups]

    def plan_for(args):
        key = _key(args)
        found = plans.get(key)
        if found is None:
            an2, groups2, roots2 = analyze(fn, dense_avals, _avals(args))
            if [(g.name, g.size) for g in groups2] != signature:
                raise ValueError(
                    "small_fn was called with inputs whose shapes change the dependency "
                    "groups of fn; compact again with such inputs as example_args."
                )
            found = _Plan(an2, roots2, [by_name[g.name] for g in groups2])
            plans[key] = found
        return found

    def small_fn(small_params, *args):
        leaves, tdef = jax.tree.flatten(small_params)
        if tdef != treedef:
            raise ValueError(
                "small_params must have the tree structure of the params given to compact."
            )
        for path, leaf, want in zip(paths, leaves, small_shapes, strict=True):
            if tuple(np.shape(leaf)) != want:
                raise ValueError(
                    f"small_params leaf {path!r} has shape {tuple(np.shape(leaf))}, "
                    f"expected {want} (the compacted shape)."
                )
        p = plan_for(args)
        outs = p.run(leaves + jax.tree.leaves(args))
        return jax.tree.unflatten(p.prog.out_tree, outs)

    return small_params, small_fn


def _key(args) -> Any:
    leaves, tdef = jax.tree.flatten(args)
    return (tdef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves))


def group_weight_masks(params: Any, groups: Sequence[Group], keep: Any) -> Any:
    """Boolean masks that zero the pruned channels of every group in every member.

    Multiplying ``params`` by these masks gives the *masked model*: the dense
    model whose outputs :func:`compact`'s small model reproduces. The masks can
    also be passed to :func:`jaxprune.count_flops` as ``weight_masks``.

    Args:
      params: the parameters the groups were found on.
      groups: the result of :func:`dependency_groups`.
      keep: as for :func:`compact`.

    Returns:
      A pytree like ``params``: a bool array of the leaf's shape for every leaf
      that is a member of some group, a scalar ``True`` for the others.

    Raises:
      ValueError: as :func:`compact` does for bad ``keep``, or if a member is
        not a leaf of ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from jaxprune._src.graph.groups import dependency_groups
      >>> from jaxprune._src.graph.compact import group_weight_masks
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((1, 3)), "w2": jnp.ones((3, 1))}
      >>> groups = dependency_groups(f, p, jnp.ones((1, 1)))
      >>> m = group_weight_masks(p, groups, [np.array([True, False, True])])
      >>> m["w1"].tolist(), m["w2"].tolist()
      ([[True, False, True]], [[True], [False], [True]])
    """
    keeps = check_keep(keep, groups)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    index = {path_str(p): i for i, (p, _) in enumerate(flat)}
    masks: list[Any] = [True] * len(flat)
    for g, k in zip(groups, keeps, strict=True):
        for j, (path, axis) in enumerate(g.members):
            if path not in index:
                raise ValueError(f"group {g.name!r}: member {path!r} is not a leaf of params.")
            i = index[path]
            shape = np.shape(flat[i][1])
            vec = np.ones(shape[axis], bool)
            vec[g.positions(j)[~k].ravel()] = False
            m = masks[i] if masks[i] is not True else np.ones(shape, bool)
            view = [1] * len(shape)
            view[axis] = shape[axis]
            masks[i] = m & vec.reshape(view)
    return jax.tree.unflatten(treedef, masks)
