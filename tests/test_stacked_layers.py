"""Leaves that stack several layers (flax's nn.scan, nnx.scan): each layer ranked on its own."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune._src import masks as masks_lib


def reference_mask(x: np.ndarray, sparsity: float) -> tuple[np.ndarray, float]:
    """tfmot's rule on one layer, with a sort: keep |x| >= the k-th largest magnitude."""
    mags = np.abs(x.astype(np.float64)).reshape(-1)
    k = max(int(np.round(np.float32(mags.size) * (np.float32(1.0) - np.float32(sparsity)))), 1)
    kth = np.sort(mags)[::-1][k - 1]
    return np.abs(x) >= kth, kth


class Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return jnp.tanh(nn.Dense(16)(h)), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x)
        stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=5)
        h, _ = stack()(h, None)
        return nn.Dense(3)(h)


def scanned_params():
    x = jnp.ones((2, 8))
    params = Scanned().init(jax.random.key(0), x)
    # Layers of very different scales: a shared threshold would prune them unevenly.
    scale = jnp.arange(1.0, 6.0)[:, None, None]
    kernel = params["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    params["params"]["ScanBlock_0"]["Dense_0"]["kernel"] = kernel * scale
    return params


def train(tx, params, steps=3):
    model = Scanned()
    x = jax.random.normal(jax.random.key(1), (32, 8))
    y = jax.random.normal(jax.random.key(2), (32, 3))

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: jnp.mean((model.apply(q, x) - y) ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    before = []
    for _ in range(steps):
        before.append(params)
        params, state = step(params, state)
    assert step._cache_size() == 1
    return params, state, before


SCHEDULE = jp.constant_sparsity(0.6, begin_step=0, frequency=1)
STACKED = {"ScanBlock_0/": 0}


@pytest.mark.parametrize("recompute_from", ["current", "updated"])
def test_every_layer_of_a_scanned_leaf_is_ranked_on_its_own(recompute_from):
    tx = optax.chain(
        optax.sgd(0.05),
        jp.magnitude_pruning(SCHEDULE, stacked_axes=STACKED, recompute_from=recompute_from),
    )
    params, state, before = train(tx, scanned_params())
    kernel = params["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    mask = jp.get_masks(state)["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    threshold = jp.tf.get_thresholds(state)["params/ScanBlock_0/Dense_0/kernel"]
    assert threshold.shape == (5,)
    if recompute_from == "current":
        # The masks of the last turn are those of the weights before its update, per layer.
        ranked = np.asarray(before[-1]["params"]["ScanBlock_0"]["Dense_0"]["kernel"])
        for layer in range(5):
            want, kth = reference_mask(ranked[layer], 0.6)
            np.testing.assert_array_equal(mask[layer], want)
            assert float(threshold[layer]) == np.float32(kth)
    for layer in range(5):
        assert float(np.mean(~np.asarray(mask[layer]))) == pytest.approx(0.6, abs=0.01)
        assert np.all(np.asarray(kernel[layer])[~np.asarray(mask[layer])] == 0.0)
    # The bias of the stacked layers is not pruned (default rule); the other kernels are
    # ranked as before, on their own.
    assert jp.get_masks(state)["params"]["ScanBlock_0"]["Dense_0"]["bias"].shape == ()


def test_without_stacked_axes_the_stack_is_one_leaf():
    tx = optax.chain(optax.sgd(0.05), jp.magnitude_pruning(SCHEDULE))
    _, state, _ = train(tx, scanned_params(), steps=1)
    mask = np.asarray(jp.get_masks(state)["params"]["ScanBlock_0"]["Dense_0"]["kernel"])
    per_layer = [float(np.mean(~mask[layer])) for layer in range(5)]
    assert per_layer[0] > 0.9 and per_layer[-1] < 0.4  # small layers pruned the most


def test_a_stacking_axis_other_than_the_first():
    x = jax.random.normal(jax.random.key(3), (6, 4, 10)) * jnp.arange(1.0, 5.0)[None, :, None]
    leaves = [x, jax.random.normal(jax.random.key(4), (5, 5))]
    masks, thresholds = masks_lib.layer_thresholds(leaves, jnp.float32(0.3), axes=[1, None])
    assert thresholds[0].shape == (4,) and thresholds[1].shape == ()
    for layer in range(4):
        want, kth = reference_mask(np.asarray(x[:, layer]), 0.3)
        np.testing.assert_array_equal(masks[0][:, layer], want)
        assert float(thresholds[0][layer]) == np.float32(kth)
    want, _ = reference_mask(np.asarray(leaves[1]), 0.3)
    np.testing.assert_array_equal(masks[1], want)


def test_global_scope_shares_one_threshold_with_stacked_leaves():
    params = scanned_params()
    masks = []
    for stacked in (None, STACKED):
        tx = jp.magnitude_pruning(SCHEDULE, scope="global", stacked_axes=stacked)
        _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        masks.append(jp.get_masks(state))
        assert jp.tf.get_thresholds(state)["params/ScanBlock_0/Dense_0/kernel"].shape == ()
    jax.tree.map(np.testing.assert_array_equal, *masks)


def test_structures_apply_to_every_layer():
    params = scanned_params()
    structure = jp.NMSparsity(2, 4)
    tx = jp.magnitude_pruning(SCHEDULE, stacked_axes=STACKED, structure=structure)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    kernel = params["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    got = jp.get_masks(state)["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    for layer in range(5):
        np.testing.assert_array_equal(got[layer], structure(kernel[layer], 0.6)[0])
    # Units (whole output columns) chosen per layer: without the axis they would be chosen
    # over all layers at once.
    units = jp.UnitSparsity()
    tx = jp.magnitude_pruning(SCHEDULE, stacked_axes=STACKED, structure={"ScanBlock_0/": units})
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    got = jp.get_masks(state)["params"]["ScanBlock_0"]["Dense_0"]["kernel"]
    for layer in range(5):
        np.testing.assert_array_equal(got[layer], units(kernel[layer], 0.6)[0])


def test_summaries_log_one_threshold_per_layer():
    tx = optax.chain(optax.sgd(0.05), jp.magnitude_pruning(SCHEDULE, stacked_axes=STACKED))
    params, state, _ = train(tx, scanned_params(), steps=1)
    logs = jp.pruning_summaries(state, params)
    name = "params/ScanBlock_0/Dense_0/kernel"
    assert [f"{name}/threshold/{j}" in logs for j in range(5)] == [True] * 5
    assert f"{name}/threshold" not in logs
    assert logs[f"{name}/sparsity"] == pytest.approx(0.6, abs=0.01)


def test_bad_stacked_axes():
    params = scanned_params()
    with pytest.raises(TypeError, match="stacked_axes"):
        jp.magnitude_pruning(SCHEDULE, stacked_axes=0)
    with pytest.raises(TypeError, match="int axis"):
        jp.magnitude_pruning(SCHEDULE, stacked_axes={"ScanBlock_0/": "0"})
    with pytest.raises(TypeError, match="int axis"):
        jp.magnitude_pruning(SCHEDULE, stacked_axes={"ScanBlock_0/": True})
    with pytest.raises(ValueError, match="not an axis of 'params/ScanBlock_0/Dense_0/kernel'"):
        jp.magnitude_pruning(SCHEDULE, stacked_axes={"ScanBlock_0/": 3}).init(params)
    with pytest.raises(ValueError, match="matches no pruned leaf"):
        jp.magnitude_pruning(SCHEDULE, stacked_axes={"nothing": 0}).init(params)
    with pytest.raises(ValueError, match="axes"):
        masks_lib.layer_thresholds([jnp.ones((2, 2))], 0.5, axes=[2])


def test_stacked_leaves_of_one_shape_share_a_selection():
    # Several stacked leaves of one shape are ranked in one part (a stack of stacks); each
    # layer of each leaf still gets its own threshold. A leaf of another shape and a plain
    # leaf take part in the same selection.
    key = jax.random.key(5)
    shapes = [(3, 6, 4), (3, 6, 4), (2, 5, 5), (6, 4)]
    leaves = [
        jax.random.normal(jax.random.fold_in(key, i), s) * (i + 1) for i, s in enumerate(shapes)
    ]
    updates = [jax.random.normal(jax.random.fold_in(key, 10 + i), s) for i, s in enumerate(shapes)]
    sparsity = jnp.array([0.5, 0.25, 0.7, 0.4])
    for ups in (None, updates):
        masks, thresholds = masks_lib.layer_thresholds(leaves, sparsity, ups, axes=[0, 0, 0, None])
        for i, x in enumerate(leaves):
            w = np.asarray(x if ups is None else x + ups[i])
            if i == 3:
                np.testing.assert_array_equal(masks[i], reference_mask(w, 0.4)[0])
                continue
            assert thresholds[i].shape == (x.shape[0],)
            for layer in range(x.shape[0]):
                want, kth = reference_mask(w[layer], float(sparsity[i]))
                np.testing.assert_array_equal(masks[i][layer], want)
                assert float(thresholds[i][layer]) == np.float32(kth)
