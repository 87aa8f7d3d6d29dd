"""jaxprune inside the training loops of Flax linen, Flax NNX and Equinox.

Each test trains a small model with the framework's own idiom (flax's ``TrainState``,
``nnx.Optimizer``, ``eqx.filter``) and gradual magnitude pruning, and checks that the loss goes
down, that pruned weights are exactly ``+0.0`` after every step, that the masks are boolean and
shaped like their weights, and that only the weights meant to be pruned are. Docs:
``docs/frameworks.md``.
"""

import functools
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxprune as jp

CLASSES = 3
STEPS = 24
# Turns at updates 4, 8, 12, 16, 20: sparsity 0.0 -> 0.8 (cubic, as tfmot), then held.
SCHEDULE = jp.polynomial_decay(0.0, 0.8, begin_step=4, end_step=20, frequency=4)


def dataset(n=128):
    """8x8 one-channel images whose class a sparse linear teacher decides."""
    kx, kw = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (n, 8, 8, 1))
    relevant = (jnp.arange(64) % 3 == 0)[:, None]
    teacher = jax.random.normal(kw, (64, CLASSES)) * relevant
    y = jnp.argmax(x.reshape(n, 64) @ teacher, axis=-1)
    return x, y


@functools.cache
def sparsity_after(step):
    """The sparsity the masks have after update ``step``: that of the last pruning turn."""
    if step < 0:
        return 0.0
    should_prune, sparsity = SCHEDULE(step)
    return float(sparsity) if bool(should_prune) else sparsity_after(step - 1)


def path_str(path):
    return jax.tree_util.keystr(path, simple=True, separator="/")


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def kept_fraction(size, sparsity):
    # tfmot's count of kept weights: round half to even of n * (1 - s), computed in float32.
    return float(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity)))) / size


