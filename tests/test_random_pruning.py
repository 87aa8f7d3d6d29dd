"""The random_pruning transformation: masks against a NumPy reference, and conformance."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune._src.distributions import erk_sparsities
from jaxprune._src.random_pruning import RandomPruningState, as_key, random_pruning

KERNELS = ["params/Dense_0/kernel", "params/Dense_1/kernel"]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(12, 16)), jnp.float32),
                "bias": jnp.zeros(16),
            },
            "Dense_1": {
                "kernel": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
                "bias": jnp.zeros(5),
            },
        }
    }


def leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def grads_like(params, i):
    rng = np.random.default_rng(1000 + i)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def make_step(tx, traces=None):
    @jax.jit
    def step(params, state, grads):
        if traces is not None:
            traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def reference_mask(key, index, shape, prev_mask, sparsity):
    """NumPy: keep the k highest fixed random scores among the entries kept so far."""
    bits = np.asarray(jax.random.bits(jax.random.fold_in(key, index), shape, jnp.uint32))
    scores = np.where(prev_mask, np.maximum(bits, 1), 0).astype(np.uint64).ravel()
    n = scores.size
    k = int(min(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), 1), n))
    kth = np.sort(scores)[::-1][k - 1]
    return prev_mask & (scores >= kth).reshape(shape)


def test_masks_match_reference_and_are_nested():
    key = jax.random.key(7)
    schedule = jp.polynomial_decay(0.0, 0.9, begin_step=1, end_step=7, frequency=2)
    tx = optax.chain(optax.sgd(0.1), random_pruning(schedule, key=key))
    params = make_params()
    state = tx.init(params)
    step = make_step(tx)
    # Leaf indices in the flattened params: Dense_0/bias, Dense_0/kernel, Dense_1/bias, ...
    index = {"params/Dense_0/kernel": 1, "params/Dense_1/kernel": 3}
    expected = {p: np.ones(leaf(params, p).shape, bool) for p in KERNELS}
    turns = 0
    for t in range(10):
        params, state = step(params, state, grads_like(params, t))
        should, s = schedule(t)
        masks = jp.get_masks(state)
        for p in KERNELS:
            if bool(should):
                new = reference_mask(key, index[p], expected[p].shape, expected[p], float(s))
                assert np.all(new <= expected[p])  # nested: nothing comes back
                expected[p] = new
            np.testing.assert_array_equal(np.asarray(leaf(masks, p)), expected[p])
            w = np.asarray(leaf(params, p))
            assert np.all(w.view(np.uint32)[~expected[p]] == 0), (t, p)  # +0.0 exactly
            assert np.all(w[expected[p]] != 0)
        turns += bool(should)
    assert turns == 4
    for p in KERNELS:
        n = expected[p].size
        assert expected[p].sum() == round(n * 0.1)


def test_masks_do_not_follow_magnitudes():
    # Kernels whose magnitudes grow along the flat index: magnitude pruning would keep the
    # last entries; random pruning keeps entries spread across the range.
    params = {"w": jnp.arange(1.0, 1025.0).reshape(32, 32)}
    tx = random_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1), key=0)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    m = np.asarray(state.masks["w"]).ravel()
    assert m.sum() == 512
    assert 150 < m[:512].sum() < 362


def test_decreasing_sparsity_prunes_nothing_more():
    def schedule(step):
        s = jnp.where(step < 2, 0.8, 0.3)
        return jnp.asarray(True), s.astype(jnp.float32)

    params = make_params()
    tx = random_pruning(schedule, key=1)
    step = make_step(tx)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    history = []
    for _ in range(4):
        params, state = step(params, state, zeros)
        history.append(np.asarray(state.masks["params"]["Dense_0"]["kernel"]))
    assert history[0].sum() == round(192 * 0.2)
    for h in history[1:]:
        np.testing.assert_array_equal(h, history[0])


def test_key_forms_and_errors():
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    for same in (3, np.int64(3), jax.random.key(3), jax.random.PRNGKey(3), np.uint32([0, 3])):
        np.testing.assert_array_equal(data(as_key(same)), data(jax.random.key(3)))
    with pytest.raises(ValueError, match="key is required"):
        random_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
    for bad in ("seed", 1.5, True, jnp.zeros(3, jnp.uint32), jnp.zeros(2, jnp.int32)):
        with pytest.raises(TypeError, match="key must be a PRNG key"):
            as_key(bad)
    with pytest.raises(ValueError, match="single PRNG key"):
        as_key(jax.random.split(jax.random.key(0), 2))


def test_different_keys_give_different_masks():
    params = {"w": jnp.ones((16, 16))}
    zeros = {"w": jnp.zeros((16, 16))}
    masks = []
    for key in (0, 1):
        tx = random_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1), key=key)
        masks.append(np.asarray(jax.jit(tx.update)(zeros, tx.init(params), params)[1].masks["w"]))
    assert masks[0].sum() == masks[1].sum() == 128
    assert not np.array_equal(masks[0], masks[1])


def test_other_errors():
    params = make_params()
    sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
    with pytest.raises(TypeError, match="schedule"):
        random_pruning(0.5, key=0)
    tx = random_pruning(sched, key=0)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="prune="):
        random_pruning(sched, key=0, prune="Conv").init(params)
    with pytest.raises(TypeError, match="sparsity_map must be a mapping"):
        random_pruning(sched, key=0, sparsity_map=[0.5])
    with pytest.raises(TypeError, match="sparsity_map keys"):
        random_pruning(sched, key=0, sparsity_map={1: 0.5})
    # Messages name the path as it was given, not the exact-match regex it is held as.
    with pytest.raises(ValueError, match=r"sparsity_map\['params/Dense_0/kernel'\]"):
        random_pruning(sched, key=0, sparsity_map={"params/Dense_0/kernel": 1.2})
    # Keys are exact paths: a prefix or a regex is not a leaf.
    for bad in ("params/Dense_0", "Dense_0/kernel", "params/Dense_./kernel", "params/Dense_0/bias"):
        tx = random_pruning(sched, key=0, sparsity_map={bad: 0.5})
        with pytest.raises(ValueError, match=f"entry '{re.escape(bad)}' matches no pruned leaf"):
            tx.init(params)


def test_erk_sparsity_map_sets_final_targets():
    params = make_params()
    targets = erk_sparsities(params, 0.8)
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=4, frequency=2)
    tx = optax.chain(optax.adam(1e-2), random_pruning(schedule, key=0, sparsity_map=targets))
    step = make_step(tx)
    state = tx.init(params)
    for t in range(6):
        params, state = step(params, state, grads_like(params, t))
        should, s = schedule(t)
        if bool(should):
            for p in KERNELS:
                m = np.asarray(leaf(jp.get_masks(state), p))
                leaf_s = np.float32(s) * np.float32(targets[p] / 0.8)
                k = max(int(np.round(np.float32(m.size) * (np.float32(1) - leaf_s))), 1)
                assert m.sum() == k, (t, p)
    total = sum(int((np.asarray(leaf(params, p)) == 0).sum()) for p in KERNELS)
    n = sum(leaf(params, p).size for p in KERNELS)
    assert abs(total / n - 0.8) < 0.01
    assert targets["params/Dense_0/kernel"] != targets["params/Dense_1/kernel"]


def test_conformance_jit_scan_multisteps_and_bias_untouched():
    params = make_params()
    sched = jp.polynomial_decay(0.0, 0.7, begin_step=0, end_step=6, frequency=3)
    tx = optax.chain(optax.identity(), random_pruning(sched, key=2))
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    for t in range(5):
        g = grads_like(params, t)
        params, state, u = step(params, state, g)
        masks = jp.get_masks(state)
        # Unpruned leaves and kept entries: the updates pass through bit for bit.
        for path in ("params/Dense_0/bias", "params/Dense_1/bias"):
            np.testing.assert_array_equal(leaf(u, path), leaf(g, path))
        for path in KERNELS:
            m = np.asarray(leaf(masks, path))
            np.testing.assert_array_equal(
                np.asarray(leaf(u, path))[m], np.asarray(leaf(g, path))[m]
            )
    assert len(traces) == 1
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), tx.init(params)
    )
    assert isinstance(state[1], RandomPruningState)
    assert optax.tree.get(state, "count") == 5
    # lax.scan over the same steps gives the same result as the Python loop.
    params0 = make_params()
    grads = [grads_like(params0, t) for t in range(5)]
    p_loop, s_loop = params0, tx.init(params0)
    for g in grads:
        p_loop, s_loop, _ = step(p_loop, s_loop, g)

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
    (p_scan, s_scan), _ = jax.lax.scan(body, (params0, tx.init(params0)), stacked)
    jax.tree.map(np.testing.assert_array_equal, p_scan, p_loop)
    jax.tree.map(np.testing.assert_array_equal, s_scan, s_loop)

    # Inside MultiSteps the pruning state advances once per real update.
    ms = optax.MultiSteps(tx, every_k_schedule=2)
    ms_state = ms.init(params0)
    p = params0
    ms_update = jax.jit(ms.update)
    for g in grads[:4]:
        u, ms_state = ms_update(g, ms_state, p)
        p = optax.apply_updates(p, u)
    assert int(optax.tree.get(ms_state.inner_opt_state, "count")) == 2
    assert len(traces) == 1
    m = jp.get_masks(ms_state)["params"]["Dense_0"]["kernel"]
    assert np.all(np.asarray(p["params"]["Dense_0"]["kernel"])[~np.asarray(m)] == 0)
