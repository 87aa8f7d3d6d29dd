"""Tests for FLOP counting (jaxprune._src.flops)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune._src.flops import FlopsReport, count_flops, flops_report


def xla_cost(fn, *args):
    """XLA's own (flops, transcendentals) for one call of ``fn``."""
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return cost.get("flops", 0.0), cost.get("transcendentals", 0.0)


def assert_matches_xla(fn, *args, rel=0.01):
    report = flops_report(fn, *args)
    flops, transcendentals = xla_cost(fn, *args)
    assert report.flops == pytest.approx(flops, rel=rel), (report.flops, flops)
    assert report.transcendentals == pytest.approx(transcendentals, rel=rel)
    return report


# ---------------------------------------------------------------------------
# Models.


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.gelu(nn.Dense(32)(x))
        x = jax.nn.sigmoid(nn.Dense(16)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(8, (3, 3), padding=self.padding)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.Conv(16, (3, 3), strides=2, padding=self.padding)(x)
        x = nn.relu(x)
        x = nn.Conv(16, (3, 3), kernel_dilation=2, padding=self.padding)(x)
        x = nn.swish(x)
        x = nn.Conv(16, (3, 3), feature_group_count=16, padding=self.padding)(x)  # depthwise
        x = nn.Conv(32, (3, 3), feature_group_count=4, strides=2, padding=self.padding)(x)
        x = nn.max_pool(x, (3, 3), (2, 2), "SAME")
        x = nn.avg_pool(x, (2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


class Block(nn.Module):
    """A pre-norm transformer block: causal attention and an MLP."""

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(x[..., 0])
        h = nn.MultiHeadDotProductAttention(num_heads=4)(h, h, mask=mask)
        x = x + h
        h = nn.LayerNorm()(x)
        h = nn.Dense(128)(h)
        h = nn.gelu(h)
        return x + nn.Dense(32)(h)


def _model(name):
    key = jax.random.key(0)
    if name == "mlp":
        model, x = MLP(), jnp.ones((4, 20))
    elif name == "cnn_same":
        model, x = CNN("SAME"), jnp.ones((2, 20, 20, 3))
    elif name == "cnn_valid":
        model, x = CNN("VALID"), jnp.ones((2, 28, 28, 3))
    else:
        model, x = Block(), jnp.ones((2, 16, 32))
    # Abstract parameters: counting needs shapes only, and this compiles nothing.
    return model, jax.eval_shape(model.init, key, x), x


MODELS = ["mlp", "cnn_same", "cnn_valid", "block"]


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_xla(name):
    model, params, x = _model(name)
    assert_matches_xla(model.apply, params, x)


@pytest.mark.parametrize("name", MODELS)
def test_gradient_matches_xla(name):
    model, params, x = _model(name)

    def loss(p, x):
        return -jax.nn.log_softmax(model.apply(p, x)).mean()

    assert_matches_xla(jax.grad(loss), params, x)


def test_batchnorm_training_step_matches_xla():
    model, variables, x = _model("cnn_same")

    def loss(p, stats, x):
        v = {"params": p, "batch_stats": stats}
        out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        return out.sum()

    assert_matches_xla(jax.grad(loss), variables["params"], variables["batch_stats"], x)


CONV_CASES = [
    # (spatial, kernel, strides, padding, rhs_dilation, lhs_dilation, cin, cout, groups)
    ((9, 9), (3, 3), (1, 1), "VALID", (1, 1), (1, 1), 3, 4, 1),
    ((9, 9), (3, 3), (1, 1), "SAME", (1, 1), (1, 1), 3, 4, 1),
    ((10, 7), (4, 3), (2, 3), "SAME", (1, 1), (1, 1), 2, 3, 1),
    ((11, 11), (3, 3), (1, 1), "SAME", (2, 3), (1, 1), 3, 2, 1),
    ((8, 8), (3, 3), (2, 2), ((2, 1), (0, 3)), (1, 2), (1, 1), 4, 4, 4),  # depthwise
    ((8, 8), (3, 3), (1, 1), "SAME", (1, 1), (1, 1), 4, 6, 2),  # grouped
    ((7, 6), (3, 2), (1, 2), ((1, 2), (2, 0)), (1, 1), (2, 3), 2, 2, 1),  # input dilation
    ((12,), (5,), (3,), "SAME", (2,), (1,), 3, 5, 1),  # 1-D
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolutions_and_their_gradients_match_xla(case):
    spatial, kernel, strides, padding, rhs_dil, lhs_dil, cin, cout, groups = case
    dn = ("NHWC", "HWIO", "NHWC") if len(spatial) == 2 else ("NWC", "WIO", "NWC")
    x = jnp.ones((2, *spatial, cin))
    w = jnp.ones((*kernel, cin // groups, cout))

    def conv(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            strides,
            padding,
            lhs_dilation=lhs_dil,
            rhs_dilation=rhs_dil,
            dimension_numbers=dn,
            feature_group_count=groups,
        )

    assert_matches_xla(conv, x, w)
    assert_matches_xla(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)), x, w)


# ---------------------------------------------------------------------------
# Hand-counted cases.


def test_dot_general_hand_count():
    a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 2))
    # batch 3, M 5, N 2, K 7.
    assert count_flops(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), a, b) == 2 * 3 * 5 * 2 * 7


def test_conv_valid_hand_count():
    x, w = jnp.ones((1, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    assert count_flops(conv, x, w) == 2 * (4 * 4) * 4 * (3 * 3 * 3)


def test_conv_same_counts_only_taps_on_real_input():
    # A 3-tap kernel over 4 positions with one pad each side: the two border
    # outputs see 2 real inputs, the inner two see 3 -> 10 taps, not 12.
    x, w = jnp.ones((1, 4, 1)), jnp.ones((3, 1, 1))
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=(1,),
        padding="SAME",
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    assert count_flops(conv, x, w) == 2 * 10
    assert count_flops(conv, x, w, conv_taps="all") == 2 * 12


def test_elementwise_reductions_and_transcendentals():
    x = jnp.ones((4, 8))
    r = flops_report(lambda x: jnp.exp(x * 2.0).sum(axis=1) + jnp.tanh(x).max(), x)
    # mul 32, reduce_sum 32-4, reduce_max 32-1, add 4; exp and tanh 32 each.
    assert r.flops == 32 + 28 + 31 + 4
    assert r.transcendentals == 64
    assert r.by_primitive["mul"] == (32, 0)
    assert r.by_primitive["exp"] == (0, 32)


def test_integer_pow_and_select_costs():
    x = jnp.ones((10,))
    assert count_flops(lambda x: x**5, x) == 10 * 3  # x2 = x*x, x4 = x2*x2, x4*x
    assert count_flops(lambda x: jnp.where(x > 0, x, 0.0), x) == 10 + 10


def test_dead_code_is_not_counted():
    def f(x):
        unused = x @ x  # noqa: F841 - dead, XLA never sees it
        return x + 1.0

    assert count_flops(f, jnp.ones((8, 8))) == 64


def test_constants_are_folded():
    # -2.0 and 2.0 ** 0.5 are folded by lowering; only the add and mul remain.
    f = lambda x: (x + lax.neg(2.0)) * lax.sqrt(2.0)  # noqa: E731
    assert count_flops(f, jnp.ones((4,))) == 8
    assert_matches_xla(f, jnp.ones((4,)))


# ---------------------------------------------------------------------------
# Nested jaxprs and control flow.


def _rnn(w, xs, unroll=1):
    def body(c, x):
        c = jnp.tanh(c @ w + x)
        return c, c.sum()

    return lax.scan(body, jnp.zeros(w.shape[0]), xs, unroll=unroll)


def test_scan_counts_every_iteration():
    w, xs = jnp.full((16, 16), 0.1), jnp.ones((7, 16))
    r = flops_report(_rnn, w, xs)
    per_step = 2 * 16 * 16 + 16 + 15  # matvec, add, sum
    assert r.flops == 7 * per_step
    assert r.transcendentals == 7 * 16
    # XLA counts one trip of a rolled loop; it agrees on the unrolled one.
    unrolled = functools.partial(_rnn, unroll=True)
    assert (r.flops, r.transcendentals) == xla_cost(unrolled, w, xs)


def test_scan_gradient_matches_unrolled_xla():
    w, xs = jnp.full((16, 16), 0.1), jnp.ones((5, 16))

    def loss(w, xs, unroll=1):
        return _rnn(w, xs, unroll)[1].sum()

    got = flops_report(jax.grad(loss), w, xs)
    want = xla_cost(jax.grad(functools.partial(loss, unroll=True)), w, xs)
    assert (got.flops, got.transcendentals) == want


def test_nested_jit_remat_custom_vjp_and_custom_jvp():
    @jax.custom_vjp
    def g(x):
        return jnp.tanh(x @ x)

    g.defvjp(lambda x: (g(x), x), lambda x, ct: (3.0 * (ct @ x.T),))

    @jax.custom_jvp
    def h(x):
        return jnp.sin(x) * 2.0

    h.defjvp(lambda p, t: (h(p[0]), 2.0 * jnp.cos(p[0]) * t[0]))

    @jax.jit
    def inner(x):
        return jax.checkpoint(lambda y: h(g(y)) @ y)(x)

    def loss(x):
        return inner(x).sum()

    x = jnp.ones((8, 8))
    fwd = assert_matches_xla(inner, x)
    assert fwd.flops == 2 * (2 * 8**3) + 64  # two matmuls and the mul by 2.0
    assert fwd.transcendentals == 2 * 64  # tanh and sin
    assert_matches_xla(jax.grad(loss), x)


def test_cond_takes_the_most_expensive_branch():
    def f(p, x):
        return lax.cond(p, lambda x: x @ x, lambda x: jnp.exp(x), x)

    r = assert_matches_xla(f, True, jnp.ones((8, 8)))
    # convert of the predicate + the matmul; the exp branch's transcendentals.
    assert r.flops == 1 + 2 * 8**3
    assert r.transcendentals == 64


def test_while_with_static_and_dynamic_trip_counts():
    x = jnp.ones((8, 8))

    def static(x):
        return lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ c[1]), (0, x))[1]

    r = flops_report(static, x)
    assert r.flops == 5 * (2 * 8**3 + 1) + 6  # 5 bodies (matmul, i + 1), 6 tests
    assert r.dynamic_loops == ()

    def dynamic(x):
        return lax.while_loop(lambda c: c.sum() < 5.0, lambda c: c @ c, x)

    r = flops_report(dynamic, x)
    assert r.dynamic_loops == ("<top>",)
    assert r.flops == 2 * 8**3 + 63 + 1  # one trip, as XLA counts it
    assert r.flops == xla_cost(dynamic, x)[0]
    assert "dynamic trip count" in str(r)


# ---------------------------------------------------------------------------
# Report.


def test_report_breaks_down_by_module_and_primitive():
    model, params, x = _model("mlp")
    r = flops_report(model.apply, params, x)
    assert isinstance(r, FlopsReport)
    assert r.flops == count_flops(model.apply, params, x)
    assert sum(f for f, _ in r.by_module.values()) == r.flops
    assert sum(f for f, _ in r.by_primitive.values()) == r.flops
    assert r.by_module["MLP/Dense_0"] == (2 * 4 * 20 * 32 + 4 * 32, 0)
    assert r.by_primitive["dot_general"][0] == 2 * 4 * (20 * 32 + 32 * 32 + 32 * 16 + 16 * 10)
    text = str(r)
    assert "MLP/Dense_0" in text and "dot_general" in text and "total:" in text


def test_gradient_ops_are_filed_under_their_module():
    model, params, x = _model("mlp")
    r = flops_report(jax.grad(lambda p, x: model.apply(p, x).sum()), params, x)
    dense0 = r.by_module["MLP/Dense_0"][0]
    # forward dot and bias add, the kernel gradient and the bias gradient (a
    # sum over the batch); the input gradient is dead code.
    assert dense0 == 2 * (2 * 4 * 20 * 32) + 4 * 32 + (4 * 32 - 32)


def test_unknown_primitives_count_zero_and_are_listed():
    prim = jax.extend.core.Primitive("mystery_op")
    prim.def_impl(lambda x: x)
    prim.def_abstract_eval(lambda x: x)

    r = flops_report(lambda x: prim.bind(x) * 2.0, jnp.ones((3,)))
    assert r.flops == 3
    assert r.unknown_primitives == {"mystery_op": 1}
    assert "mystery_op" in str(r)


def test_static_keyword_arguments_and_shape_structs():
    model, variables, x = _model("cnn_same")
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    assert count_flops(model.apply, variables, spec, train=False) == count_flops(
        model.apply, variables, x
    )


def test_bad_options_raise():
    with pytest.raises(ValueError, match="convention"):
        count_flops(jnp.sin, jnp.ones(3), convention="tf")
    with pytest.raises(ValueError, match="conv_taps"):
        flops_report(jnp.sin, jnp.ones(3), conv_taps="some")
    with pytest.raises(TypeError, match="fn"):
        count_flops(3, jnp.ones(3))


# ---------------------------------------------------------------------------
# The theis2018 convention (Theis et al. 2018's reference code).


def test_theis2018_convention_matmul_conv_add_mul():
    x, w, b = jnp.ones((4, 6)), jnp.ones((6, 5)), jnp.ones((5,))
    # MatMul 4*5*(2*6-1), BiasAdd 4*5 (the larger input), tanh/sub free.
    f = lambda x, w, b: jnp.tanh(x @ w + b[None, :]) - 1.0  # noqa: E731
    assert count_flops(f, x, w, b, convention="theis2018") == 4 * 5 * 11 + 20

    img, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 7))
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    # Conv2D: prod(out) * (kh*kw*cin*2 - 1), SAME padding taps included.
    assert count_flops(conv, img, k, convention="theis2018") == 2 * 8 * 8 * 7 * (3 * 3 * 3 * 2 - 1)
    assert count_flops(lambda a: (a * a).sum(), img, convention="theis2018") == math.prod(img.shape)


