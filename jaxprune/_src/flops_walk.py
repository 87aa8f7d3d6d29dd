"""Walks a jaxpr and adds up per-primitive costs, the way XLA would see it.

The walk goes backwards over each jaxpr so that it can drop dead equations on
the way (``jax.jit`` removes them before lowering, so XLA never counts them),
and it recurses into the jaxprs that higher-order primitives carry: jit,
custom_jvp/custom_vjp, remat/checkpoint, closed calls, shard_map, scan (times
its length), while (times its trip count when that is static) and cond (the
most expensive branch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from jax.extend.core import DropVar, Literal

from jaxprune._src import flops_rules

# Higher-order primitives that call one jaxpr on exactly their operands, and
# the parameter that holds it.
CALL_PARAMS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "shard_map": "jaxpr",
}

_TRANSFORM = re.compile(r"[A-Za-z_]\w*\(|\)")


def open_jaxpr(j):
    """The open ``Jaxpr`` of a ``Jaxpr`` or ``ClosedJaxpr``."""
    return getattr(j, "jaxpr", j)


def module_name(prefix: str, name_stack: Any, cache: dict[Any, str]) -> str:
    """Joins a name stack to its caller's, with transform wrappers such as
    ``transpose(jvp(...))`` removed, so forward and backward ops of one module
    share its name."""
    key = (prefix, name_stack)
    name = cache.get(key)
    if name is None:
        inner = _TRANSFORM.sub("", str(name_stack)).strip("/")
        inner = "/".join(p for p in inner.split("/") if p)
        name = f"{prefix}/{inner}" if prefix and inner else (prefix or inner)
        cache[key] = name
    return name


def static_trip_count(eqn) -> int | None:
    """Trip count of a ``while`` whose counter starts, steps and stops at literals.

    Recognises ``i = init; while i <op> bound: ...; i = i + step`` where
    ``init``, ``bound`` and ``step`` are literals in the jaxpr and ``<op>`` is
    one of ``<``, ``<=``, ``>``, ``>=``, ``!=``. Returns ``None`` otherwise.
    """
    p = eqn.params
    cond = open_jaxpr(p["cond_jaxpr"])
    body = open_jaxpr(p["body_jaxpr"])
    cnc, bnc = p["cond_nconsts"], p["body_nconsts"]
    carries_in = eqn.invars[cnc + bnc :]
    if len(cond.eqns) != 1:
        return None
    c = cond.eqns[0]
    if (
        c.primitive.name not in ("lt", "le", "gt", "ge", "ne")
        or c.outvars[0] is not cond.outvars[0]
    ):
        return None
    a, b = c.invars
    op = c.primitive.name
    if isinstance(a, Literal) and not isinstance(b, Literal):
        a, b = b, a
        op = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "ne": "ne"}[op]
    if isinstance(a, Literal) or not isinstance(b, Literal):
        return None
    cond_carries = cond.invars[cnc:]
    if a not in cond_carries:
        return None
    k = cond_carries.index(a)
    init = carries_in[k]
    if not isinstance(init, Literal):
        return None
    counter_in = body.invars[bnc + k]
    counter_out = body.outvars[k]
    step = None
    for e in body.eqns:
        if e.outvars[0] is counter_out and e.primitive.name in ("add", "sub"):
            x, y = e.invars
            if x is counter_in and isinstance(y, Literal):
                step = y.val if e.primitive.name == "add" else -y.val
            elif y is counter_in and isinstance(x, Literal) and e.primitive.name == "add":
                step = x.val
    if step is None:
        return None
    try:
        start, stop, step = int(init.val), int(b.val), int(step)
    except (TypeError, ValueError):
        return None
    if step == 0:
        return None
    if op == "lt":
        n = -(-(stop - start) // step) if step > 0 else None
    elif op == "le":
        n = (stop - start) // step + 1 if step > 0 else None
    elif op == "gt":
        n = -(-(start - stop) // -step) if step < 0 else None
    elif op == "ge":
        n = (start - stop) // -step + 1 if step < 0 else None
    else:  # ne: stops only if the counter lands on the bound
        n = (stop - start) // step if (stop - start) % step == 0 else None
        if n is not None and n < 0:
            n = None
    if n is None:
        return None
    return max(0, n)


class Tally:
    """Costs keyed by (module, primitive), plus what could not be counted."""

    def __init__(self):
        self.rows: dict[tuple[str, str], list[Any]] = {}
        self.unknown: dict[str, int] = {}
        self.dynamic_loops: list[str] = []

    def add(self, module: str, prim: str, flops, transcendentals, mult: int):
        row = self.rows.get((module, prim))
        if row is None:
            self.rows[(module, prim)] = [flops * mult, transcendentals * mult]
        else:
            row[0] = row[0] + flops * mult
            row[1] = row[1] + transcendentals * mult

    def merge(self, other: Tally, mult: int = 1):
        for (m, p), (f, t) in other.rows.items():
            self.add(m, p, f, t, mult)
        for k, v in other.unknown.items():
            self.unknown[k] = self.unknown.get(k, 0) + v
        self.dynamic_loops.extend(other.dynamic_loops)

    def totals(self):
        f = sum(r[0] for r in self.rows.values())
        t = sum(r[1] for r in self.rows.values())
        return f, t


# A hook that may take over the cost of one equation (used by the masked
# counter); returns ``None`` to fall back to the rules.
CostHook = Callable[[Any], Any]


class Walker:
    """Dense counting walk with dead-code elimination."""

    def __init__(
        self,
        rules: dict[str, flops_rules.Rule],
        sizes_factory=flops_rules.Sizes,
        list_unknown: bool = True,
    ):
        self.rules = rules
        self.list_unknown = list_unknown
        self.sizes_factory = sizes_factory
        self.names: dict[Any, str] = {}
        self._folded: dict[int, tuple[Any, set[int]]] = {}

    def walk(
        self,
        jaxpr,
        live_out: Sequence[bool],
        tally: Tally | None,
        mult: int = 1,
        prefix: str = "",
    ) -> list[bool]:
        """Counts ``jaxpr``'s live equations into ``tally`` (``None``: liveness only).

        Returns, for each input of ``jaxpr``, whether a live equation reads it.
        """
        live = set()
        for v, keep in zip(jaxpr.outvars, live_out, strict=False):
            if keep and not isinstance(v, Literal):
                live.add(v)
        folded = self.folded(jaxpr)
        for eqn in reversed(jaxpr.eqns):
            outs = [(not isinstance(v, DropVar)) and v in live for v in eqn.outvars]
            if not any(outs) and not eqn.effects:
                continue
            if folded and id(eqn) in folded:
                continue
            used = self.eqn(eqn, outs, tally, mult, prefix)
            for v, u in zip(eqn.invars, used, strict=False):
                if u and not isinstance(v, Literal):
                    live.add(v)
        return [v in live for v in jaxpr.invars]

    def folded(self, jaxpr) -> set[int]:
        """Ids of the equations of ``jaxpr`` that lowering folds into constants."""
        cached = self._folded.get(id(jaxpr))
        if cached is not None and cached[0] is jaxpr:
            return cached[1]
        consts = set(jaxpr.constvars)
        out: set[int] = set()
        foldable = flops_rules.FOLDABLE
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in foldable and all(
                isinstance(v, Literal) or v in consts for v in eqn.invars
            ):
                consts.update(eqn.outvars)
                out.add(id(eqn))
        self._folded[id(jaxpr)] = (jaxpr, out)
        return out

    def eqn(self, eqn, outs, tally, mult, prefix) -> Sequence[bool]:
        name = eqn.primitive.name
        if tally is not None:
            module = module_name(prefix, eqn.source_info.name_stack, self.names)
        else:
            module = prefix
        param = CALL_PARAMS.get(name)
        if param is not None and param in eqn.params:
            sub = open_jaxpr(eqn.params[param])
            return self.walk(sub, outs, tally, mult, module)
        if name == "scan":
            return self._scan(eqn, outs, tally, mult, module)
        if name == "while":
            return self._while(eqn, outs, tally, mult, module)
        if name == "cond":
            return self._cond(eqn, outs, tally, mult, module)
        if tally is not None:
            rule = self.rules.get(name)
            if rule is None:
                if self.list_unknown and name not in flops_rules.KNOWN_ZERO:
                    tally.unknown[name] = tally.unknown.get(name, 0) + 1
            else:
                f, t = rule(eqn, self.sizes_factory(eqn))
                if not (isinstance(f, int) and isinstance(t, int) and f == 0 and t == 0):
                    tally.add(module, name, f, t, mult)
        return [True] * len(eqn.invars)

    def _fixpoint(self, body, n_skip, n_carry, live_carry, live_rest, extra=()):
        """Carry liveness of a loop body: a carry is live if its output is, or
        if a live computation in the body reads it."""
        live_carry = (
            [a or b for a, b in zip(live_carry, extra, strict=False)] if extra else list(live_carry)
        )
        while True:
            used = self.walk(body, live_carry + list(live_rest), None)
            new = [
                a or b for a, b in zip(live_carry, used[n_skip : n_skip + n_carry], strict=False)
            ]
            if new == live_carry:
                return live_carry
            live_carry = new

    def _scan(self, eqn, outs, tally, mult, prefix):
        p = eqn.params
        body = open_jaxpr(p["jaxpr"])
        nc, ncarry = p["num_consts"], p["num_carry"]
        live_carry = self._fixpoint(body, nc, ncarry, outs[:ncarry], outs[ncarry:])
        used = self.walk(body, live_carry + list(outs[ncarry:]), tally, mult * p["length"], prefix)
        for i, keep in enumerate(live_carry):
            used[nc + i] = used[nc + i] or keep
        return used

    def _while(self, eqn, outs, tally, mult, prefix):
        p = eqn.params
        cond, body = open_jaxpr(p["cond_jaxpr"]), open_jaxpr(p["body_jaxpr"])
        cnc, bnc = p["cond_nconsts"], p["body_nconsts"]
        n = len(outs)
        cond_used = self.walk(cond, [True], None)
        live_carry = self._fixpoint(body, bnc, n, list(outs), [], extra=cond_used[cnc:])
        trips = static_trip_count(eqn)
        if tally is not None and trips is None:
            tally.dynamic_loops.append(prefix or "<top>")
        body_mult = mult * (1 if trips is None else trips)
        cond_mult = mult * (1 if trips is None else trips + 1)
        cond_used = self.walk(cond, [True], tally, cond_mult, prefix)
        body_used = self.walk(body, live_carry, tally, body_mult, prefix)
        carries = [a or b for a, b in zip(live_carry, cond_used[cnc:], strict=False)]
        return cond_used[:cnc] + body_used[:bnc] + carries

    def _cond(self, eqn, outs, tally, mult, prefix):
        branches = [open_jaxpr(b) for b in eqn.params["branches"]]
        used = [False] * (len(eqn.invars) - 1)
        best = None
        most_transcendentals = 0
        for br in branches:
            sub = Tally() if tally is not None else None
            u = self.walk(br, outs, sub, mult, prefix)
            used = [a or b for a, b in zip(used, u, strict=False)]
            if sub is not None:
                key = sub.totals()
                most_transcendentals = max(most_transcendentals, key[1])
                if best is None or key > best[0]:
                    best = (key, sub)
        if tally is not None and best is not None:
            # XLA takes the maximum over branches of flops and of
            # transcendentals separately: file the branch with the most flops,
            # and any transcendentals another branch has beyond it under "cond".
            tally.merge(best[1])
            extra = most_transcendentals - best[0][1]
            if extra:
                tally.add(prefix, "cond", 0, extra, 1)
        return [True] + used
