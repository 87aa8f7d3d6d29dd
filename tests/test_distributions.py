"""Tests of the uniform and ERK sparsity distributions."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxprune._src.distributions import erk_sparsities, uniform_sparsities


def erk_reference(shapes, target, power=1.0):
    """ERK written directly from the RigL paper's formula, with NumPy arrays."""
    n = np.array([np.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([np.sum(s) / np.prod(s) for s in shapes], dtype=np.float64) ** power
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = ((1 - target) * n.sum() - n[dense].sum()) / (raw[~dense] * n[~dense]).sum()
        density = np.where(dense, 1.0, eps * raw)
        over = (~dense) & (density > 1 + 1e-12)
        if not over.any():
            return np.clip(1.0 - density, 0.0, None)
        # the leaves with the largest raw density among the free ones become dense
        dense |= (~dense) & (raw == raw[~dense].max())


def tree_of(shapes):
    return {
        f"layer{i}": {"kernel": jax.ShapeDtypeStruct(s, jnp.float32)} for i, s in enumerate(shapes)
    }


def total_sparsity(shapes, sparsities):
    n = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    return float((n * np.array(sparsities)).sum() / n.sum())


MLP = {
    "params": {
        "Conv_0": {"kernel": jnp.ones((3, 3, 3, 16)), "bias": jnp.ones(16)},
        "Dense_0": {"kernel": jnp.ones((1024, 256)), "bias": jnp.ones(256)},
        "Dense_1": {"kernel": jnp.ones((256, 10)), "bias": jnp.ones(10)},
        "LayerNorm_0": {"scale": jnp.ones(256)},
    }
}
MLP_PATHS = ["params/Conv_0/kernel", "params/Dense_0/kernel", "params/Dense_1/kernel"]
MLP_SHAPES = [(3, 3, 3, 16), (1024, 256), (256, 10)]


def test_uniform_paths_and_values():
    s = uniform_sparsities(MLP, 0.7)
    assert list(s) == MLP_PATHS
    assert all(v == 0.7 and isinstance(v, float) for v in s.values())


def test_uniform_prune_and_exclude():
    assert list(uniform_sparsities(MLP, 0.5, prune="Dense")) == [
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/Dense_1/bias",
        "params/Dense_1/kernel",
    ]
    assert list(uniform_sparsities(MLP, 0.5, exclude="Conv_0")) == MLP_PATHS[1:]
    pred = lambda path, leaf: leaf.shape[-1] == 10  # noqa: E731
    assert list(uniform_sparsities(MLP, 0.5, exclude=pred)) == MLP_PATHS[:2]


def test_paths_of_sequences_and_depth():
    params = [{"w": jnp.ones((4, 4))}, (jnp.ones((2, 3, 5)), jnp.ones(3))]
    assert list(uniform_sparsities(params, 0.1)) == ["0/w", "1/0"]
    assert list(erk_sparsities(params, 0.1)) == ["0/w", "1/0"]


@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.9, 0.95, 0.99])
def test_erk_matches_reference(target):
    s = erk_sparsities(MLP, target)
    assert list(s) == MLP_PATHS
    np.testing.assert_allclose(list(s.values()), erk_reference(MLP_SHAPES, target), atol=1e-12)
    assert abs(total_sparsity(MLP_SHAPES, list(s.values())) - target) < 1e-6


def test_erk_dense_forcing_by_hand():
    # raw densities (sum/prod): a (2,2): 1.0, b (100,100): 0.02. At 50% the unconstrained
    # solution gives a a density above 1, so a is dense and b absorbs every pruned entry.
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones((100, 100))}
    s = erk_sparsities(params, 0.5)
    assert s["a"] == 0.0
    assert s["b"] == pytest.approx(0.5 * 10004 / 10000, abs=1e-12)


def test_erk_conv_counts_all_dimensions():
    # Both have 576 entries; the raw density is (sum of all dimensions) / 576: 22/576 for the
    # conv kernel (spatial dimensions included), 48/576 for the dense one.
    params = {"conv": jnp.ones((3, 3, 8, 8)), "dense": jnp.ones((24, 24))}
    s = erk_sparsities(params, 0.9)
    ratio = (1 - s["dense"]) / (1 - s["conv"])
    assert ratio == pytest.approx(48 / 22, rel=1e-12)


def test_erk_power_scale():
    for p in (0.5, 1.0, 2.0):
        s = erk_sparsities(MLP, 0.9, power_scale=p)
        np.testing.assert_allclose(list(s.values()), erk_reference(MLP_SHAPES, 0.9, p), atol=1e-12)
    # a tiny exponent is nearly uniform
    s = erk_sparsities(MLP, 0.9, power_scale=1e-9)
    np.testing.assert_allclose(list(s.values()), 0.9, atol=1e-6)


