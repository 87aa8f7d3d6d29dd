"""Dependency groups and compaction, against hand-written groups and masked models."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src.flops import count_flops
from jaxprune._src.graph.compact import compact, group_weight_masks
from jaxprune._src.graph.groups import dependency_groups, group_masks, group_scores

RTOL = 1e-5


def _keep(groups, seed=0, frac=0.5):
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        k = rng.random(g.size) < frac
        k[rng.integers(g.size)] = True
        out.append(k)
    return out


def _members(group):
    return set(group.members)


def _by_name(groups):
    return {g.name: g for g in groups}


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=1e-5)


def _close_outputs(a, b):
    """Outputs of long float32 sums whose order differs (the compacted convolution sums fewer
    channels, in another order): an entry near zero is compared to the largest output."""
    b = np.asarray(b)
    atol = max(1e-5, 1e-6 * float(np.abs(b).max()))
    np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=atol)


def _close_sums(a, b):
    """For gradients: long float32 sums in another order, so relative to the largest entry."""
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


# ---------------------------------------------------------------------------
# A plain-dict MLP.


def mlp(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"][None, :])
    h = jnp.tanh(h @ p["w2"] + p["b2"][None, :])
    return h @ p["w3"] + p["b3"][None, :]


def _normal(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mlp_params():
    shapes = {"w1": (5, 7), "b1": (7,), "w2": (7, 6), "b2": (6,), "w3": (6, 3), "b3": (3,)}
    return {name: _normal(shape, seed=i) for i, (name, shape) in enumerate(shapes.items())}


def test_mlp_groups_and_compaction():
    p = _mlp_params()
    x = _normal((4, 5))
    groups = dependency_groups(mlp, p, x)
    assert [g.name for g in groups] == ["w1:1", "w2:1"]
    assert _members(groups[0]) == {("w1", 1), ("b1", 0), ("w2", 0)}
    assert _members(groups[1]) == {("w2", 1), ("b2", 0), ("w3", 0)}
    assert [g.size for g in groups] == [7, 6]
    blocked = {(b.path, b.axis): b.reason for b in groups.blocked}
    assert set(blocked) == {("w1", 0), ("w3", 1), ("b3", 0)}
    assert "input" in blocked[("w1", 0)] and "output" in blocked[("w3", 1)]

    k1 = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    k2 = np.array([0, 1, 1, 0, 1, 0], bool)
    small, small_fn = compact(mlp, p, [k1, k2], x)
    # Independent reference: the slices written out by hand.
    want = {
        "w1": p["w1"][:, k1],
        "b1": p["b1"][k1],
        "w2": p["w2"][k1][:, k2],
        "b2": p["b2"][k2],
        "w3": p["w3"][k2],
        "b3": p["b3"],
    }
    for name in want:
        np.testing.assert_array_equal(small[name], want[name])
    masked = dict(p)
    masked["w1"] = p["w1"] * k1[None, :]
    masked["b1"] = p["b1"] * k1
    masked["w2"] = p["w2"] * k1[:, None] * k2[None, :]
    masked["b2"] = p["b2"] * k2
    masked["w3"] = p["w3"] * k2[:, None]
    _close(small_fn(small, x), jax.jit(mlp)(masked, x))
    # The masks group_weight_masks gives are the same hand-written ones.
    masks = group_weight_masks(p, groups, [k1, k2])
    for name in ("w1", "b1", "w2", "b2", "w3"):
        np.testing.assert_array_equal(p[name] * masks[name], masked[name])
    assert masks["b3"] is True


def test_mlp_scores_and_masks():
    p = _mlp_params()
    x = jnp.ones((2, 5))
    groups = dependency_groups(mlp, p, x)
    w1, b1, w2 = (np.asarray(p[n], np.float64) for n in ("w1", "b1", "w2"))
    want_l2 = np.sqrt((w1**2).sum(0) + b1**2 + (w2**2).sum(1))
    want_l1 = np.abs(w1).sum(0) + np.abs(b1) + np.abs(w2).sum(1)
    s2 = group_scores(p, groups)
    s1 = group_scores(p, groups, criterion="l1")
    np.testing.assert_allclose(s2[0], want_l2, rtol=1e-6)
    np.testing.assert_allclose(s1[0], want_l1, rtol=1e-6)
    np.testing.assert_allclose(
        group_scores(p, groups, exclude="^b")[0], np.sqrt((w1**2).sum(0) + (w2**2).sum(1)), 1e-6
    )
    masks = group_masks(s2, groups, sparsity=0.5)
    for m, s in zip(masks, s2, strict=True):
        k = max(int(np.round(s.size * 0.5)), 1)
        assert m.sum() == k
        assert np.min(np.asarray(s)[m]) >= np.max(np.asarray(s)[~m])
    # Global: one threshold; the group whose scores are all tiny still keeps one channel.
    scores = [jnp.array([5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]), jnp.full((6,), 0.1)]
    masks = group_masks(scores, groups, sparsity=0.6, scope="global")
    np.testing.assert_array_equal(masks[0], [False, False, True, True, True, True, True])
    assert masks[1].sum() == 1 and masks[1][0]


def test_bad_input_names_group_and_leaves():
    p = _mlp_params()
    x = jnp.ones((2, 5))
    groups = dependency_groups(mlp, p, x)
    ok = [np.ones(7, bool), np.ones(6, bool)]
    with pytest.raises(ValueError, match=r"w1:1.*shape \(7,\).*w1\[axis 1\]"):
        compact(mlp, p, [np.ones(6, bool), ok[1]], x)
    with pytest.raises(ValueError, match=r"every channel of group 'w2:1'.*w3\[axis 0\]"):
        compact(mlp, p, [ok[0], np.zeros(6, bool)], x)
    with pytest.raises(ValueError, match=r"do not exist: nope.*w1:1, w2:1"):
        compact(mlp, p, {"nope": ok[0]}, x)
    with pytest.raises(ValueError, match="1 entries but there are 2 groups"):
        compact(mlp, p, [ok[0]], x)
    with pytest.raises(TypeError, match="bool vector"):
        compact(mlp, p, [np.ones(7), ok[1]], x)
    with pytest.raises(ValueError, match="sparsity"):
        group_masks(group_scores(p, groups), groups, sparsity=1.0)
    with pytest.raises(ValueError, match="scope"):
        group_masks(group_scores(p, groups), groups, sparsity=0.5, scope="layer")
    with pytest.raises(ValueError, match="criterion"):
        group_scores(p, groups, criterion="l3")
    with pytest.raises(TypeError, match="params leaf 'a'"):
        dependency_groups(mlp, {"a": 1.0}, x)
    # A mapping may leave groups out: they keep every channel.
    small, small_fn = compact(mlp, p, {"w2:1": np.arange(6) < 2}, x)
    assert small["w1"].shape == (5, 7) and small["w3"].shape == (2, 3)
    _, small_fn = compact(mlp, p, ok, x)
    with pytest.raises(ValueError, match=r"'b1' has shape \(7,\), expected \(3,\)"):
        compact(mlp, p, [np.arange(7) < 3, ok[1]], x)[1](p, x)


# ---------------------------------------------------------------------------
# A linen CNN: Conv - BatchNorm - relu - Conv - relu - flatten - Dense.


class CNN(nn.Module):
    widths: tuple[int, int] = (8, 6)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.widths[0], (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.relu(nn.Conv(self.widths[1], (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(x)


def _init(module, x, seed=3):
    """Random numpy values for every variable (positive running variances), so that no
    test passes by zeros; numpy keeps the tests free of per-op compilations."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        v = rng.standard_normal(leaf.shape).astype(np.float32)
        if "var" in jax.tree_util.keystr(path):
            v = np.abs(v) + np.float32(0.5)
        out.append(v)
    return jax.tree.unflatten(tdef, out)


