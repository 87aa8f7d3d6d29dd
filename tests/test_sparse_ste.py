"""STE, SR-STE, random STE, saliency and movement pruning against NumPy references.

Test data comes from NumPy (no compilation), every step is jitted, and the two scopes of an
algorithm run in one compiled function: each distinct XLA program costs about a second of CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune._src.schedules import constant_sparsity, polynomial_decay
from jaxprune._src.sparse_core import masked_params, sparse
from jaxprune._src.sparse_ste import magnitude_ste, movement_pruning, random_ste, saliency_pruning
from jaxprune._src.summaries import get_masks

EVERY_STEP = constant_sparsity(0.75, begin_step=0, frequency=1)
SCOPES = ("layer", "global")


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def make_params(seed=0):
    return {
        "l1": {"kernel": normal(seed, (6, 8)), "bias": jnp.zeros(8)},
        "l2": {"kernel": normal(seed + 1, (8, 4), 3.0), "bias": normal(seed + 2, (4,))},
    }


def grads_like(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([normal(1000 * seed + i, x.shape) for i, x in enumerate(leaves)])


def ref_kept(n, s):
    return int(min(max(np.round(np.float32(n) * (np.float32(1) - np.float32(s))), 1), n))


def ref_top(scores, count):
    """Masks keeping the `count` largest of the concatenated scores, ties by position."""
    flat = np.concatenate([s.reshape(-1) for s in scores])
    order = np.lexsort((np.arange(flat.size), -flat))
    keep = np.zeros(flat.size, bool)
    keep[order[:count]] = True
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def ref_magnitude_mask(x, s):
    # tfmot's rule: k-th largest magnitude as threshold, ties kept.
    k = ref_kept(x.size, s)
    t = np.sort(np.abs(x).reshape(-1))[::-1][k - 1]
    return np.abs(x) >= t


def kernels(tree):
    return [np.asarray(tree["l1"]["kernel"]), np.asarray(tree["l2"]["kernel"])]


def test_ste_forward_sees_zeros_and_gradients_reach_pruned_weights():
    params = make_params()
    lr = 0.1
    tx = sparse(optax.sgd(lr), magnitude_ste(EVERY_STEP))
    state = tx.init(params)
    step = jax.jit(tx.update)
    g = grads_like(params, 1)
    updates, state = step(g, state, params)
    # Dense updates: exactly SGD's, on every weight, pruned or not.
    for u, gi in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(u), -lr * np.asarray(gi), rtol=1e-6)
    new = optax.apply_updates(params, updates)
    # Masks from the weights this step produced, by the magnitude rule, per leaf.
    for m, w in zip(kernels(get_masks(state)), kernels(new)):
        np.testing.assert_array_equal(m, ref_magnitude_mask(w, 0.75))
    masks = get_masks(state)
    c = grads_like(params, 2)

    @jax.jit
    def forward_and_grad(p, state):
        def loss(p):
            mp = masked_params(p, state)
            return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(c)))

        return masked_params(p, state), jax.grad(loss)(p)

    fwd, grad = forward_and_grad(new, state)
    for f, w, m in zip(kernels(fwd), kernels(new), kernels(masks)):
        np.testing.assert_array_equal(f, np.where(m, w, 0.0))
    assert not np.all(kernels(new)[0][~kernels(masks)[0]] == 0.0)  # dense weights kept
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(c)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # straight through
    # The second step (masks set, plain STE): updates still exactly SGD's on every weight.
    g2 = grads_like(params, 3)
    updates, state = step(g2, state, new)
    for u, gi in zip(jax.tree.leaves(updates), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(u), -lr * np.asarray(gi), rtol=1e-6)
    assert step._cache_size() == 1


def test_magnitude_ste_current_ranks_the_weights_before_the_update():
    params = make_params()
    lr = 0.1
    tx = sparse(optax.sgd(lr), magnitude_ste(EVERY_STEP, recompute_from="current"))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(3):
        g = grads_like(params, 10 + t)
        updates, state = step(g, state, params)
        for u, gi in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
            np.testing.assert_allclose(np.asarray(u), -lr * np.asarray(gi), rtol=1e-6)
        # The masks rank the weights given to this update, not the ones it produces.
        for m, w in zip(kernels(get_masks(state)), kernels(params)):
            np.testing.assert_array_equal(m, ref_magnitude_mask(w, 0.75))
        new = optax.apply_updates(params, updates)
        if t == 0:  # the two rules differ on these weights
            assert any(
                not np.array_equal(ref_magnitude_mask(a, 0.75), ref_magnitude_mask(b, 0.75))
                for a, b in zip(kernels(params), kernels(new))
            )
        params = new
    assert step._cache_size() == 1


def test_sr_ste_adds_decay_of_pruned_weights_to_the_gradient():
    params = make_params()
    lam, lr = 2e-2, 0.5
    tx = sparse(optax.sgd(lr), magnitude_ste(EVERY_STEP, sr_ste_lambda=lam))
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step(grads_like(params, 3), state, params)  # first turn: masks set
    masks = get_masks(state)
    g = grads_like(params, 4)
    updates, state = step(g, state, params)
    for u, gi, w, m in zip(kernels(updates), kernels(g), kernels(params), kernels(masks)):
        want = -lr * (gi + lam * np.where(m, 0.0, w))
        np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-7)
    # Biases are not masked: no decay term.
    np.testing.assert_allclose(
        np.asarray(updates["l2"]["bias"]), -lr * np.asarray(g["l2"]["bias"]), rtol=1e-6
    )


def test_random_ste_exact_counts_and_fresh_draws():
    params = make_params()
    tx = sparse(optax.sgd(0.1), random_ste(EVERY_STEP, key=jax.random.key(0)))
    state = tx.init(params)
    step = jax.jit(tx.update)
    seen = []
    for t in range(2):
        _, state = step(grads_like(params, t), state, params)
        ms = kernels(get_masks(state))
        assert [int(m.sum()) for m in ms] == [ref_kept(48, 0.75), ref_kept(32, 0.75)]
        seen.append(ms[0])
    assert not np.array_equal(seen[0], seen[1])
    assert step._cache_size() == 1


def both_scopes(make):
    """One jitted step running the algorithm ``make(scope)`` for both scopes."""
    txs = {scope: sparse(*make(scope)) for scope in SCOPES}

    @jax.jit
    def step(grads, states, params):
        return {s: txs[s].update(grads[s], states[s], params[s]) for s in SCOPES}

    return txs, step


def test_saliency_scores_and_exact_zeros():
    sched = polynomial_decay(0.0, 0.8, begin_step=0, end_step=2, frequency=1)
    txs, step = both_scopes(lambda s: (optax.adam(0.01), saliency_pruning(sched, scope=s)))
    params = {s: make_params() for s in SCOPES}
    states = {s: txs[s].init(params[s]) for s in SCOPES}
    for t in range(3):
        g = {s: grads_like(params[s], 10 + t) for s in SCOPES}
        out = step(g, states, params)
        s_t = float(sched(t)[1])
        for scope in SCOPES:
            old = kernels(get_masks(states[scope]))
            updates, states[scope] = out[scope]
            score = [
                np.where(m, np.abs(np.float32(w) * np.float32(gi)), -1.0)  # pruned rank last
                for m, w, gi in zip(old, kernels(params[scope]), kernels(g[scope]))
            ]
            if scope == "layer":
                want = [ref_top([x], ref_kept(x.size, s_t))[0] for x in score]
            else:
                want = ref_top(score, ref_kept(48 + 32, s_t))
            for m, w in zip(kernels(get_masks(states[scope])), want):
                np.testing.assert_array_equal(m, w)
            params[scope] = optax.apply_updates(params[scope], updates)
            for m, w in zip(kernels(get_masks(states[scope])), kernels(params[scope])):
                assert np.all(w[~m] == 0.0)
    assert step._cache_size() == 1


def test_movement_scores_accumulate_and_rank():
    sched = constant_sparsity(0.5, begin_step=2, frequency=2)
    lr = 0.05
    txs, step = both_scopes(lambda s: (optax.sgd(lr), movement_pruning(sched, scope=s)))
    params = {s: make_params() for s in SCOPES}
    states = {s: txs[s].init(params[s]) for s in SCOPES}
    scores = {s: [np.zeros((6, 8), np.float32), np.zeros((8, 4), np.float32)] for s in SCOPES}
    for t in range(3):
        g = {s: grads_like(params[s], 20 + t) for s in SCOPES}
        out = step(g, states, params)
        for scope in SCOPES:
            for i, (w, gi) in enumerate(zip(kernels(params[scope]), kernels(g[scope]))):
                scores[scope][i] = scores[scope][i] - np.float32(w) * np.float32(gi)
            updates, states[scope] = out[scope]
            for a, b in zip(kernels(states[scope].algorithm.scores), scores[scope]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            # Dense weights keep training.
            for u, gi in zip(kernels(updates), kernels(g[scope])):
                np.testing.assert_allclose(u, -lr * gi, rtol=1e-6)
            params[scope] = optax.apply_updates(params[scope], updates)
    for scope in SCOPES:
        final = kernels(states[scope].algorithm.scores)
        if scope == "layer":
            want = [ref_top([s], ref_kept(s.size, 0.5))[0] for s in final]
        else:
            want = ref_top(final, ref_kept(80, 0.5))
        for m, w in zip(kernels(get_masks(states[scope])), want):
            np.testing.assert_array_equal(m, w)
    assert step._cache_size() == 1


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: magnitude_ste(EVERY_STEP, sr_ste_lambda=-1.0), ValueError, "sr_ste_lambda"),
        (lambda: magnitude_ste(EVERY_STEP, sr_ste_lambda="x"), TypeError, "sr_ste_lambda"),
        (lambda: magnitude_ste(0.5), TypeError, "schedule"),
        (lambda: magnitude_ste(EVERY_STEP, recompute_from="new"), ValueError, "recompute_from"),
        (lambda: random_ste(EVERY_STEP, key=None), ValueError, "key"),
        (lambda: saliency_pruning(EVERY_STEP, scope="net"), ValueError, "scope"),
        (lambda: movement_pruning(EVERY_STEP, scope="net"), ValueError, "scope"),
        (lambda: movement_pruning(EVERY_STEP, prune="[("), ValueError, "prune"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()
