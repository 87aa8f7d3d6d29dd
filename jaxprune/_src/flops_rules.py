"""Per-primitive FLOP rules for :mod:`jaxprune._src.flops`.

Each rule maps one jaxpr equation to ``(flops, transcendentals)``. Rules never
look at values, only at sizes, and they read those sizes through a small
accessor (:class:`Sizes`) so that the same rule serves two purposes:

* dense counting, where every size is a Python ``int`` taken from the avals,
  so the result is an exact ``int``;
* pruning-aware counting (:mod:`jaxprune._src.flops_masks`), where the size of
  a masked axis is a traced ``jnp`` scalar (the number of kept features), so
  the result is a differentiable function of the masks.

The ``"xla"`` rules reproduce XLA's ``HloCostAnalysis`` applied to the HLO that
JAX lowers each primitive to (see the conventions in
:mod:`jaxprune._src.flops`); the ``"theis2018"`` rules reproduce
``computational_cost`` of the reference code of Theis et al. 2018 (Fisher pruning).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Size = Any  # an ``int`` when counting dense, a traced ``jnp`` scalar when masked.
Rule = Callable[[Any, "Sizes"], tuple[Size, Size]]


class Sizes:
    """Per-axis sizes of one equation's operands and results.

    The dense implementation reads static shapes. The masked implementation in
    ``flops_masks`` overrides the three methods to return kept-feature counts.
    """

    __slots__ = ("eqn",)

    def __init__(self, eqn):
        self.eqn = eqn

    def inp(self, i: int) -> Sequence[Size]:
        """Sizes of the axes of input ``i``."""
        return _shape(self.eqn.invars[i])

    def out(self, i: int = 0) -> Sequence[Size]:
        """Sizes of the axes of output ``i``."""
        return self.eqn.outvars[i].aval.shape

    def paired(self, i: int, axis_i: int, j: int, axis_j: int) -> Size:
        """Size of a contracted axis pair: ``axis_i`` of input ``i`` against ``axis_j`` of ``j``."""
        del j, axis_j
        return _shape(self.eqn.invars[i])[axis_i]


def _shape(atom) -> tuple[int, ...]:
    return getattr(atom.aval, "shape", ())


def prod(sizes: Sequence[Size]) -> Size:
    """Product that stays a Python ``int`` when every factor is one."""
    out: Size = 1
    for s in sizes:
        out = out * s
    return out


def _ew(flops: int, transcendentals: int = 0) -> Rule:
    """Element-wise rule: a fixed cost per output element."""

    def rule(eqn, s: Sizes):
        del eqn
        n = prod(s.out(0))
        return n * flops, n * transcendentals

    return rule


def _zero(eqn, s):
    del eqn, s
    return 0, 0


# ---------------------------------------------------------------------------
# XLA convention.

# One flop per output element: HloCostAnalysis::HandleElementwiseOp for every
# opcode that is not in its transcendental list (comparisons, select, clamp,
# convert and integer/bitwise ops included).
ONE_FLOP = (
    "add add_any sub mul div rem max min neg abs sign floor ceil round is_finite "
    "and or xor not shift_left shift_right_logical shift_right_arithmetic "
    "population_count clz eq ne lt le gt ge square clamp real imag conj complex "
    "reduce_precision copysign"
).split()

# One transcendental per output element (kExp, kLog, kTanh, kSqrt, kPower, ...).
ONE_TRANSCENDENTAL = (
    "exp log tanh sin cos tan atan2 sqrt rsqrt cbrt pow expm1 log1p erf atan"
).split()

# Primitives that JAX or XLA's CHLO legalisation expand into several HLO ops.
# (flops, transcendentals) per output element, measured on float32 with
# ``jax.jit(f).lower(x).cost_analysis()``; other dtypes may differ by a
# conversion or two.
EXPANDED = {
    "logistic": (3, 1),  # 1 / (1 + exp(-x))
    "exp2": (1, 1),  # exp(x * log(2))
    "erfc": (62, 1),
    "erf_inv": (37, 2),
    "lgamma": (53, 4),
    "digamma": (73, 3),
    "asin": (5, 2),
    "acos": (3, 2),
    "sinh": (10, 3),
    "cosh": (3, 2),
    "asinh": (11, 3),
    "acosh": (7, 4),
    "atanh": (6, 2),
    "nextafter": (24, 0),
}

# Primitives that move or relabel data: no arithmetic in XLA's count.
_FREE = (
    "broadcast_in_dim reshape transpose squeeze expand_dims slice dynamic_slice "
    "dynamic_update_slice gather concatenate stack pad rev iota copy copy_p device_put "
    "bitcast_convert_type top_k optimization_barrier sharding_constraint "
    "mesh_cast reshard pvary split stop_gradient"
).split()


def _convert(eqn, s: Sizes):
    # JAX emits no HLO op when only the weak type changes.
    if eqn.invars[0].aval.dtype == eqn.outvars[0].aval.dtype:
        return 0, 0
    return prod(s.out(0)), 0


def _integer_pow(eqn, s: Sizes):
    # JAX lowers x**y by square-and-multiply, plus one division for y < 0.
    y = int(eqn.params["y"])
    k = abs(y)
    muls = 0 if k == 0 else (bin(k).count("1") - 1) + (k.bit_length() - 1)
    if y < 0:
        muls += 1
    return prod(s.out(0)) * muls, 0


def _select_n(eqn, s: Sizes):
    # Boolean predicates lower to one kSelect; integer predicates to a tree of
    # n - 1 selects, each guarded by a comparison on the predicate's shape.
    cases = len(eqn.invars) - 1
    if cases <= 1:
        return 0, 0
    out = prod(s.out(0))
    if eqn.invars[0].aval.dtype == np.bool_:
        return out * (cases - 1), 0
    return (out + prod(s.inp(0))) * (cases - 1), 0


def _reduce(per_step: int = 1, per_step_transcendentals: int = 0) -> Rule:
    # HandleReduce: the reducer runs (input elements - output elements) times.
    def rule(eqn, s: Sizes):
        del eqn
        steps = prod(s.inp(0)) - prod(s.out(0))
        return steps * per_step, steps * per_step_transcendentals

    return rule


def _argminmax(eqn, s: Sizes):
    # JAX's variadic reducer compares values (with a NaN check for floats) and
    # indices: 9 HLO flops per step for floating inputs, 7 otherwise.
    dtype = np.dtype(eqn.invars[0].aval.dtype)
    per_step = 9 if np.issubdtype(dtype, np.inexact) else 7
    steps = prod(s.inp(0)) - prod(s.out(0))
    return steps * per_step, 0


def _cumulative(per_step: int, per_step_transcendentals: int = 0) -> Rule:
    # Lowered to a reduce_window whose window spans the whole axis, padded on
    # one side: (axis length - 1) reducer calls per output element.
    def rule(eqn, s: Sizes):
        axis = eqn.params["axis"]
        n = eqn.outvars[0].aval.shape[axis]
        steps = prod(s.out(0)) * (n - 1)
        return steps * per_step, steps * per_step_transcendentals

    return rule


def _reduce_window_count(eqn, s: Sizes) -> Size:
    """Reducer calls of a reduce_window, with XLA's reduce-and-broadcast special case."""
    p = eqn.params
    window = p["window_dimensions"]
    padding = p["padding"]
    out_shape = eqn.outvars[0].aval.shape
    count = prod(s.out(0)) * (math.prod(window) - 1)
    reduced = [d for d, w in enumerate(window) if w != 1]
    padded = [d for d, (lo, hi) in enumerate(padding) if lo or hi]
    if len(reduced) == 1 and len(padded) == 1 and reduced == padded:
        d = reduced[0]
        lo, hi = padding[d]
        if lo == hi and window[d] == 2 * lo + 1 and lo == out_shape[d] - 1:
            n = out_shape[d]
            count = prod(s.out(0)) // n + (n - 1)
    return count


