"""compact_nnx: a smaller Flax NNX model from the channels to keep."""

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
