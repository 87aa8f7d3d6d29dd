"""FLOP counts read off the jaxpr: dense, pruned, and differentiable in the masks.

:func:`count_flops` traces ``fn`` with :func:`jax.make_jaxpr` and adds up a
cost for every equation that survives dead-code elimination, recursing into
jit, custom_jvp/custom_vjp, remat/checkpoint, closed calls and shard_map, into
``scan`` (times its length), ``while`` (times its trip count when the counter
starts, steps and stops at constants) and ``cond`` (the most expensive
branch). :func:`flops_report` gives the same
count broken down per primitive and per module (the name stack, e.g. Flax's
``ResNet/Conv_0``, with ``jvp(...)``/``transpose(...)`` wrappers removed, so a
gradient's backward ops are filed under the module they differentiate).

Never silently wrong: an equation whose cost cannot be known (a ``while``
whose trip count is not static, an opaque ``pure_callback``/``io_callback``/
``ffi_call``, a primitive without a rule) makes :func:`count_flops` raise a
``ValueError`` that names it, unless ``allow_unknown=True``; then dynamic
loops count one trip, the others 0, and :attr:`FlopsReport.unknown` lists
them.

With channel masks (``channel_argnums``) or unstructured weight masks
(``weight_masks``) the count is that of the pruned network, written as a
``jnp`` function of the masks so that ``jax.grad`` gives each feature's
marginal cost; see :mod:`jaxprune._src.flops_masks` and ``docs/flops.md``.

Conventions (``convention="xla"``, the default)
------------------------------------------------
These are the rules of XLA's ``HloCostAnalysis`` applied to the HLO that JAX
lowers each primitive to, checked against
``jax.jit(fn).lower(*args).cost_analysis()`` (jax 0.10, CPU):

* ``dot_general``: :math:`2 \\cdot \\text{batch} \\cdot M \\cdot N \\cdot K`
  (one multiply and one add per multiply-accumulate).
* ``conv_general_dilated``:
  :math:`2 \\cdot B \\cdot \\tfrac{C_\\text{in}}{G} \\cdot C_\\text{out}
  \\cdot \\prod_d T_d`, where :math:`T_d` counts the (output position, kernel
  tap) pairs of spatial dimension :math:`d` that read a real input element:
  taps that land on padding (SAME) or on the holes of an input (lhs) dilation
  are free, as in XLA. ``conv_taps="all"`` counts every tap instead
  (:math:`T_d = O_d K_d`, the textbook formula). ``batch_group_count`` divides
  :math:`B`, as in the weight gradient of a grouped convolution.
* Element-wise ops, comparisons, ``select_n``, ``clamp`` and
  ``convert_element_type`` (when the dtype changes): one flop per output
  element, integer and boolean ops included (XLA does not tell them apart).
  ``integer_pow`` costs its square-and-multiply steps; an integer-predicated
  ``select_n`` with :math:`n` cases costs :math:`n-1` selects and compares.
* Transcendentals (``exp``, ``log``, ``tanh``, ``sin``, ``cos``, ``tan``,
  ``sqrt``, ``rsqrt``, ``cbrt``, ``pow``, ``erf``, ``atan``, ``atan2``,
  ``expm1``, ``log1p``) are counted apart, one per output element, and are not
  in ``flops``. ``logistic`` is 3 flops and 1 transcendental (JAX lowers it to
  ``1 / (1 + exp(-x))``); ops that XLA expands into polynomials (``erfc``,
  ``erf_inv``, ``lgamma``, ``digamma``, inverse and hyperbolic trigonometry)
  cost what XLA's expansion costs on float32.
* Reductions: (input elements - output elements) reducer calls, one flop each
  (``argmax``/``argmin``: 9, or 7 for integers). ``reduce_window`` (pooling)
  and cumulative ops: (window size - 1) per output element. The max-pool
  gradient ``select_and_scatter_add``: window size per source element.
  ``sort``: :math:`n \\lceil \\log_2 n \\rceil`.
* Data movement (reshape, transpose, broadcast, slices, gather, pad,
  concatenate, ...) is free, as are ops whose results are never used.
* Primitives without a rule and opaque calls are unknown (see above), except
  ``debug_callback``/``debug_print``, which compute nothing of the result.

Where the count departs from XLA's: XLA's cost analysis counts one trip of a
``while`` loop (a ``scan`` included) plus its loop-counter bookkeeping; this
module multiplies the body by the trip count and leaves out the bookkeeping,
so it agrees with XLA on the unrolled loop (``scan(..., unroll=True)``).
For ``cond`` XLA takes the maximum of each quantity separately; here one branch
is chosen (most flops, then most transcendentals) so the breakdown adds up.

``convention="theis2018"`` reproduces the counting rules of the reference code of
Theis et al. 2018 (Fisher pruning; its ``computational_cost``) exactly: matrix
products :math:`a_0 b_1 (2 a_1 - 1)` (times any batch dimensions), convolutions
:math:`\\prod(\\text{out}) (k_h k_w c_\\text{in} 2 - 1)` (with :math:`c_\\text{in}` the
kernel's input depth), ``add`` and ``mul`` the size of the larger input, everything else 0.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import flops_masks, flops_rules, flops_walk
from jaxprune._src.base import path_str
from jaxprune._src.flops_walk import UnknownEquation
from jaxprune._src.summaries import _is_variable, _unwrap
from jaxprune._src.trees import flat_leaves

_CONVENTIONS = ("xla", "theis2018")
# Spellings of 0.1.0 that still work, with a DeprecationWarning.
_DEPRECATED_CONVENTIONS = {"seed": "theis2018"}
_CONV_TAPS = ("valid", "all")


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """The cost of one call of a function, with its breakdown.

    Attributes:
      flops: total FLOPs (dense), an ``int``.
      transcendentals: total transcendental operations (dense), an ``int``.
      by_primitive: ``{primitive: (flops, transcendentals)}``, most flops first.
      by_module: ``{module: (flops, transcendentals)}`` from the name stack
        (``""`` for ops outside any named scope), most flops first.
      unknown_primitives: ``{primitive: number of equations}`` that have no rule
        or are opaque calls (``pure_callback``, ``io_callback``, ``ffi_call``),
        counted as 0.
      dynamic_loops: modules holding a ``while`` whose trip count is not static;
        its body was counted once.
      convention: ``"xla"`` or ``"theis2018"``.
      pruned_flops: the FLOPs with the masks applied (a float), or ``None``
        when no masks were given.
      pruned_by_primitive: ``{primitive: pruned flops}``, or ``None``.
      pruned_by_module: ``{module: pruned flops}``, or ``None``.
      unknown: every equation whose cost could not be known, as
        :class:`UnknownEquation` ``(primitive, module, reason)`` tuples: the
        ``while`` loops of ``dynamic_loops`` and the equations of
        ``unknown_primitives``. Empty when the count is exact.
    """

    flops: int
    transcendentals: int
    by_primitive: Mapping[str, tuple[int, int]]
    by_module: Mapping[str, tuple[int, int]]
    unknown_primitives: Mapping[str, int]
    dynamic_loops: tuple[str, ...]
    convention: str
    pruned_flops: float | None = None
    pruned_by_primitive: Mapping[str, float] | None = None
    pruned_by_module: Mapping[str, float] | None = None
    unknown: tuple[UnknownEquation, ...] = ()

    @property
    def exact(self) -> bool:
        """Whether every equation was counted (``unknown`` is empty)."""
        return not self.unknown

    def table(self, max_rows: int | None = 30) -> str:
        """The report as a plain-text table (``max_rows`` rows per section)."""
        lines = []
        pruned = self.pruned_flops is not None

        def section(title, rows, pruned_rows):
            header = f"{title:<44} {'flops':>16} {'%':>6} {'transc.':>12}"
            if pruned:
                header += f" {'pruned flops':>16}"
            lines.append(header)
            lines.append("-" * len(header))
            items = list(rows.items())
            shown = items if max_rows is None else items[:max_rows]
            for name, (f, t) in shown:
                pct = 100.0 * f / self.flops if self.flops else 0.0
                label = name if len(name) <= 44 else "..." + name[-41:]
                row = f"{label or '<top>':<44} {f:>16,} {pct:>6.1f} {t:>12,}"
                if pruned:
                    row += f" {pruned_rows.get(name, 0.0):>16,.0f}"
                lines.append(row)
            if len(shown) < len(items):
                lines.append(f"... {len(items) - len(shown)} more rows")
            lines.append("")

        section("module", self.by_module, self.pruned_by_module or {})
        section("primitive", self.by_primitive, self.pruned_by_primitive or {})
        total = f"total: {self.flops:,} flops, {self.transcendentals:,} transcendentals"
        total += f" ({self.convention} convention)"
        lines.append(total)
        if pruned:
            frac = self.pruned_flops / self.flops if self.flops else 1.0
            lines.append(f"pruned: {self.pruned_flops:,.0f} flops ({100 * frac:.1f}% of dense)")
        if self.unknown_primitives:
            unk = ", ".join(f"{k} x{v}" for k, v in self.unknown_primitives.items())
            lines.append(f"unknown primitives (counted as 0): {unk}")
        if self.dynamic_loops:
            lines.append(
                "while loops with a dynamic trip count (body counted once): "
                + ", ".join(self.dynamic_loops)
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _check_options(fn, convention, conv_taps, allow_unknown) -> str:
    """Validates the options; returns the convention under its current name."""
    if not isinstance(allow_unknown, (bool, np.bool_)):
        raise TypeError(f"allow_unknown must be True or False, got {allow_unknown!r}.")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    if isinstance(convention, str) and convention in _DEPRECATED_CONVENTIONS:
        new = _DEPRECATED_CONVENTIONS[convention]
        warnings.warn(
            f'convention="{convention}" is deprecated; use convention="{new}" (the counting '
            "rules of Theis et al. 2018's reference code), which counts the same",
            DeprecationWarning,
            stacklevel=3,
        )
        convention = new
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}.")
    if conv_taps not in _CONV_TAPS:
        raise ValueError(f"conv_taps must be one of {_CONV_TAPS}, got {conv_taps!r}.")
    return convention


def _argnums(channel_argnums, nargs: int) -> tuple[int, ...]:
    if channel_argnums is None:
        return ()
    nums = (channel_argnums,) if isinstance(channel_argnums, int) else tuple(channel_argnums)
    for k in nums:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"channel_argnums must hold ints, got {k!r}.")
        if not -nargs <= k < nargs:
            raise ValueError(
                f"channel_argnums entry {k} is out of range for {nargs} positional arguments."
            )
    nums = tuple(int(k) % nargs for k in nums)
    if len(set(nums)) != len(nums):
        raise ValueError(f"channel_argnums has repeated entries: {nums}.")
    return nums


def _mask_inputs(args, channel_argnums, weight_masks):
    """Flat input position -> (value, name) for channel masks and weight densities."""
    nums = _argnums(channel_argnums, len(args))
    if weight_masks is not None:
        if not isinstance(weight_masks, (tuple, list)):
            raise TypeError(
                "weight_masks must be a tuple with one entry per positional argument "
                f"(None or a mask tree), got {type(weight_masks).__name__}."
            )
        if len(weight_masks) != len(args):
            raise ValueError(
                f"weight_masks has {len(weight_masks)} entries but fn gets {len(args)} "
                "positional arguments; give one entry (None or a mask tree) per argument."
            )
    masks: dict[int, tuple] = {}
    densities: dict[int, tuple] = {}
    offset = 0
    for k, arg in enumerate(args):
        leaves = jax.tree_util.tree_flatten_with_path(arg)[0]
        if k in nums:
            for j, (path, leaf) in enumerate(leaves):
                masks[offset + j] = (leaf, flops_masks.path_name(f"args[{k}]", path))
        wm = None if weight_masks is None else weight_masks[k]
        if wm is not None:
            if k in nums:
                raise ValueError(f"argument {k} is in channel_argnums and has weight_masks.")
            densities.update(_weight_densities(k, arg, wm, offset))
        offset += len(leaves)
    return masks, densities


def _is_param(node) -> bool:
    # Leaves held in flax.nnx Variables other than Param (batch statistics, RNG
    # state, ...) are never optimized, so an optimizer's masks do not cover them.
    if not _is_variable(node):
        return True
    return any(
        c.__name__ == "Param" and c.__module__.startswith("flax.nnx") for c in type(node).__mro__
    )


def _weight_densities(k: int, arg, wm, offset: int) -> dict[int, tuple]:
    """Flat input position -> (density, name) for the weight masks of argument ``k``.

    Masks are matched to the argument's leaves by ``/``-joined path, with flax.nnx
    ``Variable`` wrappers read as their values on both sides, so masks from an
    ``nnx.Optimizer`` state match ``nnx.state(model, nnx.Param)`` or the state
    of ``nnx.split(model)``, and a plain dict of the same paths matches too.
    """
    where = f"weight_masks[{k}]"
    leaves: dict[str, tuple[int, Any, bool]] = {}
    pos = offset
    for path, node in jax.tree_util.tree_flatten_with_path(arg, is_leaf=_is_variable)[0]:
        n = len(jax.tree.leaves(node))
        name = path_str(path)
        if n == 1:
            if name in leaves:
                raise ValueError(
                    f"argument {k} has two leaves named {name!r}; {where} cannot be "
                    "matched to it by path."
                )
            leaves[name] = (pos, _unwrap(node), _is_param(node))
        pos += n
    masks = flat_leaves(wm)
    given = {p for p, _ in masks}
    stray = [p for p in given if p not in leaves]
    if stray:
        raise ValueError(
            f"{where} has masks at paths that argument {k} does not have: "
            f"{', '.join(map(repr, sorted(stray)))} (its leaves: "
            f"{', '.join(map(repr, leaves))})."
        )
    missing = [p for p, (_, _, required) in leaves.items() if required and p not in given]
    if missing:
        raise ValueError(
            f"{where} must match the structure of argument {k} leaf by leaf path: no "
            f"mask for {', '.join(map(repr, missing))} (give a scalar True for leaves "
            "that are not pruned)."
        )
    out = {}
    for path, m in masks:
        position, leaf, _ = leaves[path]
        name = f"args[{k}]/{path}" if path else f"args[{k}]"
        shape = np.shape(m)
        if not isinstance(m, jax.core.Tracer) and jnp.asarray(m).dtype != jnp.bool_:
            # Concrete masks that are not bool: a density is a fraction, and values outside
            # [0, 1] (a mask of 2s, a -1) would scale the count past the dense one, or below
            # zero, without a word. Two scalars leave the device, not the mask.
            low, high = float(jnp.min(jnp.asarray(m))), float(jnp.max(jnp.asarray(m)))
            if not (0 <= low and high <= 1):
                raise ValueError(
                    f"weight mask {name} has values outside [0, 1] (min {low}, max {high}); "
                    "give a bool mask, or 0/1 (fractions for a soft mask)."
                )
        if shape == () and not isinstance(m, jax.core.Tracer) and bool(m):
            continue  # not pruned
        if shape not in ((), np.shape(leaf)):
            raise ValueError(
                f"weight mask {name} has shape {shape}, expected {np.shape(leaf)} "
                "(the parameter's shape) or a scalar."
            )
        out[position] = (flops_masks.weight_density(m), name)
    return out


def _rules(convention: str, conv_taps: str):
    if convention == "theis2018":
        return flops_rules.theis2018_rules()
    return flops_rules.xla_rules(conv_taps)


def _trace(fn: Callable[..., Any], args, kwargs):
    return jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)


def _dense_tally(closed, convention: str, conv_taps: str) -> flops_walk.Tally:
    walker = flops_walk.Walker(_rules(convention, conv_taps), list_unknown=convention == "xla")
    tally = flops_walk.Tally()
    walker.walk(closed.jaxpr, [True] * len(closed.jaxpr.outvars), tally)
    return tally


def _group(rows, index: int):
    out: dict[str, list] = {}
    for key, (f, t) in rows.items():
        acc = out.setdefault(key[index], [0, 0])
        acc[0] += f
        acc[1] += t
    return dict(sorted(((k, (f, t)) for k, (f, t) in out.items()), key=lambda kv: -kv[1][0]))


def _pruned(closed, args, convention, conv_taps, channel_argnums, weight_masks):
    """Pruned rows and the equations whose cost is unknown."""
    masks, densities = _mask_inputs(args, channel_argnums, weight_masks)
    rules = _rules(convention, conv_taps)
    walker = flops_walk.Walker(rules, list_unknown=convention == "xla")
    unknown: list[UnknownEquation] = []
    try:
        rows = flops_masks.pruned_rows(closed, rules, walker, masks, densities, unknown)
    except flops_masks.MaskError as e:
        raise ValueError(f"{e}; counting with masks is not supported here.") from None
    return rows, unknown


# Per kind of unknown equation: what it is, and how to count it exactly.
_WHAT = {
    flops_walk.DYNAMIC_LOOP: (
        "a while loop whose trip count is not static",
        "give the loop static bounds (Python ints or constants for lax.fori_loop, "
        "or lax.scan with a length)",
    ),
    flops_walk.OPAQUE_CALL: (
        "an opaque call (host callback or foreign function) whose cost is unknown",
        "count the callback's work apart and add it",
    ),
    flops_walk.NO_RULE: (
        "a primitive with no cost rule",
        "count it apart and add it",
    ),
}


def _require_known(unknown: Sequence[UnknownEquation], allow_unknown: bool, caller: str):
    """Raises unless every equation was counted or the caller allowed unknowns."""
    if allow_unknown or not unknown:
        return
    seen = {}
    for u in unknown:
        seen.setdefault((u.primitive, u.module, u.reason), 0)
        seen[(u.primitive, u.module, u.reason)] += 1
    items = [
        f"{prim!r} in module {module!r}{f' (x{n})' if n > 1 else ''} is {_WHAT[reason][0]}"
        for (prim, module, reason), n in seen.items()
    ]
    how = sorted({_WHAT[u.reason][1] for u in unknown})
    raise ValueError(
        f"{caller} cannot count every equation of fn exactly; "
        + "; ".join(items)
        + ". To count exactly, "
        + "; or ".join(how)
        + ". To get the count of what can be counted (loop bodies once, opaque calls "
        "and primitives without a rule as 0), pass allow_unknown=True; "
        "flops_report(...).unknown lists what was left out."
    )


def _total(rows) -> jax.Array:
    static = 0
    dynamic = []
    for v in rows.values():
        if isinstance(v, (int, np.integer)):
            static += int(v)
        else:
            dynamic.append(v)
    total = jnp.asarray(float(static), jnp.float32)
    for v in dynamic:
        total = total + jnp.asarray(v, jnp.float32)
    return total


def count_flops(
    fn: Callable[..., Any],
    *args: Any,
    convention: str = "xla",
    conv_taps: str = "valid",
    channel_argnums: int | Sequence[int] | None = None,
    weight_masks: Sequence[Any] | None = None,
    allow_unknown: bool = False,
    **kwargs: Any,
):
    """Counts the floating point operations of one call ``fn(*args, **kwargs)``.

    The count is the sum over the equations of ``jax.make_jaxpr(fn)(*args)``
    that contribute to the outputs; see the module docstring for the cost of
    each primitive. With the default conventions it matches XLA's
    ``jax.jit(fn).lower(*args).cost_analysis()["flops"]`` (loops aside: a loop
    body counts once per trip here). Transcendentals are not included; see
    :func:`flops_report`.

    **Pruning.** ``channel_argnums`` names the positional arguments of ``fn``
    that hold channel masks: every leaf is a 1-D array ``m`` of shape ``(C,)``
    that ``fn`` multiplies onto one axis of an activation or kernel (through any
    broadcast). Features with ``m[c] = 0`` count as removed: every op that the
    masked axis reaches, forwards until a contraction sums over it and
    backwards to the op that produced it, counts only the kept features, and
    the mask multiplications themselves are free. For 0/1 masks the count is
    the dense count of the physically smaller network; in general it is a
    polynomial in the masks, so ``jax.grad`` of it gives each feature's
    marginal cost, equal to the exact drop in FLOPs when that feature alone is
    removed whenever no op meets the same mask on two axes. ``weight_masks``
    gives, per positional argument, ``None`` or a tree of the argument's
    structure whose leaves are masks of the parameter's shape (or a scalar
    ``True`` for leaves left dense); each ``dot_general`` or convolution that
    reads a masked parameter (through reshapes, transposes and dtype
    conversions) scales by its density :math:`\\operatorname{mean}(\\text{mask})`.
    Weight masks are matched to the argument's leaves by ``/``-joined leaf path
    (flax.nnx ``Variable`` wrappers read as their values), not by tree type, so
    ``jaxprune.get_masks(optimizer.opt_state)`` of an
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` matches
    ``nnx.state(model, nnx.Param)`` or the state of ``nnx.split(model)``; leaves
    held in nnx Variables other than ``Param`` (batch statistics, RNG state)
    need no mask.

    **Unknown costs.** A ``while`` loop whose trip count is not static (its
    counter must start at a constant and step by a constant until it compares
    false with a constant; integer counters wrap around as on the device), an
    opaque call (``pure_callback``, ``io_callback``, ``ffi_call``) or, under the
    ``"xla"`` convention, a primitive without a cost rule has a cost the count
    cannot know: it raises a ``ValueError`` naming the primitive and its module.
    With ``allow_unknown=True`` it returns the count of the rest, with such a
    loop's body and test counted once (XLA's own cost analysis does the same)
    and opaque calls and rule-less primitives counted 0; :func:`flops_report`
    lists them in :attr:`FlopsReport.unknown`.

    Positional ``args`` are traced (arrays or :class:`jax.ShapeDtypeStruct`);
    keyword ``kwargs`` are passed through unchanged, so they may be static
    Python values such as ``train=False``. Keyword arguments of ``fn`` named
    like an option below must be bound with :func:`functools.partial`.

    Args:
      fn: the function to count.
      *args: its positional arguments.
      convention: ``"xla"`` (XLA's cost model) or ``"theis2018"`` (the
        counting rules of the reference code of Theis et al. 2018, the Fisher
        pruning paper: its ``computational_cost``). ``"seed"``, this
        convention's name in jaxprune 0.1.0, still works with a
        ``DeprecationWarning``.
      conv_taps: ``"valid"`` counts only the kernel taps of a convolution that
        read real input (as XLA does); ``"all"`` counts every tap, padding
        included.
      channel_argnums: an int or ints: the positional arguments that hold
        channel masks.
      weight_masks: ``None``, or a tuple with one entry per positional
        argument: ``None`` or a tree of unstructured weight masks with the
        argument's leaf paths.
      allow_unknown: ``False`` (default) raises on an equation whose cost is
        unknown; ``True`` counts what can be counted (see above).
      **kwargs: keyword arguments of ``fn``.

    Returns:
      The number of FLOPs: an exact ``int`` without masks; with masks a float32
      scalar ``jax.Array``, a differentiable function of the mask values.

    Raises:
      TypeError: if ``fn`` is not callable or an option has the wrong type.
      ValueError: if ``convention`` or ``conv_taps`` is not an allowed value; if
        ``fn`` holds an equation whose cost is unknown and ``allow_unknown`` is
        ``False``; if a channel mask is not 1-D or multiplies no activation or
        kernel; if a weight mask's path is not a leaf of its argument, a leaf
        has no mask, a mask's shape differs from its parameter's, or the
        parameter feeds no contraction; if masked features reach an op the
        count cannot follow (a loop, a gather, a reshape that splits the masked
        axis, a grouped convolution other than depthwise, ...).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src.flops import count_flops
      >>> x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
      >>> count_flops(lambda x, w: jnp.tanh(x @ w + 1.0), x, w)  # 2*8*32*16 + 8*16
      8320
      >>> count_flops(lambda x, w: x @ w, x, w, convention="theis2018")  # 8*16*(2*32-1)
      8064

      A two-layer net with a mask on its 16 hidden features, 4 of them kept:

      >>> w2 = jnp.ones((16, 4))
      >>> def net(x, w, w2, m):
      ...     return (jax.nn.relu(x @ w) * m[None, :]) @ w2
      >>> m = jnp.arange(16.0) < 4
      >>> float(count_flops(net, x, w, w2, m, channel_argnums=3))  # 2*8*32*4 + 8*4 + 2*8*4*4
      2336.0
      >>> cost = lambda m: count_flops(net, x, w, w2, m, channel_argnums=3)
      >>> float(jax.grad(cost)(m.astype(jnp.float32))[0])  # one feature: 2*8*32 + 8 + 2*8*4
      584.0

      A loop whose trip count depends on an argument cannot be counted exactly:

      >>> def loop(x, n):
      ...     return jax.lax.fori_loop(0, n, lambda i, c: c * 2.0, x)
      >>> try:
      ...     count_flops(loop, x, 3)
      ... except ValueError as e:
      ...     print("'while'" in str(e), "allow_unknown=True" in str(e))
      True True
      >>> count_flops(loop, x, 3, allow_unknown=True)  # one trip: i + 1, 8*32; one test
      258
      >>> count_flops(lambda x: loop(x, 3), x)  # Python int bounds: 3 trips of 8*32
      768
    """
    convention = _check_options(fn, convention, conv_taps, allow_unknown)
    closed = _trace(fn, args, kwargs)
    if channel_argnums is not None or weight_masks is not None:
        rows, unknown = _pruned(closed, args, convention, conv_taps, channel_argnums, weight_masks)
        _require_known(unknown, allow_unknown, "count_flops")
        return _total(rows)
    tally = _dense_tally(closed, convention, conv_taps)
    _require_known(tally.unknown_eqns, allow_unknown, "count_flops")
    flops, _ = tally.totals()
    return int(flops)


def flops_report(
    fn: Callable[..., Any],
    *args: Any,
    convention: str = "xla",
    conv_taps: str = "valid",
    channel_argnums: int | Sequence[int] | None = None,
    weight_masks: Sequence[Any] | None = None,
    allow_unknown: bool = True,
    **kwargs: Any,
) -> FlopsReport:
    """Counts the FLOPs of ``fn(*args, **kwargs)`` per primitive and per module.

    Takes the same arguments as :func:`count_flops`. ``print(report)`` shows a
    table; the fields hold the numbers. With masks, the report holds both the
    dense and the pruned counts (as floats: call it outside ``jax.jit`` and
    ``jax.grad``, with concrete masks).

    Unlike :func:`count_flops`, ``allow_unknown`` defaults to ``True`` here: the
    report says what it could not count (:attr:`FlopsReport.unknown`, also
    ``dynamic_loops`` and ``unknown_primitives``, and the last lines of its
    table), and :attr:`FlopsReport.exact` is ``False``. Pass
    ``allow_unknown=False`` to raise instead.

    Returns:
      A :class:`FlopsReport`.

    Raises:
      TypeError: as :func:`count_flops`.
      ValueError: as :func:`count_flops` (unknown costs only with
        ``allow_unknown=False``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src.flops import flops_report
      >>> r = flops_report(lambda x: jnp.exp(x @ x.T).sum(), jnp.ones((4, 8)))
      >>> r.flops, r.transcendentals  # 2*4*4*8 + (16 - 1)
      (271, 16)
      >>> r.by_primitive["dot_general"]
      (256, 0)
      >>> r.exact
      True

      A loop with a data-dependent test: one trip counted, and the report says so.

      >>> def grow(x):
      ...     return jax.lax.while_loop(lambda c: c[0, 0] < 9.0, lambda c: c * 2.0, x)
      >>> r = flops_report(grow, jnp.ones((4, 8)))
      >>> r.flops, r.exact, [(u.primitive, u.module) for u in r.unknown]  # 32 + 1
      (33, False, [('while', '<top>')])
    """
    convention = _check_options(fn, convention, conv_taps, allow_unknown)
    closed = _trace(fn, args, kwargs)
    tally = _dense_tally(closed, convention, conv_taps)
    _require_known(tally.unknown_eqns, allow_unknown, "flops_report")
    pruned = None
    if channel_argnums is not None or weight_masks is not None:
        pruned, _ = _pruned(closed, args, convention, conv_taps, channel_argnums, weight_masks)
    return _make_report(tally, convention, pruned)


def _make_report(tally: flops_walk.Tally, convention: str, pruned=None) -> FlopsReport:
    rows = {k: (int(f), int(t)) for k, (f, t) in tally.rows.items()}
    flops, trans = (sum(r[i] for r in rows.values()) for i in (0, 1))
    kwargs = {}
    if pruned is not None:
        by_p: dict[str, float] = {}
        by_m: dict[str, float] = {}
        total = 0.0
        for (m, p), v in pruned.items():
            v = float(v)
            by_p[p] = by_p.get(p, 0.0) + v
            by_m[m] = by_m.get(m, 0.0) + v
            total += v
        kwargs = dict(pruned_flops=total, pruned_by_primitive=by_p, pruned_by_module=by_m)
    return FlopsReport(
        flops=flops,
        transcendentals=trans,
        by_primitive=_group(rows, 1),
        by_module=_group(rows, 0),
        unknown_primitives=dict(tally.unknown),
        dynamic_loops=tuple(tally.dynamic_loops),
        convention=convention,
        unknown=tuple(tally.unknown_eqns),
        **kwargs,
    )
