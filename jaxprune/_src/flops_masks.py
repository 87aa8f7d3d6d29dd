"""Pruning-aware FLOP counts: channel masks and weight densities on the jaxpr.

A *channel mask* is a 1-D array ``m`` of shape ``(C,)`` that the function
multiplies onto one axis of an activation (Fisher pruning's masks, placed after
a layer's non-linearity) or of a kernel (unit masks). Feature ``c`` is kept
where ``m[c] = 1``. The count treats the masked features as removed:

* **forwards**, every op that the masked axis reaches computes only the kept
  features, until a contraction (``dot_general``, convolution, reduction)
  consumes the axis, which then sums over the kept features only;
* **backwards**, the op that produced the masked tensor (and every element-wise
  op in between) computes only the features that some consumer still needs,
  as ``find_output_mask`` of Theis et al.'s reference code does. A feature read
  by two consumers is needed unless both drop it.

Each axis of each value carries a symbolic *keep vector*, an AND of atoms: a
mask laid out on the axis (tiled when a reshape flattens it together with other
axes), or an OR of keep vectors (where consumers disagree). The cost of an op is
its dense rule with every masked axis's size replaced by the number of kept
features, ``sum(keep vector)``, written with ``jnp`` on the mask values. It is
therefore a differentiable function of the masks, multilinear when every op
meets each mask on at most one axis, so that ``jax.grad`` gives each feature's
exact marginal cost.

A *weight mask* (unstructured sparsity) scales the cost of every contraction
that reads the masked parameter by its density, ``mean(mask)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

from jaxprune._src import flops_rules, flops_walk
from jaxprune._src.kept_channels import (
    EMPTY,
    Evaluator,
    MaskError,
    keep_any,
    keep_both,
    map_reshape,
    path_name,
)

__all__ = ["MaskError", "path_name", "pruned_rows", "weight_density"]

_ELEMENTWISE = frozenset(
    flops_rules.ONE_FLOP
    + flops_rules.ONE_TRANSCENDENTAL
    + list(flops_rules.EXPANDED)
    + "convert_element_type integer_pow select_n copy copy_p stop_gradient "
    "reduce_precision sharding_constraint optimization_barrier pvary".split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
    "argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_SHAPE_ONLY = frozenset("broadcast_in_dim reshape convert_element_type squeeze copy copy_p".split())
_WEIGHT_PATH = frozenset(
    "convert_element_type reshape transpose copy copy_p squeeze stop_gradient".split()
)
_CONTRACTIONS = frozenset(("dot_general", "conv_general_dilated"))


# ---------------------------------------------------------------------------
# The flat graph.


class Node:
    __slots__ = ("eqn", "name", "ins", "outs", "module", "folded")

    def __init__(self, eqn, ins, outs, module, folded):
        self.eqn = eqn
        self.name = eqn.primitive.name
        self.ins = ins
        self.outs = outs
        self.module = module
        self.folded = folded


class Graph:
    """A jaxpr with its calls (jit, custom_jvp/vjp, remat, ...) inlined."""

    def __init__(self, closed, prefix: str = ""):
        self.nodes: list[Node] = []
        self.shapes: list[tuple[int, ...]] = []
        self.names: dict[Any, str] = {}
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        for v in jaxpr.constvars:
            env[v] = self._new(v)
        self.inputs = []
        for v in jaxpr.invars:
            env[v] = self._new(v)
            self.inputs.append(env[v])
        self._flatten(jaxpr, env, prefix, set(jaxpr.constvars))
        self.outputs = [env.get(v, v) if not isinstance(v, Literal) else v for v in jaxpr.outvars]

    def _new(self, var) -> int:
        self.shapes.append(tuple(getattr(var.aval, "shape", ())))
        return len(self.shapes) - 1

    def _flatten(self, jaxpr, env, prefix, consts):
        for eqn in jaxpr.eqns:
            ins = [v if isinstance(v, Literal) else env[v] for v in eqn.invars]
            module = flops_walk.module_name(prefix, eqn.source_info.name_stack, self.names)
            name = eqn.primitive.name
            param = flops_walk.CALL_PARAMS.get(name)
            if param is not None and param in eqn.params:
                sub = flops_walk.open_jaxpr(eqn.params[param])
                sub_env: dict[Any, Any] = {}
                for v in sub.constvars:
                    sub_env[v] = self._new(v)
                for v, a in zip(sub.invars, ins, strict=False):
                    sub_env[v] = a
                # Lowering folds constants within one function, not across calls.
                self._flatten(sub, sub_env, module, set(sub.constvars))
                for o, so in zip(eqn.outvars, sub.outvars, strict=False):
                    env[o] = so if isinstance(so, Literal) else sub_env[so]
                continue
            folded = name in flops_rules.FOLDABLE and all(
                isinstance(v, Literal) or v in consts for v in eqn.invars
            )
            if folded:
                consts.update(eqn.outvars)
            outs = []
            for o in eqn.outvars:
                env[o] = self._new(o)
                outs.append(env[o])
            self.nodes.append(Node(eqn, ins, outs, module, folded))

    def live_nodes(self) -> list[Node]:
        live = {o for o in self.outputs if not isinstance(o, Literal)}
        keep = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outs) or node.eqn.effects:
                keep.append(node)
                for v in node.ins:
                    if not isinstance(v, Literal):
                        live.add(v)
        keep.reverse()
        return keep


# ---------------------------------------------------------------------------
# Propagation.


class Masked:
    """Forward and backward keep vectors over a :class:`Graph`."""

    def __init__(self, graph: Graph, mask_ids: dict[int, tuple[int, str]]):
        self.g = graph
        self.nodes = graph.live_nodes()
        self.fwd: dict[int, dict[int, frozenset]] = {}
        self.need: dict[int, dict[int, frozenset]] = {}
        self.derived: dict[int, tuple[int, int]] = {}  # value -> (mask index, axis)
        self.broadcast: set[int] = set()
        self.applied: set[int] = set()
        self.mask_apply: dict[
            int, tuple[int, int, int]
        ] = {}  # id(node) -> (data input, mask, axis)
        self.mask_names = {i: name for i, name in mask_ids.values()}
        for vid, (i, name) in mask_ids.items():
            if len(graph.shapes[vid]) != 1:
                raise ValueError(
                    f"channel mask {name} must be 1-D (one entry per feature), "
                    f"got shape {graph.shapes[vid]}."
                )
            self.derived[vid] = (i, 0)
        self._forward()
        unused = [n for i, n in sorted(self.mask_names.items()) if i not in self.applied]
        if unused:
            raise ValueError(
                "channel masks that multiply no activation or kernel: " + ", ".join(unused)
            )
        self._backward()

    def shape(self, v) -> tuple[int, ...]:
        if isinstance(v, Literal):
            return tuple(getattr(v.aval, "shape", ()))
        return self.g.shapes[v]

    def ann(self, v) -> dict[int, frozenset]:
        if isinstance(v, Literal):
            return {}
        return self.fwd.get(v, {})

    def effective(self, v) -> dict[int, frozenset]:
        if isinstance(v, Literal):
            return {}
        f, n = self.fwd.get(v, {}), self.need.get(v, {})
        if not f and not n:
            return {}
        return {a: keep_both(f.get(a), n.get(a)) for a in set(f) | set(n)}

    # -- forward ----------------------------------------------------------

    def _forward(self):
        for node in self.nodes:
            derived = [v for v in node.ins if not isinstance(v, Literal) and v in self.derived]
            if derived:
                self._forward_mask_use(node, derived)
                continue
            outs = self._forward_rule(node)
            for o, a in zip(node.outs, outs, strict=False):
                if a:
                    self.fwd[o] = a
            if node.name == "broadcast_in_dim":
                self.broadcast.add(node.outs[0])

    def _mask_label(self, v) -> str:
        return self.mask_names[self.derived[v][0]]

    def _forward_mask_use(self, node, derived):
        v = derived[0]
        mask, axis = self.derived[v]
        name = node.name
        if name in _SHAPE_ONLY and len(node.ins) == 1:
            out = node.outs[0]
            src, dst = self.shape(v), self.shape(out)
            if name == "broadcast_in_dim":
                dims = node.eqn.params["broadcast_dimensions"]
                if src[axis] != dst[dims[axis]]:
                    raise MaskError(
                        f"channel mask {self._mask_label(v)} is broadcast along its own axis"
                    )
                self.derived[out] = (mask, dims[axis])
            else:
                moved = map_reshape({axis: frozenset([("m", mask, 1, 1)])}, src, dst, name)
                ((new_axis, vec),) = moved.items()
                if vec != frozenset([("m", mask, 1, 1)]):
                    raise MaskError(f"channel mask {self._mask_label(v)} is reshaped by {name}")
                self.derived[out] = (mask, new_axis)
            return
        if name == "mul" and len(derived) == 1 and len(node.ins) == 2:
            data = 1 if node.ins[0] is v else 0
            other = node.ins[data]
            if self.shape(other) != self.shape(node.outs[0]):
                raise MaskError(
                    f"channel mask {self._mask_label(v)} must multiply a full tensor, "
                    f"got shape {self.shape(other)}"
                )
            self.applied.add(mask)
            self.mask_apply[id(node)] = (data, mask, axis)
            out = dict(self.ann(other))
            out[axis] = keep_both(out.get(axis), frozenset([("m", mask, 1, 1)]))
            self.fwd[node.outs[0]] = out
            return
        labels = ", ".join(sorted({self._mask_label(d) for d in derived}))
        raise MaskError(
            f"channel mask {labels} is used by {name!r}; masks may only be broadcast and "
            "multiplied onto an activation or a kernel"
        )

    def _unsupported(self, node, detail=""):
        raise MaskError(
            f"masked features reach {node.name!r} in module {node.module or '<top>'!r}, "
            f"which cannot carry them{detail}"
        )

    def _forward_rule(self, node) -> list[dict]:
        name, p = node.name, node.eqn.params
        ins = [self.ann(v) for v in node.ins]
        if not any(ins):
            return [{} for _ in node.outs]
        if name in _ELEMENTWISE:
            return [self._forward_elementwise(node, ins)]
        if name == "broadcast_in_dim":
            src, dst = self.shape(node.ins[0]), self.shape(node.outs[0])
            dims = p["broadcast_dimensions"]
            return [{dims[a]: v for a, v in ins[0].items() if src[a] == dst[dims[a]]}]
        if name in ("reshape", "squeeze"):
            return [map_reshape(ins[0], self.shape(node.ins[0]), self.shape(node.outs[0]), name)]
        if name == "transpose":
            perm = p["permutation"]
            return [{j: ins[0][perm[j]] for j in range(len(perm)) if perm[j] in ins[0]}]
        if name in _REDUCTIONS:
            axes = set(p["axes"])
            keep = [a for a in range(len(self.shape(node.ins[0]))) if a not in axes]
            return [{j: ins[0][a] for j, a in enumerate(keep) if a in ins[0]}]
        if name in _CUMULATIVE:
            if p["axis"] in ins[0]:
                self._unsupported(node, " along the masked axis")
            return [dict(ins[0])]
        if name == "dot_general":
            return [self._forward_dot(node, ins)]
        if name == "conv_general_dilated":
            return [self._forward_conv(node, ins)]
        if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
            for a in ins[0]:
                if (
                    p["window_dimensions"][a] != 1
                    or p["window_strides"][a] != 1
                    or tuple(p["padding"][a]) != (0, 0)
                ):
                    self._unsupported(node, " along the masked axis")
            return [dict(ins[0])]
        if name in ("slice", "pad", "rev", "concatenate"):
            return [self._forward_untouched(node, ins)]
        self._unsupported(node)
        return []

    def _forward_elementwise(self, node, ins):
        rank = len(self.shape(node.outs[0]))
        ops = [(v, a) for v, a in zip(node.ins, ins, strict=False) if len(self.shape(v)) == rank]
        # Per-feature vectors broadcast onto the tensor (biases, scales,
        # statistics) can be sliced like the tensor, so only the operands that
        # carry data of their own decide which features the result has.
        out_shape = self.shape(node.outs[0])
        data = [
            (v, a)
            for v, a in ops
            if not isinstance(v, Literal)
            and v not in self.broadcast
            and self.shape(v) == out_shape  # size-1 axes broadcast implicitly
        ] or ops
        axes = set().union(*(a.keys() for _, a in ops))
        out = {}
        for axis in axes:
            if node.name in ("mul", "and"):
                vec = EMPTY
                for _, a in data:
                    vec = keep_both(vec, a.get(axis))
            else:
                vec = keep_any([a.get(axis) for _, a in data])
            if vec:
                out[axis] = vec
        return out

    def _forward_dot(self, node, ins):
        (lc, rc), (lb, rb) = node.eqn.params["dimension_numbers"]
        lr, rr = len(self.shape(node.ins[0])), len(self.shape(node.ins[1]))
        lfree = [d for d in range(lr) if d not in lc and d not in lb]
        rfree = [d for d in range(rr) if d not in rc and d not in rb]
        out = {}
        for j, (a, b) in enumerate(zip(lb, rb, strict=False)):
            vec = keep_both(ins[0].get(a), ins[1].get(b))
            if vec:
                out[j] = vec
        k = len(lb)
        for d in lfree:
            if d in ins[0]:
                out[k] = ins[0][d]
            k += 1
        for d in rfree:
            if d in ins[1]:
                out[k] = ins[1][d]
            k += 1
        return out

    def _conv_specs(self, node):
        p = node.eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        return p, lhs_spec, rhs_spec, out_spec

    def _forward_conv(self, node, ins):
        p, lhs_spec, rhs_spec, out_spec = self._conv_specs(node)
        if any(a in ins[0] for a in lhs_spec[2:]) or any(a in ins[1] for a in rhs_spec[2:]):
            self._unsupported(node, " on a spatial axis")
        if p["batch_group_count"] != 1:
            self._unsupported(node, " (batch_group_count > 1)")
        out = {}
        if lhs_spec[0] in ins[0]:
            out[out_spec[0]] = ins[0][lhs_spec[0]]
        feat = ins[1].get(rhs_spec[0], EMPTY)
        groups = p["feature_group_count"]
        if groups > 1 and lhs_spec[1] in ins[0]:
            if not self._depthwise(node):
                self._unsupported(node, " (grouped convolution with 1 < groups < channels)")
            feat = keep_both(feat, ins[0][lhs_spec[1]])
        if feat:
            out[out_spec[1]] = feat
        return out

    def _depthwise(self, node) -> bool:
        p, lhs_spec, rhs_spec, out_spec = self._conv_specs(node)
        cin = self.shape(node.ins[0])[lhs_spec[1]]
        cout = self.shape(node.outs[0])[out_spec[1]]
        return p["feature_group_count"] == cin == cout

    def _forward_untouched(self, node, ins):
        p = node.eqn.params
        name = node.name
        shape = self.shape(node.outs[0])
        touched = set()
        if name == "slice":
            for a, (s, e) in enumerate(zip(p["start_indices"], p["limit_indices"], strict=False)):
                stride = p["strides"][a] if p["strides"] else 1
                if s != 0 or e != self.shape(node.ins[0])[a] or stride != 1:
                    touched.add(a)
        elif name == "pad":
            touched = {a for a, cfg in enumerate(p["padding_config"]) if tuple(cfg) != (0, 0, 0)}
        elif name == "rev":
            touched = set(p["dimensions"])
        else:
            touched = {p["dimension"]}
        out = {}
        for axis in set().union(*(a.keys() for a in ins)):
            if axis in touched:
                self._unsupported(node, " along the masked axis")
            if name == "concatenate":
                vec = keep_any([a.get(axis) for a in ins])
            else:
                vec = ins[0].get(axis, EMPTY)
            if vec and axis < len(shape):
                out[axis] = vec
        return out

    # -- backward ---------------------------------------------------------

    def _backward(self):
        requests: dict[int, list[dict]] = {}
        outputs = {o for o in self.g.outputs if not isinstance(o, Literal)}
        for node in reversed(self.nodes):
            needs = []
            for o in node.outs:
                reqs = requests.pop(o, [])
                if o in outputs or not reqs:
                    need = {}
                else:
                    axes = set.intersection(*(set(r) for r in reqs))
                    need = {a: keep_any([r[a] for r in reqs]) for a in axes}
                    need = {a: v for a, v in need.items() if v}
                if need:
                    self.need[o] = need
                needs.append(need)
            for v, req in zip(node.ins, self._backward_rule(node, needs), strict=False):
                if not isinstance(v, Literal):
                    requests.setdefault(v, []).append(req)

    def _backward_rule(self, node, needs) -> list[dict]:
        name, p = node.name, node.eqn.params
        n_in = len(node.ins)
        none = [{} for _ in range(n_in)]
        apply = self.mask_apply.get(id(node))
        if apply is not None:
            data, mask, axis = apply
            req = dict(needs[0])
            req[axis] = keep_both(req.get(axis), frozenset([("m", mask, 1, 1)]))
            out = [{} for _ in range(n_in)]
            out[data] = req
            return out
        need = needs[0] if needs else {}
        if name in _ELEMENTWISE:
            out_shape = self.shape(node.outs[0])
            reqs = []
            for v in node.ins:
                shape = self.shape(v)
                if len(shape) != len(out_shape):
                    reqs.append({})
                else:  # an operand broadcast along an axis needs it whole
                    reqs.append({a: x for a, x in need.items() if shape[a] == out_shape[a]})
            return reqs
        if not need and name not in _CONTRACTIONS:
            return none
        if name == "broadcast_in_dim":
            src, dst = self.shape(node.ins[0]), self.shape(node.outs[0])
            dims = p["broadcast_dimensions"]
            return [
                {
                    a: need[dims[a]]
                    for a in range(len(src))
                    if dims[a] in need and src[a] == dst[dims[a]]
                }
            ] + none[1:]
        if name in ("reshape", "squeeze"):
            try:
                req = map_reshape(need, self.shape(node.outs[0]), self.shape(node.ins[0]), name)
            except MaskError:
                req = {}
            return [req] + none[1:]
        if name == "transpose":
            perm = p["permutation"]
            return [{perm[j]: v for j, v in need.items()}]
        if name in _REDUCTIONS:
            axes = set(p["axes"])
            keep = [a for a in range(len(self.shape(node.ins[0]))) if a not in axes]
            return [{keep[j]: v for j, v in need.items()}] + none[1:]
        if name in _CUMULATIVE:
            return [{a: v for a, v in need.items() if a != p["axis"]}]
        if name == "dot_general":
            return self._backward_dot(node, need)
        if name == "conv_general_dilated":
            return self._backward_conv(node, need)
        return none

    def _backward_dot(self, node, need):
        (lc, rc), (lb, rb) = node.eqn.params["dimension_numbers"]
        lr, rr = len(self.shape(node.ins[0])), len(self.shape(node.ins[1]))
        lfree = [d for d in range(lr) if d not in lc and d not in lb]
        rfree = [d for d in range(rr) if d not in rc and d not in rb]
        f0, f1 = self.ann(node.ins[0]), self.ann(node.ins[1])
        r0: dict[int, frozenset] = {}
        r1: dict[int, frozenset] = {}
        for j, (a, b) in enumerate(zip(lb, rb, strict=False)):
            if j in need:
                r0[a] = r1[b] = need[j]
        k = len(lb)
        for d in lfree:
            if k in need:
                r0[d] = need[k]
            k += 1
        for d in rfree:
            if k in need:
                r1[d] = need[k]
            k += 1
        # A contracted feature is only needed where the other side keeps it.
        for a, b in zip(lc, rc, strict=False):
            if b in f1:
                r0[a] = f1[b]
            if a in f0:
                r1[b] = f0[a]
        return [r0, r1]

    def _backward_conv(self, node, need):
        p, lhs_spec, rhs_spec, out_spec = self._conv_specs(node)
        f0, f1 = self.ann(node.ins[0]), self.ann(node.ins[1])
        r0: dict[int, frozenset] = {}
        r1: dict[int, frozenset] = {}
        if out_spec[0] in need and p["batch_group_count"] == 1:
            r0[lhs_spec[0]] = need[out_spec[0]]
        if out_spec[1] in need:
            r1[rhs_spec[0]] = need[out_spec[1]]
        if p["feature_group_count"] == 1:
            if rhs_spec[1] in f1:
                r0[lhs_spec[1]] = f1[rhs_spec[1]]
            if lhs_spec[1] in f0:
                r1[rhs_spec[1]] = f0[lhs_spec[1]]
        elif self._depthwise(node) and out_spec[1] in need:
            r0[lhs_spec[1]] = need[out_spec[1]]
        return [r0, r1]


# ---------------------------------------------------------------------------
# Counting.


class MaskedSizes(flops_rules.Sizes):
    """Sizes with every masked axis replaced by its number of kept features."""

    __slots__ = ("node", "state", "ev")

    def __init__(self, eqn, node, state: Masked, ev: Evaluator):
        super().__init__(eqn)
        self.node, self.state, self.ev = node, state, ev

    def _sizes(self, v):
        shape = self.state.shape(v)
        eff = self.state.effective(v)
        if not eff:
            return shape
        return [self.ev.count(eff.get(a), n) if a in eff else n for a, n in enumerate(shape)]

    def inp(self, i):
        return self._sizes(self.node.ins[i])

    def out(self, i=0):
        return self._sizes(self.node.outs[i])

    def paired(self, i, axis_i, j, axis_j):
        a = self.state.effective(self.node.ins[i]).get(axis_i)
        b = self.state.effective(self.node.ins[j]).get(axis_j)
        return self.ev.count(keep_both(a, b), self.state.shape(self.node.ins[i])[axis_i])


def pruned_rows(
    closed,
    rules,
    walker: flops_walk.Walker,
    masks: dict[int, tuple[jax.Array, str]],
    densities: dict[int, tuple[Any, str]],
    unknown: list | None = None,
    prefix: str = "",
) -> dict[tuple[str, str], Any]:
    """Pruned cost per (module, primitive), as jnp scalars of the masks.

    Args:
      closed: the traced ``ClosedJaxpr``.
      rules: the cost rules of the convention.
      walker: a dense walker, for control flow the masks may not enter.
      masks: input position -> (1-D channel mask value, its name).
      densities: input position -> (weight density, its name).
      unknown: a list that receives the :class:`flops_walk.UnknownEquation` of
        every equation whose cost is unknown (a loop with a dynamic trip count,
        an opaque call, a primitive without a rule).
    """
    graph = Graph(closed, prefix)
    mask_ids = {}
    values = []
    for k, (pos, (value, name)) in enumerate(sorted(masks.items())):
        mask_ids[graph.inputs[pos]] = (k, name)
        values.append(jnp.asarray(value, jnp.float32))
    state = Masked(graph, mask_ids)
    ev = Evaluator(values)
    density_of = {graph.inputs[pos]: d for pos, d in densities.items()}
    producer = {}
    for node in state.nodes:
        for o in node.outs:
            producer[o] = node
    matched = set()

    def density_entry(v):
        while not isinstance(v, Literal):
            if v in density_of:
                matched.add(v)
                return density_of[v]
            node = producer.get(v)
            if node is None or node.name not in _WEIGHT_PATH:
                return None
            v = node.ins[0]
        return None

    def density(v):
        entry = density_entry(v)
        return None if entry is None else entry[0]

    rows: dict[tuple[str, str], Any] = {}
    for node in state.nodes:
        if node.folded or id(node) in state.mask_apply:
            continue
        if node.outs and node.outs[0] in state.derived:
            continue  # broadcasting or converting a mask is bookkeeping
        rule = rules.get(node.name)
        if node.name == "scan" and not any(v in state.derived for v in node.ins):
            # A masked weight that enters a scan (stacked along the scanned axis, or a
            # constant of the body): the body is counted with the weight's density, times the
            # scan's length. Every iteration's dense cost is the same and a contraction's cost
            # is linear in the density, so the mean density over the stacked slices is exact.
            inner = {}
            for pos, v in enumerate(node.ins):
                entry = density_entry(v)
                if entry is not None:
                    inner[pos] = entry
            if inner:
                body = node.eqn.params["jaxpr"]
                got = pruned_rows(body, rules, walker, {}, inner, unknown, node.module)
                for key, f in got.items():
                    rows[key] = rows.get(key, 0) + f * node.eqn.params["length"]
                continue
        if rule is None:
            tally = flops_walk.Tally()
            outs = [True] * len(node.outs)
            walker.eqn(node.eqn, outs, tally, 1, node.module)
            for key, (f, _) in tally.rows.items():
                rows[key] = rows.get(key, 0) + f
            if unknown is not None:
                unknown.extend(tally.unknown_eqns)
            continue
        f, _ = rule(node.eqn, MaskedSizes(node.eqn, node, state, ev))
        if node.name in _CONTRACTIONS and density_of:
            for v in node.ins[:2]:
                d = density(v)
                if d is not None:
                    f = f * d
        key = (node.module, node.name)
        rows[key] = rows.get(key, 0) + f
    unmatched = [name for v, (_, name) in density_of.items() if v not in matched]
    if unmatched:
        raise ValueError(
            "weight masks whose parameter feeds no dot_general or convolution: "
            + ", ".join(sorted(unmatched))
        )
    return rows


def weight_density(mask) -> Any:
    """Fraction of kept weights, as a float32 scalar (differentiable if ``mask`` is)."""
    return jnp.mean(jnp.asarray(mask).astype(jnp.float32))