@pytest.fixture(scope="module")
def cnn():
    m = CNN()
    x = _normal((2, 5, 5, 3))
    v = _init(m, x)
    return m, v, x


def test_cnn_groups(cnn):
    m, v, x = cnn
    groups = dependency_groups(m.apply, v, x)
    assert [g.name for g in groups] == ["params/Conv_0/kernel:3", "params/Conv_1/kernel:3"]
    g0, g1 = groups
    assert _members(g0) == {
        ("params/Conv_0/kernel", 3),
        ("params/Conv_0/bias", 0),
        ("params/BatchNorm_0/scale", 0),
        ("params/BatchNorm_0/bias", 0),
        ("batch_stats/BatchNorm_0/mean", 0),
        ("batch_stats/BatchNorm_0/var", 0),
        ("params/Conv_1/kernel", 2),
    }
    assert _members(g1) == {
        ("params/Conv_1/kernel", 3),
        ("params/Conv_1/bias", 0),
        ("params/Dense_0/kernel", 0),
    }
    assert g0.size == 8 and g1.size == 6
    # The dense layer reads the flattened (5, 5, 6) activation: channel c is every 6th row.
    i = g1.members.index(("params/Dense_0/kernel", 0))
    np.testing.assert_array_equal(g1.positions(i)[2], 2 + 6 * np.arange(25))
    blocked = {(b.path, b.axis) for b in groups.blocked}
    assert blocked == {
        ("params/Conv_0/kernel", 2),
        ("params/Dense_0/kernel", 1),
        ("params/Dense_0/bias", 0),
    }


