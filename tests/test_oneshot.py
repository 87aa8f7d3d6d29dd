"""One-shot pruning of a params tree: prune_weights and prune_units."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src import masks as masks_lib
from jaxprune._src.oneshot import prune_units, prune_weights
from jaxprune._src.structured import unit_mask


def reference_mask(x, sparsity):
    """tfmot's rule by a full sort (no NaN here)."""
    a = np.abs(np.asarray(x, np.float64))
    k = int(max(np.round(np.float32(a.size) * (np.float32(1) - np.float32(sparsity))), 1))
    return a >= np.sort(a.ravel())[::-1][k - 1]


def make_params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
        "Conv_0": {
            "kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 3, jnp.float32),
            "bias": jnp.zeros((4,), jnp.float32),
        },
        "step": jnp.int32(7),
    }


def test_prune_weights_layer_scope_golden():
    params = {
        "w": jnp.array([[0.125, -2.0, 0.25], [3.0, -0.0625, 0.0]]),
        "b": jnp.array([0.5, -0.5]),
    }
    pruned, masks = prune_weights(params, 0.5)
    np.testing.assert_array_equal(pruned["w"], [[0.0, -2.0, 0.25], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(masks["w"], [[False, True, True], [True, False, False]])
    assert pruned["b"] is params["b"]  # not pruned: returned as it is
    assert masks["b"].shape == () and bool(masks["b"])


def test_prune_weights_layer_matches_magnitude_mask():
    params = make_params()
    pruned, masks = prune_weights(params, 0.7)
    for name in ("Dense_0", "Conv_0"):
        want = reference_mask(params[name]["kernel"], 0.7)
        np.testing.assert_array_equal(masks[name]["kernel"], want)
        np.testing.assert_array_equal(
            pruned[name]["kernel"], jnp.where(want, params[name]["kernel"], 0.0)
        )
        assert bool(masks[name]["bias"])
    assert jax.tree.structure(pruned) == jax.tree.structure(params)
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    assert int(masks["Dense_0"]["kernel"].sum()) == 9  # round(30 * 0.3)
    assert int(masks["Conv_0"]["kernel"].sum()) == 22  # round(72 * 0.3) = 21.6 -> 22
    # Pruned entries are +0.0, never -0.0.
    z = np.asarray(pruned["Dense_0"]["kernel"])[~np.asarray(masks["Dense_0"]["kernel"])]
    assert not np.any(np.signbit(z))


def test_prune_weights_global_scope():
    params = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([[9.0, 0.5], [0.25, 0.1]])}
    pruned, masks = prune_weights(params, 0.5, scope="global")
    np.testing.assert_array_equal(pruned["a"], [[0.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(pruned["b"], [[9.0, 0.0], [0.0, 0.0]])
    want = jax.jit(masks_lib.global_magnitude_masks)(params, 0.5)
    for key in params:
        np.testing.assert_array_equal(masks[key], want[key])


def test_prune_weights_rules():
    params = make_params()
    pruned, masks = prune_weights(params, 0.5, prune="Dense_0/kernel")
    assert masks["Conv_0"]["kernel"].shape == ()
    assert pruned["Conv_0"]["kernel"] is params["Conv_0"]["kernel"]
    assert int(masks["Dense_0"]["kernel"].sum()) == 15
    # A rule can select 1-D leaves too.
    _, masks = prune_weights(params, 0.6, prune=lambda path, x: path.endswith("bias"))
    assert int(masks["Dense_0"]["bias"].sum()) == 2
    assert bool(jnp.all(masks["Conv_0"]["bias"]))  # all zero: never pruned
    with pytest.raises(ValueError, match="matches no leaf"):
        prune_weights(params, 0.5, prune="nothing")
    with pytest.raises(TypeError, match="not a floating-point"):
        prune_weights(params, 0.5, prune="step")
    with pytest.raises(ValueError, match=re.escape("scope must be one of ('layer', 'global')")):
        prune_weights(params, 0.5, scope="model")
    with pytest.raises(ValueError, match="sparsity"):
        prune_weights(params, 1.5)


def test_prune_weights_empty_and_dtypes():
    pruned, masks = prune_weights({"b": jnp.ones(3)}, 0.5)  # nothing prunable by default
    assert bool(masks["b"]) and pruned["b"].shape == (3,)
    params = {"w": jnp.asarray(np.arange(1, 13).reshape(3, 4), jnp.bfloat16)}
    pruned, masks = prune_weights(params, 0.75)
    assert pruned["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(pruned["w"], np.float32).ravel()[-3:], [10, 11, 12])
    assert int(masks["w"].sum()) == 3


def test_prune_units_golden():
    params = {
        "kernel": jnp.array([[3.0, 0.1, 1.0, 0.0], [4.0, 0.1, 1.0, 2.0]]),  # norms 5, .14, 1.4, 2
        "bias": jnp.ones(4),
    }
    pruned, masks = prune_units(params, 0.5)
    np.testing.assert_array_equal(pruned["kernel"], [[3.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(masks["kernel"], [[1, 0, 0, 1], [1, 0, 0, 1]])
    assert pruned["bias"] is params["bias"]
    # Input units (rows), norms 3.16 and 4.9.
    pruned, _ = prune_units(params, 0.5, axis=0)
    np.testing.assert_array_equal(pruned["kernel"][0], np.zeros(4))


def test_prune_units_conv_and_errors():
    params = make_params()
    pruned, masks = prune_units(params, 0.5)
    for name in ("Dense_0", "Conv_0"):
        np.testing.assert_array_equal(masks[name]["kernel"], unit_mask(params[name]["kernel"], 0.5))
    kept = np.asarray(masks["Conv_0"]["kernel"]).reshape(-1, 4).all(axis=0)
    assert kept.sum() == 2
    with pytest.raises(ValueError, match=r"axis=-3 is out of range for leaf 'Dense_0/kernel'"):
        prune_units(params, 0.5, axis=-3)
    with pytest.raises(TypeError, match="axis"):
        prune_units(params, 0.5, axis=1.0)
    with pytest.raises(ValueError, match="sparsity"):
        prune_units(params, -0.5)
    with pytest.raises(ValueError, match="matches no leaf"):
        prune_units(params, 0.5, prune="Dense_1")


def test_prune_oneshot_magnitude_shares_prune_weights_implementation(monkeypatch):
    """prune_oneshot(method="magnitude") and prune_weights run one magnitude implementation."""
    from jaxprune._src import oneshot
    from jaxprune._src.posttraining_runner import prune_oneshot

    rng = np.random.default_rng(1)
    params = {
        "a": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        "s": jnp.ones(8),
    }

    def fn(p, x):
        return jnp.tanh(x @ p["a"]) * p["s"][None, :] @ p["b"]

    calls = []
    real = oneshot.magnitude_masks
    monkeypatch.setattr(
        oneshot, "magnitude_masks", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    got = prune_oneshot(fn, params, [jnp.ones((4, 6))], method="magnitude", sparsity=0.6)
    want = prune_weights(params, 0.6, prune="^(a|b)$")
    assert len(calls) == 3  # one per layer of prune_oneshot, one for prune_weights
    for k in params:
        np.testing.assert_array_equal(np.asarray(got[1][k]), np.asarray(want[1][k]))
        np.testing.assert_array_equal(np.asarray(got[0][k]), np.asarray(want[0][k]))
