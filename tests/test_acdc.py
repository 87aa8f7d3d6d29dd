"""The AC/DC transformation: timeline, masks against a NumPy reference, conformance, errors."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import jaxprune as jp
from jaxprune._src.acdc import ACDCState, acdc, acdc_phases
from jaxprune._src.distributions import erk_sparsities

KERNELS = ["params/Dense_0/kernel", "params/Dense_1/kernel"]
BIASES = ["params/Dense_0/bias", "params/Dense_1/bias"]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {
        "params": {
            "Dense_0": {"kernel": f32(10, 12), "bias": f32(12)},
            "Dense_1": {"kernel": 3.0 * f32(12, 4), "bias": f32(4)},
        }
    }


def leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def grads_like(params, i):
    rng = np.random.default_rng(1000 + i)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def timeline(t, warmup, phase, final, total):
    """Labels written out from the documented timeline: 'dense', 'start', 'compressed'."""
    labels = ["dense"] * warmup
    cycles = (total - warmup - final) // (2 * phase)
    for _ in range(cycles):
        labels += ["start"] + ["compressed"] * (phase - 1) + ["dense"] * phase
    labels += ["start"] + ["compressed"] * (final - 1)
    assert len(labels) == total
    return labels[t] if t < total else "compressed"


def kept_count(n, s):
    return int(min(max(np.round(np.float32(n) * (np.float32(1) - np.float32(s))), 1), n))


def reference_masks(weights, sparsity, scope):
    """NumPy magnitude masks: keep every |w| >= the k-th largest (per leaf or over all)."""
    if scope == "layer":
        out = []
        for w in weights:
            kth = np.sort(np.abs(w).ravel())[::-1][kept_count(w.size, sparsity) - 1]
            out.append(np.abs(w) >= kth)
        return out
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    kth = np.sort(flat)[::-1][kept_count(flat.size, sparsity) - 1]
    return [np.abs(w) >= kth for w in weights]


@settings(max_examples=60, deadline=None)
@given(
    warmup=st.integers(0, 4),
    phase=st.integers(1, 4),
    final=st.integers(1, 6),
    cycles=st.integers(0, 3),
)
def test_phases_follow_the_timeline(warmup, phase, final, cycles):
    total = warmup + 2 * phase * cycles + final
    steps = np.arange(40)  # one shape for every example: no compilation per example
    compressed, starts = acdc_phases(
        steps, warmup_steps=warmup, phase_steps=phase, final_start=total - final
    )
    labels = [timeline(int(t), warmup, phase, final, total) for t in steps]
    np.testing.assert_array_equal(np.asarray(starts), [lab == "start" for lab in labels])
    np.testing.assert_array_equal(np.asarray(compressed), [lab != "dense" for lab in labels])


WARMUP, PHASE, FINAL, TOTAL = 2, 3, 4, 18  # two cycles: C C C D D D at 2-7 and 8-13


@pytest.mark.parametrize("recompute_from", ["current", "updated"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_training_run_against_reference(scope, recompute_from):
    sparsity = 0.8
    tx = optax.chain(
        optax.identity(),
        acdc(
            sparsity,
            warmup_steps=WARMUP,
            phase_steps=PHASE,
            final_compressed_steps=FINAL,
            total_steps=TOTAL,
            scope=scope,
            recompute_from=recompute_from,
        ),
    )
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    params = make_params()
    state = tx.init(params)
    current = None  # the masks of the current compressed phase
    for t in range(TOTAL + 2):
        g = grads_like(params, t)
        label = timeline(t, WARMUP, PHASE, FINAL, TOTAL)
        # The weights a phase's masks rank: before this update ("current"), or after it.
        w_rank = [np.asarray(leaf(params, p)) for p in KERNELS]
        if recompute_from == "updated":
            w_rank = [w + np.asarray(leaf(g, p)) for w, p in zip(w_rank, KERNELS)]
        params, state, u = step(params, state, g)
        masks = [np.asarray(leaf(jp.get_masks(state), p)) for p in KERNELS]
        for p in BIASES:
            np.testing.assert_array_equal(leaf(u, p), leaf(g, p))
        if label == "dense":
            current = None
            for p, m in zip(KERNELS, masks):
                assert m.all()
                np.testing.assert_array_equal(leaf(u, p), leaf(g, p))  # untouched
            continue
        if label == "start":
            current = reference_masks(w_rank, sparsity, scope)
        for p, m, ref in zip(KERNELS, masks, current):
            np.testing.assert_array_equal(m, ref)  # chosen at the start, fixed in the phase
            w = np.asarray(leaf(params, p))
            assert np.all(w.view(np.uint32)[~m] == 0)  # exactly +0.0
            np.testing.assert_array_equal(np.asarray(leaf(u, p))[m], np.asarray(leaf(g, p))[m])
        total_n = sum(m.size for m in masks)
        zeros = sum(int((np.asarray(leaf(params, p)) == 0).sum()) for p in KERNELS)
        if scope == "layer":
            for p, m in zip(KERNELS, masks):
                assert (np.asarray(leaf(params, p)) == 0).sum() == m.size - kept_count(
                    m.size, sparsity
                )
        assert zeros == total_n - kept_count(total_n, sparsity)
    assert len(traces) == 1  # no recompilation
    assert isinstance(state[1], ACDCState)
    assert int(optax.tree.get(state, "count")) == TOTAL + 2


def test_per_leaf_map_from_erk():
    params = make_params()
    targets = erk_sparsities(params, 0.7)
    assert targets[KERNELS[0]] != targets[KERNELS[1]]
    tx = acdc(targets, warmup_steps=0, phase_steps=1, final_compressed_steps=1, total_steps=3)
    state = tx.init(params)
    masks = jp.get_masks(state)
    assert [np.ndim(leaf(masks, p)) for p in BIASES] == [0, 0]
    update = jax.jit(tx.update)
    for t, compressed in enumerate([True, False, True]):
        u, state = update(grads_like(params, t), state, params)
        params = optax.apply_updates(params, u)
        for p in KERNELS:
            zeros = int((np.asarray(leaf(params, p)) == 0).sum())
            n = leaf(params, p).size
            assert zeros == (n - kept_count(n, targets[p]) if compressed else 0), (t, p)


def test_params_required_and_no_extra_args():
    params = make_params()
    tx = acdc(0.5, warmup_steps=0, phase_steps=1, final_compressed_steps=1, total_steps=1)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, state)


GOOD = dict(warmup_steps=2, phase_steps=3, final_compressed_steps=4, total_steps=18)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparsity=1.0), ValueError, "sparsity must be in range"),
        (dict(sparsity=-0.1), ValueError, "sparsity must be in range"),
        (dict(sparsity="0.5"), TypeError, "sparsity must be a float"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps must be an int >= 0"),
        (dict(warmup_steps=1.0), TypeError, "warmup_steps must be an int"),
        (dict(phase_steps=0), ValueError, "phase_steps must be an int >= 1"),
        (dict(final_compressed_steps=0), ValueError, "final_compressed_steps must be an int >= 1"),
        (dict(total_steps=True), TypeError, "total_steps must be an int"),
        (dict(total_steps=17), ValueError, "total_steps=12, 18 would fit"),
        (dict(total_steps=5), ValueError, "multiple of 2 \\* phase_steps"),
        (dict(scope="local"), ValueError, "scope must be one of"),
        (dict(prune=3), TypeError, "prune must be"),
        (dict(sparsity={"params/Dense_0/kernel": 0.5}, prune="kernel"), ValueError, "prune must"),
        (dict(sparsity={"params/Dense_0/kernel": 0.5}, scope="global"), ValueError, "scope"),
        (dict(sparsity={"params/Dense_0/kernel": 1.5}), ValueError, "sparsity\\['params"),
        (dict(sparsity={3: 0.5}), TypeError, "leaf paths"),
        (dict(sparsity={}), ValueError, "empty map"),
        (
            dict(recompute_from="after"),
            ValueError,
            "recompute_from must be one of \\('current', 'updated'\\), got 'after'",
        ),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(GOOD, sparsity=0.5)
    args.update(kwargs)
    sparsity = args.pop("sparsity")
    with pytest.raises(error, match=match):
        acdc(sparsity, **args)


def test_bad_leaves_at_init():
    params = make_params()
    with pytest.raises(ValueError, match="prune="):
        acdc(0.5, prune="Conv", **GOOD).init(params)
    with pytest.raises(ValueError, match="are not leaves"):
        acdc({"params/Dense_0": 0.5}, **GOOD).init(params)
    with pytest.raises(TypeError, match="not a floating-point array"):
        acdc({"n": 0.5}, **GOOD).init({"n": jnp.ones((3, 3), jnp.int32)})


def test_scan_and_multisteps():
    tx = optax.chain(
        optax.sgd(0.1),
        acdc(0.6, warmup_steps=1, phase_steps=1, final_compressed_steps=2, total_steps=5),
    )
    params0 = make_params()
    grads = [grads_like(params0, t) for t in range(6)]

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p_loop, s_loop = params0, tx.init(params0)
    for g in grads:
        p_loop, s_loop = step(p_loop, s_loop, g)

    def body(carry, g):
        return step.__wrapped__(*carry, g), None

    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
    (p_scan, s_scan), _ = jax.lax.scan(body, (params0, tx.init(params0)), stacked)
    jax.tree.map(np.testing.assert_array_equal, p_scan, p_loop)
    jax.tree.map(np.testing.assert_array_equal, s_scan, s_loop)

    # Inside MultiSteps the phases advance once per real update (every 2 micro-steps).
    ms = optax.MultiSteps(tx, every_k_schedule=2)
    ms_update = jax.jit(ms.update)
    ms_state, p = ms.init(params0), params0
    zeros = []
    for g in grads:
        u, ms_state = ms_update(g, ms_state, p)
        p = optax.apply_updates(p, u)
        zeros.append(int((np.asarray(p["params"]["Dense_0"]["kernel"]) == 0).sum()))
    assert int(optax.tree.get(ms_state.inner_opt_state, "count")) == 3
    # Real updates 0 (dense), 1 (compressed), 2 (dense) at micro-steps 1, 3, 5; the other
    # micro-steps apply zero updates, so the weights keep the last real update's zeros.
    pruned = 120 - kept_count(120, 0.6)
    assert zeros == [0, 0, 0, pruned, pruned, 0]