def _cnn_masked(v, k0, k1):
    """The masked CNN written out by hand."""
    p = jax.tree.map(lambda a: a, v)
    q, s = dict(p["params"]), dict(p["batch_stats"])
    q["Conv_0"] = {
        "kernel": v["params"]["Conv_0"]["kernel"] * k0[None, None, None, :],
        "bias": v["params"]["Conv_0"]["bias"] * k0,
    }
    q["BatchNorm_0"] = {n: v["params"]["BatchNorm_0"][n] * k0 for n in ("scale", "bias")}
    s["BatchNorm_0"] = {n: v["batch_stats"]["BatchNorm_0"][n] * k0 for n in ("mean", "var")}
    q["Conv_1"] = {
        "kernel": v["params"]["Conv_1"]["kernel"] * (k0[:, None] & k1[None, :])[None, None],
        "bias": v["params"]["Conv_1"]["bias"] * k1,
    }
    dk = v["params"]["Dense_0"]["kernel"].reshape(5, 5, 6, 3) * k1[None, None, :, None]
    q["Dense_0"] = {"kernel": dk.reshape(150, 3), "bias": v["params"]["Dense_0"]["bias"]}
    return {"params": q, "batch_stats": s}


def test_cnn_compaction_matches_masked_and_rebuilt(cnn):
    m, v, x = cnn
    groups = dependency_groups(m.apply, v, x)
    k0, k1 = _keep(groups, seed=1)
    small, small_fn = compact(m.apply, v, [k0, k1], x)
    masked = _cnn_masked(v, k0, k1)
    _close(small_fn(small, x), jax.jit(m.apply)(masked, x))
    masks = group_weight_masks(v, groups, [k0, k1])
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(lambda w, mk: w * mk, v, masks)),
        jax.tree.leaves(masked),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # A CNN built with the smaller widths, given the sliced variables, is the same model.
    rebuilt = CNN(widths=(int(k0.sum()), int(k1.sum())))
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(
        jnp.shape, jax.eval_shape(rebuilt.init, jax.random.key(0), x)
    )
    _close(small_fn(small, x), jax.jit(rebuilt.apply)(small, x))
    # Fewer FLOPs than the dense model, and exactly those of the rebuilt model.
    dense_flops = count_flops(m.apply, v, x)
    small_flops = count_flops(small_fn, small, x)
    assert small_flops < dense_flops
    assert small_flops == count_flops(rebuilt.apply, small, x)