def check_pruned(params, masks, *, expected, sparsity=None, is_leaf=None):
    """Pruned weights are bitwise +0.0, masks are bool and shaped like them.

    ``expected`` is the set of ``/``-joined paths that must be pruned (and no other).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)
    mask_leaves = treedef.flatten_up_to(masks)
    pruned = set()
    for (path, w), m in zip(flat, mask_leaves):
        w = np.asarray(w[...] if isinstance(w, nnx.Variable) else w)
        m = np.asarray(m[...] if isinstance(m, nnx.Variable) else m)
        assert m.dtype == np.bool_, (path_str(path), m.dtype)
        if m.ndim == 0:
            assert m, path_str(path)  # not pruned: a scalar True
            continue
        pruned.add(path_str(path))
        assert m.shape == w.shape, (path_str(path), m.shape, w.shape)
        assert w.dtype == np.float32
        # +0.0 exactly (not -0.0, not a tiny value): the bit pattern is all zeros.
        assert not np.any(w[~m].view(np.uint32)), path_str(path)
        if sparsity is not None:
            assert np.mean(m) == pytest.approx(kept_fraction(m.size, sparsity)), path_str(path)
    assert pruned == set(expected)


# ----- Flax linen with flax.training.train_state.TrainState -----


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


class TrainState(train_state.TrainState):
    batch_stats: Any


def test_linen_train_state():
    x, y = dataset()
    model = LinenCNN()
    # Jitted, here and below, so that initialisation compiles once rather than op by op.
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x[:1])
    tx = optax.chain(optax.adam(1e-2), jp.magnitude_pruning(SCHEDULE))
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
    )
    # TrainState.create starts `step` as a Python int; an array keeps the step's signature
    # fixed so the second call does not compile again.
    state = state.replace(step=jnp.int32(0))

    def loss_fn(params, batch_stats, train):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=train, mutable=["batch_stats"]
        )
        return cross_entropy(logits, y), updates["batch_stats"]

    @jax.jit
    def train_step(state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, True
        )
        return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss

    kernels = {"Conv_0/kernel", "Dense_0/kernel"}
    losses = []
    for i in range(STEPS):
        state, loss = train_step(state)
        losses.append(float(loss))
        masks = jp.get_masks(state.opt_state)
        check_pruned(state.params, masks, expected=kernels, sparsity=sparsity_after(i))
    assert train_step._cache_size() == 1

    check_pruned(state.params, masks, expected=kernels, sparsity=0.8)
    eval_loss, _ = jax.jit(loss_fn, static_argnums=2)(state.params, state.batch_stats, False)
    assert float(eval_loss) < 0.7 * losses[0]
    # Batch statistics are a separate collection: updated by training, never masked.
    assert not np.allclose(state.batch_stats["BatchNorm_0"]["var"], 1.0)
    # The masks are already fused in: strip() gives the same params back.
    stripped = jp.strip(state.params, state.opt_state)
    jax.tree.map(np.testing.assert_array_equal, stripped, state.params)


# ----- Flax NNX with nnx.Optimizer -----


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.linear = nnx.Linear(8 * 8 * 8, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(nnx.relu(self.bn(self.conv(x))))
        return self.linear(x.reshape(x.shape[0], -1))


def variable_types(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return {path_str(path): type(v) for path, v in flat[0]}


def test_nnx_optimizer():
    x, y = dataset()
    model = nnx.jit(lambda: NNXCNN(nnx.Rngs(0)))()
    before = variable_types(nnx.state(model))
    tx = optax.chain(optax.adam(1e-2), jp.magnitude_pruning(SCHEDULE))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    kernels = {"conv/kernel", "linear/kernel"}
    losses = []
    for i in range(STEPS):
        losses.append(float(train_step(model, optimizer)))
        check_pruned(
            nnx.state(model, nnx.Param),
            jp.get_masks(optimizer.opt_state),
            expected=kernels,
            sparsity=sparsity_after(i),
            is_leaf=lambda v: isinstance(v, nnx.Variable),
        )
    model.eval()
    assert float(nnx.jit(lambda m: cross_entropy(m(x), y))(model)) < 0.7 * losses[0]

    # The masks live in the optimizer's state, not in the model: the model has exactly the
    # variables it had before, and no nnx.Param anywhere holds a mask.
    assert variable_types(nnx.state(model)) == before
    assert variable_types(nnx.state(optimizer, nnx.Param)) == {}
    opt_vars = variable_types(nnx.state(optimizer))
    mask_vars = {p: t for p, t in opt_vars.items() if "/masks/" in p}
    assert set(mask_vars) == {f"opt_state/1/masks/{p}" for p in before if before[p] is nnx.Param}
    assert all(
        issubclass(t, nnx.OptState) and not issubclass(t, nnx.Param) for t in mask_vars.values()
    )
    # Batch statistics are not in wrt=nnx.Param: no masks for them, and they still train.
    assert not np.allclose(model.bn.var[...], 1.0)


def test_nnx_split_state_with_plain_optax():
    """The functional NNX style: nnx.split, a plain optax state, a jax.jit step."""
    x, y = dataset()
    graphdef, params, rest = nnx.split(nnx.jit(lambda: NNXCNN(nnx.Rngs(1)))(), nnx.Param, ...)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), jp.magnitude_pruning(SCHEDULE, scope="global"))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, rest, opt_state):
        model = nnx.merge(graphdef, params, rest)
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, nnx.state(model, nnx.Not(nnx.Param)), opt_state, loss

    losses = []
    for _ in range(STEPS):
        params, rest, opt_state, loss = train_step(params, rest, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    masks = jp.get_masks(opt_state)
    # The masks keep the nnx.Param wrappers of the params, so they pair up leaf by leaf.
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    check_pruned(
        params,
        masks,
        expected={"conv/kernel", "linear/kernel"},
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )
    assert jp.sparsity_summary(params, masks)["pruned"] == pytest.approx(0.8, abs=1e-3)


# ----- Equinox with eqx.filter -----


class EqxCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    linear: eqx.nn.Linear
    activation: Any = eqx.field(static=True)

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
        self.linear = eqx.nn.Linear(8 * 8 * 8, CLASSES, key=k2)
        self.activation = jax.nn.relu

    def __call__(self, x):  # one example, channels first: (1, 8, 8)
        return self.linear(self.activation(self.conv(x)).reshape(-1))


def test_equinox_filter():
    x, y = dataset()
    x = jnp.moveaxis(x, -1, 1)  # Equinox convolutions are channels-first
    model = eqx.filter_jit(EqxCNN)(jax.random.key(0))
    # The default rule: Equinox's conv bias, stored as (out, 1, 1), is named "bias", so it is
    # left alone like any bias; the weights are pruned.
    tx = optax.chain(optax.adam(1e-2), jp.magnitude_pruning(SCHEDULE))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model):
        return cross_entropy(jax.vmap(model)(x), y)

    @eqx.filter_jit
    def train_step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for i in range(STEPS):
        model, opt_state, loss = train_step(model, opt_state)
        losses.append(float(loss))
        check_pruned(
            eqx.filter(model, eqx.is_array),
            jp.get_masks(opt_state),
            expected={"conv/weight", "linear/weight"},
            sparsity=sparsity_after(i),
        )
    assert float(eqx.filter_jit(loss_fn)(model)) < 0.7 * losses[0]
    assert model.activation is jax.nn.relu  # static fields pass through untouched


def test_equinox_structures_use_equinox_axes():
    """Equinox weights are (out, in): N:M runs along axis -1, units are indexed by axis 0."""
    # Weights (8, 16) and (4, 8).
    model = eqx.filter_jit(eqx.nn.MLP)(16, 4, 8, depth=1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)
    tx = jp.magnitude_pruning(
        jp.constant_sparsity(0.5, begin_step=0, frequency=1),
        structure={"layers/0": jp.NMSparsity(2, 4, axis=-1), "layers/1": jp.UnitSparsity(axis=0)},
    )
    grads = jax.tree.map(jnp.zeros_like, params)
    _, state = tx.update(grads, tx.init(params), params)
    masks = jp.get_masks(state)
    nm = np.asarray(masks.layers[0].weight)  # every group of 4 inputs keeps 2, for each output
    assert np.all(nm.reshape(8, 4, 4).sum(axis=-1) == 2)
    units = np.asarray(masks.layers[1].weight)  # whole rows (output units) kept or pruned
    assert sorted(units.sum(axis=1).tolist()) == [0, 0, 8, 8]


def test_vmap_over_seeds_with_unbatched_counts_keeps_turns_conditional():
    """docs/frameworks.md: counts with axis None keep lax.cond a conditional under vmap."""

    def init_params(key):
        return {"w": jax.random.normal(key, (64, 32)), "b": jnp.zeros(32)}

    tx = jp.sparse(
        optax.adam(1e-2), jp.rigl(0.75, key=jax.random.key(0), update_every=2, end_step=8)
    )
    one_state = jax.eval_shape(tx.init, init_params(jax.random.key(0)))
    axes = jax.tree.map(lambda x: None if x.dtype == jnp.int32 and x.ndim == 0 else 0, one_state)
    seeds = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(jax.random.key(2), (8, 64))

    def step(params, state, x):
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"][None] - 1.0) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    vparams = jax.vmap(init_params)(seeds)
    vstate = jax.vmap(tx.init, out_axes=axes)(vparams)
    vparams = jax.vmap(jp.masked_params, in_axes=(0, axes))(vparams, vstate)
    vstep = jax.jit(jax.vmap(step, in_axes=(0, axes, None), out_axes=(0, axes)))
    hlo = vstep.lower(vparams, vstate, x).compile().as_text()
    assert " conditional(" in hlo  # the turn is a branch, not a select of both
    for _ in range(6):
        vparams, vstate = vstep(vparams, vstate, x)
    assert int(vstate.algorithm.count) == 6  # one count for all seeds

    one_step = jax.jit(step)
    for i, key in enumerate(seeds):
        params = init_params(key)
        state = tx.init(params)
        params = jp.masked_params(params, state)
        for _ in range(6):
            params, state = one_step(params, state, x)
        np.testing.assert_array_equal(
            np.asarray(jp.get_masks(state)["w"]), np.asarray(vstate.algorithm.masks["w"][i])
        )
        np.testing.assert_allclose(
            np.asarray(params["w"]), np.asarray(vparams["w"][i]), rtol=1e-5, atol=1e-6
        )
