"""Every pruning transformation through the same checks (modelled on optax's contrib tests).

A tiny model (dense 8x16 and 16x4 with biases), four updates with pruning turns at updates 0
and 2 where the transformation has a schedule. Each transformation compiles one step, shared by
the checks through a cached run. Zero-weight transformations must leave pruned weights exactly
``+0.0``; the straight-through ones (STE, movement) keep dense weights by design, and the check
applies to the weights the forward pass uses, ``jaxprune.masked_params``.

Fisher pruning (``jp.fisher_pruning``, at the end) removes channels through masks on
activations and its ``update`` takes the per-example mask gradients as an extra argument: it has
its own step and the same checks, removed channels being dead instead of zero weights; flax's
``TrainState.apply_gradients`` cannot pass the extra argument, so its test calls ``tx.update``.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import jaxprune as jp
from jaxprune.fisher import FisherPruningState

STEPS = 4
LR = 0.05
SCHEDULE = jp.polynomial_decay(0.25, 0.5, begin_step=0, end_step=2, frequency=2)  # turns 0, 2
KEY = jax.random.key(7)


def _chain(tx):
    return optax.chain(optax.adam(LR), tx)


# name -> (factory, straight_through)
FACTORIES = {
    "magnitude_layer": (lambda: _chain(jp.magnitude_pruning(SCHEDULE)), False),
    "magnitude_global": (lambda: _chain(jp.magnitude_pruning(SCHEDULE, scope="global")), False),
    "from_config": (
        lambda: _chain(
            jp.tf.pruning_from_config(
                "pruning_frequency=2,threshold=topk,threshold_decay=0.0,target_sparsity=0.5,"
                "sparsity_function_end_step=2"
            )
        ),
        False,
    ),
    "random": (lambda: _chain(jp.random_pruning(SCHEDULE, key=KEY)), False),
    "acdc": (
        lambda: _chain(
            jp.acdc(0.5, warmup_steps=0, phase_steps=1, final_compressed_steps=2, total_steps=4)
        ),
        False,
    ),
    "rigl": (
        lambda: jp.sparse(optax.adam(LR), jp.rigl(0.5, key=KEY, update_every=2, end_step=4)),
        False,
    ),
    "set": (
        lambda: jp.sparse(
            optax.adam(LR), jp.set_training(0.5, key=KEY, update_every=2, end_step=4)
        ),
        False,
    ),
    # The reference's RigL (no update on turns) and SET ranking the weights before the update.
    "rigl_skip": (
        lambda: jp.sparse(
            optax.adam(LR),
            jp.rigl(0.5, key=KEY, update_every=2, end_step=4, skip_update_on_turn=True),
        ),
        False,
    ),
    "set_current": (
        lambda: jp.sparse(
            optax.adam(LR),
            jp.set_training(0.5, key=KEY, update_every=2, end_step=4, recompute_from="current"),
        ),
        False,
    ),
    "static": (lambda: jp.sparse(optax.adam(LR), jp.static_sparse(0.5, key=KEY)), False),
    "magnitude_ste": (lambda: jp.sparse(optax.adam(LR), jp.magnitude_ste(SCHEDULE)), True),
    "random_ste": (lambda: jp.sparse(optax.adam(LR), jp.random_ste(SCHEDULE, key=KEY)), True),
    "saliency": (lambda: jp.sparse(optax.adam(LR), jp.saliency_pruning(SCHEDULE)), False),
    "movement": (lambda: jp.sparse(optax.adam(LR), jp.movement_pruning(SCHEDULE)), True),
}
# The same transformations holding their masks packed, 1 bit per parameter: every check again,
# and the trajectories of the bool masks (test_packed_equals_bool).
PACKED = {
    "magnitude_layer_packed": (
        lambda: _chain(jp.magnitude_pruning(SCHEDULE, mask_dtype="packed")),
        False,
    ),
    "from_config_packed": (
        lambda: _chain(
            jp.tf.pruning_from_config(
                "pruning_frequency=2,threshold=topk,threshold_decay=0.0,target_sparsity=0.5,"
                "sparsity_function_end_step=2",
                mask_dtype="packed",
            )
        ),
        False,
    ),
    "random_packed": (
        lambda: _chain(jp.random_pruning(SCHEDULE, key=KEY, mask_dtype="packed")),
        False,
    ),
    "acdc_packed": (
        lambda: _chain(
            jp.acdc(
                0.5,
                warmup_steps=0,
                phase_steps=1,
                final_compressed_steps=2,
                total_steps=4,
                mask_dtype="packed",
            )
        ),
        False,
    ),
    "rigl_packed": (
        lambda: jp.sparse(
            optax.adam(LR),
            jp.rigl(0.5, key=KEY, update_every=2, end_step=4),
            mask_dtype="packed",
        ),
        False,
    ),
    "magnitude_ste_packed": (
        lambda: jp.sparse(optax.adam(LR), jp.magnitude_ste(SCHEDULE), mask_dtype="packed"),
        True,
    ),
}
FACTORIES.update(PACKED)
NAMES = list(FACTORIES)
# Sparse from the first step: the run starts from the masked params.
SPARSE_FROM_START = ("rigl", "set", "rigl_skip", "set_current", "static", "rigl_packed")


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def init_params():
    return {
        "d0": {"kernel": normal(0, (8, 16)), "bias": normal(1, (16,), 0.1)},
        "d1": {"kernel": normal(2, (16, 4), 0.5), "bias": jnp.zeros(4)},
    }


X, Y = normal(3, (6, 8)), normal(4, (6, 4))


def loss_fn(params, x=X, y=Y):
    h = jnp.tanh(x @ params["d0"]["kernel"] + params["d0"]["bias"][None])
    return jnp.mean((h @ params["d1"]["kernel"] + params["d1"]["bias"][None] - y) ** 2)


def forward_params(params, state, straight_through):
    return jp.masked_params(params, state) if straight_through else params


def make_step(tx, straight_through):
    def step(params, state):
        grads = jax.grad(lambda p: loss_fn(forward_params(p, state, straight_through)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


@functools.cache
def case(name):
    """The transformation, its jitted step and the trajectory of the four updates."""
    factory, st = FACTORIES[name]
    tx = factory()
    step = jax.jit(make_step(tx, st))
    params = init_params()
    state = tx.init(params)
    if not st and name in SPARSE_FROM_START:
        params = jp.masked_params(params, state)  # start from the sparse weights
    start = (params, state)
    trajectory = []
    for _ in range(STEPS):
        params, state = step(params, state)
        trajectory.append((params, state))
    return tx, step, start, trajectory


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def assert_trees_close(a, b):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
        a,
        b,
    )


def check_pruned_zero(params, state, straight_through):
    """Masks are bool, shaped like their weights; pruned weights (as used) are +0.0."""
    masks = jp.get_masks(state)
    used = forward_params(params, state, straight_through)
    flat, treedef = jax.tree_util.tree_flatten_with_path(used)
    pruned = 0
    for (path, w), m in zip(flat, treedef.flatten_up_to(masks)):
        m, w = np.asarray(m), np.asarray(w)
        assert m.dtype == np.bool_, path
        if m.ndim == 0:
            assert m, path
            continue
        assert m.shape == w.shape, path
        assert not np.any(w[~m].view(np.uint32)), path  # +0.0, bit for bit
        pruned += int((~m).sum())
    return pruned


@pytest.mark.parametrize("name", NAMES)
def test_pruned_weights_zero_after_every_step_and_no_recompilation(name):
    _, step, _, trajectory = case(name)
    pruned = [check_pruned_zero(p, s, FACTORIES[name][1]) for p, s in trajectory]
    assert pruned[-1] > 0, "nothing was pruned after the last update"
    assert step._cache_size() == 1
    # State shapes and dtypes stable from step to step.
    # (Compared as structure and leaves: a PackedMask node compares by identity.)
    shapes = [
        (jax.tree.structure(s), [(x.shape, x.dtype) for x in jax.tree.leaves(s)])
        for _, s in trajectory
    ]
    assert all(s == shapes[0] for s in shapes)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    tx, _, (params, state), trajectory = case(name)
    eager = make_step(tx, FACTORIES[name][1])
    # Eager runs op by op (slow): one update, a pruning turn for every transformation with a
    # schedule; the step that follows is not a turn and shares the jitted code the others check.
    params, state = eager(params, state)
    want_p, want_s = trajectory[0]
    assert_trees_close(params, want_p)
    assert_trees_equal(jp.get_masks(state), jp.get_masks(want_s))


@pytest.mark.parametrize("name", NAMES)
def test_scan_equals_python_loop(name):
    tx, _, start, trajectory = case(name)
    step = make_step(tx, FACTORIES[name][1])
    run = jax.jit(lambda c: jax.lax.scan(lambda c, _: (step(*c), None), c, None, length=STEPS)[0])
    params, state = run(start)
    assert_trees_close(params, trajectory[-1][0])
    assert_trees_equal(jp.get_masks(state), jp.get_masks(trajectory[-1][1]))


@pytest.mark.parametrize("name", NAMES)
def test_multisteps(name):
    tx, _, (params, _), _ = case(name)
    st = FACTORIES[name][1]
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    state = multi.init(params)
    step = jax.jit(make_step(multi, st))
    for _ in range(STEPS):
        params, state = step(params, state)
        check_pruned_zero(params, state, st)
    assert step._cache_size() == 1
    # Four micro-steps are two updates of the inner transformation.
    assert int(state.gradient_step) == 2


@pytest.mark.parametrize("name", NAMES)
def test_flax_train_state(name):
    tx, _, (params, _), trajectory = case(name)
    st = FACTORIES[name][1]
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(step=jnp.int32(0))

    @jax.jit
    def step(state):
        grads = jax.grad(lambda p: loss_fn(forward_params(p, state.opt_state, st)))(state.params)
        return state.apply_gradients(grads=grads)

    for _ in range(STEPS):
        state = step(state)
        check_pruned_zero(state.params, state.opt_state, st)
    assert step._cache_size() == 1
    assert_trees_close(state.params, trajectory[-1][0])


class NNXModel(nnx.Module):
    def __init__(self, params):
        self.d0 = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
        self.d1 = nnx.Linear(16, 4, rngs=nnx.Rngs(1))
        for layer, p in ((self.d0, params["d0"]), (self.d1, params["d1"])):
            layer.kernel[...] = p["kernel"]
            layer.bias[...] = p["bias"]

    def __call__(self, x):
        return self.d1(jnp.tanh(self.d0(x)))


@pytest.mark.parametrize("name", NAMES)
def test_nnx_optimizer(name):
    tx, _, (params, _), trajectory = case(name)
    st = FACTORIES[name][1]
    model = NNXModel(params)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        graphdef, p, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            if st:
                p = jp.masked_params(p, optimizer.opt_state)
            return jnp.mean((nnx.merge(graphdef, p, rest)(X) - Y) ** 2)

        optimizer.update(model, jax.grad(loss)(p))

    for _ in range(STEPS):
        step(model, optimizer)
    got = {
        layer: {
            "kernel": getattr(model, layer).kernel[...],
            "bias": getattr(model, layer).bias[...],
        }
        for layer in ("d0", "d1")
    }
    assert_trees_close(got, trajectory[-1][0])
    masks = jp.get_masks(optimizer.opt_state)
    want = jp.get_masks(trajectory[-1][1])
    for layer in ("d0", "d1"):
        np.testing.assert_array_equal(
            np.asarray(masks[layer]["kernel"][...]), np.asarray(want[layer]["kernel"])
        )


class EqxModel(eqx.Module):
    d0: eqx.nn.Linear
    d1: eqx.nn.Linear

    def __init__(self, params):
        d0 = eqx.nn.Linear(8, 16, key=jax.random.key(0))
        d1 = eqx.nn.Linear(16, 4, key=jax.random.key(1))
        # Equinox stores (out, in) weights.
        self.d0 = eqx.tree_at(
            lambda m: (m.weight, m.bias), d0, (params["d0"]["kernel"].T, params["d0"]["bias"])
        )
        self.d1 = eqx.tree_at(
            lambda m: (m.weight, m.bias), d1, (params["d1"]["kernel"].T, params["d1"]["bias"])
        )

    def __call__(self, x):
        return self.d1(jnp.tanh(self.d0(x)))


@pytest.mark.parametrize("name", NAMES)
def test_equinox(name):
    tx, _, (params, _), _ = case(name)
    st = FACTORIES[name][1]
    model = EqxModel(params)
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state):
        p, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            if st:
                p = jp.masked_params(p, opt_state)
            m = eqx.combine(p, static)
            return jnp.mean((jax.vmap(m)(X) - Y) ** 2)

        grads = jax.grad(loss)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return eqx.apply_updates(model, updates), opt_state

    for _ in range(STEPS):
        model, opt_state = step(model, opt_state)
        check_pruned_zero(eqx.filter(model, eqx.is_inexact_array), opt_state, st)
    masks = jp.get_masks(opt_state)
    assert masks.d0.weight.shape == (16, 8) and masks.d0.bias.shape == ()
    assert not masks.d0.weight.all()


@pytest.mark.parametrize("name", NAMES)
def test_orbax_round_trip_mid_run(name, tmp_path):
    _, step, _, trajectory = case(name)
    params, state = trajectory[1]
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", {"params": params, "state": state})
        ckpt.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "state": state})
        restored = ckpt.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored["state"]) == jax.tree.structure(state)
    params, state = restored["params"], restored["state"]
    for t in range(2, STEPS):
        params, state = step(params, state)
        assert_trees_equal(params, trajectory[t][0])
        assert_trees_equal(state, trajectory[t][1])


@pytest.mark.parametrize("name", sorted(PACKED))
def test_packed_equals_bool(name):
    """Packed masks: the state holds uint32 words; masks and weights those of bool masks."""
    bool_name = name.removesuffix("_packed")
    _, _, _, packed_run = case(name)
    _, _, _, bool_run = case(bool_name)
    st = FACTORIES[name][1]
    for (p, s), (bp, bs) in zip(packed_run, bool_run):
        words = [x for x in jax.tree.leaves(s) if x.dtype == jnp.uint32 and x.ndim == 1]
        assert len(words) == 2, name  # the two kernels' masks, packed
        assert_trees_equal(jp.get_masks(s), jp.get_masks(bs))
        if isinstance(s, tuple) and not isinstance(s, jp.SparseState):
            # A link last in a chain: the same arithmetic on the weights, bit for bit.
            assert_trees_equal(p, bp)
        else:
            # jp.sparse: XLA may fuse the arithmetic around the unpacking differently.
            assert_trees_close(forward_params(p, s, st), forward_params(bp, bs, st))


SHARDED_PARTS = 2


@pytest.mark.parametrize("part", range(SHARDED_PARTS))
def test_sharded_run_equals_one_device(part):
    """All transformations with 8 fake CPU devices, params on a 2x4 mesh.

    In two processes, each taking every other transformation, so that the test's two halves
    can run side by side (each transformation compiles for one device and for eight).
    """
    script = Path(__file__).with_name("conformance_sharding_check.py")
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(part), str(SHARDED_PARTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (NAMES + FISHER_NAMES)[part::SHARDED_PARTS]:
        assert f"{name}: sharded == one device" in result.stdout, result.stdout
    assert result.stdout.count("sharded == one device") == len(
        (NAMES + FISHER_NAMES)[part::SHARDED_PARTS]
    ), result.stdout


# ---------------------------------------------------------------------------
# Fisher pruning (jp.fisher_pruning) removes whole channels: its masks multiply activations, and
# its ``update`` takes the per-example mask gradients of the batch as the extra argument
# ``mask_grads``. The same model, with one channel mask on the 16 outputs of d0 (after the tanh),
# the same four updates with pruning turns at 0 and 2, through the same checks. Its own step
# computes the loss, the parameter gradients and the mask gradients in one backward pass
# (jp.fisher.fisher_value_and_grad, as in docs/fisher.md) and passes them to ``tx.update``.
# "Pruned weights are zero" becomes: a removed channel is dead, the outputs do not depend on the
# weights that produce or read it (bit for bit) and those weights get exactly zero gradients;
# the weights themselves are not zeroed (compaction slices them out, see docs/fisher.md).

FISHER_MASKS = {"d0": jnp.ones(16)}


def fisher_forward(params, masks, x):
    h = jnp.tanh(x @ params["d0"]["kernel"] + params["d0"]["bias"][None])
    h = jp.fisher.mask_channels(h, masks["d0"])
    return h @ params["d1"]["kernel"] + params["d1"]["bias"][None]


def fisher_losses(params, masks, batch):
    """Per-example losses (B,); their mean is loss_fn. Masks (C,) or (B, C)."""
    x, y = batch
    return jnp.mean((fisher_forward(params, masks, x) - y) ** 2, axis=-1)


def fisher_cost_fn(m):
    """FLOPs of one example's forward pass as a function of the masks."""
    x1 = jax.ShapeDtypeStruct((1, 8), jnp.float32)
    return jp.count_flops(fisher_forward, init_params(), m, x1, channel_argnums=1)


