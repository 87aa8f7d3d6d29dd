"""Walks a jaxpr and adds up per-primitive costs, the way XLA would see it.

The walk goes backwards over each jaxpr so that it can drop dead equations on
the way (``jax.jit`` removes them before lowering, so XLA never counts them),
and it recurses into the jaxprs that higher-order primitives carry: jit,
custom_jvp/custom_vjp, remat/checkpoint, closed calls, shard_map, scan (times
its length), while (times its trip count when that is static) and cond (the
most expensive branch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
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


def _compare(op: str, x, bound) -> bool:
    if op == "lt":
        return x < bound
    if op == "le":
        return x <= bound
    if op == "gt":
        return x > bound
    if op == "ge":
        return x >= bound
    if op == "ne":
        return x != bound
    return x == bound


_SWAPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "ne": "ne", "eq": "eq"}

# A loop whose counter wraps around more often than this is treated as dynamic
# (it almost certainly never ends), as is a float counter that runs longer than
# _MAX_FLOAT_TRIPS steps (it is counted by stepping it in its own dtype).
_MAX_SEGMENTS = 4096
_MAX_FLOAT_TRIPS = 1 << 16


def _first_exit(v: int, d: int, last: int, op: str, bound: int) -> int | None:
    """Smallest ``k`` in ``[1, last]`` with ``v + k*d <op> bound`` false (``None``: none).

    The counter moves monotonically (``d != 0``) and the test held at ``k = 0``.
    """
    if op == "le":
        op, bound = "lt", bound + 1
    elif op == "ge":
        op, bound = "gt", bound - 1
    if op == "lt":
        k = -(-(bound - v) // d) if d > 0 else None
    elif op == "gt":
        k = -(-(v - bound) // -d) if d < 0 else None
    elif op == "ne":
        k = (bound - v) // d if (bound - v) % d == 0 else None
    else:  # eq: the first step leaves the bound
        k = 1
    return k if k is not None and 1 <= k <= last else None


def integer_trip_count(start: int, bound: int, step: int, op: str, dtype) -> int | None:
    """Trips of ``i = start; while i <op> bound: i += step`` in integer ``dtype``.

    Arithmetic wraps around modulo ``2**bits`` as it does on the device, and
    comparisons are signed or unsigned as the dtype is. Returns ``None`` when the
    loop never ends.
    """
    info = jnp.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    size = hi - lo + 1
    s = step % size
    if s == 0:
        return None if _compare(op, start, bound) else 0
    if op == "ne":
        # The first k >= 0 with start + k*s = bound (mod size): a linear
        # congruence, solvable iff gcd(s, size) divides the distance.
        g = math.gcd(s, size)
        dist = (bound - start) % size
        if dist % g:
            return None
        return dist // g * pow(s // g, -1, size // g) % (size // g)
    # The step as the shorter way round: +255 on a uint8 counter counts down by one.
    d = s if s <= size // 2 else s - size
    v, n = start, 0
    for _ in range(_MAX_SEGMENTS):
        if not _compare(op, v, bound):
            return n
        # Steps that stay inside [lo, hi] before the counter wraps around.
        last = (hi - v) // d if d > 0 else (v - lo) // -d
        k = _first_exit(v, d, last, op, bound)
        if k is not None:
            return n + k
        n += last + 1
        v += (last + 1) * d - (size if d > 0 else -size)
    return None


def float_trip_count(start, bound, step, op: str, dtype) -> int | None:
    """Trips of ``x = start; while x <op> bound: x += step``, rounded in ``dtype``."""
    t = np.dtype(dtype).type
    v, b, s = t(start), t(bound), t(step)
    with np.errstate(all="ignore"):
        for n in range(_MAX_FLOAT_TRIPS + 1):
            if not _compare(op, v, b):
                return n
            v = t(v + s)
    return None


def _loop_constant(var, jaxpr, nconsts, outer, carries_in, body, bnc):
    """The value of ``var`` (read in a loop's cond or body) if it is the same
    constant on every trip: a literal, a loop constant bound to a literal, or a
    carry that starts at a literal and that the body passes through unchanged."""
    if isinstance(var, Literal):
        return var.val
    if var not in jaxpr.invars:
        return None
    i = jaxpr.invars.index(var)
    if i < nconsts:
        v = outer[i]
        return v.val if isinstance(v, Literal) else None
    j = i - nconsts
    init = carries_in[j]
    if isinstance(init, Literal) and body.outvars[j] is body.invars[bnc + j]:
        return init.val
    return None


def static_trip_count(eqn) -> int | None:
    """Trip count of a ``while`` whose counter starts, steps and stops at constants.

    Recognises ``i = init; while i <op> bound: ...; i = i + step`` (or
    ``i - step``), with ``<op>`` one of ``<``, ``<=``, ``>``, ``>=``, ``!=``,
    ``==`` (the counter on either side), where ``init``, ``bound`` and ``step``
    are literals, loop constants bound to literals, or carries that start at a
    literal and never change (``lax.fori_loop`` with bounds known at trace time
    lowers to this). Integer counters wrap around as on the device (unsigned
    counters counting down, ``+255`` on a ``uint8``); float counters are
    stepped in their dtype. Returns ``None`` when the count is not static or the
    loop never ends.
    """
    p = eqn.params
    cond = open_jaxpr(p["cond_jaxpr"])
    body = open_jaxpr(p["body_jaxpr"])
    cnc, bnc = p["cond_nconsts"], p["body_nconsts"]
    carries_in = eqn.invars[cnc + bnc :]
    test = next((e for e in cond.eqns if cond.outvars[0] in e.outvars), None)
    if test is None or test.primitive.name not in _SWAPPED or len(test.invars) != 2:
        return None
    a, b = test.invars
    op = test.primitive.name
    cond_carries = cond.invars[cnc:]
    if a not in cond_carries:
        a, b, op = b, a, _SWAPPED[op]
    if a not in cond_carries:
        return None
    k = cond_carries.index(a)

    def const(var, jaxpr, nconsts, outer):
        return _loop_constant(var, jaxpr, nconsts, outer, carries_in, body, bnc)

    bound = const(b, cond, cnc, eqn.invars[:cnc])
    init = carries_in[k]
    if bound is None or not isinstance(init, Literal):
        return None
    counter_in, counter_out = body.invars[bnc + k], body.outvars[k]
    step = None
    for e in body.eqns:
        if counter_out in e.outvars and e.primitive.name in ("add", "sub"):
            x, y = e.invars
            if e.primitive.name == "add" and y is counter_in:
                x, y = y, x
            if x is counter_in and y is not counter_in:
                step = const(y, body, bnc, eqn.invars[cnc : cnc + bnc])
                if step is not None and e.primitive.name == "sub":
                    step = -step
    if step is None:
        return None
    dtype = np.dtype(counter_in.aval.dtype)
    try:
        if jnp.issubdtype(dtype, jnp.integer):
            return integer_trip_count(int(init.val), int(bound), int(step), op, dtype)
        if jnp.issubdtype(dtype, jnp.floating):
            return float_trip_count(init.val, bound, step, op, dtype)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


class UnknownEquation(NamedTuple):
    """An equation whose cost the count could not know.

    Attributes:
      primitive: the primitive's name, e.g. ``"while"`` or ``"pure_callback"``.
      module: the module (name stack) it sits in, ``"<top>"`` outside any.
      reason: why its cost is unknown and what the count used in its place.
    """

    primitive: str
    module: str
    reason: str


# Calls whose work happens outside the jaxpr: the count cannot see it.
OPAQUE = frozenset(("pure_callback", "io_callback", "ffi_call"))

DYNAMIC_LOOP = "its trip count is not static; the body and the loop test were counted once"
OPAQUE_CALL = "an opaque call (host callback or foreign function); counted as 0"
NO_RULE = "no cost rule for this primitive; counted as 0"


class Tally:
    """Costs keyed by (module, primitive), plus what could not be counted."""

    def __init__(self):
        self.rows: dict[tuple[str, str], list[Any]] = {}
        self.unknown: dict[str, int] = {}
        self.dynamic_loops: list[str] = []
        self.unknown_eqns: list[UnknownEquation] = []

    def add(self, module: str, prim: str, flops, transcendentals, mult: int):
        row = self.rows.get((module, prim))
        if row is None:
            self.rows[(module, prim)] = [flops * mult, transcendentals * mult]
        else:
            row[0] = row[0] + flops * mult
            row[1] = row[1] + transcendentals * mult

    def note(self, prim: str, module: str, reason: str):
        """Records an equation whose cost is unknown."""
        module = module or "<top>"
        if reason == DYNAMIC_LOOP:
            self.dynamic_loops.append(module)
        else:
            self.unknown[prim] = self.unknown.get(prim, 0) + 1
        self.unknown_eqns.append(UnknownEquation(prim, module, reason))

    def merge_unknown(self, other: Tally):
        for k, v in other.unknown.items():
            self.unknown[k] = self.unknown.get(k, 0) + v
        self.dynamic_loops.extend(other.dynamic_loops)
        self.unknown_eqns.extend(other.unknown_eqns)

    def merge(self, other: Tally, mult: int = 1):
        for (m, p), (f, t) in other.rows.items():
            self.add(m, p, f, t, mult)
        self.merge_unknown(other)

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
                if name in OPAQUE:
                    tally.note(name, module, OPAQUE_CALL)
                elif self.list_unknown and name not in flops_rules.KNOWN_ZERO:
                    tally.note(name, module, NO_RULE)
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
            tally.note("while", prefix, DYNAMIC_LOOP)
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
        subs = []
        for br in branches:
            sub = Tally() if tally is not None else None
            subs.append(sub)
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
            # What a branch could not count is listed whichever branch wins:
            # its true cost might have made it the most expensive.
            for sub in subs:
                if sub is not best[1]:
                    tally.merge_unknown(sub)
            tally.merge(best[1])
            extra = most_transcendentals - best[0][1]
            if extra:
                tally.add(prefix, "cond", 0, extra, 1)
        return [True] + used