def _reduce_window_simple(eqn, s: Sizes):
    return _reduce_window_count(eqn, s), 0


def _sort(eqn, s: Sizes):
    # HandleSort: n * ceil(log2(n)) over all elements of the first operand.
    del s
    n = math.prod(_shape(eqn.invars[0]))
    return n * max(0, (n - 1).bit_length()), 0


def _select_and_scatter_add(eqn, s: Sizes):
    # (window - 1) selects (one comparison each) and one add per source element.
    window = math.prod(eqn.params["window_dimensions"])
    source = prod(s.inp(0))
    return source * window, 0


def _scatter_combine(eqn, s: Sizes):
    # One combiner call per update element (scatter-add and friends).
    del eqn
    return prod(s.inp(2)), 0


def _fft(eqn, s: Sizes):
    del s
    lengths = eqn.params["fft_lengths"]
    log_factors = math.prod(max(0, int(n).bit_length() - 1) for n in lengths)
    return 2 * 4 * log_factors * math.prod(_shape(eqn.invars[0])), 0


def _triangular_solve(eqn, s: Sizes):
    del s
    a, b = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    return 2 * a[-1] * math.prod(b), 0


def _psum(eqn, s: Sizes):
    del eqn
    return sum(prod(s.out(i)) for i in range(len(s.eqn.outvars))), 0