def test_cnn_small_fn_is_a_jax_function(cnn):
    m, v, x = cnn
    groups = dependency_groups(m.apply, v, x)
    k0, k1 = _keep(groups, seed=2)
    small, small_fn = compact(m.apply, v, [k0, k1], x)
    masked = _cnn_masked(v, k0, k1)
    # Another batch size, under jit and vmap.
    x7 = _normal((7, 5, 5, 3), seed=5)
    _close_outputs(jax.jit(small_fn)(small, x7), jax.jit(m.apply)(masked, x7))
    per_example = jax.vmap(lambda xi: small_fn(small, xi[None])[0])(x7)
    _close_outputs(per_example, jax.jit(m.apply)(masked, x7))

    # Gradients on the kept channels equal the masked model's.
    # A loss linear in the outputs: its gradient does not amplify the rounding of the outputs.
    target = _normal((2, 3), seed=9)

    def loss(f, params):
        return jnp.sum(f(params, x) * target)

    g_small = jax.jit(jax.grad(lambda q: loss(small_fn, q)))(small)
    g_dense = jax.grad(lambda q: loss(m.apply, q))(masked)
    w = g_dense["params"]["Conv_1"]["kernel"][:, :, k0][..., k1]
    _close_sums(g_small["params"]["Conv_1"]["kernel"], w)
    d = g_dense["params"]["Dense_0"]["kernel"].reshape(5, 5, 6, 3)[:, :, k1]
    _close_sums(g_small["params"]["Dense_0"]["kernel"], d.reshape(-1, 3))
    _close_sums(
        g_small["params"]["BatchNorm_0"]["scale"], g_dense["params"]["BatchNorm_0"]["scale"][k0]
    )


# ---------------------------------------------------------------------------
# Residual blocks, depthwise-separable convolutions, concatenation.


class ResNetish(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        # Projection shortcut.
        y = nn.relu(nn.Conv(6, (3, 3), name="a1")(x))
        y = nn.Conv(12, (3, 3), name="a2")(y)
        x = nn.relu(y + nn.Conv(12, (1, 1), name="proj")(x))
        # Identity shortcut.
        y = nn.relu(nn.Conv(5, (3, 3), name="b1")(x))
        y = nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(12, (3, 3), name="b2")(y))
        x = nn.relu(x + y)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def test_residual_ties():
    m = ResNetish()
    x = _normal((2, 6, 6, 3))
    v = _init(m, x)
    groups = _by_name(dependency_groups(m.apply, v, x))
    assert set(groups) == {
        "params/stem/kernel:3",
        "params/a1/kernel:3",
        "params/a2/kernel:3",
        "params/b1/kernel:3",
    }
    assert _members(groups["params/stem/kernel:3"]) == {
        ("params/stem/kernel", 3),
        ("params/stem/bias", 0),
        ("params/a1/kernel", 2),
        ("params/proj/kernel", 2),
    }
    # The projection add ties a2 and proj; the identity add ties them to b2, its batch
    # norm, b1's input and the head.
    assert _members(groups["params/a2/kernel:3"]) == {
        ("params/a2/kernel", 3),
        ("params/a2/bias", 0),
        ("params/proj/kernel", 3),
        ("params/proj/bias", 0),
        ("params/b1/kernel", 2),
        ("params/b2/kernel", 3),
        ("params/b2/bias", 0),
        ("params/bn/scale", 0),
        ("params/bn/bias", 0),
        ("batch_stats/bn/mean", 0),
        ("batch_stats/bn/var", 0),
        ("params/head/kernel", 0),
    }
    gs = dependency_groups(m.apply, v, x)
    keep = _keep(gs, seed=4)
    small, small_fn = compact(m.apply, v, keep, x)
    masked = jax.tree.map(lambda w, mk: w * mk, v, group_weight_masks(v, gs, keep))
    _close(small_fn(small, x), jax.jit(m.apply)(masked, x))
    names = [g.name for g in gs]
    k_stem = keep[names.index("params/stem/kernel:3")]
    k_res = keep[names.index("params/a2/kernel:3")]
    assert small["params"]["proj"]["kernel"].shape == (1, 1, k_stem.sum(), k_res.sum())


