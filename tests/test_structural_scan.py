"""Dependency groups and compaction of models whose layers are stacked and run by ``lax.scan``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src.flops import count_flops
from jaxprune._src.graph.analysis import LAYER_AXIS
from jaxprune._src.graph.compact import compact, group_weight_masks
from jaxprune._src.graph.groups import dependency_groups

L, D, H, B = 3, 4, 6, 2


def _normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _close_sums(a, b):
    """Gradients: float32 sums in another order, compared relative to the largest entry."""
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def _masked(params, groups, keep):
    masks = group_weight_masks(params, groups, keep)
    return jax.tree.map(lambda w, m: w * m, params, masks)


def _blocked(groups):
    return {(b.path, b.axis): b.reason for b in groups.blocked}


# ---------------------------------------------------------------------------
# A hand-written residual MLP over stacked parameters.


def block(x, w):
    return x + jax.nn.relu(x @ w["w1"] + w["b1"][None, :]) @ w["w2"]


def stacked_mlp(p, x):
    return jax.lax.scan(lambda c, w: (block(c, w), None), x, p)[0]


def _stacked_params(seed=0):
    shapes = {"w1": (L, D, H), "b1": (L, H), "w2": (L, H, D)}
    return {n: _normal(s, seed + i) for i, (n, s) in enumerate(shapes.items())}


def test_stacked_mlp_groups():
    p = _stacked_params()
    x = _normal((B, D), 9)
    groups = dependency_groups(stacked_mlp, p, x)
    # The hidden axis of every layer is one group: each layer keeps the same channels.
    assert len(groups) == 1
    (g,) = groups
    assert g.name == "w1:2" and g.size == H
    assert g.members == (("b1", 1), ("w1", 2), ("w2", 1))
    assert g.layouts == (None, None, None)
    # The residual width is the carried input itself (tied to args[0] and to the output), and
    # the leading axis of every stacked leaf is the layer axis.
    assert _blocked(groups) == {
        ("b1", 0): LAYER_AXIS,
        ("w1", 0): LAYER_AXIS,
        ("w2", 0): LAYER_AXIS,
        ("w1", 1): "tied to the model input args[0]",
        ("w2", 2): "tied to the model input args[0]",
    }


def test_stacked_mlp_compaction_gradients_and_flops():
    p = _stacked_params()
    x = _normal((B, D), 9)
    groups = dependency_groups(stacked_mlp, p, x)
    k = np.array([1, 0, 1, 1, 0, 1], bool)
    small, small_fn = compact(stacked_mlp, p, [k], x)
    # The slices, written out by hand: the same hidden channels in every layer.
    np.testing.assert_array_equal(small["w1"], p["w1"][:, :, k])
    np.testing.assert_array_equal(small["b1"], p["b1"][:, k])
    np.testing.assert_array_equal(small["w2"], p["w2"][:, k, :])
    masked = {
        "w1": p["w1"] * k[None, None, :],
        "b1": p["b1"] * k[None, :],
        "w2": p["w2"] * k[None, :, None],
    }
    for name, m in _masked(p, groups, [k]).items():
        np.testing.assert_array_equal(m, masked[name])
    want = jax.jit(stacked_mlp)(masked, x)
    _close(small_fn(small, x), want)
    _close(jax.jit(small_fn)(small, x), want)
    # Another batch size traces again.
    x5 = _normal((5, D), 11)
    _close(small_fn(small, x5), stacked_mlp(masked, x5))

    # Gradients equal the masked dense model's on the kept channels.
    target = _normal((B, D), 12)

    def loss(f, q, xx):
        return jnp.sum(f(q, xx) * target)

    g_small = jax.jit(jax.grad(lambda q, xx: loss(small_fn, q, xx), argnums=(0, 1)))(small, x)
    g_dense = jax.grad(lambda q, xx: loss(stacked_mlp, q, xx), argnums=(0, 1))(masked, x)
    _close_sums(g_small[0]["w1"], g_dense[0]["w1"][:, :, k])
    _close_sums(g_small[0]["b1"], g_dense[0]["b1"][:, k])
    _close_sums(g_small[0]["w2"], g_dense[0]["w2"][:, k, :])
    _close_sums(g_small[1], g_dense[1])

    # FLOPs: the same hand-written model run on the sliced arrays, and the count by hand
    # (per layer: two matmuls, the bias add, the relu and the residual add).
    kept = int(k.sum())
    by_hand = L * (2 * (2 * B * D * kept) + 2 * B * kept + B * D)
    assert count_flops(small_fn, small, x) == by_hand
    assert count_flops(stacked_mlp, small, x) == by_hand
    assert count_flops(stacked_mlp, p, x) == L * (2 * (2 * B * D * H) + 2 * B * H + B * D)


def projected(p, x):
    h = x @ p["w_in"]
    h = jax.lax.scan(lambda c, w: (block(c, w), None), h, p["layers"])[0]
    return h @ p["w_out"]


def test_residual_width_is_a_group_between_projections():
    p = {"w_in": _normal((3, D), 1), "layers": _stacked_params(2), "w_out": _normal((D, 2), 3)}
    x = _normal((B, 3), 4)
    groups = dependency_groups(projected, p, x)
    by = groups.by_name()
    assert set(by) == {"layers/w1:2", "layers/w2:2"}
    # The carried width: the input projection, both matmuls of every layer, the output one.
    assert by["layers/w2:2"].members == (
        ("layers/w1", 1),
        ("layers/w2", 2),
        ("w_in", 1),
        ("w_out", 0),
    )
    assert by["layers/w2:2"].size == D
    assert by["layers/w1:2"].members == (("layers/b1", 1), ("layers/w1", 2), ("layers/w2", 1))
    assert {k for k, r in _blocked(groups).items() if r == LAYER_AXIS} == {
        ("layers/b1", 0),
        ("layers/w1", 0),
        ("layers/w2", 0),
    }
    keep = {"layers/w1:2": np.arange(H) % 2 == 0, "layers/w2:2": np.array([1, 1, 0, 1], bool)}
    small, small_fn = compact(projected, p, keep, x)
    assert small["layers"]["w1"].shape == (L, 3, 3)
    assert small["w_out"].shape == (3, 2)
    _close(small_fn(small, x), projected(_masked(p, groups, keep), x))


# ---------------------------------------------------------------------------
# linen's nn.scan.


class Block(nn.Module):
    hidden: int = 6

    @nn.compact
    def __call__(self, x, _):
        h = nn.relu(nn.Dense(self.hidden, name="up")(x))
        return x + nn.Dense(x.shape[-1], name="down")(h), None


class Stacked(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(5, name="embed")(x)
        stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=L)
        x, _ = stack(name="stack")(x, None)
        return nn.Dense(2, name="head")(x)


def test_linen_nn_scan():
    m = Stacked()
    x = _normal((4, 3), 5)
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)
    v = jax.tree.map(lambda s: _normal(s.shape, 6 + len(s.shape)), shapes)
    assert v["params"]["stack"]["up"]["kernel"].shape == (L, 5, 6)
    groups = dependency_groups(m.apply, v, x)
    assert [g.name for g in groups] == ["params/embed/kernel:1", "params/stack/up/kernel:2"]
    assert groups[0].members == (
        ("params/embed/bias", 0),
        ("params/embed/kernel", 1),
        ("params/head/kernel", 0),
        ("params/stack/down/bias", 1),
        ("params/stack/down/kernel", 2),
        ("params/stack/up/kernel", 1),
    )
    assert groups[1].members == (
        ("params/stack/down/kernel", 1),
        ("params/stack/up/bias", 1),
        ("params/stack/up/kernel", 2),
    )
    assert [g.size for g in groups] == [5, 6]
    blocked = _blocked(groups)
    for path in ("up/kernel", "up/bias", "down/kernel", "down/bias"):
        assert blocked[(f"params/stack/{path}", 0)] == LAYER_AXIS
    keep = [np.array([1, 0, 1, 1, 0], bool), np.array([0, 1, 1, 0, 0, 1], bool)]
    small, small_fn = compact(m.apply, v, keep, x)
    assert small["params"]["stack"]["up"]["kernel"].shape == (L, 3, 3)
    assert small["params"]["stack"]["down"]["bias"].shape == (L, 3)
    _close(small_fn(small, x), jax.jit(m.apply)(_masked(v, groups, keep), x))


# ---------------------------------------------------------------------------
# Calls inside and around the scan.


def test_scan_under_jit_with_remat_body_and_jit_calls():
    dense = jax.jit(lambda a, w: a @ w)

    @jax.checkpoint
    def body(c, w):
        h = jax.nn.relu(dense(c, w["w1"]) + w["b1"][None, :])
        return c + dense(h, w["w2"]), None

    @jax.jit
    def wrapped(p, x):
        return jax.lax.scan(body, x, p)[0]

    p = _stacked_params(3)
    x = _normal((B, D), 7)
    groups = dependency_groups(wrapped, p, x)
    assert groups == dependency_groups(stacked_mlp, p, x)
    assert _blocked(groups) == _blocked(dependency_groups(stacked_mlp, p, x))
    k = [np.array([0, 1, 1, 0, 1, 0], bool)]
    small, small_fn = compact(wrapped, p, k, x)
    masked = _masked(p, groups, k)
    _close(small_fn(small, x), stacked_mlp(masked, x))
    g = jax.grad(lambda q: jnp.sum(small_fn(q, x)))(small)
    g_dense = jax.grad(lambda q: jnp.sum(stacked_mlp(q, x)))(masked)
    _close_sums(g["w1"], g_dense["w1"][:, :, k[0]])


def nested(p, x):
    """L blocks of S sub-layers: an outer scan over blocks, an inner one over their layers."""

    def outer(c, blk):
        c = jax.lax.scan(lambda ci, w: (block(ci, w), None), c, blk["inner"])[0]
        return jnp.tanh(c @ blk["mix"]), None

    return jax.lax.scan(outer, x @ p["w_in"], p["blocks"])[0] @ p["w_out"]


def test_nested_scan():
    S = 2
    p = {
        "w_in": _normal((3, D), 1),
        "blocks": {
            "inner": {
                "w1": _normal((L, S, D, H), 2),
                "b1": _normal((L, S, H), 3),
                "w2": _normal((L, S, H, D), 4),
            },
            "mix": _normal((L, D, D), 5),
        },
        "w_out": _normal((D, 2), 6),
    }
    x = _normal((B, 3), 7)
    groups = dependency_groups(nested, p, x)
    by = groups.by_name()
    inner = "blocks/inner/"
    assert by[inner + "w1:3"].members == (
        (inner + "b1", 2),
        (inner + "w1", 3),
        (inner + "w2", 2),
    )
    # The mixing matmul between blocks: its output axis is the carried width, and so is its
    # input axis (the carry keeps the same channels in every iteration).
    assert by[inner + "w2:3"].members == (
        (inner + "w1", 2),
        (inner + "w2", 3),
        ("blocks/mix", 1),
        ("blocks/mix", 2),
        ("w_in", 1),
        ("w_out", 0),
    )
    assert set(by) == {inner + "w1:3", inner + "w2:3"}
    blocked = _blocked(groups)
    for key in [(inner + "w1", 0), (inner + "w1", 1), (inner + "b1", 1), ("blocks/mix", 0)]:
        assert blocked[key] == LAYER_AXIS
    keep = {inner + "w1:3": np.array([1, 1, 0, 0, 1, 0], bool), inner + "w2:3": np.arange(D) < 3}
    small, small_fn = compact(nested, p, keep, x)
    assert small["blocks"]["inner"]["w1"].shape == (L, S, 3, 3)
    assert small["blocks"]["mix"].shape == (L, 3, 3)
    _close(small_fn(small, x), nested(_masked(p, groups, keep), x))


def rnn(p, xs):
    """A reverse-time RNN: the hidden state is a carry, every step's state is a ``ys``, the
    weights are scan consts (shared by all steps)."""

    def step(h, x):
        h = jnp.tanh(x @ p["wx"] + h @ p["wh"] + p["b"][None, :])
        return h, h * p["g"][None, :]

    h0 = jnp.zeros((xs.shape[1], p["wh"].shape[0]), xs.dtype)
    last, hs = jax.lax.scan(step, h0, xs, reverse=True)
    return hs @ p["w_out"], last @ p["w_last"]


def test_carry_and_ys_with_consts_and_reverse():
    p = {
        "wx": _normal((3, 5), 1),
        "wh": _normal((5, 5), 2) * 0.5,
        "b": _normal((5,), 3),
        "g": _normal((5,), 4),
        "w_out": _normal((5, 2), 5),
        "w_last": _normal((5, 2), 6),
    }
    xs = _normal((4, B, 3), 7)  # (time, batch, features)
    groups = dependency_groups(rnn, p, xs)
    assert len(groups) == 1
    (g,) = groups
    assert g.name == "wh:1" and g.size == 5
    assert g.members == (
        ("b", 0),
        ("g", 0),
        ("w_last", 0),
        ("w_out", 0),
        ("wh", 0),
        ("wh", 1),
        ("wx", 1),
    )
    # Shared weights have no layer axis: nothing is blocked for being scanned over.
    assert LAYER_AXIS not in _blocked(groups).values()
    k = [np.array([1, 0, 1, 1, 0], bool)]
    small, small_fn = compact(rnn, p, k, xs)
    assert small["wh"].shape == (3, 3)
    got, want = small_fn(small, xs), rnn(_masked(p, groups, k), xs)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_unused_ys_is_dropped_with_what_only_it_needs():
    """A per-layer value that nothing reads (a sort, which the analysis does not follow) does
    not block the hidden channels; the same value read after the loop does."""

    def body(c, w):
        h = jax.nn.relu(c @ w["w1"] + w["b1"][None, :])
        return c + h @ w["w2"], jnp.sort(h, axis=-1)

    def ignores_ys(p, x):
        return jax.lax.scan(body, x, p)[0]

    def reads_ys(p, x):
        c, ys = jax.lax.scan(body, x, p)
        return c, ys

    p = _stacked_params(4)
    x = _normal((B, D), 8)
    groups = dependency_groups(ignores_ys, p, x)
    assert [g.name for g in groups] == ["w1:2"]
    k = [np.array([1, 1, 0, 1, 0, 0], bool)]
    small, small_fn = compact(ignores_ys, p, k, x)
    _close(small_fn(small, x), ignores_ys(_masked(p, groups, k), x))
    reading = dependency_groups(reads_ys, p, x)
    assert len(reading) == 0
    assert "'sort'" in _blocked(reading)[("w1", 2)]


def test_wrong_keep_length_names_the_scan_group():
    p = _stacked_params()
    x = _normal((B, D), 9)
    with pytest.raises(
        ValueError, match=r"'w1:2' must have shape \(6,\), got \(5,\).*w1\[axis 2\]"
    ):
        compact(stacked_mlp, p, [np.ones(5, bool)], x)
    with pytest.raises(ValueError, match=r"every channel of group 'w1:2'.*b1\[axis 1\]"):
        compact(stacked_mlp, p, [np.zeros(H, bool)], x)
