"""pruning_from_config: TensorFlow's legacy model_pruning, checked against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune._src.config import PruningConfig
from jaxprune._src.legacy import (
    LegacyPruningState,
    histogram_threshold,
    legacy_mask,
    pruning_from_config,
    should_update,
    sparsity_function,
    topk_threshold,
)

# ----- numpy references of the legacy maths -----


def np_histogram_threshold(a, s, nbins):
    """The histogram threshold in float32: the start of the first bin whose cdf reaches s."""
    a = np.abs(np.asarray(a, np.float32)).ravel()
    top = a.max()
    if top == 0:
        return np.float32(0.0)
    index = np.clip(np.floor(np.float32(nbins) * a / top), 0, nbins - 1).astype(np.int64)
    hist = np.bincount(index, minlength=nbins).astype(np.float32)
    cdf = np.cumsum(hist)
    cdf = cdf / cdf.max()
    below = np.sum((cdf < np.float32(s)).astype(np.float32))
    return np.float32(below / np.float32(nbins) * top)


def np_topk_threshold(a, s):
    """Top-k threshold: the k-th largest, k = round_half_even(f32(n) * (1 - s)) (0 taken as 1)."""
    a = np.abs(np.asarray(a, np.float32)).ravel()
    k = int(np.round(np.float32(a.size) * (np.float32(1.0) - np.float32(s))))
    return np.sort(a)[::-1][max(k, 1) - 1]


def np_smooth(current, previous, decay):
    return np.float32(
        np.float32(current) * np.float32(1.0 - decay) + np.float32(previous) * np.float32(decay)
    )


def np_block_scores(x, bh, bw, pooling):
    h, w = x.shape
    nh, nw = -(-h // bh), -(-w // bw)
    out = np.zeros((nh, nw), np.float32)
    for i in range(nh):
        for j in range(nw):
            block = np.abs(x[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw])
            out[i, j] = block.mean() if pooling == "AVG" else block.max()
    return out


def updates_of(config, steps):
    """The steps at which the legacy rule updates the masks, by that rule in Python."""
    out, last = [], 0
    for t in range(steps):
        in_range = t >= config.begin_pruning_step and (
            config.end_pruning_step < 0 or t <= config.end_pruning_step
        )
        if in_range and last + config.pruning_frequency <= t:
            out.append(t)
            last = t
    return out


def run(tx, params, steps, grads=None):
    """``steps`` jitted updates; returns params and state after each one."""

    @jax.jit
    def step(params, state, i):
        g = jax.tree.map(jnp.zeros_like, params) if grads is None else grads(params, i)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    history = []
    for i in range(steps):
        params, state = step(params, state, i)
        history.append((params, state))
    return history, step


def normal(seed, shape):
    # numpy's generator: no compilation per shape, as jax.random would need.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ----- the histogram threshold -----


@pytest.mark.parametrize("nbins", [1, 7, 256])
def test_histogram_threshold_matches_numpy(nbins):
    a = jnp.abs(normal(nbins, (13, 7)))
    for sparsity in (0.0, 0.1, 0.5, 0.97):
        got = histogram_threshold(a, sparsity, nbins)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, np_histogram_threshold(a, sparsity, nbins), rtol=1e-6)


def test_histogram_by_hand_512_values():
    # |w| = (i + 1) / 512 for i = 0..511, M = 1, 256 bins: bin 0 holds one value, bins 1..254
    # two each and bin 255 three, so cdf[b] = (1 + 2b) / 512. cdf < 0.1 for b <= 25: 26 bins,
    # and the threshold is 26/256 = 0.1015625. With threshold_decay 0.9 the first update
    # smooths it to 0.1 * 0.1015625 from 0, and only |w| <= 5/512 are pruned: 5 of 512 (the
    # slow start of the smoothed threshold).
    w = (np.arange(512) + 1) / 512 * np.where(np.arange(512) % 2, -1.0, 1.0)
    w = jnp.asarray(w, jnp.float32)
    assert float(histogram_threshold(jnp.abs(w), 0.1, 256)) == 26 / 256
    mask, thr = legacy_mask(w, 0.1, 0.0, method="histogram", threshold_decay=0.9, nbins=256)
    np.testing.assert_allclose(thr, 0.1 * 26 / 256, rtol=1e-6)
    assert int(jnp.sum(~mask)) == 5
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(mask)), np.arange(5))
    # A seeded normal tensor: a handful too, exactly what the numpy reference gives.
    w = normal(3, (512,))
    mask, thr = legacy_mask(w, 0.1, 0.0, method="histogram", threshold_decay=0.9, nbins=256)
    ref = np_smooth(np_histogram_threshold(w, 0.1, 256), 0.0, 0.9)
    np.testing.assert_allclose(thr, ref, rtol=1e-6)
    np.testing.assert_array_equal(mask, np.abs(np.asarray(w)) > ref)
    assert 1 <= int(jnp.sum(~mask)) <= 8


def test_histogram_mask_is_strict_and_topk_keeps_ties():
    x = jnp.arange(9.0)  # 8 bins of width 1: the threshold lands on 4.0 exactly
    mask, thr = legacy_mask(x, 0.5, 0.0, method="histogram", threshold_decay=0.0, nbins=8)
    assert float(thr) == 4.0
    np.testing.assert_array_equal(mask, x > 4.0)  # 4.0 itself is pruned
    x = jnp.array([1.0, 2.0, -2.0, 2.0, 3.0])
    # k = round(5 * 0.5) = 2, the 2nd largest is 2.0 and all three 2.0s are kept.
    mask, thr = legacy_mask(x, 0.5, 0.0, method="topk", threshold_decay=0.0)
    assert float(thr) == 2.0
    np.testing.assert_array_equal(mask, [False, True, True, True, True])


def test_all_zero_weights_give_a_zero_threshold_not_nan():
    assert float(histogram_threshold(jnp.zeros(16), 0.5, 256)) == 0.0
    mask, thr = legacy_mask(jnp.zeros((4, 4)), 0.5, 0.0, threshold_decay=0.9)
    assert float(thr) == 0.0 and not bool(jnp.any(mask))


def test_topk_threshold_matches_numpy_and_has_no_floor():
    a = jnp.abs(normal(4, (10, 10)))
    for s in (0.0, 0.25, 0.5, 0.995):
        np.testing.assert_array_equal(topk_threshold(a, s), np_topk_threshold(a, s))
    # n (1 - s) = 0.4 rounds to k = 0, which TensorFlow could not handle: the largest is kept.
    x = jnp.array([1.0, -4.0, 2.0, 3.0])
    assert float(topk_threshold(jnp.abs(x), 0.9)) == 4.0


def test_smoothing_of_the_threshold():
    x = normal(5, (32, 8))
    for method, ref in [("histogram", lambda a, s: np_histogram_threshold(a, s, 64))] + [
        ("topk", np_topk_threshold)
    ]:
        mask, thr = legacy_mask(x, 0.3, 0.2, method=method, threshold_decay=0.75, nbins=64)
        expected = np_smooth(ref(x, 0.3), 0.2, 0.75)
        np.testing.assert_allclose(thr, expected, rtol=1e-6)
        a = np.abs(np.asarray(x))
        np.testing.assert_array_equal(
            mask, a > expected if method == "histogram" else a >= expected
        )


def test_block_mask_matches_numpy(maybe_jit):
    x = normal(6, (10, 12))  # 2x4 blocks: 5 x 3 of them
    for method, pooling in [("histogram", "AVG"), ("topk", "MAX")]:
        f = maybe_jit(
            lambda x, s, method=method, pooling=pooling: legacy_mask(
                x,
                s,
                0.0,
                method=method,
                threshold_decay=0.0,
                nbins=16,
                block_shape=(2, 4),
                pooling=pooling,
            )
        )
        mask, thr = f(x, 0.4)
        scores = np_block_scores(np.asarray(x), 2, 4, pooling)
        if method == "histogram":
            ref = np_histogram_threshold(scores, 0.4, 16)
            kept = scores > ref
        else:
            ref = np_topk_threshold(scores, 0.4)
            kept = scores >= ref
        np.testing.assert_allclose(thr, ref, rtol=1e-6)
        np.testing.assert_array_equal(mask, np.kron(kept, np.ones((2, 4), bool)))


# ----- when: the update rule and the sparsity function -----


@pytest.mark.parametrize(
    "hparams, expected",
    [
        ("begin_pruning_step=0,pruning_frequency=10", [10, 20, 30, 40, 50]),
        ("begin_pruning_step=5,end_pruning_step=40,pruning_frequency=10", [10, 20, 30, 40]),
        ("begin_pruning_step=15,pruning_frequency=10", [15, 25, 35, 45, 55]),
        ("begin_pruning_step=0,end_pruning_step=25,pruning_frequency=10", [10, 20]),
        ("begin_pruning_step=3,end_pruning_step=7,pruning_frequency=2", [3, 5, 7]),
    ],
)
def test_update_rule_steps(hparams, expected):
    config = PruningConfig.parse(hparams)
    assert updates_of(config, 60) == expected
    got, last = [], 0
    for t in range(60):
        if bool(should_update(config, t, last)):
            got.append(t)
            last = t
    assert got == expected


def test_update_rule_inside_the_transform():
    config = PruningConfig.parse("begin_pruning_step=5,end_pruning_step=40,pruning_frequency=10")
    tx = pruning_from_config(config)
    params = {"w": normal(7, (4, 4))}

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return (optax.apply_updates(params, updates), state), state.last_update_step

    (_, state), last = jax.jit(lambda c: jax.lax.scan(body, c, length=50))(
        (params, tx.init(params))
    )
    fired = [t for t in range(1, 50) if int(last[t]) == t]
    assert fired == [10, 20, 30, 40]
    assert int(state.count) == 50 and int(state.last_update_step) == 40


def test_sparsity_function_has_its_own_window():
    config = PruningConfig(
        initial_sparsity=0.1,
        target_sparsity=0.9,
        sparsity_function_begin_step=100,
        sparsity_function_end_step=300,
        sparsity_function_exponent=2.0,
    )
    curve = sparsity_function(config)
    for t in [0, 100, 150, 250, 300, 1000]:
        p = min(1.0, max(0.0, (t - 100) / 200))
        expected = (0.1 - 0.9) * (1 - p) ** 2 + 0.9
        np.testing.assert_allclose(curve(t)[1], expected, rtol=1e-6)


# ----- the whole process against a numpy simulation -----


@pytest.mark.parametrize("method", ["histogram", "topk"])
def test_moving_average_over_several_updates(method):
    config = PruningConfig(
        pruning_frequency=2,
        threshold_decay=0.6,
        nbins=32,
        initial_sparsity=0.2,
        target_sparsity=0.6,
        sparsity_function_end_step=12,
        threshold=method,
    )
    w0 = normal(9, (16, 16))
    history, _ = run(pruning_from_config(config), {"w": w0}, 16)
    curve = sparsity_function(config)
    ref = np_histogram_threshold if method == "histogram" else None
    w, thr, thresholds = np.asarray(w0), np.float32(0.0), []
    for t in range(16):
        if t in updates_of(config, 16):
            s = curve(t)[1]
            current = ref(w, s, 32) if ref else np_topk_threshold(w, s)
            thr = np_smooth(current, thr, 0.6)
            keep = np.abs(w) > thr if ref else np.abs(w) >= thr
            w = np.where(keep, w, np.float32(0.0))
            thresholds.append(thr)
        params, state = history[t]
        np.testing.assert_allclose(state.thresholds["w"], thr, rtol=1e-6)
        np.testing.assert_array_equal(params["w"], w)
    assert len(thresholds) == 7 and thresholds == sorted(thresholds)


def test_first_update_uses_the_sparsity_curve_and_the_map_rescales_it():
    # The curve runs from step 0 to 20; the first update is at step 10 (last_update starts at
    # 0), with s(10) = 0.25, where tfmot would have pruned at step 0 to the initial sparsity.
    config = PruningConfig(
        begin_pruning_step=0,
        pruning_frequency=10,
        threshold="topk",
        threshold_decay=0.0,
        target_sparsity=0.5,
        sparsity_function_end_step=20,
        sparsity_function_exponent=1.0,
        weight_sparsity_map={"a": 0.8},
    )
    params = {"a": normal(10, (20, 20)), "b": normal(11, (20, 20))}
    history, _ = run(pruning_from_config(config), params, 21)
    assert int(jnp.sum(history[9][0]["b"] == 0)) == 0
    for t, s in [(10, 0.25), (19, 0.25), (20, 0.5)]:
        p, _ = history[t]
        # s_a = s * 0.8 / 0.5: 0.4, then 0.8.
        s_a = np.float32(s) * np.float32(0.8 / 0.5)
        assert int(jnp.sum(p["a"] == 0)) == 400 - round(float(np.float32(400) * (1 - s_a)))
        assert int(jnp.sum(p["b"] == 0)) == 400 - round(400 * (1 - s))


def test_blocks_for_rank_2_leaves_elementwise_for_others():
    config = PruningConfig(
        pruning_frequency=1,
        threshold_decay=0.0,
        nbins=16,
        block_height=2,
        block_width=4,
        block_pooling_function="MAX",
        sparsity_function_end_step=1,
        block_dims_map={"cols": (-1, 1)},
    )
    params = {
        "dense": normal(12, (8, 12)),
        "conv": normal(13, (3, 3, 2, 4)),
        "cols": normal(14, (6, 10)),
    }
    history, _ = run(pruning_from_config(config), params, 2)
    state = history[1][1]
    for name, block in [("dense", (2, 4)), ("conv", None), ("cols", (6, 1))]:
        x = np.asarray(params[name])
        # Default blocks for the rank-2 kernel; the conv kernel falls back to elementwise (as
        # in TensorFlow); the map's -1 is the whole axis: whole columns.
        scores = np.abs(x) if block is None else np_block_scores(x, *block, "MAX")
        thr = np_histogram_threshold(scores, 0.5, 16)  # a pooled score for blocks
        kept = scores > thr
        if block is not None:
            kept = np.kron(kept, np.ones(block, bool))
        np.testing.assert_allclose(state.thresholds[name], thr, rtol=1e-6)
        np.testing.assert_array_equal(state.masks[name], kept)
        assert 0 < kept.sum() < kept.size


# ----- optax conformance -----


def mlp_params():
    return {
        "Dense_0": {"kernel": normal(20, (12, 16)), "bias": jnp.zeros(16)},
        "Dense_1": {"kernel": normal(21, (16, 4)), "bias": jnp.zeros(4)},
    }


def loss_grads(params, i):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(0), i), (8, 12))
    y = jnp.sin(x[:, :4])

    def loss(p):
        h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
        return jnp.mean((h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None] - y) ** 2)

    return jax.grad(loss)(params)


def test_pruned_weights_exactly_zero_after_every_step_no_recompilation():
    # Two legacy pruners in one chain, one per kernel: the histogram and the top-k threshold.
    def config(method):
        return PruningConfig(
            pruning_frequency=3,
            threshold=method,
            target_sparsity=0.8,
            sparsity_function_end_step=20,
            threshold_decay=0.5,
        )

    tx = optax.chain(
        optax.adam(0.05),
        pruning_from_config(config("histogram"), prune="Dense_0/kernel"),
        pruning_from_config(config("topk"), prune="Dense_1/kernel"),
    )
    history, step = run(tx, mlp_params(), 25, grads=loss_grads)
    for params, state in history:
        for i, name in [(1, "Dense_0"), (2, "Dense_1")]:
            masks = state[i].masks
            w, m = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
            assert np.all(w.view(np.uint32)[~m] == 0)  # +0.0, bit for bit
            assert masks[name]["bias"].shape == ()
        assert bool(jnp.all(params["Dense_0"]["bias"] != 0))  # biases are never pruned
    assert step._cache_size() == 1
    for name in ("Dense_0", "Dense_1"):
        # The smoothed threshold lags the target, or overshoots it as weights shrink.
        assert 0.5 < float(jnp.mean(history[-1][0][name]["kernel"] == 0)) < 0.9


def test_state_scan_multisteps_and_extra_args():
    tx = optax.MultiSteps(
        optax.chain(optax.sgd(0.1), pruning_from_config("pruning_frequency=1")), every_k_schedule=2
    )
    params = mlp_params()
    state = tx.init(params)
    inner = optax.tree.get(state, "last_update_step")
    assert inner.dtype == jnp.int32 and inner.shape == ()
    assert optax.tree.get(state, "masks")["Dense_0"]["kernel"].dtype == jnp.bool_

    def body(carry, i):
        params, state = carry
        updates, state = tx.update(loss_grads(params, i), state, params, extra=1.0)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(8)))((params, state))
    legacy = state.inner_opt_state[1]
    assert isinstance(legacy, LegacyPruningState)
    assert int(legacy.count) == 4 and int(legacy.last_update_step) == 3
    assert legacy.thresholds["Dense_0"]["kernel"].dtype == jnp.float32


def test_errors():
    params = {"dense": jnp.ones((4, 4)), "conv": jnp.ones((3, 3, 2, 2))}
    tx = pruning_from_config(PruningConfig())
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="config must be a PruningConfig"):
        pruning_from_config({"target_sparsity": 0.5})
    with pytest.raises(ValueError, match="unknown hyperparameter 'sparsity'"):
        pruning_from_config("sparsity=0.5")
    bad = [
        ("weight_sparsity_map=[dense:0.5,den:0.4]", "multiple matches in weight_sparsity_map"),
        ("weight_sparsity_map=[Dense_0:0.5]", "matches no pruned leaf"),
        ("block_dims_map=[conv:2x2]", "block_dims_map gives 'conv' blocks"),
    ]
    for hparams, message in bad:
        with pytest.raises(ValueError, match=message):
            pruning_from_config(hparams).init(params)
    with pytest.raises(ValueError, match="matches no leaf"):
        pruning_from_config(PruningConfig(), prune="kernel").init(params)


def test_accessors_find_the_legacy_state():
    import jaxprune as jp

    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    tx = optax.chain(optax.sgd(0.0), jp.tf.pruning_from_config("target_sparsity=0.5"))
    state = tx.init(params)
    assert isinstance(jp.get_pruning_state(state), jp.tf.LegacyPruningState)
    assert jp.get_masks(state)["w"].shape == (4, 4)
    assert jp.strip(params, state)["w"].shape == (4, 4)