class Separable(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="c0")(x))
        x = nn.Conv(8, (3, 3), feature_group_count=8, name="dw")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
        x = nn.relu(nn.Conv(10, (1, 1), name="pw")(x))
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def test_depthwise_ties_input_and_output():
    m = Separable()
    x = _normal((2, 6, 6, 3))
    v = _init(m, x)
    gs = dependency_groups(m.apply, v, x)
    assert [g.name for g in gs] == ["params/c0/kernel:3", "params/pw/kernel:3"]
    assert _members(gs[0]) == {
        ("params/c0/kernel", 3),
        ("params/c0/bias", 0),
        ("params/dw/kernel", 3),
        ("params/dw/bias", 0),
        ("params/bn/scale", 0),
        ("params/bn/bias", 0),
        ("batch_stats/bn/mean", 0),
        ("batch_stats/bn/var", 0),
        ("params/pw/kernel", 2),
    }
    keep = _keep(gs, seed=5)
    small, small_fn = compact(m.apply, v, keep, x)
    assert small["params"]["dw"]["kernel"].shape == (3, 3, 1, keep[0].sum())
    masked = jax.tree.map(lambda w, mk: w * mk, v, group_weight_masks(v, gs, keep))
    _close(small_fn(small, x), jax.jit(m.apply)(masked, x))


class DenseNetish(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="c0")(x))
        x = jnp.concatenate([x, nn.relu(nn.Conv(5, (3, 3), name="c1")(x))], -1)
        x = jnp.concatenate([x, nn.relu(nn.Conv(3, (3, 3), name="c2")(x))], -1)
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def test_concatenation_maps_index_ranges():
    m = DenseNetish()
    x = _normal((2, 4, 4, 3))
    v = _init(m, x)
    gs = dependency_groups(m.apply, v, x)
    by = _by_name(gs)
    c1 = by["params/c1/kernel:3"]
    assert _members(c1) == {
        ("params/c1/kernel", 3),
        ("params/c1/bias", 0),
        ("params/c2/kernel", 2),
        ("params/head/kernel", 0),
    }
    # c1's channels are input channels 4..8 of c2, and rows 4..8 of every 12 of the head.
    np.testing.assert_array_equal(
        c1.positions(c1.members.index(("params/c2/kernel", 2)))[:, 0], np.arange(4, 9)
    )
    head = c1.positions(c1.members.index(("params/head/kernel", 0)))
    np.testing.assert_array_equal(head[1], 5 + 12 * np.arange(16))
    keep = _keep(gs, seed=6)
    small, small_fn = compact(jax.jit(m.apply), v, keep, x)
    masked = jax.tree.map(lambda w, mk: w * mk, v, group_weight_masks(v, gs, keep))
    _close(small_fn(small, x), jax.jit(m.apply)(masked, x))
    n = sum(int(k.sum()) for k in keep)
    assert small["params"]["head"]["kernel"].shape == (16 * n, 2)


# ---------------------------------------------------------------------------
# What cannot be grouped is reported, and jit-wrapped functions are followed.


class LNMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(16, name="d0")(x))
        x = nn.relu(nn.LayerNorm(name="ln")(nn.Dense(12, name="d1")(x)))
        return nn.Dense(3, name="d2")(x)


def test_layernorm_axis_is_blocked():
    m = LNMLP()
    x = _normal((4, 6))
    v = _init(m, x)
    gs = dependency_groups(m.apply, v, x)
    assert [g.name for g in gs] == ["params/d0/kernel:1"]
    assert _members(gs[0]) == {
        ("params/d0/kernel", 1),
        ("params/d0/bias", 0),
        ("params/d1/kernel", 0),
    }
    reasons = {(b.path, b.axis): b.reason for b in gs.blocked}
    for key in [
        ("params/ln/scale", 0),
        ("params/ln/bias", 0),
        ("params/d1/kernel", 1),
        ("params/d1/bias", 0),
        ("params/d2/kernel", 0),
    ]:
        assert "reduced over by reduce_sum" in reasons[key]
    keep = _keep(gs, seed=7)
    small, small_fn = compact(m.apply, v, keep, x)
    masked = jax.tree.map(lambda w, mk: w * mk, v, group_weight_masks(v, gs, keep))
    _close(small_fn(small, x), jax.jit(m.apply)(masked, x))


