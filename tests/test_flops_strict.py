"""FLOP counts that cannot be known raise; static loops are counted; NNX masks match by path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jaxprune
from jaxprune._src.flops import UnknownEquation, count_flops, flops_report
from jaxprune._src.flops_walk import float_trip_count, integer_trip_count
from jaxprune._src.trees import flat_leaves

X = jnp.ones((4,))


# ---------------------------------------------------------------------------
# Unknown costs raise unless allowed.


def _dynamic_while(x):
    # Data-dependent test: one trip of the body is c @ c (2*8**3) and the test is
    # a sum (64 - 1) and a compare (1).
    return lax.while_loop(lambda c: c.sum() < 5.0, lambda c: c @ c, x)


def _traced_fori(x, n):
    return lax.fori_loop(0, n, lambda i, c: c * 2.0, x)


def _callback(x):
    y = jax.pure_callback(lambda a: np.sin(a), jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y * 2.0 + 1.0


def _io_callback(x):
    y = jax.experimental.io_callback(lambda a: a, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y * 3.0


def _mystery():
    prim = jax.extend.core.Primitive("mystery_strict_op")
    prim.def_impl(lambda x: x)
    prim.def_abstract_eval(lambda x: x)
    return prim


@pytest.mark.parametrize(
    "fn, args, prim, allowed",
    [
        (_dynamic_while, (jnp.ones((8, 8)),), "while", 2 * 8**3 + 63 + 1),
        (_traced_fori, (X, 5), "while", (1 + 4) + 1),  # one trip: i + 1, c * 2; one test
        (_callback, (X,), "pure_callback", 4 + 4),  # the callback counts 0
        (_io_callback, (X,), "io_callback", 4),
    ],
    ids=["while", "fori_traced_bounds", "pure_callback", "io_callback"],
)
def test_unknown_costs_raise_and_name_the_primitive(fn, args, prim, allowed):
    for call in (count_flops, flops_report):
        with pytest.raises(ValueError, match=f"'{prim}'") as err:
            call(fn, *args, allow_unknown=False)
        assert "allow_unknown=True" in str(err.value)
    with pytest.raises(ValueError, match=f"'{prim}'"):
        count_flops(fn, *args)  # strict by default
    assert count_flops(fn, *args, allow_unknown=True) == allowed
    r = flops_report(fn, *args, allow_unknown=True)
    assert r.flops == allowed
    assert not r.exact
    assert [(u.primitive, u.module) for u in r.unknown] == [(prim, "<top>")]
    assert isinstance(r.unknown[0], UnknownEquation)
    if prim == "while":
        assert r.dynamic_loops == ("<top>",) and r.unknown_primitives == {}
        assert "trip count" in r.unknown[0].reason
    else:
        assert r.unknown_primitives == {prim: 1} and r.dynamic_loops == ()
        assert "counted as 0" in r.unknown[0].reason


def test_error_says_how_to_proceed_for_each_kind():
    with pytest.raises(ValueError, match="static bounds") as err:
        count_flops(_traced_fori, X, 3)
    assert "lax.scan" in str(err.value)
    with pytest.raises(ValueError, match="callback") as err:
        count_flops(_callback, X)
    assert "opaque" in str(err.value)


def test_primitive_without_rule_raises_and_counts_zero_when_allowed():
    prim = _mystery()
    fn = lambda x: prim.bind(x) * 2.0  # noqa: E731
    with pytest.raises(ValueError, match="mystery_strict_op"):
        count_flops(fn, X)
    assert count_flops(fn, X, allow_unknown=True) == 4
    # The theis2018 convention costs every primitive it does not list at 0 by
    # definition; opaque calls and dynamic loops are still unknown there.
    assert count_flops(fn, X, convention="theis2018") == 4
    with pytest.raises(ValueError, match="pure_callback"):
        count_flops(_callback, X, convention="theis2018")
    with pytest.raises(ValueError, match="while"):
        count_flops(_dynamic_while, jnp.ones((8, 8)), convention="theis2018")


def test_unknown_inside_nested_calls_scans_and_every_cond_branch():
    def scanned(x):
        def step(c, _):
            return _dynamic_while(c), None

        return lax.scan(step, x, None, length=3)[0]

    x = jnp.ones((8, 8))
    with pytest.raises(ValueError, match="'while'"):
        count_flops(jax.jit(scanned), x)
    # Three scan trips of one counted trip each.
    assert count_flops(jax.jit(scanned), x, allow_unknown=True) == 3 * (2 * 8**3 + 64)

    def branches(p, x):
        # The cheap branch holds the callback: had it been expensive, it would win.
        return lax.cond(p, lambda x: (x @ x).sum(), lambda x: _callback(x[0]).sum(), x)

    with pytest.raises(ValueError, match="pure_callback"):
        count_flops(branches, True, x)
    r = flops_report(branches, True, x, allow_unknown=True)
    assert [u.primitive for u in r.unknown] == ["pure_callback"]


def test_masked_counts_are_strict_too():
    w, x = jnp.ones((8, 8)), jnp.ones((8, 8))

    def fn(w, x):
        return _dynamic_while(x @ w)

    mask = jnp.arange(64).reshape(8, 8) % 2 == 0
    with pytest.raises(ValueError, match="'while'"):
        count_flops(fn, w, x, weight_masks=(mask, None))
    got = count_flops(fn, w, x, weight_masks=(mask, None), allow_unknown=True)
    assert float(got) == 0.5 * 2 * 8**3 + 2 * 8**3 + 64
    with pytest.raises(ValueError, match="'while'"):
        flops_report(fn, w, x, weight_masks=(mask, None), allow_unknown=False)


def test_debug_prints_and_dead_callbacks_are_not_unknown():
    def fn(x):
        jax.debug.print("x = {}", x)
        jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # dead
        return x * 2.0

    assert count_flops(fn, X) == 4
    assert flops_report(fn, X).exact


def test_allow_unknown_must_be_a_bool():
    with pytest.raises(TypeError, match="allow_unknown"):
        count_flops(jnp.sin, X, allow_unknown="yes")
    with pytest.raises(TypeError, match="allow_unknown"):
        flops_report(jnp.sin, X, allow_unknown=None)


def test_report_table_lists_unknown_equations():
    text = str(flops_report(_callback, X))
    assert "pure_callback" in text and "counted as 0" in text


# ---------------------------------------------------------------------------
# Loops whose trip count is static.

_CMP = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "ne": lambda a, b: a != b,
    "eq": lambda a, b: a == b,
    "rgt": lambda a, b: b > a,  # the counter on the right: bound > i
}

# (start, op, bound, update) with numpy scalars so the loop runs in their dtype.
_STATIC = {
    "int32_up": (np.int32(0), "lt", np.int32(10), lambda i: i + np.int32(1)),
    "int32_le_step2": (np.int32(0), "le", np.int32(9), lambda i: i + np.int32(2)),
    "int32_negative_step": (np.int32(10), "gt", np.int32(0), lambda i: i + np.int32(-3)),
    "int32_sub_down": (np.int32(10), "ge", np.int32(1), lambda i: i - np.int32(2)),
    "int32_bound_on_left": (np.int32(1), "rgt", np.int32(20), lambda i: i + np.int32(4)),
    "int32_eq": (np.int32(3), "eq", np.int32(3), lambda i: i + np.int32(1)),
    "int32_zero_trips": (np.int32(5), "lt", np.int32(5), lambda i: i + np.int32(1)),
    "uint32_down_gt": (np.uint32(5), "gt", np.uint32(0), lambda i: i - np.uint32(1)),
    "uint32_down_ne": (np.uint32(6), "ne", np.uint32(0), lambda i: i - np.uint32(2)),
    "uint32_wraps_below_zero": (np.uint32(0), "lt", np.uint32(10), lambda i: i - np.uint32(1)),
    "uint8_wraps_ne": (np.uint8(250), "ne", np.uint8(4), lambda i: i + np.uint8(2)),
    "uint8_plus_255_counts_down": (np.uint8(7), "gt", np.uint8(2), lambda i: i + np.uint8(255)),
    "int8_overflow_ends_loop": (np.int8(100), "gt", np.int8(0), lambda i: i + np.int8(50)),
    "int8_underflow_ends_loop": (np.int8(-100), "lt", np.int8(0), lambda i: i - np.int8(30)),
    "int8_many_wraps": (np.int8(0), "ne", np.int8(7), lambda i: i + np.int8(3)),
    "uint16_many_wraps": (np.uint16(1), "ne", np.uint16(0), lambda i: i + np.uint16(40001)),
    "float32_quarter": (np.float32(0.0), "lt", np.float32(1.0), lambda i: i + np.float32(0.25)),
    "float32_tenth": (np.float32(0.0), "lt", np.float32(1.0), lambda i: i + np.float32(0.1)),
}


def _counting_loop(start, op, bound, update):
    # The carry counts its own trips, so running the loop gives the reference.
    def fn(x):
        return lax.while_loop(
            lambda c: _CMP[op](c[0], bound),
            lambda c: (update(c[0]), c[1] * 2.0, c[2] + 1),
            (start, x, np.int32(0)),
        )

    return fn


@pytest.mark.parametrize("case", list(_STATIC))
def test_static_trip_counts_match_the_loop_run_on_device(case):
    fn = _counting_loop(*_STATIC[case])
    trips = int(jax.jit(fn)(X)[2])
    # Per trip: the counter update, c * 2 on 4 elements, the trip count + 1;
    # the test runs once more than the body.
    assert count_flops(fn, X) == trips * (1 + 4 + 1) + (trips + 1)
    assert flops_report(fn, X).exact


def test_a_few_trip_counts_by_hand():
    assert int(jax.jit(_counting_loop(*_STATIC["uint8_wraps_ne"]))(X)[2]) == 5  # 250 .. 2
    assert int(jax.jit(_counting_loop(*_STATIC["int8_many_wraps"]))(X)[2]) == 173  # 3k = 7 mod 256
    assert integer_trip_count(250, 4, 2, "ne", np.uint8) == 5
    assert integer_trip_count(0, 7, 3, "ne", np.int8) == 173
    assert integer_trip_count(0, 10, -1, "lt", np.uint32) == 1
    assert integer_trip_count(10, 0, -3, "gt", np.int32) == 4  # 10, 7, 4, 1
    assert integer_trip_count(0, 2**31 - 1, 1, "lt", np.int32) == 2**31 - 1
    assert integer_trip_count(0, 7, 2, "ne", np.int8) is None  # odd bound, even steps
    assert integer_trip_count(0, 5, 0, "lt", np.int32) is None  # never moves
    assert integer_trip_count(5, 5, 0, "lt", np.int32) == 0
    assert integer_trip_count(7, -8, 1, "ne", jnp.int4) == 1  # 7 + 1 wraps to -8
    # bfloat16 counts 0, 1, ..., 256, then 256 + 1 rounds back to 256 for ever.
    assert float_trip_count(0.0, 200.0, 1.0, "lt", jnp.bfloat16) == 200
    assert float_trip_count(0.0, 300.0, 1.0, "lt", jnp.bfloat16) is None


def _brute_force_trips(start, bound, step, op, dtype):
    # Steps the counter in its own dtype; an 8-bit counter that has not stopped
    # after 256 steps has repeated a value, so it never stops.
    info = np.iinfo(dtype)
    size = int(info.max) - int(info.min) + 1
    wrap = lambda v: (v - int(info.min)) % size + int(info.min)  # noqa: E731
    v = start
    for n in range(size + 1):
        if not _CMP[op](v, bound):
            return n
        v = wrap(v + step)
    return None


@settings(max_examples=400, deadline=None)
@given(
    dtype=st.sampled_from([np.int8, np.uint8]),
    op=st.sampled_from(["lt", "le", "gt", "ge", "ne", "eq"]),
    data=st.data(),
)
def test_integer_trip_count_matches_stepping_the_counter(dtype, op, data):
    info = np.iinfo(dtype)
    value = st.integers(int(info.min), int(info.max))
    start, bound = data.draw(value), data.draw(value)
    step = data.draw(st.integers(-300, 300))
    assert integer_trip_count(start, bound, step, op, dtype) == _brute_force_trips(
        start, bound, step, op, dtype
    )


def test_fori_loop_with_constant_bounds_lowered_to_while():
    def fn(x, lo, hi):
        return lax.fori_loop(jnp.int32(lo), jnp.int32(hi), lambda i, c: c * 2.0, x)

    # jnp.int32 bounds become a counter carry and a bound carry that never changes.
    assert "while" in str(jax.make_jaxpr(lambda x: fn(x, 2, 7))(X))
    assert count_flops(lambda x: fn(x, 2, 7), X) == 5 * (1 + 4) + 6
    assert count_flops(lambda x: fn(x, 7, 2), X) == 1  # no trip, one test
    with pytest.raises(ValueError, match="'while'"):
        count_flops(lambda x, n: fn(x, 0, n), X, 4)


@pytest.mark.parametrize(
    "fn",
    [
        _counting_loop(np.int8(0), "ne", np.int8(7), lambda i: i + np.int8(2)),  # never lands
        _counting_loop(np.int32(0), "lt", np.int32(5), lambda i: i * np.int32(2)),  # not a step
    ],
    ids=["never_ends", "geometric"],
)
def test_loops_that_are_not_static_arithmetic_raise(fn):
    with pytest.raises(ValueError, match="'while'"):
        count_flops(fn, X)


def test_step_or_bound_from_an_argument_is_dynamic():
    def step_arg(x, s):
        return lax.while_loop(lambda c: c[0] < 10, lambda c: (c[0] + s, c[1] * 2.0), (0, x))[1]

    def bound_arg(x, b):
        return lax.while_loop(lambda c: c[0] < b, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]

    for fn in (step_arg, bound_arg):
        with pytest.raises(ValueError, match="'while'"):
            count_flops(fn, X, 2)
        assert count_flops(fn, X, 2, allow_unknown=True) == (1 + 4) + 1


# ---------------------------------------------------------------------------
# Weight masks matched by leaf path: NNX optimizer masks.


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, norm: bool = False):
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, use_running_average=True, rngs=rngs) if norm else None
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        if self.norm is not None:
            h = self.norm(h)
        return self.l2(jax.nn.relu(h))


B = 5


def _trained(norm=False):
    model = _MLP(nnx.Rngs(0), norm=norm)
    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(jaxprune.constant_sparsity(0.75)))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 6)), jnp.float32)

    @nnx.jit  # one compilation instead of many eager ops
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
        optimizer.update(model, grads)

    step(model, optimizer, x)
    return model, optimizer, x


def _hand_masks(model):
    # Pruned weights are exactly 0.0 after the update; kept ones are not.
    return {
        "l1": {"kernel": np.asarray(model.l1.kernel[...]) != 0, "bias": True},
        "l2": {"kernel": np.asarray(model.l2.kernel[...]) != 0, "bias": True},
    }


def test_nnx_optimizer_masks_count_like_hand_built_masks():
    model, optimizer, x = _trained()
    masks = jaxprune.get_masks(optimizer.opt_state)
    hand = _hand_masks(model)
    d1, d2 = (float(np.mean(hand[k]["kernel"])) for k in ("l1", "l2"))
    assert 0.2 < d1 < 0.3 and 0.2 < d2 < 0.3  # 75% pruned

    graphdef, state = nnx.split(model)
    params = nnx.state(model, nnx.Param)

    def apply(p, x):
        return nnx.merge(graphdef, p)(x)

    # Two matmuls scaled by their densities; bias adds and the relu stay dense.
    expected = 2 * B * 6 * 16 * d1 + B * 16 + B * 16 + 2 * B * 16 * 3 * d2 + B * 3
    for tree in (state, params):
        got = count_flops(apply, tree, x, weight_masks=(masks, None))
        assert float(got) == pytest.approx(expected, rel=1e-6)
        assert float(count_flops(apply, tree, x, weight_masks=(hand, None))) == float(got)
        r = flops_report(apply, tree, x, weight_masks=(masks, None))
        assert r.pruned_flops == pytest.approx(expected, rel=1e-6)
        assert r.flops == count_flops(apply, tree, x)


def test_nnx_split_state_with_batch_stats_needs_masks_for_params_only():
    model, optimizer, x = _trained(norm=True)
    masks = jaxprune.get_masks(optimizer.opt_state)
    graphdef, state = nnx.split(model)
    # The split state holds batch statistics that no optimizer mask covers.
    state_paths = {path for path, _ in flat_leaves(state)}
    mask_paths = {path for path, _ in flat_leaves(masks)}
    assert state_paths - mask_paths == {"norm/mean", "norm/var"}
    apply = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    hand = _hand_masks(model)
    hand["norm"] = {"scale": True, "bias": True}
    got = count_flops(apply, state, x, weight_masks=(masks, None))
    assert float(got) == float(count_flops(apply, state, x, weight_masks=(hand, None)))
    dense = count_flops(apply, state, x)
    d1 = float(np.mean(hand["l1"]["kernel"]))
    d2 = float(np.mean(hand["l2"]["kernel"]))
    dropped = (1 - d1) * 2 * B * 6 * 16 + (1 - d2) * 2 * B * 16 * 3
    assert float(got) == pytest.approx(dense - dropped, rel=1e-6)


def test_masks_matched_by_path_errors_name_the_path():
    model, optimizer, x = _trained()
    params = nnx.state(model, nnx.Param)
    graphdef = nnx.graphdef(model)
    apply = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    hand = _hand_masks(model)

    stray = {**hand, "l3": {"kernel": True}}
    with pytest.raises(ValueError, match="'l3/kernel'"):
        count_flops(apply, params, x, weight_masks=(stray, None))
    missing = {"l1": hand["l1"], "l2": {"kernel": hand["l2"]["kernel"]}}
    with pytest.raises(ValueError, match="'l2/bias'"):
        count_flops(apply, params, x, weight_masks=(missing, None))
    bad_shape = {**hand, "l2": {"kernel": np.ones((3, 16), bool), "bias": True}}
    with pytest.raises(ValueError, match="l2/kernel") as err:
        count_flops(apply, params, x, weight_masks=(bad_shape, None))
    assert "(16, 3)" in str(err.value)


def test_stack_moves_data_and_costs_nothing():
    # jnp.stack is a primitive of its own in recent jax: it costs what concatenate costs.
    stacked = count_flops(lambda x: jnp.stack([x, x], axis=1).sum(), jnp.ones(3))
    joined = count_flops(lambda x: jnp.concatenate([x, x]).sum(), jnp.ones(3))
    assert stacked == joined == 5