@functools.cache
def _fisher_ratio_target():
    """Half a channel below dense: the ratio rule stops after one removal."""
    dense = float(fisher_cost_fn(FISHER_MASKS))
    one = dense - float(fisher_cost_fn({"d0": FISHER_MASKS["d0"].at[0].set(0.0)}))
    return dense - 0.5 * one


def _fisher_ratio():
    # All channels cost the same here, so the ratio rule ranks like the signals; the target
    # stops it after one removal: the turn at update 2 removes nothing.
    return jp.fisher_pruning(
        FISHER_MASKS,
        frequency=2,
        cost_fn=fisher_cost_fn,
        criterion="ratio",
        target_flops=_fisher_ratio_target(),
    )


# name -> (factory, channels removed after the four updates)
FISHER_FACTORIES = {
    "fisher": (lambda: _chain(jp.fisher_pruning(FISHER_MASKS, frequency=2)), 2),
    "fisher_ratio_flops": (lambda: _chain(_fisher_ratio()), 1),
}
FISHER_NAMES = list(FISHER_FACTORIES)
FISHER_VALUE_AND_GRAD = jp.fisher.fisher_value_and_grad(fisher_losses, batched=True)


def channel_masks(state):
    return optax.tree.get(state, "channel_masks")


def make_fisher_step(tx):
    """The training step of docs/fisher.md: masks from the state, mask_grads to tx.update."""

    def step(params, state):
        _, (grads, mask_grads) = FISHER_VALUE_AND_GRAD(params, channel_masks(state), (X, Y))
        updates, state = tx.update(grads, state, params, mask_grads=mask_grads)
        return optax.apply_updates(params, updates), state

    return step