def test_softmax_gather_and_grouped_conv_are_reported():
    def attn_like(p, x):
        h = x @ p["w"]
        return jax.nn.softmax(h, axis=-1) @ p["v"]

    p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    gs = dependency_groups(attn_like, p, jnp.ones((2, 3)))
    assert len(gs) == 0
    assert {(b.path, b.axis) for b in gs.blocked} >= {("w", 1), ("v", 0)}

    def embed(p, ids):
        return jnp.tanh(p["table"][ids] @ p["w1"]) @ p["w2"]

    p = {"table": jnp.ones((10, 4)), "w1": jnp.ones((4, 5)), "w2": jnp.ones((5, 2))}
    gs = dependency_groups(embed, p, jnp.array([1, 2]))
    # An embedding lookup takes whole rows: the table's feature axis is a group with the layer
    # that reads it; the vocabulary axis, which the gather indexes, is reported.
    assert [(g.name, g.members) for g in gs] == [
        ("table:1", (("table", 1), ("w1", 0))),
        ("w1:1", (("w1", 1), ("w2", 0))),
    ]
    assert {(b.path, b.axis) for b in gs.blocked if "gather" in b.reason} == {("table", 0)}

    def pick_channels(p, x):  # a gather along the channel axis
        h = jnp.tanh(x @ p["w1"])
        return h[:, jnp.array([0, 2, 4])] @ p["w2"]

    p = {"w1": jnp.ones((4, 5)), "w2": jnp.ones((3, 2))}
    gs = dependency_groups(pick_channels, p, jnp.ones((2, 4)))
    assert len(gs) == 0
    assert any(b.path == "w1" and b.axis == 1 and "gather" in b.reason for b in gs.blocked)

    class Grouped(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), feature_group_count=2, name="g")(nn.Conv(4, (1, 1), name="a")(x))
            return jnp.mean(x, axis=(1, 2))

    m = Grouped()
    x = np.ones((1, 4, 4, 2), np.float32)
    gs = dependency_groups(m.apply, _init(m, x), x)
    assert len(gs) == 0
    assert any("grouped convolution" in b.reason for b in gs.blocked)


def test_tied_embedding_stays_tied_and_compacts():
    # The table embeds the tokens and, transposed, computes the logits: its feature axis is
    # one group with the layers between (a language model with tied embeddings, no norm).
    def lm(p, ids):
        h = p["table"][ids]
        h = h + jnp.tanh(h @ p["w1"] + p["b1"][None, None]) @ p["w2"]
        return h @ p["table"].T

    p = {
        "table": _normal((11, 6), seed=1),
        "w1": _normal((6, 5), seed=2),
        "b1": _normal((5,), seed=3),
        "w2": _normal((5, 6), seed=4),
    }
    ids = jnp.array([[1, 4, 9], [0, 3, 10]])
    gs = dependency_groups(lm, p, ids)
    # Named after the layer that produces the channels (the table only looks them up).
    by_name = _by_name(gs)
    assert set(by_name) == {"w2:1", "w1:1"}
    assert _members(by_name["w2:1"]) == {("table", 1), ("w1", 0), ("w2", 1)}
    assert _members(by_name["w1:1"]) == {("w1", 1), ("b1", 0), ("w2", 0)}
    blocked = {(b.path, b.axis): b.reason for b in gs.blocked}
    assert "gather" in blocked[("table", 0)] or "output" in blocked[("table", 0)]
    keep = {"w2:1": np.array([1, 0, 1, 1, 0, 1], bool), "w1:1": np.arange(5) != 2}
    small, small_fn = compact(lm, p, keep, ids)
    assert small["table"].shape == (11, 4) and small["w1"].shape == (4, 4)
    full = [keep[g.name] for g in gs]
    masks = group_weight_masks(p, gs, full)
    masked = jax.tree.map(lambda w, m: w * m, p, masks)
    _close(small_fn(small, ids), jax.jit(lm)(masked, ids))
    assert count_flops(small_fn, small, ids) < count_flops(lm, p, ids)