def test_theis2018_convention_lists_nothing_as_unknown():
    r = flops_report(lambda x: jnp.sort(x) * 2.0, jnp.ones((5,)), convention="theis2018")
    assert r.flops == 5 and r.unknown_primitives == {}
    assert r.convention == "theis2018"


def test_seed_is_the_deprecated_spelling_of_theis2018():
    # jaxprune 0.1.0 called this convention "seed": it still counts the same, with a warning.
    f = lambda x, w: jnp.tanh(x @ w) + x @ w  # noqa: E731
    x, w = jnp.ones((4, 6)), jnp.ones((6, 6))
    expected = count_flops(f, x, w, convention="theis2018")
    with pytest.warns(DeprecationWarning, match="convention=.seed. is deprecated") as caught:
        assert count_flops(f, x, w, convention="seed") == expected
    assert caught[0].filename == __file__  # the warning points at the caller
    with pytest.warns(DeprecationWarning, match="theis2018"):
        r = flops_report(f, x, w, convention="seed")
    assert r.flops == expected and r.convention == "theis2018"
    with pytest.raises(ValueError, match=r"one of \('xla', 'theis2018'\), got 'tf'"):
        count_flops(f, x, w, convention="tf")


def test_counts_are_deterministic_python_ints():
    model, params, x = _model("block")
    a = count_flops(model.apply, params, x)
    b = count_flops(jax.jit(model.apply), params, x)
    assert isinstance(a, int) and a == b
    assert np.int64(a) == a


