"""Tests for the Flax channel-mask modules (jaxprune._src.nn)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune._src.fisher import fisher_value_and_grad, per_example_mask_grads
from jaxprune._src.flops import count_flops
from jaxprune._src.nn import MASK_COLLECTION, ChannelMask, ChannelMaskVariable, NNXChannelMask


def _data(batch_size=5, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch_size, 6, 6, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=batch_size), jnp.int32)
    return x, labels


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _loop(example_loss, params, masks, batch):
    grad = jax.jit(jax.grad(example_loss, argnums=1))
    x, labels = batch
    rows = [grad(params, masks, (x[n], labels[n])) for n in range(x.shape[0])]
    return jax.tree.map(lambda *r: jnp.stack(r), *rows)


# ---------------------------------------------------------------------------
# Linen.


class LinenCNN(nn.Module):
    channels: int = 4

    @nn.compact
    def __call__(self, x):
        x = ChannelMask()(nn.relu(nn.Conv(self.channels, (3, 3))(x)))
        x = jnp.mean(x, axis=(-3, -2))
        x = ChannelMask()(nn.tanh(nn.Dense(5)(x)))
        return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def linen_model():
    model = LinenCNN()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 6, 6, 2)))
    return model, variables["params"], variables[MASK_COLLECTION]


def test_linen_masks_live_in_their_own_collection(linen_model):
    model, params, masks = linen_model
    assert jax.tree.map(jnp.shape, masks) == {
        "ChannelMask_0": {"mask": (4,)},
        "ChannelMask_1": {"mask": (5,)},
    }
    assert all(bool(jnp.all(m == 1.0)) for m in jax.tree.leaves(masks))
    assert "ChannelMask_0" not in params


def test_linen_zero_mask_removes_the_channel(linen_model):
    model, params, masks = linen_model
    x, _ = _data()
    apply = jax.jit(lambda p, m: model.apply({"params": p, MASK_COLLECTION: m}, x))
    masked = jax.tree.map(lambda m: m, masks)
    masked["ChannelMask_0"]["mask"] = masks["ChannelMask_0"]["mask"].at[1].set(0.0)
    # The same network with conv channel 1 switched off through its weights.
    conv = params["Conv_0"]
    off = dict(
        params,
        Conv_0={"kernel": conv["kernel"].at[..., 1].set(0.0), "bias": conv["bias"].at[1].set(-1.0)},
    )
    np.testing.assert_allclose(apply(params, masked), apply(off, masks), rtol=1e-5, atol=1e-6)
    assert not np.allclose(apply(params, masked), apply(params, masks))


def test_linen_routes_agree_with_a_python_loop(linen_model):
    model, params, masks = linen_model
    batch = _data()

    def example_loss(p, m, example):
        x, label = example
        logits = model.apply({"params": p, MASK_COLLECTION: m}, x[None])[0]
        return _xent(logits, label)

    def batch_losses(p, m, b):  # m holds (B, C) masks: the modules broadcast them
        return _xent(model.apply({"params": p, MASK_COLLECTION: m}, b[0]), b[1])

    expected = _loop(example_loss, params, masks, batch)
    vmapped = jax.jit(functools.partial(per_example_mask_grads, example_loss))(params, masks, batch)
    _, (_, backward) = jax.jit(fisher_value_and_grad(batch_losses, batched=True))(
        params, masks, batch
    )
    _assert_trees_close(vmapped, expected)
    _assert_trees_close(backward, expected)


def test_linen_masks_count_flops_like_a_smaller_model(linen_model):
    model, params, masks = linen_model
    x1 = jnp.ones((1, 6, 6, 2))

    def apply(p, m, x):
        return model.apply({"params": p, MASK_COLLECTION: m}, x)

    pruned = {
        "ChannelMask_0": {"mask": jnp.array([1.0, 0.0, 1.0, 1.0])},
        "ChannelMask_1": masks["ChannelMask_1"],
    }
    counted = count_flops(apply, params, pruned, x1, channel_argnums=1)
    small = LinenCNN(channels=3)
    small_params = jax.eval_shape(small.init, jax.random.key(0), x1)["params"]
    small_masks = dict(masks, ChannelMask_0={"mask": jnp.ones(3)})

    def apply_small(p, m, x):
        return small.apply({"params": p, MASK_COLLECTION: m}, x)

    # Counted as masks, the multiplications by all-ones masks are free: the network alone.
    small_count = count_flops(apply_small, small_params, small_masks, x1, channel_argnums=1)
    assert float(counted) == float(small_count)
    dense = count_flops(apply, params, masks, x1, channel_argnums=1)
    assert float(counted) < float(dense)


def test_linen_mask_of_the_wrong_shape_is_an_error(linen_model):
    model, params, masks = linen_model
    bad = {"ChannelMask_0": {"mask": jnp.ones(3)}, "ChannelMask_1": masks["ChannelMask_1"]}
    with pytest.raises(ValueError, match=r"shape \(3,\) matches no axis"):
        model.apply({"params": params, MASK_COLLECTION: bad}, jnp.ones((2, 6, 6, 2)))


# ---------------------------------------------------------------------------
# NNX.


class NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, kernel_size=(3, 3), rngs=rngs)
        self.conv_mask = NNXChannelMask(4)
        self.dense = nnx.Linear(4, 5, rngs=rngs)
        self.dense_mask = NNXChannelMask(5)
        self.out = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = self.conv_mask(nnx.relu(self.conv(x)))
        x = jnp.mean(x, axis=(-3, -2))
        return self.out(self.dense_mask(nnx.tanh(self.dense(x))))


def test_nnx_masks_are_their_own_variable_type_and_routes_agree():
    model = NNXCNN(nnx.Rngs(0))
    assert isinstance(model.conv_mask.mask, ChannelMaskVariable)
    assert not isinstance(model.conv_mask.mask, nnx.Param)
    graphdef, params, masks = nnx.split(model, nnx.Param, ChannelMaskVariable)
    params, masks = nnx.as_pure(params), nnx.as_pure(masks)
    assert sorted(jax.tree.map(jnp.shape, masks).items()) == [
        ("conv_mask", {"mask": (4,)}),
        ("dense_mask", {"mask": (5,)}),
    ]
    batch = _data()

    def example_loss(p, m, example):
        x, label = example
        return _xent(nnx.merge(graphdef, p, m)(x[None])[0], label)

    def batch_losses(p, m, b):
        return _xent(nnx.merge(graphdef, p, m)(b[0]), b[1])

    expected = _loop(example_loss, params, masks, batch)
    vmapped = jax.jit(functools.partial(per_example_mask_grads, example_loss, route="backward"))(
        params, masks, batch
    )
    (loss, (grads, backward)) = jax.jit(fisher_value_and_grad(batch_losses, batched=True))(
        params, masks, batch
    )
    _assert_trees_close(vmapped, expected)
    _assert_trees_close(backward, expected)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(6, 4, rngs=rngs)
        self.mask = NNXChannelMask(4)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.mask(nnx.relu(self.hidden(x))))


def test_nnx_optimizer_over_params_leaves_masks_alone():
    model = NNXMLP(nnx.Rngs(1))
    model.mask.mask[...] = jnp.array([1.0, 0.0, 1.0, 1.0])
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(optimizer))[0]
    ]
    assert any("hidden" in p for p in paths)
    assert not any("mask" in p for p in paths)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=8), jnp.int32)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(m):
            return jnp.mean(_xent(m(x), labels))

        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(model)
        optimizer.update(model, grads)
        return grads

    before = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = train_step(model, optimizer)
    assert not jax.tree.leaves(nnx.state(grads, ChannelMaskVariable))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    assert not np.allclose(before["hidden"]["kernel"], after["hidden"]["kernel"])
    np.testing.assert_array_equal(model.mask.mask[...], [1.0, 0.0, 1.0, 1.0])


def test_nnx_module_bad_arguments():
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        NNXChannelMask(0)
    with pytest.raises(TypeError, match="num_features must be an int"):
        NNXChannelMask(2.0)
    with pytest.raises(TypeError, match="float dtype"):
        NNXChannelMask(2, dtype=jnp.int32)
    with pytest.raises(ValueError, match="matches no axis"):
        NNXChannelMask(3)(jnp.ones((2, 4)))