def test_jit_wrapped_fn_gives_the_same_groups():
    p = _mlp_params()
    x = jnp.ones((3, 5))

    @jax.jit
    def wrapped(p, x):
        return jax.checkpoint(mlp)(p, x)

    assert dependency_groups(wrapped, p, x) == dependency_groups(mlp, p, x)
    keep = _keep(dependency_groups(mlp, p, x), seed=8)
    small, small_fn = compact(wrapped, p, keep, x)
    _, ref_fn = compact(mlp, p, keep, x)
    _close(small_fn(small, x), ref_fn(small, x))


def test_taylor_group_scores():
    p = _mlp_params()
    x = jnp.asarray(_normal((4, 5), seed=3))
    groups = dependency_groups(mlp, p, x)

    def loss(q):
        return jnp.sum(mlp(q, x) ** 2)

    g = jax.grad(loss)(p)
    got = group_scores(p, groups, criterion="taylor", grads=g)
    # Against NumPy: |sum over the channel's slices of every member of w * g|.
    w1, b1, w2 = (np.asarray(p[n], np.float64) for n in ("w1", "b1", "w2"))
    g1, gb1, g2 = (np.asarray(g[n], np.float64) for n in ("w1", "b1", "w2"))
    want = np.abs((w1 * g1).sum(0) + b1 * gb1 + (w2 * g2).sum(1))
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # It is the derivative of the loss along the removal of the channel (every member's slices
    # of the channel moved towards zero together), computed here with jax.jvp.
    for c in range(groups[0].size):
        keep = [np.arange(groups[0].size) != c, np.ones(groups[1].size, bool)]
        kept = group_weight_masks(p, groups, keep)
        removal = jax.tree.map(lambda a, m: -(a - a * m), p, kept)
        _, slope = jax.jvp(loss, (p,), (removal,))
        assert float(got[0][c]) == pytest.approx(abs(float(slope)), rel=1e-4, abs=1e-6)


def test_fisher_group_scores_from_per_example_gradients():
    p = _mlp_params()
    x = jnp.asarray(_normal((6, 5), seed=4))
    groups = dependency_groups(mlp, p, x)

    def loss(q, xi):  # one example
        return jnp.sum(mlp(q, xi[None]) ** 2)

    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(p, x)
    got = group_scores(p, groups, criterion="fisher", grads=per_example)
    assert [s.shape for s in got] == [(7,), (6,)]
    # Against NumPy: half the mean over examples of the squared per-example Taylor sums.
    w1, b1, w2 = (np.asarray(p[n], np.float64) for n in ("w1", "b1", "w2"))
    g1, gb1, g2 = (np.asarray(per_example[n], np.float64) for n in ("w1", "b1", "w2"))
    d = (w1 * g1).sum(1) + b1 * gb1 + (w2 * g2).sum(2)  # (examples, channels)
    np.testing.assert_allclose(got[0], 0.5 * np.mean(d**2, axis=0), rtol=1e-5, atol=1e-7)
    # Each d[n, c] is the derivative of example n's loss along scaling channel c's slices in
    # every member by mu, at mu = 1 (jax.jvp).
    for c in (0, 3):
        keep = [np.arange(groups[0].size) != c, np.ones(groups[1].size, bool)]
        kept = group_weight_masks(p, groups, keep)
        direction = jax.tree.map(lambda a, m: a - a * m, p, kept)

        def slope(xi, direction=direction):
            return jax.jvp(lambda q: loss(q, xi), (p,), (direction,))[1]

        slopes = jax.vmap(slope)(x)
        np.testing.assert_allclose(d[:, c], np.asarray(slopes), rtol=1e-4, atol=1e-6)
    # The Fisher score squares before averaging, the Taylor score after: they differ.
    taylor = group_scores(
        p, groups, criterion="taylor", grads=jax.tree.map(lambda g: g.sum(0), per_example)
    )
    assert not np.allclose(np.asarray(got[0]), np.asarray(taylor[0]))


