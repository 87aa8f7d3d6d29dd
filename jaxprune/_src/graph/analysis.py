"""Channel index spaces of a traced program: which axes must be pruned together.

Every axis of every value of a :class:`~jaxprune._src.graph.trace.Program` is a
node of a union-find. Each equation ties the axes that index the same features
(an element-wise op ties its operands' axes to its result's; a contraction ties
the two contracted axes; a convolution ties its kernel's output-feature axis to
its result's feature axis, ...). A *composite* axis is assembled from other
axes at known positions: a concatenation along it, or a reshape that flattens
several axes into it (or splits it into several). Axes whose features cannot be
removed without changing the result of the kept ones are *blocked*, each with a
reason: axes of the model's inputs and outputs, of captured constants, axes that
a reduction sums or a softmax normalises over, window axes of convolutions and
pools, slices, gathers, and every axis of an equation the analysis does not
follow.

A ``scan`` (stacked layers) is followed into its body: the body's values are
tied to the outer ones, so every iteration keeps the same channels. A carry is
one index space with the initial value, the body's carry input and output, and
the final carry; a per-iteration slice of a stacked operand has that operand's
axes less the leading one, which the loop iterates over and which is blocked
(layers are not channels).

A *layout* says where channel ``c`` of a class sits inside an axis of another
class: ``(offset, stride, loops)`` gives the positions
``offset + c * stride + sum_k o_k * step_k`` for ``o_k < count_k`` over
``loops = ((count_k, step_k), ...)``. Layouts compose, so a channel of a
concatenation that a later reshape flattens still has exact positions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from jax.extend.core import Literal

from jaxprune._src import flops_rules
from jaxprune._src.graph.trace import Program, walk
from jaxprune._src.kept_channels import reshape_groups

Layout = tuple[int, int, tuple[tuple[int, int], ...]]
IDENTITY: Layout = (0, 1, ())

ELEMENTWISE = frozenset(
    flops_rules.ONE_FLOP
    + flops_rules.ONE_TRANSCENDENTAL
    + list(flops_rules.EXPANDED)
    + "convert_element_type integer_pow select_n copy copy_p stop_gradient "
    "sharding_constraint pvary nextafter logistic square".split()
)
REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
    "argmax argmin".split()
)
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
POOLS = frozenset("reduce_window_sum reduce_window_max reduce_window_min".split())
# Ops through which a parameter is still "a weight" (a contraction with it
# multiplies pruned features by zeroed weights).
WEIGHT_PATH = frozenset(
    "convert_element_type reshape transpose copy copy_p squeeze broadcast_in_dim".split()
)

MODEL_OUTPUT = "reaches the model output"
CONSTANT = "a constant captured by the function reads it"
TWO_ACTIVATIONS = (
    "contracted between two activations by {name}; only a contraction with a weight keeps a "
    "pruned channel's value out of the result"
)
LAYER_AXIS = (
    "the axis a scan iterates over (stacked layers or time steps), which is not a channel axis"
)


def compose(inner: Layout, outer: Layout) -> Layout:
    """Layout of a channel in ``K2`` given its layout in ``K1`` and ``K1``'s in ``K2``."""
    off1, s1, loops1 = inner
    off2, s2, loops2 = outer
    return (off2 + off1 * s2, s1 * s2, tuple((n, t * s2) for n, t in loops1) + loops2)


def positions(layout: Layout, size: int) -> np.ndarray:
    """Positions of every channel: an int array of shape ``(size, m)``."""
    off, stride, loops = layout
    pos = off + stride * np.arange(size, dtype=np.int64)[:, None]
    extra = np.zeros((1,), np.int64)
    for count, step in loops:
        extra = (extra[:, None] + step * np.arange(count, dtype=np.int64)[None, :]).reshape(-1)
    return pos + extra[None, :]