def _dot_general(eqn, s: Sizes):
    (lc, rc), _ = eqn.params["dimension_numbers"]
    width = prod([s.paired(0, a, 1, b) for a, b in zip(lc, rc, strict=False)])
    return 2 * prod(s.out(0)) * width, 0


@functools.lru_cache(maxsize=4096)
def conv_valid_taps(
    in_size: int,
    out_size: int,
    kernel: int,
    stride: int,
    pad_lo: int,
    rhs_dilation: int,
    lhs_dilation: int,
) -> int:
    """Number of (output position, kernel tap) pairs that read a real input element.

    The index read by output ``o`` and tap ``k`` in the (``lhs_dilation``-dilated,
    ``pad_lo``-padded) input is ``u = o * stride - pad_lo + k * rhs_dilation``; it
    reads real data when ``u >= 0``, ``u`` is a multiple of ``lhs_dilation`` and
    ``u // lhs_dilation < in_size``. Taps on padding or dilation holes are free.
    """
    o = np.arange(out_size, dtype=np.int64)[None, :]
    k = np.arange(kernel, dtype=np.int64)[:, None]
    u = o * stride - pad_lo + k * rhs_dilation
    ok = (u >= 0) & (u < in_size * lhs_dilation)
    if lhs_dilation > 1:
        ok &= u % lhs_dilation == 0
    return int(ok.sum())


def conv_geometry(eqn) -> tuple[int, int, int]:
    """Static geometry of a convolution: (taps over real input, all taps, feature groups).

    Returns the product over spatial dimensions of the valid (output, tap) pairs,
    the product of ``output size * kernel size`` (every tap, padding included),
    and ``feature_group_count``.
    """
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    out = eqn.outvars[0].aval.shape
    valid = 1
    every = 1
    nsp = len(lhs_spec) - 2
    for d in range(nsp):
        i, k, o = lhs[lhs_spec[2 + d]], rhs[rhs_spec[2 + d]], out[out_spec[2 + d]]
        lhs_dil = p["lhs_dilation"][d] if p["lhs_dilation"] else 1
        rhs_dil = p["rhs_dilation"][d] if p["rhs_dilation"] else 1
        valid *= conv_valid_taps(
            i, o, k, p["window_strides"][d], p["padding"][d][0], rhs_dil, lhs_dil
        )
        every *= o * k
    return valid, every, p["feature_group_count"]


def _conv_rule(all_taps: bool) -> Rule:
    def rule(eqn, s: Sizes):
        p = eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        valid, every, groups = conv_geometry(eqn)
        taps = every if all_taps else valid
        batch = s.inp(0)[lhs_spec[0]]
        out_feat = s.out(0)[out_spec[1]]
        if groups == 1:
            in_feat = s.paired(0, lhs_spec[1], 1, rhs_spec[1])
        else:
            in_feat = s.inp(1)[rhs_spec[1]]
        bgc = p["batch_group_count"]
        if bgc != 1:
            batch = batch // bgc
        return 2 * in_feat * out_feat * batch * taps, 0

    return rule