@functools.cache
def fisher_case(name):
    """Like case: the transformation, its jitted step and the trajectory of the four updates."""
    tx = FISHER_FACTORIES[name][0]()
    step = jax.jit(make_fisher_step(tx))
    params = init_params()
    state = tx.init(params)
    start = (params, state)
    trajectory = []
    for _ in range(STEPS):
        params, state = step(params, state)
        trajectory.append((params, state))
    return tx, step, start, trajectory


_fisher_forward_jit = jax.jit(fisher_forward)
_fisher_param_grads = jax.jit(
    jax.grad(lambda p, m: jnp.mean(fisher_losses(p, m, (X, Y))), argnums=0)
)


def check_channels_dead(params, masks):
    """Masks are float 0/1 of shape (16,); removed channels contribute nothing, bit for bit.

    Returns the number of removed channels.
    """
    m = np.asarray(masks["d0"])
    assert m.dtype == np.float32 and m.shape == (16,)
    assert np.all((m == 0.0) | (m == 1.0)), m
    dead = m == 0.0
    # Replace every weight that produces or reads a removed channel: the outputs must not move.
    rng = np.random.default_rng(5)
    noisy = jax.tree.map(np.array, params)
    noisy["d0"]["kernel"][:, dead] = 10.0 * rng.standard_normal((8, dead.sum()))
    noisy["d0"]["bias"][dead] = 10.0 * rng.standard_normal(dead.sum())
    noisy["d1"]["kernel"][dead, :] = 10.0 * rng.standard_normal((dead.sum(), 4))
    np.testing.assert_array_equal(
        np.asarray(_fisher_forward_jit(params, masks, X)),
        np.asarray(_fisher_forward_jit(noisy, masks, X)),
    )
    # ... and they get exactly zero gradients.
    grads = jax.tree.map(np.asarray, _fisher_param_grads(params, masks))
    assert not np.any(grads["d0"]["kernel"][:, dead])
    assert not np.any(grads["d0"]["bias"][dead])
    assert not np.any(grads["d1"]["kernel"][dead, :])
    return int(dead.sum())