def _part_layout(dims: list[int], j: int) -> Layout:
    """Layout of axis ``j`` of ``dims`` inside their row-major flattening."""
    before, after = math.prod(dims[:j]), math.prod(dims[j + 1 :])
    loops = tuple((n, t) for n, t in ((before, dims[j] * after), (after, 1)) if n > 1)
    return (0, after, loops)


class Analysis:
    """The union-find over axes of ``prog`` with composites and blocks resolved.

    Args:
      prog: the traced program.
      n_params: how many leading inputs are parameter leaves (the rest are the
        example arguments).
      arg_names: a name for every input leaf (a leaf path for parameters).
    """

    def __init__(self, prog: Program, n_params: int, arg_names: list[str]):
        self.prog = prog
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        self.blocks: list[tuple[tuple[int, int], str]] = []
        self.composites: list[tuple[tuple[int, int], list[tuple[tuple[int, int], Layout]]]] = []
        self.params = {v: i for i, v in enumerate(prog.inputs[:n_params])}
        self.produced: set[tuple[int, int]] = set()
        self.producer = {o: node for node in walk(prog.nodes) for o in node.outs}
        # A loop body's input that is a const or a per-iteration slice of an outer
        # operand: body value -> (outer value, how many leading axes the slice drops).
        self.alias: dict[int, tuple[Any, int]] = {}
        for node in walk(prog.nodes):
            if node.name == "scan":
                self._scan_alias(node)
        self._weighty: dict[int, bool] = {}
        for node in prog.nodes:
            self._rule(node)
        for name, v in zip(arg_names[n_params:], prog.inputs[n_params:], strict=True):
            self._block_value(v, f"tied to the model input {name}")
        for v in prog.outputs:
            self._block_value(v, MODEL_OUTPUT)
        for v in prog.consts:
            self._block_value(v, CONSTANT)
        self._resolve()

    # -- union-find -------------------------------------------------------

    def find(self, x):
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a, b) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        # Keep the smaller id as the root, so results do not depend on the order of unions.
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True

    def shape(self, v) -> tuple[int, ...]:
        if isinstance(v, Literal):
            return tuple(getattr(v.aval, "shape", ()))
        return self.prog.shapes[v]

    def _block(self, v, axis: int, reason: str):
        if not isinstance(v, Literal):
            self.blocks.append(((v, axis), reason))

    def _block_value(self, v, reason: str):
        for a in range(len(self.shape(v))):
            self._block(v, a, reason)

    def _tie(self, a, b):
        if not isinstance(a[0], Literal) and not isinstance(b[0], Literal):
            self.union(a, b)

    def weighty(self, v) -> bool:
        """Whether ``v`` is a parameter leaf, possibly reshaped, transposed or converted,
        or a scan's per-iteration slice of (or const read of) one."""
        if isinstance(v, Literal):
            return False
        out = self._weighty.get(v)
        if out is None:
            node = self.producer.get(v)
            if v in self.alias:
                out = self.weighty(self.alias[v][0])
            else:
                out = v in self.params or (
                    node is not None and node.name in WEIGHT_PATH and self.weighty(node.ins[0])
                )
            self._weighty[v] = out
        return out

    def _param_axis(self, v, axis):
        """The parameter axis that ``(v, axis)`` is, through transposes, conversions and
        scan slices."""
        while v not in self.params:
            if v in self.alias:
                v, shift = self.alias[v]
                if isinstance(v, Literal):
                    return None
                axis += shift
                continue
            node = self.producer.get(v)
            if node is None or node.name not in ("convert_element_type", "copy", "transpose"):
                return None
            if node.name == "transpose":
                axis = node.eqn.params["permutation"][axis]
            v = node.ins[0]
        return (v, axis)

    def _scan_alias(self, node):
        nc, ncar = node.eqn.params["num_consts"], node.eqn.params["num_carry"]
        body = node.body
        for j, (inner, outer) in enumerate(zip(body.ins, node.ins, strict=True)):
            if j < nc:
                self.alias[inner] = (outer, 0)
            elif j >= nc + ncar:
                self.alias[inner] = (outer, 1)

    # -- rules ------------------------------------------------------------

    def _rule(self, node):
        name, p = node.name, node.eqn.params
        ins, outs = node.ins, node.outs
        if name in ELEMENTWISE:
            out = outs[0]
            rank = len(self.shape(out))
            for v in ins:
                if len(self.shape(v)) == rank:
                    for a in range(rank):
                        self._tie((v, a), (out, a))
        elif name == "optimization_barrier":
            for v, o in zip(ins, outs, strict=True):
                for a in range(len(self.shape(o))):
                    self._tie((v, a), (o, a))
        elif name == "broadcast_in_dim":
            src, dst = self.shape(ins[0]), self.shape(outs[0])
            for a, d in enumerate(p["broadcast_dimensions"]):
                if src[a] == dst[d]:
                    self._tie((ins[0], a), (outs[0], d))
        elif name in ("reshape", "squeeze"):
            self._reshape(node)
        elif name == "transpose":
            for j, a in enumerate(p["permutation"]):
                self._tie((ins[0], a), (outs[0], j))
        elif name in REDUCTIONS:
            axes = set(p["axes"])
            kept = [a for a in range(len(self.shape(ins[0]))) if a not in axes]
            for j, a in enumerate(kept):
                self._tie((ins[0], a), (outs[0], j))
            for a in axes:
                self._block(ins[0], a, f"reduced over by {name} (a normalization, softmax or pool)")
        elif name in CUMULATIVE:
            for a in range(len(self.shape(ins[0]))):
                if a == p["axis"]:
                    self._block(ins[0], a, f"accumulated along by {name}")
                    self._block(outs[0], a, f"accumulated along by {name}")
                else:
                    self._tie((ins[0], a), (outs[0], a))
        elif name == "dot_general":
            self._dot(node)
        elif name == "conv_general_dilated":
            self._conv(node)
        elif name == "gather":
            self._gather(node)
        elif name == "concatenate":
            self._concat(node)
        elif name == "split":
            self._split(node)
        elif name in ("slice", "pad", "rev", "dynamic_slice", "dynamic_update_slice") or (
            name in POOLS
        ):
            self._positional(node)
        elif name == "scan" and node.body is not None:
            self._scan(node)
        else:
            for v in list(ins) + list(outs):
                self._block_value(v, f"read by {name!r}, which the analysis does not follow")

    def _scan(self, node):
        """Ties a scan's body to its operands and results (see the module docstring)."""
        body = node.body
        for inner in body.nodes:
            self._rule(inner)
        nc, ncar = node.eqn.params["num_consts"], node.eqn.params["num_carry"]
        # Consts: the same value in every iteration.
        for inner, outer in zip(body.ins[:nc], node.ins[:nc], strict=True):
            for a in range(len(self.shape(outer))):
                self._tie((inner, a), (outer, a))
        # Carry: one index space from the initial value to the final one.
        carries = zip(
            node.ins[nc : nc + ncar],
            body.ins[nc : nc + ncar],
            body.outs[:ncar],
            node.outs[:ncar],
            strict=True,
        )
        for init, b_in, b_out, final in carries:
            for a in range(len(self.shape(final))):
                self._tie((init, a), (final, a))
                self._tie((b_in, a), (final, a))
                self._tie((b_out, a), (final, a))
        # Stacked operands and results: the body sees axis a + 1 as its axis a.
        stacked = list(zip(node.ins[nc + ncar :], body.ins[nc + ncar :], strict=True))
        stacked += [
            (outer, inner)
            for outer, inner in zip(node.outs[ncar:], body.outs[ncar:], strict=True)
            if inner is not None
        ]
        for outer, inner in stacked:
            self._block(outer, 0, LAYER_AXIS)
            for a in range(len(self.shape(inner))):
                self._tie((inner, a), (outer, a + 1))

    def _reshape(self, node):
        src_v, dst_v = node.ins[0], node.outs[0]
        src, dst = self.shape(src_v), self.shape(dst_v)
        groups = reshape_groups(src, dst)
        reason = f"mixed with other axes by {node.name} {src} -> {dst}"
        if groups is None:
            self._block_value(src_v, reason)
            self._block_value(dst_v, reason)
            return
        for si, dj in groups:
            si = [a for a in si if src[a] != 1]
            dj = [a for a in dj if dst[a] != 1]
            if len(si) == 1 and len(dj) == 1:
                self._tie((src_v, si[0]), (dst_v, dj[0]))
            elif len(si) == 1 and dj:
                dims = [dst[a] for a in dj]
                parts = [((dst_v, a), _part_layout(dims, j)) for j, a in enumerate(dj)]
                self.composites.append(((src_v, si[0]), parts))
            elif len(dj) == 1 and si:
                dims = [src[a] for a in si]
                parts = [((src_v, a), _part_layout(dims, j)) for j, a in enumerate(si)]
                self.composites.append(((dst_v, dj[0]), parts))
            else:
                for a in si:
                    self._block(src_v, a, reason)
                for a in dj:
                    self._block(dst_v, a, reason)

    def _dot(self, node):
        (lc, rc), (lb, rb) = node.eqn.params["dimension_numbers"]
        lhs, rhs = node.ins[:2]
        out = node.outs[0]
        lr, rr = len(self.shape(lhs)), len(self.shape(rhs))
        free_l = [d for d in range(lr) if d not in lc and d not in lb]
        free_r = [d for d in range(rr) if d not in rc and d not in rb]
        weights = self.weighty(lhs) or self.weighty(rhs)
        for a, b in zip(lc, rc, strict=True):
            self._tie((lhs, a), (rhs, b))
            if not weights:
                self._block(lhs, a, TWO_ACTIVATIONS.format(name="dot_general"))
        for j, (a, b) in enumerate(zip(lb, rb, strict=True)):
            self._tie((lhs, a), (out, j))
            self._tie((rhs, b), (out, j))
        k = len(lb)
        for v, free in ((lhs, free_l), (rhs, free_r)):
            for d in free:
                self._tie((v, d), (out, k))
                k += 1
                if self.weighty(v):
                    pa = self._param_axis(v, d)
                    if pa is not None:
                        self.produced.add(pa)

    def _gather(self, node):
        """Row lookups (an embedding ``table[ids]``): whole slices along the other axes.

        An operand axis that the gather takes whole (not indexed, slice size = its size) is
        tied to its output axis, so an embedding's feature axis joins the layers that read it.
        The indexed axes (the vocabulary) are blocked; the output's batch axes follow the
        indices' axes.
        """
        p = node.eqn.params
        dn = p["dimension_numbers"]
        operand, indices = node.ins[:2]
        out = node.outs[0]
        src = self.shape(operand)
        if getattr(dn, "operand_batching_dims", ()) or len(node.ins) != 2:
            for v in (operand, out):
                self._block_value(v, "read by a batched gather, which the analysis does not follow")
            return
        indexed = "indexed by a gather (rows picked by value, e.g. an embedding's vocabulary)"
        kept = [a for a in range(len(src)) if a not in dn.collapsed_slice_dims]
        for j, a in enumerate(kept):
            o = dn.offset_dims[j]
            if a not in dn.start_index_map and p["slice_sizes"][a] == src[a]:
                self._tie((operand, a), (out, o))
            else:
                self._block(operand, a, indexed)
                self._block(out, o, indexed)
        for a in dn.collapsed_slice_dims:
            self._block(operand, a, indexed)
        batch = [d for d in range(len(self.shape(out))) if d not in dn.offset_dims]
        idx_shape = self.shape(indices)
        if len(batch) == len(idx_shape) - 1:  # the last axis of the indices is the index vector
            for i, d in enumerate(batch):
                self._tie((indices, i), (out, d))
        else:
            for d in batch:
                self._block(out, d, indexed)

    def _conv(self, node):
        p = node.eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        lhs, rhs = node.ins[:2]
        out = node.outs[0]
        window = "a convolution window axis"
        for v, spec in ((lhs, lhs_spec), (out, out_spec)):
            for a in spec[2:]:
                self._block(v, a, window)
        if p["batch_group_count"] == 1:
            self._tie((lhs, lhs_spec[0]), (out, out_spec[0]))
        else:
            self._block(lhs, lhs_spec[0], "batch_group_count > 1 in a convolution")
        groups = p["feature_group_count"]
        cin = self.shape(lhs)[lhs_spec[1]]
        cout = self.shape(out)[out_spec[1]]
        if groups == 1:
            self._tie((lhs, lhs_spec[1]), (rhs, rhs_spec[1]))
            if not (self.weighty(lhs) or self.weighty(rhs)):
                self._block(lhs, lhs_spec[1], TWO_ACTIVATIONS.format(name="a convolution"))
            self._tie((rhs, rhs_spec[0]), (out, out_spec[1]))
        elif groups == cin == cout:
            # Depthwise: output channel c reads input channel c alone.
            self._tie((lhs, lhs_spec[1]), (out, out_spec[1]))
            self._tie((rhs, rhs_spec[0]), (out, out_spec[1]))
        else:
            reason = f"a grouped convolution (feature_group_count={groups}, {cin} -> {cout})"
            self._block(lhs, lhs_spec[1], reason)
            self._block(rhs, rhs_spec[0], reason)
            self._block(rhs, rhs_spec[1], reason)
            self._block(out, out_spec[1], reason)
        if self.weighty(rhs):
            pa = self._param_axis(rhs, rhs_spec[0])
            if pa is not None:
                self.produced.add(pa)

    def _concat(self, node):
        d = node.eqn.params["dimension"]
        out = node.outs[0]
        offset = 0
        parts = []
        for v in node.ins:
            for a in range(len(self.shape(out))):
                if a != d:
                    self._tie((v, a), (out, a))
            if isinstance(v, Literal):
                offset += 1
                continue
            parts.append(((v, d), (offset, 1, ())))
            offset += self.shape(v)[d]
        self.composites.append(((out, d), parts))

    def _split(self, node):
        axis = node.eqn.params["axis"]
        src = node.ins[0]
        offset = 0
        parts = []
        for o in node.outs:
            for a in range(len(self.shape(o))):
                if a != axis:
                    self._tie((src, a), (o, a))
            parts.append(((o, axis), (offset, 1, ())))
            offset += self.shape(o)[axis]
        self.composites.append(((src, axis), parts))

    def _positional(self, node):
        """Ops that keep an axis whole unless they slice, pad, reverse or pool it."""
        name, p = node.name, node.eqn.params
        src, out = node.ins[0], node.outs[0]
        shape = self.shape(src)
        for a, n in enumerate(shape):
            if name == "slice":
                stride = p["strides"][a] if p["strides"] else 1
                whole = p["start_indices"][a] == 0 and p["limit_indices"][a] == n and stride == 1
            elif name == "pad":
                whole = tuple(p["padding_config"][a]) == (0, 0, 0)
            elif name == "rev":
                whole = a not in p["dimensions"]
            elif name == "dynamic_slice":
                whole = p["slice_sizes"][a] == n
            elif name == "dynamic_update_slice":
                whole = self.shape(node.ins[1])[a] == n
            else:
                whole = (
                    p["window_dimensions"][a] == 1
                    and p["window_strides"][a] == 1
                    and tuple(p["padding"][a]) == (0, 0)
                    and p["base_dilation"][a] == 1
                    and p["window_dilation"][a] == 1
                )
            if whole:
                self._tie((src, a), (out, a))
                if name == "dynamic_update_slice":
                    self._tie((node.ins[1], a), (out, a))
            else:
                reason = f"taken apart by {name}"
                self._block(src, a, reason)
                self._block(out, a, reason)
                if name == "dynamic_update_slice":
                    self._block(node.ins[1], a, reason)

    # -- resolution -------------------------------------------------------

    def _resolve(self):
        conflicts: set[tuple[int, int]] = set()
        changed = True
        while changed:
            changed = False
            by_root: dict[Any, list] = defaultdict(list)
            for k, parts in self.composites:
                by_root[self.find(k)].append(parts)
            for root, decls in by_root.items():
                first = decls[0]
                for other in decls[1:]:
                    same = len(first) == len(other) and all(
                        l1 == l2 and self.shape(p1[0])[p1[1]] == self.shape(p2[0])[p2[1]]
                        for (p1, l1), (p2, l2) in zip(first, other, strict=False)
                    )
                    if same:
                        for (p1, _), (p2, _) in zip(first, other, strict=True):
                            changed |= self.union(p1, p2)
                    else:
                        conflicts.add(root)
        # Roots after all unions.
        self.comp: dict[Any, list[tuple[Any, Layout]]] = {}
        for k, parts in self.composites:
            root = self.find(k)
            if root not in self.comp:
                self.comp[root] = [(self.find(pa), lay) for pa, lay in parts]
        self.parents: dict[Any, list[tuple[Any, Layout]]] = defaultdict(list)
        for root, parts in self.comp.items():
            for pr, lay in parts:
                self.parents[pr].append((root, lay))
        self.reason: dict[Any, str] = {}
        for axis, reason in self.blocks:
            self.reason.setdefault(self.find(axis), reason)
        for root in conflicts:
            self.reason.setdefault(
                self.find(root), "assembled from channels in two different layouts"
            )
        # A blocked composite blocks the channels it is made of.
        stack = [r for r in self.reason if r in self.comp]
        while stack:
            root = stack.pop()
            for pr, _ in self.comp[root]:
                if pr not in self.reason:
                    self.reason[pr] = self.reason[root]
                    if pr in self.comp:
                        stack.append(pr)
        # Classes that an activation or a model input carries (not only parameters or constants).
        # A blocked axis is reported too: a parameter axis that an unfollowed op reads.
        self.carried = {self.find(axis) for axis, _ in self.blocks}
        for v in self.prog.inputs:
            if v not in self.params:
                for a in range(len(self.shape(v))):
                    self.carried.add(self.find((v, a)))
        for node in walk(self.prog.nodes):
            for o in node.outs:
                for a in range(len(self.shape(o))):
                    self.carried.add(self.find((o, a)))
        # Parameter axes directly in each class.
        self.direct: dict[Any, list[tuple[int, int]]] = defaultdict(list)
        for v, i in self.params.items():
            for a in range(len(self.shape(v))):
                self.direct[self.find((v, a))].append((i, a))

    def size(self, root) -> int:
        return self.shape(root[0])[root[1]]

    def members(self, root) -> list[tuple[int, int, Layout]]:
        """(parameter index, axis, layout) of every parameter axis the class reaches."""
        out = []
        seen = set()

        def visit(r, layout):
            if (r, layout) in seen:
                return
            seen.add((r, layout))
            out.extend((i, a, layout) for i, a in self.direct.get(r, ()))
            for k, lay in self.parents.get(r, ()):
                visit(k, compose(layout, lay))

        visit(root, IDENTITY)
        return out

    def is_carried(self, root) -> bool:
        stack, seen = [root], set()
        while stack:
            r = stack.pop()
            if r in self.carried:
                return True
            if r not in seen:
                seen.add(r)
                stack.extend(k for k, _ in self.parents.get(r, ()))
        return False

    def roots(self) -> list[Any]:
        """Every class that has a parameter axis or an activation axis, in a stable order."""
        found = set(self.direct) | self.carried | set(self.comp)
        for r in list(found):
            found |= {pr for pr, _ in self.comp.get(r, ())}
        return sorted(found)