def test_fisher_needs_per_example_gradients():
    p = _mlp_params()
    x = jnp.asarray(_normal((4, 5), seed=3))
    groups = dependency_groups(mlp, p, x)
    with pytest.raises(ValueError, match="grads must be given"):
        group_scores(p, groups, criterion="fisher")
    # A gradient of the wrong shape behind its example axis.
    with pytest.raises(ValueError, match=r"needs a gradient for 'b1' of shape \(5, 7\)"):
        batched = {k: np.stack([v] * 5) for k, v in p.items()}
        batched["b1"] = np.zeros((5, 3), np.float32)
        group_scores(p, groups, criterion="fisher", grads=batched)
    with pytest.raises(ValueError, match="same leading example axis"):
        ragged = {k: np.stack([v] * (3 if k == "w1" else 2)) for k, v in p.items()}
        group_scores(p, groups, criterion="fisher", grads=ragged)
    with pytest.raises(ValueError, match="'l2', 'l1', 'taylor' or 'fisher'"):
        group_scores(p, groups, criterion="hessian")


def test_taylor_needs_grads():
    p = _mlp_params()
    groups = dependency_groups(mlp, p, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="grads must be given"):
        group_scores(p, groups, criterion="taylor")
    with pytest.raises(ValueError, match="grads must be given"):
        group_scores(p, groups, grads=p)
    with pytest.raises(ValueError, match="needs a gradient for 'b1'"):
        group_scores(p, groups, criterion="taylor", grads={"w2": p["w2"]})


@pytest.mark.parametrize("scope", ["global", "group"])
def test_group_masks_for_a_flop_budget(cnn, scope):
    from jaxprune.structural import group_masks_for_flops

    m, v, x = cnn
    groups = dependency_groups(m.apply, v, x)
    scores = group_scores(v, groups, exclude="batch_stats")
    dense = float(count_flops(m.apply, v, x))
    for target in (0.9, 0.6, 0.4):
        keep, fraction = group_masks_for_flops(
            m.apply, v, groups, scores, x, flops=target, scope=scope
        )
        small, small_fn = compact(m.apply, v, keep, x)
        assert fraction == float(count_flops(small_fn, small, x)) / dense
        assert fraction <= target
        # The cut follows the ranking of group_masks: the kept channels are those it keeps
        # at some sparsity, and keeping more channels (the cut just before) costs too much.
        counts = [int(k.sum()) for k in keep]
        assert all(c >= 1 for c in counts)
        removed = sum(g.size for g in groups) - sum(counts)
        if removed:
            found = [
                s
                for s in np.linspace(0, 0.99, 400)
                if [k.tolist() for k in group_masks(scores, groups, sparsity=s, scope=scope)]
                == [k.tolist() for k in keep]
            ]
            assert found
            before = group_masks(scores, groups, sparsity=max(found[0] - 0.01, 0), scope=scope)
            if [k.tolist() for k in before] != [k.tolist() for k in keep]:
                bigger, bigger_fn = compact(m.apply, v, before, x)
                assert float(count_flops(bigger_fn, bigger, x)) / dense > target


def test_group_masks_for_flops_bad_budget(cnn):
    from jaxprune.structural import group_masks_for_flops

    m, v, x = cnn
    groups = dependency_groups(m.apply, v, x)
    scores = group_scores(v, groups, exclude="batch_stats")
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="flops must be a fraction"):
            group_masks_for_flops(m.apply, v, groups, scores, x, flops=bad)
    with pytest.raises(TypeError, match="flops must be a fraction"):
        group_masks_for_flops(m.apply, v, groups, scores, x, flops="half")
    with pytest.raises(ValueError, match="no cut reaches flops=0.001"):
        group_masks_for_flops(m.apply, v, groups, scores, x, flops=0.001)
    keep, fraction = group_masks_for_flops(m.apply, v, groups, scores, x, flops=1.0)
    assert fraction == 1.0 and all(k.all() for k in keep)
