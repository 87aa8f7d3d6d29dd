"""A jaxpr flattened into one list of equations over numbered values.

Calls that run one jaxpr on exactly their operands (``jit``, ``closed_call``,
``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are inlined, so that the
dependency analysis and the compacting interpreter see a single straight-line
program. Every value gets an integer id; its shape and dtype are kept, and the
values of constants (``ClosedJaxpr.consts`` at any level) are kept too, so the
program can be evaluated again without ``fn``.

A ``scan`` stays one equation, but its body is flattened the same way into a
:class:`Region` whose values are numbered in the same id space as the outer
program (a body's ``jit`` calls are inlined into the region, a nested ``scan``
gets a region of its own). The analysis can then tie a body value to the outer
value it iterates over, and the compacting interpreter can run the body again.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.extend.core import Literal

# Higher-order primitives that call one jaxpr on exactly their operands, and the
# parameter that holds it. shard_map is left out on purpose: inlining it would
# drop its sharding semantics, so it stays an opaque equation.
INLINE = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}


# Loops whose body is kept as a region, and the parameter that holds the body.
REGIONS = {"scan": "jaxpr"}


class Region:
    """The body of a loop equation, flattened: ids of its inputs, its equations, its results.

    Attributes:
      ins: the value id of every body input (for a scan: consts, then carry, then
        the per-iteration slices of ``xs``).
      nodes: the live equations of the body in order.
      outs: the value id (or ``Literal``) of every body result (carry, then ``ys``);
        ``None`` for a ``ys`` result that nothing after the loop reads (it is not
        computed, and the equations only it needed are dropped).
    """

    __slots__ = ("ins", "nodes", "outs")

    def __init__(self, ins, nodes, outs):
        self.ins = ins
        self.nodes = nodes
        self.outs = outs


class Node:
    """One equation with its operands and results as value ids (or literals).

    ``body`` is the :class:`Region` of a loop equation (``scan``), else ``None``.
    """

    __slots__ = ("eqn", "name", "ins", "outs", "body")

    def __init__(self, eqn, ins, outs, body=None):
        self.eqn = eqn
        self.name = eqn.primitive.name
        self.ins = ins
        self.outs = outs
        self.body = body


def walk(nodes):
    """Every node of ``nodes`` and, depth first, of the regions inside them, in program order."""
    for node in nodes:
        yield node
        if node.body is not None:
            yield from walk(node.body.nodes)


class Program:
    """``jax.make_jaxpr(fn)(*args)`` with its calls inlined.

    Attributes:
      nodes: the live top-level equations in program order (dead ones are
        dropped); a loop's equations are in its ``body`` (see :func:`walk`).
      shapes: shape of every value id.
      dtypes: dtype of every value id.
      inputs: the value id of every flattened argument leaf.
      outputs: the value id (or ``Literal``) of every flattened result leaf.
      consts: value id -> constant array.
      out_tree: the result's tree structure.
    """

    def __init__(self, closed, out_tree):
        self.nodes: list[Node] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[Any] = []
        self.consts: dict[int, Any] = {}
        self.out_tree = out_tree
        env: dict[Any, Any] = {}
        self._bind_consts(closed, env)
        self.inputs = []
        for v in closed.jaxpr.invars:
            env[v] = self._new(v)
            self.inputs.append(env[v])
        nodes: list[Node] = []
        self._flatten(closed.jaxpr, env, nodes)
        self.outputs = [v if isinstance(v, Literal) else env[v] for v in closed.jaxpr.outvars]
        self.nodes = _live(nodes, self.outputs)

    def _new(self, var) -> int:
        self.shapes.append(tuple(getattr(var.aval, "shape", ())))
        self.dtypes.append(getattr(var.aval, "dtype", None))
        return len(self.shapes) - 1

    def _bind_consts(self, closed, env):
        consts = getattr(closed, "consts", ())
        for v, c in zip(closed.jaxpr.constvars, consts, strict=True):
            env[v] = self._new(v)
            self.consts[env[v]] = c

    def _flatten(self, jaxpr, env, nodes):
        for eqn in jaxpr.eqns:
            ins = [v if isinstance(v, Literal) else env[v] for v in eqn.invars]
            param = INLINE.get(eqn.primitive.name)
            if param is not None and param in eqn.params:
                sub = eqn.params[param]
                sub_env: dict[Any, Any] = {}
                if hasattr(sub, "jaxpr"):
                    self._bind_consts(sub, sub_env)
                    sub = sub.jaxpr
                for v, a in zip(sub.invars, ins, strict=True):
                    sub_env[v] = a
                self._flatten(sub, sub_env, nodes)
                for o, so in zip(eqn.outvars, sub.outvars, strict=True):
                    env[o] = so if isinstance(so, Literal) else sub_env[so]
                continue
            body = None
            if eqn.primitive.name in REGIONS:
                body = self._region(eqn.params[REGIONS[eqn.primitive.name]])
            outs = []
            for o in eqn.outvars:
                env[o] = self._new(o)
                outs.append(env[o])
            nodes.append(Node(eqn, ins, outs, body))

    def _region(self, closed) -> Region:
        """Flattens a loop body (a ``ClosedJaxpr``) into fresh ids of this program."""
        env: dict[Any, Any] = {}
        self._bind_consts(closed, env)
        ins = []
        for v in closed.jaxpr.invars:
            env[v] = self._new(v)
            ins.append(env[v])
        nodes: list[Node] = []
        self._flatten(closed.jaxpr, env, nodes)
        outs = [v if isinstance(v, Literal) else env[v] for v in closed.jaxpr.outvars]
        # Dead equations are dropped by _live, once it knows which results the loop must give.
        return Region(ins, nodes, outs)


def _live(nodes: list[Node], outputs) -> list[Node]:
    """The nodes that reach ``outputs`` or have effects, in order.

    A kept loop keeps all its operands and every carry (each iteration feeds the
    next), but a ``ys`` result that is dead here is dropped from its body
    (``Region.outs`` gets ``None``), and so is every body equation only it needed.
    """
    live = {o for o in outputs if o is not None and not isinstance(o, Literal)}
    keep = []
    for node in reversed(nodes):
        if any(o in live for o in node.outs) or node.eqn.effects:
            keep.append(node)
            live.update(v for v in node.ins if not isinstance(v, Literal))
            body = node.body
            if body is not None:
                n_carry = node.eqn.params["num_carry"]
                body.outs = [
                    r if j < n_carry or node.outs[j] in live or node.eqn.effects else None
                    for j, r in enumerate(body.outs)
                ]
                body.nodes = _live(body.nodes, body.outs)
    keep.reverse()
    return keep


def trace(fn, *args) -> Program:
    """Traces ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct`` leaves) into a :class:`Program`."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    return Program(closed, jax.tree.structure(out_shape))
