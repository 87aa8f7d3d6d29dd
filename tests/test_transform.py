"""The magnitude_pruning transformation: conformance and behaviour."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxprune as jp


def mlp_params(key=0, scale=1.0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "params": {
            "Dense_0": {"kernel": scale * jax.random.normal(k1, (12, 16)), "bias": jnp.zeros(16)},
            "Dense_1": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)},
            "Embed_0": {"embedding": jax.random.normal(k3, (5, 3))},
        },
    }


def loss_fn(params, x, y):
    p = params["params"]
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
    out = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None]
    return jnp.mean((out - y) ** 2) + 1e-3 * jnp.sum(p["Embed_0"]["embedding"] ** 2)


def batch(i):
    key = jax.random.key(100 + i)
    x = jax.random.normal(key, (8, 12))
    return x, jnp.sin(x[:, :4])


def grads_of(params, x, y):
    return jax.grad(loss_fn)(params, x, y)


def train(tx, params, steps, check=None):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(grads_of(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        new_params, new_state = step(params, state, *batch(i))
        if check is not None:
            check(i, params, state, new_params, new_state)
        params, state = new_params, new_state
    return params, state, step


KERNELS = ["params/Dense_0/kernel", "params/Dense_1/kernel", "params/Embed_0/embedding"]


def leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("optimizer", [optax.sgd(0.1), optax.adam(0.05)], ids=["sgd", "adam"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_weights_exactly_zero_after_every_step(optimizer, scope):
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=2, end_step=12, frequency=2)
    tx = optax.chain(optimizer, jp.magnitude_pruning(schedule, scope=scope))

    def check(i, params, state, new_params, new_state):
        masks = jp.get_masks(new_state)
        for path in KERNELS:
            w, m = leaf(new_params, path), leaf(masks, path)
            assert m.dtype == jnp.bool_ and m.shape == w.shape
            # Bitwise zero: +0.0, not -0.0.
            bits = np.asarray(w).view(np.uint32)[~np.asarray(m)]
            assert np.all(bits == 0), (i, path)
            if i < 2:
                assert bool(jnp.all(m)), "no pruning before begin_step"

    params, state, _ = train(tx, mlp_params(), 16, check)
    summary = jp.sparsity_summary(params)
    pruned = sum(leaf(params, p).size * summary[p] for p in KERNELS)
    total = sum(leaf(params, p).size for p in KERNELS)
    # The final turn (step 12) reaches the target: 0.8 of the kernels, to rounding per layer.
    assert pruned / total == pytest.approx(0.8, abs=0.01)
    if scope == "layer":
        for p in KERNELS:
            n = leaf(params, p).size
            assert summary[p] == pytest.approx(1 - round(n * 0.2) / n)
    # Biases and integer leaves are never pruned by default.
    assert summary["params/Dense_0/bias"] < 1.0


def test_masks_change_only_on_pruning_steps():
    schedule = jp.polynomial_decay(0.1, 0.9, begin_step=3, end_step=15, frequency=4)
    tx = optax.chain(optax.adam(0.1), jp.magnitude_pruning(schedule))
    changed = []

    def check(i, params, state, new_params, new_state):
        old, new = jp.get_masks(state), jp.get_masks(new_state)
        differs = any(not bool(jnp.all(leaf(old, p) == leaf(new, p))) for p in KERNELS)
        changed.append(differs)
        count = int(jp.get_pruning_state(new_state).count)
        assert count == i + 1
        if bool(schedule(i)[0]):
            thresholds = jp.get_pruning_state(new_state).thresholds
            assert float(leaf(thresholds, "params/Dense_0/kernel")) > 0

    train(tx, mlp_params(), 20, check)
    turns = [bool(schedule(i)[0]) for i in range(20)]
    assert turns == [i in (3, 7, 11, 15) for i in range(20)]
    # Masks change on pruning turns (sparsity grows each time) and never in between.
    assert changed == turns


def test_masks_are_computed_from_the_weights_this_step_produces():
    params = {"w": jnp.array([[1.0, -2.0], [3.0, -4.0]])}
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, 0, frequency=1), recompute_from="updated")
    state = tx.init(params)
    # An update that reorders the magnitudes: the mask must follow the new weights.
    updates = {"w": jnp.array([[9.0, 2.0], [0.0, 4.0]])}
    out, state = tx.update(updates, state, params)
    new = optax.apply_updates(params, out)
    np.testing.assert_array_equal(new["w"], [[10.0, 0.0], [3.0, 0.0]])
    np.testing.assert_array_equal(state.masks["w"], [[True, False], [True, False]])
    np.testing.assert_allclose(state.thresholds["w"], 3.0)


def test_default_ranks_the_weights_before_the_update():
    # The default, recompute_from="current", ranks w (as tfmot does at the start of a batch);
    # the update then moves the kept weights and the pruned ones become exactly zero.
    params = {"w": jnp.array([[1.0, -2.0], [3.0, -4.0]])}
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, 0, frequency=1))
    state = tx.init(params)
    updates = {"w": jnp.array([[9.0, 2.0], [0.0, 4.0]])}
    out, state = tx.update(updates, state, params)
    new = optax.apply_updates(params, out)
    np.testing.assert_array_equal(state.masks["w"], [[False, False], [True, True]])
    np.testing.assert_array_equal(new["w"], [[0.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(state.thresholds["w"], 3.0)


def test_no_recompilation_after_first_step():
    tx = optax.chain(optax.adam(0.01), jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=2)))
    params, state, step = train(tx, mlp_params(), 5)
    assert step._cache_size() == 1


def test_state_shapes_and_dtypes_are_stable():
    params = {**mlp_params(), "count": jnp.int32(0)}
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1))
    state = tx.init(params)
    assert state.masks["count"].shape == ()
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    assert state.masks["params"]["Dense_0"]["kernel"].dtype == jnp.bool_
    assert state.masks["params"]["Dense_0"]["bias"].shape == ()
    assert state.thresholds["params"]["Dense_0"]["kernel"].dtype == jnp.float32
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["count"].dtype == jnp.int32
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec


def test_extra_args_and_missing_params():
    params = {"w": jnp.ones((3, 3))}
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.5)))
    state = tx.init(params)
    updates, _ = tx.update(params, state, params, value=jnp.float32(1.0), extra=3)
    assert updates["w"].shape == (3, 3)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, state)


def test_inside_lax_scan_and_multisteps():
    schedule = jp.constant_sparsity(0.75, begin_step=0, frequency=1)
    tx = optax.MultiSteps(
        optax.chain(optax.sgd(0.1), jp.magnitude_pruning(schedule)), every_k_schedule=2
    )
    params = mlp_params()
    state = tx.init(params)
    xs = jnp.stack([batch(i)[0] for i in range(6)])
    ys = jnp.stack([batch(i)[1] for i in range(6)])

    def body(carry, xy):
        params, state = carry
        updates, state = tx.update(grads_of(params, *xy), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, (xs, ys)))((params, state))
    inner = jp.get_pruning_state(state)
    assert int(inner.count) == 3  # three real updates out of six micro-steps
    for p in KERNELS:
        w = leaf(params, p)
        assert float(jnp.mean(w == 0)) == pytest.approx(1 - round(w.size * 0.25) / w.size)


def test_prune_rule_and_sparsity_map():
    params = mlp_params()
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=0, frequency=1)
    tx = jp.magnitude_pruning(
        schedule,
        prune="kernel",
        sparsity_map={"Dense_1": 0.5, "Dense_0": jp.constant_sparsity(0.25, frequency=1)},
    )
    state = tx.init(params)
    assert state.masks["params"]["Embed_0"]["embedding"].shape == ()
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    summary = jp.sparsity_summary(new)
    assert summary["params/Dense_0/kernel"] == pytest.approx(0.25)
    assert summary["params/Dense_1/kernel"] == pytest.approx(0.5)  # 0.8 · 0.5 / 0.8
    assert summary["params/Embed_0/embedding"] == 0.0


def test_global_scope_with_overrides_ranks_the_rest_together():
    params = {
        "a": jnp.arange(1.0, 9.0).reshape(2, 4),
        "b": 10 * jnp.arange(1.0, 9.0).reshape(2, 4),
        "c": jnp.arange(1.0, 5.0).reshape(2, 2),
    }
    tx = jp.magnitude_pruning(
        jp.constant_sparsity(0.5, frequency=1), scope="global", sparsity_map={"c": 0.25}
    )
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # a and b share one threshold: the 8 largest of 16 are all in b.
    assert int(jnp.sum(new["a"] != 0)) == 0 and int(jnp.sum(new["b"] != 0)) == 8
    assert int(jnp.sum(new["c"] != 0)) == 3  # ranked on its own at 0.25
    assert float(state.thresholds["a"]) == float(state.thresholds["b"]) == 10.0


def test_leaves_never_pruned_by_default():
    params = {
        "scalar": jnp.float32(3.0),
        "empty": jnp.zeros((0, 4)),
        "ints": jnp.ones((3, 3), int),
        "vec": jnp.ones(5),
        "w": jnp.arange(1.0, 7.0).reshape(2, 3),
    }
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1))
    state = tx.init(params)
    for name in ("scalar", "empty", "ints", "vec"):
        assert state.masks[name].shape == ()
    assert state.masks["w"].shape == (2, 3)
    updates = jax.tree.map(jnp.zeros_like, params)
    out, _ = tx.update(updates, state, params)
    assert out["ints"].dtype == params["ints"].dtype


def test_bfloat16_params():
    params = {"w": jax.random.normal(jax.random.key(0), (16, 16)).astype(jnp.bfloat16)}
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.9, frequency=1)))
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    new = optax.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16
    assert int(jnp.sum(new["w"] != 0)) == round(256 * 0.1)
    assert jp.get_pruning_state(state).thresholds["w"].dtype == jnp.bfloat16


def test_constructor_validation():
    schedule = jp.constant_sparsity(0.5)
    with pytest.raises(ValueError, match=r"scope must be one of \('layer', 'global'\)"):
        jp.magnitude_pruning(schedule, scope="model")
    with pytest.raises(TypeError, match="schedule must be"):
        jp.magnitude_pruning(0.5)
    with pytest.raises(ValueError, match=r"sparsity_map\['x'\] must be in range \[0,1\)"):
        jp.magnitude_pruning(schedule, sparsity_map={"x": 1.0})
    with pytest.raises(ValueError, match="not a valid regular expression"):
        jp.magnitude_pruning(schedule, prune="[")
    custom = lambda step: (jnp.bool_(True), jnp.float32(0.5))  # noqa: E731
    with pytest.raises(ValueError, match="final sparsity"):
        jp.magnitude_pruning(custom, sparsity_map={"x": 0.5})


def test_init_validation():
    params = {**mlp_params(), "count": jnp.int32(0)}
    schedule = jp.constant_sparsity(0.5)
    with pytest.raises(ValueError, match="prune='conv' matches no leaf"):
        jp.magnitude_pruning(schedule, prune="conv").init(params)
    with pytest.raises(TypeError, match="'count'.*not a floating-point"):
        jp.magnitude_pruning(schedule, prune="count").init(params)
    with pytest.raises(ValueError, match="multiple matches in sparsity_map"):
        jp.magnitude_pruning(schedule, sparsity_map={"Dense": 0.5, "kernel": 0.3}).init(params)
    with pytest.raises(ValueError, match="sparsity_map entry 'conv' matches no pruned leaf"):
        jp.magnitude_pruning(schedule, sparsity_map={"conv": 0.5}).init(params)


def test_flax_train_state():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(nn.relu(nn.Dense(32)(x)))

    model = MLP()
    x, y = batch(0)
    variables = model.init(jax.random.key(0), x)
    tx = optax.chain(optax.adam(1e-2), jp.magnitude_pruning(jp.constant_sparsity(0.7, frequency=3)))
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    state = state.replace(step=jnp.int32(0))  # TrainState starts from a Python int

    @jax.jit
    def step(state, x, y):
        grads = jax.grad(lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(
            state.params
        )
        return state.apply_gradients(grads=grads)

    for i in range(7):
        state = step(state, *batch(i))
    assert step._cache_size() == 1
    summary = jp.sparsity_summary(state.params)
    # linen names the outer Dense(4) first: Dense_0 is (32, 4), Dense_1 is (12, 32).
    assert summary["Dense_0/kernel"] == pytest.approx(1 - round(32 * 4 * 0.3) / (32 * 4))
    assert summary["Dense_1/kernel"] == pytest.approx(1 - round(12 * 32 * 0.3) / (12 * 32))
    masks = jp.get_masks(state.opt_state)
    assert bool(jnp.all((state.params["Dense_0"]["kernel"] != 0) <= masks["Dense_0"]["kernel"]))


def test_nnx_optimizer():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(12, 32, rngs=rngs)
            self.l2 = nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    tx = optax.chain(optax.adam(1e-2), jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=2)))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for i in range(5):
        step(model, optimizer, *batch(i))
    kernel = model.l1.kernel[...]
    assert float(jnp.mean(kernel == 0)) == pytest.approx(0.5)
    masks = jp.get_masks(optimizer.opt_state)
    assert masks["l1"]["kernel"].shape == (12, 32)
    assert bool(jnp.all((kernel != 0) == masks["l1"]["kernel"]))
    summary = jp.sparsity_summary(nnx.state(model, nnx.Param))
    assert summary["l2/kernel"] == pytest.approx(0.5)


def test_get_masks_errors():
    with pytest.raises(ValueError, match="found 0"):
        jp.get_masks(optax.adam(1e-3).init({"w": jnp.ones(2)}))
    tx = optax.chain(
        jp.magnitude_pruning(jp.constant_sparsity(0.5)),
        jp.magnitude_pruning(jp.constant_sparsity(0.5)),
    )
    with pytest.raises(ValueError, match="found 2"):
        jp.get_masks(tx.init({"w": jnp.ones((2, 2))}))


def test_get_masks_keeps_nnx_param_structure():
    # Training the raw nnx.split state: the masks must keep the nnx.Param wrappers of the
    # params so that apply_masks(params, get_masks(...)) works.
    _, params = nnx.split(nnx.Linear(4, 4, rngs=nnx.Rngs(0)))
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1)))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    params = optax.apply_updates(params, updates)
    masked = jp.apply_masks(params, jp.get_masks(opt_state))
    assert jax.tree.structure(masked) == jax.tree.structure(params)
    assert int(jnp.sum(masked["kernel"][...] == 0)) == 8


def test_structures_in_the_transformation():
    params = {
        "dense": {"kernel": jax.random.normal(jax.random.key(0), (8, 12))},
        "nm": {"kernel": jax.random.normal(jax.random.key(1), (16, 6))},
        "conv": {"kernel": jax.random.normal(jax.random.key(2), (3, 3, 4, 8))},
    }
    tx = optax.chain(
        optax.sgd(0.01),
        jp.magnitude_pruning(
            jp.constant_sparsity(0.5, frequency=1),
            structure={"dense": jp.BlockSparsity((2, 4), "max"), "nm": jp.NMSparsity(2, 4)},
        ),
    )
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    # Blocks of 2x4: each block is all kept or all pruned, half of the 12 blocks kept.
    blocks = np.asarray(new["dense"]["kernel"] != 0).reshape(4, 2, 3, 4).transpose(0, 2, 1, 3)
    per_block = blocks.reshape(12, 8).sum(axis=1)
    assert set(per_block.tolist()) <= {0, 8} and (per_block == 8).sum() == 6
    np.testing.assert_array_equal(
        jp.get_masks(state)["dense"]["kernel"],
        jp.block_mask(params["dense"]["kernel"] - 0.01, 0.5, (2, 4), pooling="max"),
    )
    # 2:4 along the input axis: every group of 4 rows keeps exactly 2 in each column.
    kept = np.asarray(new["nm"]["kernel"] != 0).reshape(4, 4, 6).sum(axis=1)
    assert np.all(kept == 2)
    # Leaves without a structure are ranked weight by weight.
    assert float(jnp.mean(new["conv"]["kernel"] == 0)) == 0.5


def test_global_scope_ranks_structured_leaves_on_their_own():
    params = {
        "a": jnp.arange(1.0, 9.0).reshape(2, 4),
        "b": 10 * jnp.arange(1.0, 9.0).reshape(2, 4),
        "u": jnp.array([[1.0, 5.0], [1.0, 5.0]]),
    }
    tx = jp.magnitude_pruning(
        jp.constant_sparsity(0.5, frequency=1), scope="global", structure={"u": jp.UnitSparsity()}
    )
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert int(jnp.sum(new["a"] != 0)) == 0 and int(jnp.sum(new["b"] != 0)) == 8
    np.testing.assert_array_equal(new["u"], [[0.0, 5.0], [0.0, 5.0]])


def test_structure_errors_are_raised_early():
    params = {"conv": jnp.ones((3, 3, 4, 8))}
    with pytest.raises(ValueError, match=r"\(3, 3, 4, 8\)"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), structure=jp.BlockSparsity((2, 2))).init(
            params
        )
    with pytest.raises(TypeError, match="structure must be"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), structure=(2, 4))
    with pytest.raises(TypeError, match=r"structure\['conv'\] must be"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), structure={"conv": (2, 4)})
    with pytest.raises(ValueError, match="structure entry 'dense' matches no pruned leaf"):
        jp.magnitude_pruning(
            jp.constant_sparsity(0.5), structure={"dense": jp.NMSparsity(2, 4)}
        ).init(params)


def test_default_rule_rank_two_not_bias():
    params = {
        "conv": {"bias": jnp.ones((4, 1, 1))},  # Equinox stores conv biases with singleton axes
        "pointwise": jnp.ones((1, 1, 3, 5)),
        "head": jnp.ones((6, 1)),  # a one-unit head is still a kernel
        "kernel": jnp.ones((3, 5)),
    }
    masks = jp.magnitude_pruning(jp.constant_sparsity(0.5)).init(params).masks
    assert jax.tree.map(jnp.shape, masks) == {
        "conv": {"bias": ()},
        "pointwise": (1, 1, 3, 5),
        "head": (6, 1),
        "kernel": (3, 5),
    }


def test_narrow_updates_still_zero_pruned_weights():
    params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, 0, frequency=1))
    updates = {"w": jnp.full((8, 8), 0.01, jnp.bfloat16)}
    out, state = tx.update(updates, tx.init(params), params)
    new = optax.apply_updates(params, out)
    assert int(jnp.sum(new["w"] == 0)) == 32
    assert bool(jnp.all(new["w"][~state.masks["w"]] == 0))


def test_sparsity_map_float_must_stay_below_one():
    decreasing = jp.polynomial_decay(0.9, 0.1, 0, 100, frequency=1)
    with pytest.raises(ValueError, match="to 1 or more"):
        jp.magnitude_pruning(decreasing, sparsity_map={"a": 0.5})
