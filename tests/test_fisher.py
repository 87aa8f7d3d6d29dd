"""Tests for Fisher pruning (jaxprune._src.fisher): signals, pruning, the optax transformation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxprune._src.fisher import (
    extend_masks,
    fisher_batch_signals,
    fisher_prune,
    fisher_pruning,
    fisher_signals,
    fisher_value_and_grad,
    mask_channels,
    per_example_mask_grads,
    update_fisher_signals,
)
from jaxprune._src.flops import count_flops

# ---------------------------------------------------------------------------
# A small CNN in plain JAX with two channel masks, written once for one example
# and once for a batch (which then takes masks of shape (C,) or (B, C)).


def _forward(params, masks, x):
    """x: (B, H, W, 2) -> logits (B, 3)."""
    h = lax.conv_general_dilated(
        x, params["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = mask_channels(jax.nn.relu(h + params["conv_b"][None, None, None, :]), masks["conv"])
    h = jnp.mean(h, axis=(1, 2))  # (B, 4)
    h = mask_channels(jnp.tanh(h @ params["dense"]), masks["dense"])  # (B, 5)
    return h @ params["out"]


def _xent(logits, label):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), label[..., None], axis=-1)[..., 0]


def example_loss(params, masks, example):
    x, label = example
    return _xent(_forward(params, masks, x[None])[0], label)


def batch_losses(params, masks, batch):
    x, labels = batch
    return _xent(_forward(params, masks, x), labels)


def make_problem(batch_size=6, seed=0):
    # NumPy draws: eager jax.random would compile a kernel per shape, slowing the tests.
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    params = {
        "conv": normal(3, 3, 2, 4, scale=0.5),
        "conv_b": normal(4, scale=0.1),
        "dense": normal(4, 5),
        "out": normal(5, 3),
    }
    masks = {"conv": jnp.array([1.0, 1.0, 0.0, 1.0]), "dense": jnp.ones(5)}
    x = normal(batch_size, 6, 6, 2)
    labels = jnp.asarray(rng.integers(0, 3, size=batch_size), jnp.int32)
    return params, masks, (x, labels)


def loop_mask_grads(params, masks, batch):
    """The reference: a Python loop over the examples, one jax.grad each."""
    grad = jax.jit(jax.grad(example_loss, argnums=1))
    x, labels = batch
    rows = [grad(params, masks, (x[n], labels[n])) for n in range(x.shape[0])]
    return jax.tree.map(lambda *r: jnp.stack(r), *rows)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def problem():
    params, masks, batch = make_problem()
    return params, masks, batch, loop_mask_grads(params, masks, batch)


# ---------------------------------------------------------------------------
# Signals: both routes equal a Python loop over examples.


@pytest.mark.parametrize("route", ["vmap", "backward"])
def test_per_example_grads_equal_python_loop(problem, route, maybe_jit):
    params, masks, batch, expected = problem
    fn = maybe_jit(functools.partial(per_example_mask_grads, example_loss, route=route))
    got = fn(params, masks, batch)
    assert got["conv"].shape == (6, 4) and got["dense"].shape == (6, 5)
    assert_trees_close(got, expected)
    # The gradient of a removed feature is that of restoring it: not zero.
    assert float(jnp.abs(got["conv"][:, 2]).max()) > 0


@pytest.mark.parametrize("route", ["vmap", "backward"])
def test_signals_are_mean_squared_per_example_grads(problem, route, maybe_jit):
    params, masks, batch, expected = problem
    fn = maybe_jit(functools.partial(fisher_signals, example_loss, route=route))
    signals = fn(params, masks, batch)
    want = jax.tree.map(lambda g: jnp.mean(g**2, axis=0), expected)
    assert_trees_close(signals, want)
    assert signals["conv"].dtype == jnp.float32


@pytest.mark.parametrize("batched", [False, True])
def test_single_backward_gives_param_grads_and_per_example_mask_grads(problem, batched):
    params, masks, batch, expected = problem
    fn = batch_losses if batched else example_loss
    step = jax.jit(fisher_value_and_grad(fn, batched=batched))
    loss, (grads, mask_grads) = step(params, masks, batch)
    assert_trees_close(mask_grads, expected)

    def mean_loss(p):
        return jnp.mean(batch_losses(p, masks, batch))

    want_loss, want_grads = jax.jit(jax.value_and_grad(mean_loss))(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert_trees_close(grads, want_grads)


def test_value_and_grad_with_aux(problem):
    params, masks, batch, expected = problem

    def with_aux(p, m, b):
        logits = _forward(p, m, b[0])
        return _xent(logits, b[1]), jnp.argmax(logits, -1)

    (loss, preds), (_, mask_grads) = jax.jit(
        fisher_value_and_grad(with_aux, batched=True, has_aux=True)
    )(params, masks, batch)
    assert preds.shape == (6,)
    assert_trees_close(mask_grads, expected)

    # A mask that only the aux output reads does not count as used by the loss.
    def aux_only(p, m, b):
        return batch_losses(p, {"conv": m["conv"], "dense": m["dense"]}, b), m["extra"]

    with pytest.raises(ValueError, match="does not depend on the channel masks 'extra'"):
        fisher_value_and_grad(aux_only, batched=True, has_aux=True)(
            params, dict(masks, extra=jnp.ones(2)), batch
        )


def test_batch_signals_and_moving_average():
    g = {"a": jnp.array([[1.0, -2.0], [3.0, 0.0]])}
    s = fisher_batch_signals(g)
    np.testing.assert_array_equal(s["a"], [5.0, 2.0])
    avg = {"a": jnp.array([10.0, 0.0])}
    new = update_fisher_signals(avg, s)  # default decay 0.96, the seed's
    np.testing.assert_allclose(new["a"], [0.96 * 10 + 0.04 * 5, 0.04 * 2], rtol=1e-6)
    np.testing.assert_allclose(update_fisher_signals(avg, s, decay=0.0)["a"], [5.0, 2.0])


def test_extend_masks_and_mask_channels():
    ext = extend_masks({"a": jnp.array([1.0, 0.0, 1.0])}, 2)
    assert ext["a"].shape == (2, 3)
    x = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3)
    per_example = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    y = mask_channels(x, per_example)
    np.testing.assert_array_equal(y, x * per_example[:, None, :])
    np.testing.assert_array_equal(
        mask_channels(x, per_example[0]), x * per_example[0][None, None, :]
    )
    assert mask_channels(x.astype(jnp.bfloat16), per_example[0]).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------
# Pruning.


def _linear_readout(params, masks, example):
    """y = sum_k w_k x_k m_k with x = 1: g_nk = r_n w_k, so signals are ordered by |w_k|."""
    x, t = example
    y = jnp.sum(mask_channels(x * params["w"], masks["h"]))
    return 0.5 * (y - t) ** 2


def test_pruning_order_on_a_model_whose_least_useful_feature_is_known():
    w = jnp.array([0.5, -3.0, 0.1, 2.0, -1.0])
    params = {"w": w}
    masks = {"h": jnp.ones(5)}
    targets = np.random.default_rng(1).normal(size=8) * 3.0 + 10.0
    batch = (jnp.ones((8, 5)), jnp.asarray(targets, jnp.float32))
    signals_fn = jax.jit(functools.partial(fisher_signals, _linear_readout))
    prune = jax.jit(fisher_prune)
    order = []
    for _ in range(6):  # one more than can be removed
        new = prune(signals_fn(params, masks, batch), masks)
        removed = np.flatnonzero(np.asarray(masks["h"]) - np.asarray(new["h"]))
        order.extend(removed.tolist())
        masks = new
    # Smallest |w| first; the last feature (largest |w|) is never removed.
    assert order == [2, 0, 4, 3]
    np.testing.assert_array_equal(masks["h"], [0.0, 1.0, 0.0, 0.0, 0.0])


def test_a_dead_channel_is_pruned_first_across_layers(problem):
    params, masks, batch, _ = problem
    masks = {"conv": jnp.ones(4), "dense": jnp.ones(5)}
    # Conv channel 1 feeds nothing: its signal is exactly zero, the smallest of all layers.
    params = dict(params, dense=params["dense"].at[1].set(0.0))
    signals = jax.jit(functools.partial(fisher_signals, example_loss))(params, masks, batch)
    assert float(signals["conv"][1]) == 0.0
    new = fisher_prune(signals, masks)
    np.testing.assert_array_equal(new["conv"], [1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(new["dense"], jnp.ones(5))


def test_removed_features_are_never_chosen_again(maybe_jit):
    masks = {"a": jnp.array([1.0, 0.0, 1.0]), "b": jnp.array([0.0, 1.0, 1.0])}
    signals = {"a": jnp.array([5.0, 0.0, 3.0]), "b": jnp.array([0.0, 4.0, 2.0])}
    new = maybe_jit(fisher_prune)(signals, masks)
    np.testing.assert_array_equal(new["a"], masks["a"])
    np.testing.assert_array_equal(new["b"], [0.0, 1.0, 0.0])


def test_a_layer_is_never_emptied(maybe_jit):
    masks = {"a": jnp.array([0.0, 1.0, 0.0]), "b": jnp.ones(3), "c": jnp.ones(2)}
    signals = {
        "a": jnp.array([0.0, 0.0, 0.0]),
        "b": jnp.array([3.0, 1.0, 2.0]),
        "c": jnp.array([9.0, 8.0]),
    }
    prune = maybe_jit(fisher_prune)
    removed = []
    for _ in range(5):
        new = prune(signals, masks)
        diff = {k: np.flatnonzero(np.asarray(masks[k]) - np.asarray(new[k])) for k in masks}
        removed.append([(k, int(i)) for k, v in diff.items() for i in v])
        masks = new
    # One feature per call while any layer has two, then nothing.
    assert removed == [[("b", 1)], [("b", 2)], [("c", 1)], [], []]
    for leaf in jax.tree.leaves(masks):
        assert int(jnp.sum(leaf)) == 1


def test_ties_go_to_the_first_leaf_then_the_lowest_index(maybe_jit):
    masks = {"a": jnp.ones(3), "b": jnp.ones(3)}
    signals = {"a": jnp.array([2.0, 1.0, 1.0]), "b": jnp.array([1.0, 1.0, 3.0])}
    new = maybe_jit(fisher_prune)(signals, masks)
    np.testing.assert_array_equal(new["a"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(new["b"], jnp.ones(3))


def test_cost_aware_choice_changes_with_beta(maybe_jit):
    masks = {"cheap": jnp.ones(3), "costly": jnp.ones(3)}
    signals = {"cheap": jnp.array([0.30, 0.20, 0.50]), "costly": jnp.array([0.40, 0.25, 0.60])}
    costs = {"cheap": jnp.full(3, 1.0), "costly": jnp.full(3, 11.0)}
    prune = maybe_jit(functools.partial(fisher_prune, costs=costs))

    def chosen(beta):
        new = prune(signals, masks, beta=beta)
        return [(k, int(i)) for k in masks for i in np.flatnonzero(1 - np.asarray(new[k]))]

    # Scores 0.20 - beta vs 0.25 - 11 beta: they cross at beta = 0.005.
    assert chosen(0.0) == [("cheap", 1)]
    assert chosen(0.004) == [("cheap", 1)]
    assert chosen(0.006) == [("costly", 1)]
    assert chosen(1.0) == [("costly", 1)]
    # The hyperparameter-free rule: 0.25 / 11 < 0.20 / 1.
    new = fisher_prune(signals, masks, costs=costs, criterion="ratio")
    np.testing.assert_array_equal(new["costly"], [1.0, 0.0, 1.0])
    # A traced beta works the same.
    traced = jax.jit(lambda b: fisher_prune(signals, masks, costs=costs, beta=b))(0.006)
    np.testing.assert_array_equal(traced["costly"], [1.0, 0.0, 1.0])


def _mlp(params, masks, x):
    h = mask_channels(jax.nn.relu(x @ params["w1"]), masks["h1"])
    h = mask_channels(jax.nn.relu(h @ params["w2"]), masks["h2"])
    return h @ params["w3"]


def test_costs_from_the_flop_counter_are_recomputed_from_the_masks():
    shapes = {"w1": (64, 8), "w2": (8, 8), "w3": (8, 2)}
    params = {k: jnp.ones(s) for k, s in shapes.items()}
    x1 = jax.ShapeDtypeStruct((1, 64), jnp.float32)  # one example

    def cost_fn(m):
        return count_flops(_mlp, params, m, x1, channel_argnums=1)

    masks = {"h1": jnp.ones(8), "h2": jnp.ones(8)}
    costs = jax.grad(cost_fn)(masks)
    # An h1 feature costs its 64-input dot, its relu, and its share of the h2 products.
    assert float(costs["h1"][0]) > 4 * float(costs["h2"][0])
    signals = {"h1": jnp.full(8, 0.30), "h2": jnp.full(8, 0.25)}
    for beta in (0.0, 1e-3):
        by_tree = fisher_prune(signals, masks, costs=costs, beta=beta)
        by_fn = jax.jit(lambda m, beta=beta: fisher_prune(signals, m, costs=cost_fn, beta=beta))(
            masks
        )
        assert_trees_close(by_tree, by_fn, rtol=0, atol=0)
    np.testing.assert_array_equal(by_fn["h1"][0], 0.0)  # beta = 1e-3 removes an h1 feature
    # After pruning h2 down, h1's features share fewer products: their marginal cost drops.
    fewer = {"h1": jnp.ones(8), "h2": jnp.ones(8).at[:6].set(0.0)}
    assert float(jax.grad(cost_fn)(fewer)["h1"][0]) < float(costs["h1"][0])


# ---------------------------------------------------------------------------
# Bad input.


def test_mask_shape_matching_no_activation_is_an_error(problem):
    params, masks, batch, _ = problem
    bad = dict(masks, dense=jnp.ones(7))
    with pytest.raises(ValueError, match=r"shape \(7,\) matches no axis"):
        fisher_signals(example_loss, params, bad, batch)
    with pytest.raises(ValueError, match="matches no axis"):
        mask_channels(jnp.ones((2, 3)), jnp.ones((3, 2)))


def test_a_mask_the_loss_ignores_is_an_error(problem):
    params, masks, batch, _ = problem
    extra = dict(masks, unused=jnp.ones(3))
    with pytest.raises(ValueError, match="does not depend on the channel masks 'unused'"):
        fisher_signals(example_loss, params, extra, batch, route="backward")
    with pytest.raises(ValueError, match="'unused'"):
        fisher_value_and_grad(example_loss)(params, extra, batch)


def test_bad_options_are_clear_errors(problem):
    params, masks, batch, _ = problem
    signals = jax.tree.map(jnp.ones_like, masks)
    for decay in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"decay must be in range \[0, 1\)"):
            update_fisher_signals(signals, signals, decay=decay)
    with pytest.raises(TypeError, match="decay"):
        update_fisher_signals(signals, signals, decay="high")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        fisher_prune(signals, masks, costs=signals, beta=-0.1)
    with pytest.raises(ValueError, match="costs is None"):
        fisher_prune(signals, masks, beta=0.1)
    with pytest.raises(ValueError, match="criterion must be one of"):
        fisher_prune(signals, masks, criterion="sum")
    with pytest.raises(ValueError, match="needs costs"):
        fisher_prune(signals, masks, criterion="ratio")
    with pytest.raises(ValueError, match="beta must be 0"):
        fisher_prune(signals, masks, costs=signals, beta=1.0, criterion="ratio")
    with pytest.raises(ValueError, match="route must be one of"):
        fisher_signals(example_loss, params, masks, batch, route="loop")
    with pytest.raises(ValueError, match=r"signals\['dense'\] has shape \(4,\)"):
        fisher_prune(dict(signals, dense=jnp.ones(4)), masks)


def test_no_masks_is_an_error(problem):
    params, _, batch, _ = problem
    with pytest.raises(ValueError, match="no leaves"):
        fisher_prune({}, {})
    with pytest.raises(ValueError, match="no leaves"):
        fisher_signals(example_loss, params, {}, batch)
    with pytest.raises(ValueError, match="1-D"):
        fisher_prune({"a": jnp.ones((2, 2))}, {"a": jnp.ones((2, 2))})
    with pytest.raises(TypeError, match="float array"):
        fisher_prune({"a": jnp.ones(2)}, {"a": jnp.ones(2, bool)})


def test_bad_loss_and_batch_are_clear_errors(problem):
    params, masks, batch, _ = problem
    with pytest.raises(TypeError, match="must return a scalar"):
        fisher_signals(
            lambda p, m, e: jnp.ones(2) * m["conv"][0] * m["dense"][0], params, masks, batch
        )
    with pytest.raises(TypeError, match=r"per-example losses of shape \(6,\)"):
        fisher_value_and_grad(lambda p, m, b: jnp.mean(batch_losses(p, m, b)), batched=True)(
            params, masks, batch
        )
    with pytest.raises(ValueError, match="disagree on the batch size"):
        fisher_signals(example_loss, params, masks, (batch[0], batch[1][:3]))


# ---------------------------------------------------------------------------
# The optax transformation.


def _mlp_problem(n=32, seed=2):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (16, 8), "w2": (8, 8), "w3": (8, 3)}
    params = {
        k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32) for k, s in shapes.items()
    }
    x = jnp.asarray(rng.normal(size=(n, 16)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=n), jnp.int32)
    masks = {"h1": jnp.ones(8), "h2": jnp.ones(8)}
    return params, masks, (x, labels)


def _mlp_loss(params, masks, example):
    x, label = example
    return _xent(_mlp(params, masks, x[None])[0], label)


def _mlp_cost_fn(params):
    x1 = jax.ShapeDtypeStruct((1, 16), jnp.float32)
    return lambda m: count_flops(_mlp, params, m, x1, channel_argnums=1)


def _make_step(tx, traces):
    @jax.jit
    def step(params, opt_state, batch):
        traces.append(1)  # runs once per trace
        masks = optax.tree.get(opt_state, "channel_masks")
        _, (grads, mask_grads) = fisher_value_and_grad(_mlp_loss)(params, masks, batch)
        updates, opt_state = tx.update(grads, opt_state, params, mask_grads=mask_grads)
        return optax.apply_updates(params, updates), opt_state

    return step


def test_transformation_prunes_on_schedule_until_the_flops_target():
    params, masks, batch = _mlp_problem()
    cost_fn = _mlp_cost_fn(params)
    dense = float(cost_fn(masks))
    target = 0.7 * dense
    pruner = fisher_pruning(
        masks, frequency=2, burn_in=3, decay=0.9, cost_fn=cost_fn, beta=1e-4, target_flops=target
    )
    tx = optax.chain(optax.adam(1e-2), pruner)
    opt_state = tx.init(params)
    traces = []
    step = _make_step(tx, traces)

    first = None
    history = []  # (update t, num_pruned after it, flops after it)
    for t in range(30):
        params_before = params
        params, opt_state = step(params, opt_state, batch)
        if t == 0:
            first = (params_before, opt_state)
        state = opt_state[1]
        history.append((t, int(state.num_pruned), float(state.flops)))
    assert len(traces) == 1  # no recompilation after the first step

    pruned_at = [t for (t, n, _), (_, m, _) in zip(history[1:], history, strict=False) if n > m]
    pruned_at = ([0] if history[0][1] else []) + pruned_at
    # Every other update from update 3 on, until the count reaches the target.
    assert len(pruned_at) >= 2
    assert pruned_at == list(range(3, 3 + 2 * len(pruned_at), 2))
    final = opt_state[1]
    assert float(final.flops) <= target < history[pruned_at[-1] - 1][2]
    np.testing.assert_allclose(float(final.flops), float(cost_fn(final.channel_masks)), rtol=1e-6)
    kept = sum(int(jnp.sum(m)) for m in jax.tree.leaves(final.channel_masks))
    assert kept == 16 - int(final.num_pruned)

    # The first update's signals are (1 - decay) times the batch signals.
    params0, state1 = first
    want = fisher_signals(_mlp_loss, params0, masks, batch)
    assert_trees_close(state1[1].signals, jax.tree.map(lambda s: 0.1 * s, want), rtol=1e-5)


def test_transformation_runs_in_scan_and_keeps_state_types():
    params, masks, batch = _mlp_problem()
    tx = optax.chain(optax.sgd(1e-2), fisher_pruning(masks, frequency=1))
    state0 = tx.init(params)
    step = _make_step(tx, [])

    def body(carry, _):
        return step(*carry, batch), None

    (_, state_scan), _ = jax.jit(lambda c: lax.scan(body, c, length=5))((params, state0))
    carry = (params, state0)
    for _ in range(5):
        carry = step(*carry, batch)
    state_loop = carry[1]
    assert_trees_close(state_scan, state_loop, rtol=1e-6)
    assert int(state_loop[1].num_pruned) == 5
    spec = lambda s: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s)  # noqa: E731
    assert spec(state0) == spec(state_loop)


def test_transformation_takes_a_traced_beta():
    """beta built into the transformation inside jax.vmap: each run prunes as its concrete beta."""
    params, masks, batch = _mlp_problem()
    cost_fn = _mlp_cost_fn(params)
    betas = (0.0, 1e-4, 1e-2)

    def run(beta):
        tx = optax.chain(
            optax.sgd(1e-2), fisher_pruning(masks, frequency=1, cost_fn=cost_fn, beta=beta)
        )
        p, state = params, tx.init(params)
        for _ in range(5):
            m = optax.tree.get(state, "channel_masks")
            _, (grads, mask_grads) = fisher_value_and_grad(_mlp_loss)(p, m, batch)
            updates, state = tx.update(grads, state, p, mask_grads=mask_grads)
            p = optax.apply_updates(p, updates)
        return optax.tree.get(state, "channel_masks")

    traced = jax.jit(jax.vmap(run))(jnp.asarray(betas))
    concrete = [jax.jit(functools.partial(run, b))() for b in betas]
    for i, want in enumerate(concrete):
        assert_trees_close(jax.tree.map(lambda a, i=i: a[i], traced), want, rtol=0)
    # the betas choose differently, so the traced runs did not all take one of them
    assert len({str(jax.tree.map(np.asarray, c)) for c in concrete}) > 1


def test_transformation_bad_input():
    params, masks, batch = _mlp_problem()
    tx = fisher_pruning(masks, frequency=1)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs the per-example mask gradients"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match=r"mask_grads\['h1'\] has shape \(8,\), expected \(B, 8\)"):
        tx.update(params, state, params, mask_grads=masks)
    for kwargs, match in [
        (dict(frequency=0), "frequency must be >= 1"),
        (dict(frequency=1.5), "frequency must be an int"),
        (dict(frequency=1, burn_in=-1), "burn_in must be >= 0"),
        (dict(frequency=1, decay=1.0), r"decay must be in range \[0, 1\)"),
        (dict(frequency=1, beta=-1.0, cost_fn=jnp.sum), "beta must be a finite number >= 0"),
        (dict(frequency=1, beta=1.0), "costs is None"),
        (dict(frequency=1, target_flops=100.0), "target_flops needs cost_fn"),
        (dict(frequency=1, cost_fn=jnp.sum, target_flops=0.0), "target_flops must be > 0"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            fisher_pruning(masks, **kwargs)
    with pytest.raises(ValueError, match="no leaves"):
        fisher_pruning({}, frequency=1)
    # A mask that matches no activation fails when the FLOP counter builds the costs.
    bad = {"h1": jnp.ones(8), "h2": jnp.ones(5)}
    with pytest.raises(ValueError, match="matches no axis"):
        fisher_pruning(bad, frequency=1, cost_fn=_mlp_cost_fn(params), beta=1.0)