def test_erk_rank3_dense_general():
    params = {"attn": {"query": {"kernel": jnp.ones((64, 4, 16))}}, "out": jnp.ones((64, 64))}
    s = erk_sparsities(params, 0.8)
    shapes = [(64, 4, 16), (64, 64)]
    np.testing.assert_allclose(list(s.values()), erk_reference(shapes, 0.8), atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 40), min_size=2, max_size=4).map(tuple), min_size=1, max_size=6
    ),
    target=st.floats(0.0, 0.999),
    power=st.sampled_from([0.5, 1.0, 1.5]),
)
def test_erk_properties(shapes, target, power):
    params = tree_of(shapes)
    s = erk_sparsities(params, target, power_scale=power)
    values = np.array(list(s.values()))
    assert list(s) == [f"layer{i}/kernel" for i in range(len(shapes))]
    assert np.all(values >= 0.0) and np.all(values < 1.0)
    assert abs(total_sparsity(shapes, values) - target) < 1e-6
    np.testing.assert_allclose(values, erk_reference(shapes, target, power), atol=1e-9)
    # Densities of the leaves that are not forced dense are proportional to the raw density.
    raw = np.array([(sum(sh) / math.prod(sh)) ** power for sh in shapes])
    free = values > 0
    if free.sum() >= 2:
        ratios = (1 - values[free]) / raw[free]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    # A dense leaf has a raw density at least that of every sparse leaf.
    if free.any() and (~free).any():
        assert raw[~free].min() >= raw[free].max() - 1e-15


@settings(max_examples=50, deadline=None)
@given(target=st.floats(0.0, 0.999), n=st.integers(1, 5))
def test_uniform_property(target, n):
    shapes = [(i + 2, 3) for i in range(n)]
    s = uniform_sparsities(tree_of(shapes), target)
    assert list(s.values()) == [target] * n
    assert abs(total_sparsity(shapes, list(s.values())) - target) < 1e-12


@pytest.mark.parametrize("fn", [uniform_sparsities, erk_sparsities])
def test_bad_sparsity(fn):
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity must be in range"):
            fn(MLP, bad)
    for bad in ("0.5", None, [0.5], True):
        with pytest.raises(TypeError, match="sparsity"):
            fn(MLP, bad)


@pytest.mark.parametrize("fn", [uniform_sparsities, erk_sparsities])
def test_no_prunable_leaf(fn):
    with pytest.raises(ValueError, match="no leaf is pruned"):
        fn({"bias": jnp.ones(3), "scale": jnp.ones(())}, 0.5)
    with pytest.raises(ValueError, match="no leaf is pruned"):
        fn(MLP, 0.5, prune="kernel", exclude="kernel")


@pytest.mark.parametrize("fn", [uniform_sparsities, erk_sparsities])
def test_bad_rules(fn):
    with pytest.raises(ValueError, match="prune="):
        fn(MLP, 0.5, prune="nothing_like_this")
    with pytest.raises(ValueError, match="exclude='nothing_like_this' matches no leaf"):
        fn(MLP, 0.5, exclude="nothing_like_this")
    with pytest.raises(ValueError, match="exclude is not a valid regular expression"):
        fn(MLP, 0.5, exclude="(")
    with pytest.raises(TypeError, match="prune must be"):
        fn(MLP, 0.5, prune=3)
    with pytest.raises(TypeError, match="not a floating-point array"):
        fn({"w": jnp.ones((3, 3)), "i": jnp.ones((3, 3), jnp.int32)}, 0.5, prune=".")


def test_bad_power_scale():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="power_scale"):
            erk_sparsities(MLP, 0.5, power_scale=bad)
    with pytest.raises(TypeError, match="power_scale"):
        erk_sparsities(MLP, 0.5, power_scale="1")


def test_erk_large_power_scale():
    # Raw densities of 0.0039**150 and 0.104**150 are 1e-361 and 1e-148: only their ratio
    # matters, and it is taken in logs (the plain powers divided by zero). The reference with
    # the ratio (its powers of 0.0376 stay in range) gives the same sparsities.
    shapes = [(512, 512), (256, 10)]
    s = erk_sparsities(tree_of(shapes), 0.9, power_scale=150)
    ratio = (1024 / 512**2) / (266 / 2560)
    n = np.array([512 * 512, 2560], dtype=np.float64)
    raw = np.array([ratio**150, 1.0])
    eps = 0.1 * n.sum() / (raw * n).sum()
    assert eps * raw[1] > 1  # the small leaf is forced dense, the large one takes the rest
    want = [1 - (0.1 * n.sum() - n[1]) / n[0], 0.0]
    np.testing.assert_allclose(list(s.values()), want, atol=1e-12)
    assert total_sparsity(shapes, list(s.values())) == pytest.approx(0.9, abs=1e-12)
    # A ratio below the smallest float: refused, naming the leaf and power_scale.
    with pytest.raises(ValueError, match=r"power_scale=1100 is too large.*'layer1/kernel'"):
        erk_sparsities(tree_of([(1, 1), (64, 64)]), 0.9, power_scale=1100)