def fisher_state_of(state):
    """The one FisherPruningState inside an optimizer state."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, FisherPruningState))
        if isinstance(s, FisherPruningState)
    ]
    assert len(found) == 1, state
    return found[0]


def check_fisher_state(params, state, name):
    """check_channels_dead; the counters and the FLOPs in the state agree with the masks."""
    fisher_state = fisher_state_of(state)
    removed = check_channels_dead(params, fisher_state.channel_masks)
    assert int(fisher_state.num_pruned) == removed
    assert int(fisher_state.skipped_turns) == 0
    if name == "fisher_ratio_flops":
        np.testing.assert_allclose(
            float(fisher_state.flops), float(fisher_cost_fn(fisher_state.channel_masks)), rtol=1e-6
        )
    return removed


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_removed_channels_dead_after_every_step_and_no_recompilation(name):
    _, step, _, trajectory = fisher_case(name)
    removed = [check_fisher_state(p, s, name) for p, s in trajectory]
    # Turns at updates 0 and 2 (the ratio case reaches its FLOPs target after the first).
    want = FISHER_FACTORIES[name][1]
    assert removed == ([1, 1, 2, 2] if want == 2 else [1, 1, 1, 1])
    assert step._cache_size() == 1
    # State shapes and dtypes stable from step to step.
    shapes = [jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s) for _, s in trajectory]
    assert all(s == shapes[0] for s in shapes)


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_jit_equals_eager(name):
    tx, _, (params, state), trajectory = fisher_case(name)
    # One eager update, a pruning turn, as for the others.
    params, state = make_fisher_step(tx)(params, state)
    want_p, want_s = trajectory[0]
    assert_trees_close(params, want_p)
    assert_trees_equal(channel_masks(state), channel_masks(want_s))
    assert_trees_close(fisher_state_of(state).signals, fisher_state_of(want_s).signals)


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_scan_equals_python_loop(name):
    tx, _, start, trajectory = fisher_case(name)
    step = make_fisher_step(tx)
    run = jax.jit(lambda c: jax.lax.scan(lambda c, _: (step(*c), None), c, None, length=STEPS)[0])
    params, state = run(start)
    assert_trees_close(params, trajectory[-1][0])
    assert_trees_equal(channel_masks(state), channel_masks(trajectory[-1][1]))


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_multisteps(name):
    """optax.MultiSteps passes mask_grads on to the inner update.

    The inner update (and so the Fisher signal) sees the mask gradients of the micro-batch that
    completes an update only; the others' are not accumulated. With one fixed batch the two
    micro-batches of an update are the same, so four micro-steps are the first two updates.
    """
    tx, _, (params, _), trajectory = fisher_case(name)
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    state = multi.init(params)
    step = jax.jit(make_fisher_step(multi))
    for _ in range(STEPS):
        params, state = step(params, state)
        check_fisher_state(params, state, name)
    assert step._cache_size() == 1
    assert int(state.gradient_step) == 2
    assert int(fisher_state_of(state).count) == 2
    assert_trees_close(params, trajectory[1][0])
    assert_trees_equal(channel_masks(state), channel_masks(trajectory[1][1]))


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_flax_train_state_apply_gradients_cannot_pass_mask_grads(name):
    """TrainState.apply_gradients calls tx.update(grads, opt_state, params), nothing more.

    fisher_pruning then fails with an error that says what to do instead (the next test).
    """
    tx, _, (params, _), _ = fisher_case(name)
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    grads = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match="TrainState.apply_gradients passes no extra arguments"):
        state.apply_gradients(grads=grads)


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_flax_train_state(name):
    """With flax TrainState: call state.tx.update with mask_grads and state.replace(...)."""
    tx, _, (params, _), trajectory = fisher_case(name)
    state = train_state.TrainState.create(apply_fn=fisher_forward, params=params, tx=tx)
    state = state.replace(step=jnp.int32(0))

    @jax.jit
    def step(state):
        masks = channel_masks(state.opt_state)
        _, (grads, mask_grads) = FISHER_VALUE_AND_GRAD(state.params, masks, (X, Y))
        updates, opt_state = state.tx.update(
            grads, state.opt_state, state.params, mask_grads=mask_grads
        )
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )

    for _ in range(STEPS):
        state = step(state)
        check_fisher_state(state.params, state.opt_state, name)
    assert step._cache_size() == 1
    assert int(state.step) == STEPS
    assert_trees_close(state.params, trajectory[-1][0])
    assert_trees_equal(channel_masks(state.opt_state), channel_masks(trajectory[-1][1]))


class NNXFisherModel(nnx.Module):
    def __init__(self, params):
        self.d0 = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
        self.mask = jp.fisher.NNXChannelMask(16)
        self.d1 = nnx.Linear(16, 4, rngs=nnx.Rngs(1))
        for layer, p in ((self.d0, params["d0"]), (self.d1, params["d1"])):
            layer.kernel[...] = p["kernel"]
            layer.bias[...] = p["bias"]

    def __call__(self, x):
        return self.d1(self.mask(jnp.tanh(self.d0(x))))


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_nnx_optimizer(name):
    """nnx.Optimizer.update passes keyword arguments on: optimizer.update(..., mask_grads=...).

    The masks live in the optimizer state (the transformation is built on the model's
    ChannelMaskVariable state); the step merges them into the model for the loss and writes
    the new ones back, so that the model itself applies the current masks.
    """
    _, _, (params, _), trajectory = fisher_case(name)
    model = NNXFisherModel(params)
    graphdef, _, mask_state, _ = nnx.split(model, nnx.Param, jp.fisher.ChannelMaskVariable, ...)
    masks0 = nnx.as_pure(mask_state)
    pruner = (
        jp.fisher_pruning(masks0, frequency=2)
        if name == "fisher"
        else jp.fisher_pruning(
            masks0,
            frequency=2,
            cost_fn=lambda m: fisher_cost_fn({"d0": m["mask"]["mask"]}),
            criterion="ratio",
            target_flops=_fisher_ratio_target(),
        )
    )
    optimizer = nnx.Optimizer(model, _chain(pruner), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        _, p, _, rest = nnx.split(model, nnx.Param, jp.fisher.ChannelMaskVariable, ...)
        masks = channel_masks(nnx.as_pure(optimizer.opt_state))

        def losses(p, m, batch):
            x, y = batch
            return jnp.mean((nnx.merge(graphdef, p, m, rest)(x) - y) ** 2, axis=-1)

        _, (grads, mask_grads) = jp.fisher.fisher_value_and_grad(losses, batched=True)(
            p, masks, (X, Y)
        )
        optimizer.update(model, grads, mask_grads=mask_grads)
        nnx.update(model, channel_masks(nnx.as_pure(optimizer.opt_state)))

    for _ in range(STEPS):
        step(model, optimizer)
    got = {
        layer: {
            "kernel": getattr(model, layer).kernel[...],
            "bias": getattr(model, layer).bias[...],
        }
        for layer in ("d0", "d1")
    }
    assert_trees_close(got, trajectory[-1][0])
    want = channel_masks(trajectory[-1][1])["d0"]
    np.testing.assert_array_equal(np.asarray(model.mask.mask[...]), np.asarray(want))
    opt_masks = channel_masks(nnx.as_pure(optimizer.opt_state))
    np.testing.assert_array_equal(np.asarray(opt_masks["mask"]["mask"]), np.asarray(want))
    check_channels_dead(got, {"d0": model.mask.mask[...]})
    # The model applies its masks by itself.
    np.testing.assert_allclose(
        np.asarray(model(X)),
        np.asarray(_fisher_forward_jit(got, {"d0": want}, X)),
        rtol=1e-5,
        atol=1e-6,
    )


class EqxFisherModel(EqxModel):
    def __call__(self, x, masks):  # one example
        return self.d1(jp.fisher.mask_channels(jnp.tanh(self.d0(x)), masks["d0"]))


def eqx_to_params(model):
    return {
        layer: {"kernel": getattr(model, layer).weight.T, "bias": getattr(model, layer).bias}
        for layer in ("d0", "d1")
    }


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_equinox(name):
    """An Equinox model written for one example: fisher_value_and_grad vmaps it."""
    tx, _, (params, _), trajectory = fisher_case(name)
    model = EqxFisherModel(params)
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state):
        p, static = eqx.partition(model, eqx.is_inexact_array)

        def example_loss(p, masks, example):
            x, y = example
            return jnp.mean((eqx.combine(p, static)(x, masks) - y) ** 2)

        masks = channel_masks(opt_state)
        _, (grads, mask_grads) = jp.fisher.fisher_value_and_grad(example_loss)(p, masks, (X, Y))
        updates, opt_state = tx.update(grads, opt_state, p, mask_grads=mask_grads)
        return eqx.apply_updates(model, updates), opt_state

    for _ in range(STEPS):
        model, opt_state = step(model, opt_state)
        check_fisher_state(eqx_to_params(model), opt_state, name)
    assert_trees_close(eqx_to_params(model), trajectory[-1][0])
    assert_trees_equal(channel_masks(opt_state), channel_masks(trajectory[-1][1]))


@pytest.mark.parametrize("name", FISHER_NAMES)
def test_fisher_orbax_round_trip_mid_run(name, tmp_path):
    _, step, _, trajectory = fisher_case(name)
    params, state = trajectory[1]
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", {"params": params, "state": state})
        ckpt.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "state": state})
        restored = ckpt.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored["state"]) == jax.tree.structure(state)
    params, state = restored["params"], restored["state"]
    for t in range(2, STEPS):
        params, state = step(params, state)
        assert_trees_equal(params, trajectory[t][0])
        assert_trees_equal(state, trajectory[t][1])