# ---------------------------------------------------------------------------
# Pruning-aware counts: channel masks.


def _init(seed, shapes):
    # NumPy parameters: counting reads shapes only, and slicing them compiles nothing.
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def mlp_params(d_in=12, h1=8, h2=6, d_out=3):
    shapes = {"w1": (d_in, h1), "b1": (h1,), "w2": (h1, h2), "b2": (h2,), "w3": (h2, d_out)}
    return _init(1, shapes)


def masked_mlp(params, masks, x):
    """Fisher pruning's layout: a mask after each hidden non-linearity."""
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    if masks is not None:
        h = h * masks["h1"][None, :]
    h = jax.nn.relu(h @ params["w2"] + params["b2"][None, :])
    if masks is not None:
        h = h * masks["h2"][None, :]
    return jax.nn.log_softmax(h @ params["w3"])


def slice_mlp(params, masks):
    k1, k2 = np.asarray(masks["h1"]) > 0, np.asarray(masks["h2"]) > 0
    return {
        "w1": params["w1"][:, k1],
        "b1": params["b1"][k1],
        "w2": params["w2"][k1][:, k2],
        "b2": params["b2"][k2],
        "w3": params["w3"][k2],
    }


def cnn_params(cin=3, c1=6, c2=5, hw=8, classes=4):
    # conv1 SAME 3x3 -> c1, conv2 stride 2 -> c2, depthwise 3x3, flatten, dense.
    shapes = {
        "k1": (3, 3, cin, c1),
        "b1": (c1,),
        "scale": (c1,),
        "k2": (3, 3, c1, c2),
        "dw": (3, 3, 1, c2),
        "w": ((hw // 2) * (hw // 2) * c2, classes),
    }
    return _init(2, shapes)


def masked_cnn(params, masks, x):
    dn = ("NHWC", "HWIO", "NHWC")
    h = lax.conv_general_dilated(x, params["k1"], (1, 1), "SAME", dimension_numbers=dn)
    per_channel = lambda v: v[None, None, None, :]  # noqa: E731
    h = jax.nn.relu(h * per_channel(params["scale"]) + per_channel(params["b1"]))  # BN-like
    if masks is not None:
        h = h * per_channel(masks["c1"])
    h = lax.conv_general_dilated(h, params["k2"], (2, 2), "SAME", dimension_numbers=dn)
    h = jax.nn.relu(h)
    if masks is not None:
        h = h * per_channel(masks["c2"])
    c = h.shape[-1]
    h = lax.conv_general_dilated(
        h, params["dw"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=c
    )
    h = jnp.tanh(h)
    return h.reshape(h.shape[0], -1) @ params["w"]


def slice_cnn(params, masks, hw=8):
    k1, k2 = np.asarray(masks["c1"]) > 0, np.asarray(masks["c2"]) > 0
    w = params["w"].reshape(hw // 2, hw // 2, k2.shape[0], -1)[:, :, k2]
    return {
        "k1": params["k1"][..., k1],
        "b1": params["b1"][k1],
        "scale": params["scale"][k1],
        "k2": params["k2"][:, :, k1][..., k2],
        "dw": params["dw"][..., k2],
        "w": w.reshape(-1, w.shape[-1]),
    }


def _random_masks(seed, sizes, keep=0.6):
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in sizes.items():
        m = (rng.random(n) < keep).astype(np.float32)
        m[rng.integers(n)] = 1.0  # keep at least one feature
        out[name] = m
    return out


NETS = {
    "mlp": (mlp_params, masked_mlp, slice_mlp, lambda: jnp.ones((5, 12)), {"h1": 8, "h2": 6}),
    "cnn": (cnn_params, masked_cnn, slice_cnn, lambda: jnp.ones((2, 8, 8, 3)), {"c1": 6, "c2": 5}),
}


@pytest.mark.parametrize("convention", ["xla", "theis2018"])
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_masks_count_the_physically_smaller_network(net, convention, seed):
    make_params, fn, slicer, make_x, sizes = NETS[net]
    params, x = make_params(), make_x()
    masks = _random_masks(seed, sizes)
    pruned = count_flops(fn, params, masks, x, channel_argnums=1, convention=convention)
    small = slicer(params, masks)
    dense_small = count_flops(fn, small, None, x, convention=convention)
    assert float(pruned) == pytest.approx(dense_small, rel=1e-6)
    # All-ones masks: the dense network minus the free mask multiplications.
    ones = {k: np.ones(n, np.float32) for k, n in sizes.items()}
    full = count_flops(fn, params, ones, x, channel_argnums=1, convention=convention)
    assert float(full) == pytest.approx(count_flops(fn, params, None, x, convention=convention))


@pytest.mark.parametrize("net", sorted(NETS))
def test_gradient_is_each_features_marginal_cost(net):
    make_params, fn, _, make_x, sizes = NETS[net]
    params, x = make_params(), make_x()
    masks = _random_masks(3, sizes)

    def cost(m):
        return count_flops(fn, params, m, x, channel_argnums=1)

    grads = jax.grad(cost)(masks)
    base = float(cost(masks))
    for name, m in masks.items():
        for i in range(m.shape[0]):
            flipped = dict(masks)
            flipped[name] = m.copy()
            flipped[name][i] = 1.0 - m[i]
            recount = float(cost(flipped))
            # Removing a kept feature saves grad; adding a pruned one costs grad.
            change = base - recount if m[i] == 1 else recount - base
            assert float(grads[name][i]) == pytest.approx(change, rel=1e-6), (name, i)
            assert change > 0


def test_count_with_masks_is_jittable():
    params, x = mlp_params(), jnp.ones((5, 12))
    masks = _random_masks(0, {"h1": 8, "h2": 6})
    cost = jax.jit(lambda m: count_flops(masked_mlp, params, m, x, channel_argnums=1))
    assert float(cost(masks)) == float(count_flops(masked_mlp, params, masks, x, channel_argnums=1))


def test_unit_masks_on_kernels():
    w1, w2 = jnp.ones((10, 7)), jnp.ones((7, 3))
    x = jnp.ones((4, 10))

    def fn(w1, w2, m, x):
        w1 = w1 if m is None else w1 * m[None, :]  # zero whole output units
        return jnp.tanh(x @ w1 + 1.0) @ w2

    m = jnp.array([1, 0, 1, 1, 0, 0, 1], jnp.float32)
    keep = np.asarray(m) > 0
    got = count_flops(fn, w1, w2, m, x, channel_argnums=2)
    want = count_flops(fn, w1[:, keep], w2[keep], None, x)
    assert float(got) == want


def test_a_mask_on_one_branch_of_a_residual_leaves_the_sum_dense():
    w1, w2 = jnp.ones((6, 6)), jnp.ones((6, 6))
    x = jnp.ones((3, 6))

    def fn(w1, w2, m, x):
        h = jnp.tanh(x @ w1) * m[None, :]
        return (h + x) @ w2

    m = jnp.array([1, 1, 0, 0, 0, 1], jnp.float32)
    got = float(count_flops(fn, w1, w2, m, x, channel_argnums=2))
    # The first matmul and the tanh shrink to 3 features; the skip connection
    # keeps all 6 features of the sum and of the second matmul's input.
    assert got == 2 * 3 * 6 * 3 + 3 * 6 + 2 * 3 * 6 * 6


def test_mask_reaching_a_feature_shared_by_two_consumers():
    # h feeds two masked heads: a feature of h is needed unless both drop it.
    w, a, b = jnp.ones((5, 4)), jnp.ones((4, 2)), jnp.ones((4, 2))
    x = jnp.ones((3, 5))

    def fn(w, a, b, masks, x):
        h = x @ w
        return (h * masks["a"][None, :]) @ a + (h * masks["b"][None, :]) @ b

    masks = {"a": jnp.array([1.0, 1.0, 0.0, 0.0]), "b": jnp.array([0.0, 1.0, 1.0, 0.0])}
    got = count_flops(fn, w, a, b, masks, x, channel_argnums=3)
    # x @ w computes features {0, 1, 2}; each head contracts over 2 features.
    assert float(got) == 2 * 3 * 5 * 3 + 2 * (2 * 3 * 2 * 2) + 3 * 2
    grads = jax.grad(lambda m: count_flops(fn, w, a, b, m, x, channel_argnums=3))(masks)
    # Feature 1 is kept by both heads: dropping it from one head saves only
    # that head's share.
    assert float(grads["a"][1]) == 2 * 3 * 2
    assert float(grads["a"][0]) == 2 * 3 * 2 + 2 * 3 * 5


def test_report_with_masks_holds_dense_and_pruned_counts():
    params, x = mlp_params(), jnp.ones((5, 12))
    masks = _random_masks(0, {"h1": 8, "h2": 6})
    r = flops_report(masked_mlp, params, masks, x, channel_argnums=1)
    assert r.flops == count_flops(masked_mlp, params, masks, x)
    assert r.pruned_flops == pytest.approx(
        float(count_flops(masked_mlp, params, masks, x, channel_argnums=1)), rel=1e-6
    )
    assert r.pruned_flops < r.flops
    assert sum(r.pruned_by_primitive.values()) == pytest.approx(r.pruned_flops)
    assert "pruned" in str(r)


# ---------------------------------------------------------------------------
# Pruning-aware counts: unstructured weight masks.


def test_weight_masks_scale_contractions_by_density():
    params, x = mlp_params(), jnp.ones((5, 12))
    rng = np.random.default_rng(0)
    wm = {k: True for k in params}
    wm["w1"] = jnp.asarray(rng.random(params["w1"].shape) < 0.25)
    density = float(np.mean(np.asarray(wm["w1"])))
    fn = functools.partial(masked_mlp, masks=None)
    fn = lambda p, x: masked_mlp(p, None, x)  # noqa: E731
    dense = flops_report(fn, params, x)
    got = count_flops(fn, params, x, weight_masks=(wm, None))
    dot1 = 2 * 5 * 12 * 8
    assert float(got) == pytest.approx(dense.flops - (1 - density) * dot1, rel=1e-6)
    r = flops_report(fn, params, x, weight_masks=(wm, None))
    assert r.flops == dense.flops and r.pruned_flops == pytest.approx(float(got), rel=1e-6)


def test_weight_and_channel_masks_combine():
    params, x = mlp_params(), jnp.ones((5, 12))
    masks = _random_masks(0, {"h1": 8, "h2": 6})
    wm = {k: True for k in params}
    wm["w3"] = jnp.zeros(params["w3"].shape).at[0].set(1.0)
    got = count_flops(
        masked_mlp, params, masks, x, channel_argnums=1, weight_masks=(wm, None, None)
    )
    without = count_flops(masked_mlp, params, masks, x, channel_argnums=1)
    kept2 = float(masks["h2"].sum())
    dot3 = 2 * 5 * kept2 * 3
    density = 3 / (6 * 3)
    assert float(got) == pytest.approx(float(without) - (1 - density) * dot3, rel=1e-6)


def test_weight_masks_reach_scanned_layers():
    # Layers stacked for lax.scan, each with its own mask: the count is the sum of the unrolled
    # layers' counts, each with its own density; a weight the body reads as a constant too.
    layers, width = 4, 8
    rng = np.random.default_rng(1)
    stack = jnp.asarray(rng.standard_normal((layers, width, width)), jnp.float32)
    shared = jnp.asarray(rng.standard_normal((width, width)), jnp.float32)
    m_stack = jnp.asarray(
        rng.random((layers, width, width)) < np.linspace(0.1, 0.9, layers)[:, None, None]
    )
    m_shared = jnp.asarray(rng.random((width, width)) < 0.3)
    x = jnp.ones((3, width))

    def scanned(p, x):
        def body(h, w):
            return jnp.tanh(h @ w) @ p["shared"], None

        return lax.scan(body, x, p["stack"])[0]

    def one_layer(p, x):
        return jnp.tanh(x @ p["w"]) @ p["shared"]

    params = {"stack": stack, "shared": shared}
    got = count_flops(
        scanned, params, x, weight_masks=({"stack": m_stack, "shared": m_shared}, None)
    )
    want = sum(
        float(
            count_flops(
                one_layer,
                {"w": stack[i], "shared": shared},
                x,
                weight_masks=({"w": m_stack[i], "shared": m_shared}, None),
            )
        )
        for i in range(layers)
    )
    assert float(got) == pytest.approx(want, rel=1e-6)
    dense = count_flops(scanned, params, x)
    assert float(got) < 0.7 * float(dense)
    # A mask that reaches no contraction inside the body is still reported.
    with pytest.raises(ValueError, match="bias"):
        count_flops(
            lambda p, x: lax.scan(lambda h, b: (h + b[None], None), x, p["bias"])[0],
            {"bias": jnp.ones((2, width))},
            x,
            weight_masks=({"bias": jnp.ones((2, width))}, None),
        )


# ---------------------------------------------------------------------------
# Bad masks.


def test_channel_mask_that_multiplies_nothing_is_named():
    params, x = mlp_params(), jnp.ones((5, 12))
    masks = {"h1": jnp.ones(8), "h2": jnp.ones(6), "spare": jnp.ones(8)}
    with pytest.raises(ValueError, match="spare"):
        count_flops(masked_mlp, params, masks, x, channel_argnums=1)


def test_bad_channel_masks_raise():
    params, x = mlp_params(), jnp.ones((5, 12))
    with pytest.raises(ValueError, match="1-D"):
        count_flops(
            lambda p, m, x: masked_mlp(p, {"h1": m[0], "h2": m[1, :6]}, x),
            params,
            jnp.ones((2, 8)),
            x,
            channel_argnums=1,
        )
    with pytest.raises(ValueError, match="channel_argnums"):
        count_flops(masked_mlp, params, None, x, channel_argnums=5)
    with pytest.raises(TypeError, match="channel_argnums"):
        count_flops(masked_mlp, params, None, x, channel_argnums=["a"])


def test_masks_flowing_into_unsupported_ops_raise():
    w = jnp.ones((4, 4))

    def into_scan(w, m, xs):
        h = xs * m[None, :]
        return lax.scan(lambda c, x: (c + x @ w, None), jnp.zeros(4), h)[0]

    with pytest.raises(ValueError, match="scan"):
        count_flops(into_scan, w, jnp.ones(4), jnp.ones((3, 4)), channel_argnums=1)

    def used_otherwise(w, m, x):
        return (x @ w) * m.sum()

    with pytest.raises(ValueError, match="reduce_sum"):
        count_flops(used_otherwise, w, jnp.ones(4), jnp.ones((3, 4)), channel_argnums=1)


def test_bad_weight_masks_raise():
    params, x = mlp_params(), jnp.ones((5, 12))
    fn = lambda p, x: masked_mlp(p, None, x)  # noqa: E731
    wm = {k: True for k in params}
    with pytest.raises(ValueError, match="one entry"):
        count_flops(fn, params, x, weight_masks=(wm,))
    with pytest.raises(TypeError, match="weight_masks"):
        count_flops(fn, params, x, weight_masks=wm)
    bad = dict(wm, w1=jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="w1"):
        count_flops(fn, params, x, weight_masks=(bad, None))
    bias = dict(wm, b1=jnp.ones(8))
    with pytest.raises(ValueError, match="b1"):  # a bias feeds no contraction
        count_flops(fn, params, x, weight_masks=(bias, None))
    with pytest.raises(ValueError, match="structure"):
        count_flops(fn, params, x, weight_masks=({"w1": True}, None))
    # A density is a fraction: mask values outside [0, 1] are refused (a mask of 2s counted
    # twice the dense FLOPs); inside it, soft masks scale the count, and under jit nothing is
    # checked (the values are not known).
    twos = dict(wm, w1=jnp.full(params["w1"].shape, 2.0))
    with pytest.raises(ValueError, match=r"w1 has values outside \[0, 1\]"):
        count_flops(fn, params, x, weight_masks=(twos, None))
    with pytest.raises(ValueError, match="outside"):
        count_flops(fn, params, x, weight_masks=(dict(wm, w1=-1.0), None))
    half = dict(wm, w1=jnp.full(params["w1"].shape, 0.5))
    dense = count_flops(fn, params, x)
    assert float(count_flops(fn, params, x, weight_masks=(half, None))) < float(dense)


def test_attention_head_and_mlp_masks_count_the_smaller_transformer():
    b, t, c, d, f = 2, 5, 16, 4, 32

    def block(p, masks, x, heads):
        def norm(x):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) * lax.rsqrt(var + 1e-5) * p["g"][None, None, :]

        h = norm(x)
        q, k, v = ((h @ p[w]).reshape(b, t, heads, d) for w in ("wq", "wk", "wv"))
        a = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d), axis=-1)
        o = jnp.einsum("bhts,bshd->bthd", a, v)
        if masks is not None:
            o = o * masks["heads"][None, None, :, None]
        x = x + o.reshape(b, t, heads * d) @ p["wo"]
        h = jax.nn.gelu(norm(x) @ p["w1"])
        if masks is not None:
            h = h * masks["mlp"][None, None, :]
        return x + h @ p["w2"]

    heads = 4
    shapes = {"wq": (c, heads * d), "wk": (c, heads * d), "wv": (c, heads * d)}
    shapes.update(wo=(heads * d, c), w1=(c, f), w2=(f, c), g=(c,))
    params, x = _init(3, shapes), jnp.ones((b, t, c))
    masks = _random_masks(4, {"heads": heads, "mlp": f}, keep=0.5)
    got = count_flops(block, params, masks, x, heads=heads, channel_argnums=1)

    kh, km = masks["heads"] > 0, masks["mlp"] > 0
    per_head = lambda w: w.reshape(c, heads, d)[:, kh].reshape(c, -1)  # noqa: E731
    small = dict(params, wq=per_head(params["wq"]), wk=per_head(params["wk"]))
    small.update(wv=per_head(params["wv"]), w1=params["w1"][:, km], w2=params["w2"][km])
    small["wo"] = params["wo"].reshape(heads, d, c)[kh].reshape(-1, c)
    want = count_flops(block, small, None, x, heads=int(kh.sum()))
    assert float(got) == pytest.approx(want, rel=1e-6)

    grads = jax.grad(lambda m: count_flops(block, params, m, x, heads=heads, channel_argnums=1))(
        masks
    )
    for name in ("heads", "mlp"):
        i = int(np.argmax(masks[name]))  # a kept feature
        fewer = dict(masks)
        fewer[name] = masks[name].copy()
        fewer[name][i] = 0.0
        drop = float(got) - float(
            count_flops(block, params, fewer, x, heads=heads, channel_argnums=1)
        )
        assert float(grads[name][i]) == pytest.approx(drop, rel=1e-6)


def test_mask_before_a_per_channel_affine_and_implicit_broadcasts():
    # conv -> mask -> scale and shift (shaped (1, 1, 1, C), broadcast
    # implicitly) -> relu -> conv: the affine and relu see only kept channels.
    dn = ("NHWC", "HWIO", "NHWC")
    params = _init(5, {"k1": (3, 3, 2, 6), "k2": (1, 1, 6, 4), "scale": (6,), "shift": (6,)})
    x = jnp.ones((1, 6, 6, 2))

    def fn(p, m, x):
        h = lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME", dimension_numbers=dn)
        if m is not None:
            h = h * m.reshape(1, 1, 1, -1)
        c = h.shape[-1]
        h = jax.nn.relu(h * p["scale"].reshape(1, 1, 1, c) + p["shift"].reshape(1, 1, 1, c))
        return lax.conv_general_dilated(h, p["k2"], (1, 1), "VALID", dimension_numbers=dn)

    m = np.array([1, 0, 0, 1, 1, 0], np.float32)
    keep = m > 0
    small = {"k1": params["k1"][..., keep], "k2": params["k2"][:, :, keep]}
    small.update(scale=params["scale"][keep], shift=params["shift"][keep])
    got = count_flops(fn, params, m, x, channel_argnums=1)
    assert float(got) == count_flops(fn, small, None, x)


def test_while_trip_counts_for_other_comparisons():
    x = jnp.ones((4,))

    def down(x):  # i = 10, 8, 6, 4, 2: five trips
        return lax.while_loop(lambda c: c[0] > 0, lambda c: (c[0] - 2, c[1] * 2.0), (10, x))[1]

    assert count_flops(down, x) == 5 * (4 + 1) + 6

    def never_lands(x):  # i != 5 never becomes false when stepping by 2 from 0
        return lax.while_loop(lambda c: c[0] != 5, lambda c: (c[0] + 2, c[1] * 2.0), (0, x))[1]

    assert flops_report(never_lands, x).dynamic_loops == ("<top>",)
