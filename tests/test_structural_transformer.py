"""Structural pruning of transformer blocks: whole heads, key/value groups, MLP units.

Multi-head and grouped-query attention written with ``nn.DenseGeneral`` (so a block with
smaller head counts can be built and compared), and flax's own
``nn.MultiHeadDotProductAttention``. Compacted outputs must equal the masked dense model's,
and a block built with the smaller sizes, given the compacted params, must be the same model.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src.flops import count_flops
from jaxprune._src.graph.compact import compact, group_weight_masks
from jaxprune._src.graph.groups import dependency_groups, group_masks, group_scores


class Block(nn.Module):
    """Pre-norm block; ``heads`` query heads share ``kv_heads`` key/value heads."""

    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 8
    v_dim: int = 8
    mlp: int = 24

    @nn.compact
    def __call__(self, x):
        b, t, _ = x.shape
        share = self.heads // self.kv_heads
        h = nn.LayerNorm(name="ln1")(x)
        q = nn.DenseGeneral((self.heads, self.head_dim), name="q")(h)
        k = nn.DenseGeneral((self.kv_heads, self.head_dim), name="k")(h)
        v = nn.DenseGeneral((self.kv_heads, self.v_dim), name="v")(h)
        q = q.reshape(b, t, self.kv_heads, share, self.head_dim)
        s = jnp.einsum("btkgd,bskd->bkgts", q, k) / np.sqrt(self.head_dim)
        a = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bkgts,bskd->btkgd", a, v).reshape(b, t, self.heads, self.v_dim)
        x = x + nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="o")(o)
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.gelu(nn.Dense(self.mlp, name="up")(h))
        return x + nn.Dense(x.shape[-1], name="down")(h)


def _setup(block, seed=0):
    x = np.random.default_rng(seed).standard_normal((2, 6, 16)).astype(np.float32)
    v = block.init(jax.random.key(seed), x)
    # Non-zero biases and norm parameters, so that a wrongly sliced member shows.
    leaves, tdef = jax.tree.flatten(v)
    rng = np.random.default_rng(seed + 1)
    leaves = [np.asarray(a) + 0.1 * rng.standard_normal(a.shape).astype(np.float32) for a in leaves]
    return x, jax.tree.unflatten(tdef, leaves)


def _close(a, b):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


def _group_with(groups, member):
    found = [g for g in groups if member in g.members]
    assert len(found) == 1, (member, [g.members for g in groups])
    return found[0]


def _masked(v, groups, keep):
    masks = group_weight_masks(v, groups, keep)
    return jax.tree.map(lambda w, m: w * m, v, masks)


def test_heads_mlp_units_and_value_width_are_the_groups():
    block = Block()
    x, v = _setup(block)
    groups = dependency_groups(block.apply, v, x)
    assert len(groups) == 3
    heads = _group_with(groups, ("params/q/kernel", 1))
    assert heads.size == 4
    assert set(heads.members) == {
        ("params/q/kernel", 1),
        ("params/q/bias", 0),
        ("params/k/kernel", 1),
        ("params/k/bias", 0),
        ("params/v/kernel", 1),
        ("params/v/bias", 0),
        ("params/o/kernel", 0),
    }
    assert all(layout is None for layout in heads.layouts)
    units = _group_with(groups, ("params/up/kernel", 1))
    assert units.size == 24
    assert set(units.members) == {
        ("params/up/kernel", 1),
        ("params/up/bias", 0),
        ("params/down/kernel", 0),
    }
    width = _group_with(groups, ("params/v/kernel", 2))
    assert width.size == 8
    assert set(width.members) == {
        ("params/v/kernel", 2),
        ("params/v/bias", 1),
        ("params/o/kernel", 1),
    }
    blocked = {(b.path, b.axis): b.reason for b in groups.blocked}
    # Queries and keys meet in a contraction of two activations: their width stays.
    assert "two activations" in blocked[("params/q/kernel", 2)]
    assert "two activations" in blocked[("params/k/kernel", 2)]
    # The residual stream is reduced over by the layer norms.
    assert "reduced over" in blocked[("params/ln1/scale", 0)]
    assert "reduced over" in blocked[("params/down/kernel", 1)]


def test_grouped_query_attention_prunes_whole_key_value_groups():
    block = Block(heads=6, kv_heads=2)
    x, v = _setup(block)
    groups = dependency_groups(block.apply, v, x)
    kv = _group_with(groups, ("params/k/kernel", 1))
    assert kv.size == 2
    assert set(kv.members) == {
        ("params/k/kernel", 1),
        ("params/k/bias", 0),
        ("params/v/kernel", 1),
        ("params/v/bias", 0),
        ("params/q/kernel", 1),
        ("params/q/bias", 0),
        ("params/o/kernel", 0),
    }
    # Key/value head c is shared by query heads 3c, 3c+1, 3c+2: they go with it.
    q = kv.positions(kv.members.index(("params/q/kernel", 1)))
    np.testing.assert_array_equal(q, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(
        kv.positions(kv.members.index(("params/k/kernel", 1))), [[0], [1]]
    )
    # The query heads' place within their key/value group is a group of its own: pruning it
    # removes that query head from every key/value group alike.
    share = [g for g in groups if g is not kv and ("params/q/kernel", 1) in g.members]
    assert len(share) == 1 and share[0].size == 3
    assert set(share[0].members) == {
        ("params/q/kernel", 1),
        ("params/q/bias", 0),
        ("params/o/kernel", 0),
    }
    pos = share[0].positions(share[0].members.index(("params/q/kernel", 1)))
    np.testing.assert_array_equal(pos, [[0, 3], [1, 4], [2, 5]])


@pytest.mark.parametrize(
    "heads,kv_heads,keep_idx",
    [
        (4, 4, {"heads": [0, 2], "units": range(0, 24, 3), "width": [1, 2, 5, 6]}),
        (6, 2, {"kv": [1], "share": [0, 2], "units": range(5, 17), "width": [0, 7]}),
    ],
)
def test_compacted_block_is_the_masked_block_and_the_smaller_block(heads, kv_heads, keep_idx):
    block = Block(heads=heads, kv_heads=kv_heads)
    x, v = _setup(block, seed=3)
    groups = dependency_groups(block.apply, v, x)
    role = {
        ("params/up/kernel", 1): "units",
        ("params/v/kernel", 2): "width",
        ("params/k/kernel", 1): "heads" if heads == kv_heads else "kv",
    }
    keep = []
    for g in groups:
        name = next((r for m, r in role.items() if m in g.members), "share")
        k = np.zeros(g.size, bool)
        k[list(keep_idx[name])] = True
        keep.append(k)
    small, small_fn = compact(block.apply, v, keep, x)
    masked = _masked(v, groups, keep)
    _close(small_fn(small, x), jax.jit(block.apply)(masked, x))

    n = {name: len(list(idx)) for name, idx in keep_idx.items()}
    if heads == kv_heads:
        smaller = Block(heads=n["heads"], kv_heads=n["heads"], v_dim=n["width"], mlp=n["units"])
    else:
        smaller = Block(
            heads=n["kv"] * n["share"], kv_heads=n["kv"], v_dim=n["width"], mlp=n["units"]
        )
    want = jax.eval_shape(smaller.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, want)
    _close(small_fn(small, x), jax.jit(smaller.apply)(small, x))

    dense_flops = count_flops(block.apply, v, x)
    small_flops = count_flops(small_fn, small, x)
    assert small_flops < dense_flops
    assert small_flops == count_flops(smaller.apply, small, x)

    # Gradients of the small function are the masked model's on the kept channels: slicing
    # the dense gradients like the params (compact of a tree of the same shapes) gives them.
    target = np.random.default_rng(5).standard_normal((2, 6, 16)).astype(np.float32)

    def loss(f, p):
        return jnp.sum(f(p, x) * target)

    g_small = jax.jit(jax.grad(lambda p: loss(small_fn, p)))(small)
    g_dense = jax.grad(lambda p: loss(block.apply, p))(masked)
    g_want, _ = compact(block.apply, g_dense, keep, x)
    for got, ref in zip(jax.tree.leaves(g_small), jax.tree.leaves(g_want), strict=True):
        ref = np.asarray(ref)
        np.testing.assert_allclose(
            np.asarray(got), ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max())
        )


class FlaxBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(4, name="attention")(h, h)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(16, name="down")(nn.relu(nn.Dense(32, name="up")(h)))


def test_flax_multi_head_attention_prunes_heads_by_score():
    block = FlaxBlock()
    x, v = _setup(block, seed=7)
    groups = dependency_groups(block.apply, v, x)
    heads = _group_with(groups, ("params/attention/query/kernel", 1))
    assert heads.size == 4
    assert set(heads.members) == {
        (f"params/attention/{n}/{leaf}", axis)
        for n in ("query", "key", "value")
        for leaf, axis in (("kernel", 1), ("bias", 0))
    } | {("params/attention/out/kernel", 0)}
    units = _group_with(groups, ("params/up/kernel", 1))
    scores = group_scores(v, groups)
    masks = group_masks(scores, groups, sparsity=0.5)
    # Only heads and MLP units are pruned: a mapping leaves the other groups whole.
    keep = {g.name: m for g, m in zip(groups, masks, strict=True) if g in (heads, units)}
    small, small_fn = compact(block.apply, v, keep, x)
    assert small["params"]["attention"]["query"]["kernel"].shape == (16, 2, 4)
    assert small["params"]["attention"]["out"]["kernel"].shape == (2, 4, 16)
    assert small["params"]["up"]["kernel"].shape == (16, 16)
    # The heads kept are the two of largest L2 norm over all their members.
    by_name = {g.name: s for g, s in zip(groups, scores, strict=True)}
    np.testing.assert_array_equal(
        np.flatnonzero(keep[heads.name]), np.sort(np.argsort(-by_name[heads.name])[:2])
    )
    full = [keep.get(g.name, np.ones(g.size, bool)) for g in groups]
    _close(small_fn(small, x), jax.jit(block.apply)(_masked(v, groups, full), x))


def test_keep_of_the_wrong_length_names_the_head_group():
    block = Block(heads=6, kv_heads=2)
    x, v = _setup(block)
    groups = dependency_groups(block.apply, v, x)
    kv = _group_with(groups, ("params/k/kernel", 1))
    with pytest.raises(ValueError, match=re.escape(kv.name)) as err:
        compact(block.apply, v, {kv.name: np.ones(3, bool)}, x)
    assert "params/q/kernel" in str(err.value)