def xla_rules(conv_taps: str = "valid") -> dict[str, Rule]:
    """The XLA convention's rules, keyed by primitive name."""
    rules: dict[str, Rule] = {}
    for name in ONE_FLOP:
        rules[name] = _ew(1)
    for name in ONE_TRANSCENDENTAL:
        rules[name] = _ew(0, 1)
    for name, (f, t) in EXPANDED.items():
        rules[name] = _ew(f, t)
    for name in _FREE:
        rules[name] = _zero
    rules.update(
        convert_element_type=_convert,
        integer_pow=_integer_pow,
        select_n=_select_n,
        reduce_sum=_reduce(),
        reduce_max=_reduce(),
        reduce_min=_reduce(),
        reduce_prod=_reduce(),
        reduce_and=_reduce(),
        reduce_or=_reduce(),
        reduce_xor=_reduce(),
        argmax=_argminmax,
        argmin=_argminmax,
        cumsum=_cumulative(1),
        cumprod=_cumulative(1),
        cummax=_cumulative(1),
        cummin=_cumulative(1),
        cumlogsumexp=_cumulative(8, 2),
        reduce_window_sum=_reduce_window_simple,
        reduce_window_max=_reduce_window_simple,
        reduce_window_min=_reduce_window_simple,
        select_and_scatter_add=_select_and_scatter_add,
        sort=_sort,
        scatter_add=_scatter_combine,
        scatter_sub=_scatter_combine,
        scatter_mul=_scatter_combine,
        scatter_min=_scatter_combine,
        scatter_max=_scatter_combine,
        scatter=_zero,
        fft=_fft,
        triangular_solve=_triangular_solve,
        psum=_psum,
        dot_general=_dot_general,
        conv_general_dilated=_conv_rule(conv_taps == "all"),
    )
    return rules


# ---------------------------------------------------------------------------
# The theis2018 convention (``computational_cost`` of Theis et al. 2018's reference code).


def _theis_matmul(eqn, s: Sizes):
    # MatMul: a0 * b1 * (2 * a1 - 1); batched dot_general multiplies by the batch.
    (lc, rc), _ = eqn.params["dimension_numbers"]
    k = prod([s.paired(0, a, 1, b) for a, b in zip(lc, rc, strict=False)])
    return prod(s.out(0)) * (2 * k - 1), 0


def _theis_conv(eqn, s: Sizes):
    # Conv2D: prod(out) * (kh * kw * cin * 2 - 1), cin the kernel's input depth.
    p = eqn.params
    lhs_spec, rhs_spec, _ = p["dimension_numbers"]
    rhs = _shape(eqn.invars[1])
    window = math.prod(rhs[d] for d in rhs_spec[2:])
    if p["feature_group_count"] == 1:
        cin = s.paired(0, lhs_spec[1], 1, rhs_spec[1])
    else:
        cin = s.inp(1)[rhs_spec[1]]
    return prod(s.out(0)) * (window * cin * 2 - 1), 0


def _theis_binary(eqn, s: Sizes):
    # Add, Mul and BiasAdd: the size of the larger input (broadcasts are
    # explicit in a jaxpr, so that is the larger operand's size).
    # ``tf.cond(size(a) > size(b), a, b)``: ties go to the second input.
    a, b = (math.prod(_shape(v)) for v in eqn.invars[:2])
    return prod(s.inp(0 if a > b else 1)), 0


def theis2018_rules() -> dict[str, Rule]:
    """The theis2018 convention's rules: everything not listed costs 0."""
    return {
        "dot_general": _theis_matmul,
        "conv_general_dilated": _theis_conv,
        "add": _theis_binary,
        "mul": _theis_binary,
    }


# Ops that JAX's lowering folds away when every operand is a constant (a
# literal, an embedded constant, or the folded result of such an op), so XLA
# never counts them. Chosen by experiment: MLIR folds these, but not e.g.
# select_n, pow, floor, expm1, atan2, reductions or contractions.
FOLDABLE = frozenset(
    (
        "broadcast_in_dim reshape transpose squeeze expand_dims convert_element_type "
        "concatenate rev neg add sub mul div rem max min abs sign exp log tanh logistic "
        "rsqrt sqrt sin cos erf integer_pow square clamp eq ne lt le gt ge and or not"
    ).split()
)

# Primitives with no arithmetic that are not worth listing as unknown.
KNOWN_ZERO = frozenset(
    _FREE + "scatter random_wrap random_unwrap random_seed debug_callback debug_print".split()
)
