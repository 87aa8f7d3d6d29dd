"""compact_nnx and compact_equinox: smaller NNX and Equinox models from the channels to keep."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.structural import compact_nnx, group_weight_masks, nnx_function


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 6, (3, 3), rngs=rngs)
        self.head = nnx.Linear(6 * 5 * 5, 10, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.conv2(h))
        return self.head(h.reshape(h.shape[0], -1))


def setup():
    model = CNN(nnx.Rngs(0))
    model.eval()  # batch statistics are read, not updated: a pure function of the state
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 3))
    fn, state = nnx_function(model)
    groups = jp.dependency_groups(fn, state, x)
    keep = [np.arange(g.size) % 3 != 1 for g in groups]
    return model, x, fn, state, groups, keep


def test_smaller_model_computes_the_masked_model():
    model, x, fn, state, groups, keep = setup()
    small = compact_nnx(model, keep, x)
    assert isinstance(small, CNN)
    kept = [int(k.sum()) for k in keep]
    assert (small.conv1.out_features, small.bn1.num_features) == (kept[0], kept[0])
    assert (small.conv2.in_features, small.conv2.out_features) == (kept[0], kept[1])
    assert small.head.in_features == kept[1] * 25
    assert small.conv1.kernel.get_value().shape == (3, 3, 3, kept[0])
    # The original is untouched.
    assert model.conv1.out_features == 8 and model.conv1.kernel.get_value().shape[-1] == 8
    masked = jax.tree.map(lambda a, m: a * m, state, group_weight_masks(state, groups, keep))
    want = fn(masked, x)
    got = small(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_smaller_model_trains_and_checkpoints(tmp_path):
    model, x, _, _, _, keep = setup()
    small = compact_nnx(model, keep, x)
    small.train()
    y = jnp.arange(4) % 10
    optimizer = nnx.Optimizer(small, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        value, grads = nnx.value_and_grad(loss)(m)
        opt.update(m, grads)
        return value

    losses = [float(step(small, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    small.eval()
    state = nnx.state(small)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "small", state)
        ckpt.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = ckpt.restore(tmp_path / "small", target)
    # Loaded into a fresh compaction of the same model (the rebuilt architecture).
    fresh = compact_nnx(model, keep, x)
    nnx.update(fresh, restored)
    fresh.eval()
    np.testing.assert_array_equal(fresh(x), small(x))


class Custom(nnx.Module):
    """A layer jaxprune does not know: its size attributes cannot be rebuilt."""

    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 8)))

    def __call__(self, x):
        return x @ self.w[...]


class WithCustom(nnx.Module):
    def __init__(self, rngs):
        self.custom = Custom(rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.custom(x)))


def test_unknown_layer_is_named():
    model = WithCustom(nnx.Rngs(0))
    x = jnp.ones((2, 4))
    groups = jp.dependency_groups(*nnx_function(model), x)
    keep = [np.arange(g.size) < 3 for g in groups]
    with pytest.raises(ValueError, match="cannot rebuild Custom at 'custom'"):
        compact_nnx(model, keep, x)
    # The function route still runs it.
    fn, state = nnx_function(model)
    small_state, small_fn = jp.compact(fn, state, keep, x)
    assert small_fn(small_state, x).shape == (2, 2)


def test_bad_keep_is_refused_as_by_compact():
    model, x, _, _, groups, keep = setup()
    with pytest.raises(ValueError, match="groups"):
        compact_nnx(model, keep[:1], x)


# ---------------------------------------------------------------------------- Equinox


def eqx_setup():
    import equinox as eqx

    from jaxprune.structural import equinox_function

    class Net(eqx.Module):
        conv: eqx.nn.Conv2d
        layers: list

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv = eqx.nn.Conv2d(3, 8, 3, padding=1, key=k1)
            self.layers = [eqx.nn.Linear(8 * 25, 12, key=k2), eqx.nn.Linear(12, 4, key=k3)]

        def __call__(self, x):
            h = jax.nn.relu(self.conv(x)).reshape(-1)
            return self.layers[1](jax.nn.relu(self.layers[0](h)))

    model = Net(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 5, 5))
    fn, params = equinox_function(model)
    groups = jp.dependency_groups(fn, params, x)
    return model, x, fn, params, groups


def test_smaller_equinox_model_computes_the_masked_model():
    import equinox as eqx

    from jaxprune.structural import compact_equinox

    model, x, fn, params, groups = eqx_setup()
    keep = [np.arange(g.size) % 2 == 0 for g in groups]
    small = compact_equinox(model, keep, x)
    assert type(small) is type(model)
    assert [g.name for g in groups] == ["conv/weight:0", "layers/0/weight:0"]
    assert (small.conv.out_channels, small.conv.weight.shape) == (4, (4, 3, 3, 3))
    assert (small.layers[0].in_features, small.layers[0].out_features) == (100, 6)
    assert small.layers[1].in_features == 6
    assert model.layers[0].out_features == 12  # the original is untouched
    masked = jax.tree.map(lambda a, m: a * m, params, group_weight_masks(params, groups, keep))
    want = fn(masked, x)
    np.testing.assert_allclose(small(x), want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    # An ordinary Equinox model: differentiable and jit-compiled with filter_jit.
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(small)
    assert grads.layers[0].weight.shape == small.layers[0].weight.shape
    assert eqx.filter_jit(lambda m: m(x))(small).shape == (4,)


def test_equinox_unknown_layer_is_named():
    import equinox as eqx

    from jaxprune.structural import compact_equinox, equinox_function

    class Scale(eqx.Module):
        w: jax.Array

        def __call__(self, x):
            return x * self.w

    class Net(eqx.Module):
        first: eqx.nn.Linear
        scale: Scale
        last: eqx.nn.Linear

        def __call__(self, x):
            return self.last(self.scale(jax.nn.relu(self.first(x))))

    k1, k2 = jax.random.split(jax.random.key(0))
    model = Net(eqx.nn.Linear(4, 8, key=k1), Scale(jnp.ones(8)), eqx.nn.Linear(8, 2, key=k2))
    x = jnp.ones(4)
    groups = jp.dependency_groups(*equinox_function(model), x)
    keep = [np.arange(g.size) < 3 for g in groups]
    with pytest.raises(ValueError, match="cannot rebuild Scale at 'scale'"):
        compact_equinox(model, keep, x)
