"""compact_linen: a smaller flax.linen module (same classes, smaller size fields) and its
variables, from the channels to keep."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

# Grouped-query attention whose key and value widths are separate fields of one size.
from test_examples import _load as load_example
from test_structural_transformer import Block

import jaxprune as jp
from jaxprune.structural import compact_linen, group_weight_masks


class CNN(nn.Module):
    widths: tuple[int, ...] = (8, 6)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.relu(nn.Conv(self.widths[1], (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _masked(variables, groups, keep):
    masks = group_weight_masks(variables, groups, keep)
    return jax.tree.map(lambda w, m: w * m, variables, masks)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_cnn_widths_field_is_set_and_the_model_is_the_masked_one():
    model = CNN()
    x = _normal((4, 5, 5, 3), 0)
    v = model.init(jax.random.key(0), x)
    groups = jp.dependency_groups(model.apply, v, x)
    keep = [np.arange(g.size) % 3 != 1 for g in groups]
    small_model, small = compact_linen(model, v, keep, x)
    assert type(small_model) is CNN
    assert small_model.widths == (5, 4)
    assert model.widths == (8, 6)  # the original is left unchanged
    _close(small_model.apply(small, x), jax.jit(model.apply)(_masked(v, groups, keep), x))
    want, _ = jp.compact(model.apply, v, keep, x)
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, want)


def test_smaller_linen_model_trains_and_checkpoints(tmp_path):
    model = CNN()
    x = _normal((4, 5, 5, 3), 1)
    y = jnp.arange(4) % 10
    v = model.init(jax.random.key(0), x)
    groups = jp.dependency_groups(model.apply, v, x)
    keep = [np.arange(g.size) < g.size // 2 for g in groups]
    small_model, small = compact_linen(model, v, keep, x)
    tx = optax.adam(1e-2)
    params, stats = small["params"], small["batch_stats"]
    opt = tx.init(params)

    # The train step of examples/compact_cnn.py, on the rebuilt module.
    step = load_example("compact_cnn").batch_norm_step(small_model, tx)
    losses = []
    for _ in range(5):
        params, stats, opt, value = step(params, stats, opt, x, y)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    trained = {"params": params, "batch_stats": stats}
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "small", trained)
        ckpt.wait_until_finished()
        # The restore target comes from the rebuilt module alone.
        target = jax.eval_shape(small_model.init, jax.random.key(0), x)
        restored = ckpt.restore(tmp_path / "small", target)
    np.testing.assert_array_equal(small_model.apply(restored, x), small_model.apply(trained, x))


def test_fields_of_equal_size_are_told_apart_by_tracing():
    # head_dim and v_dim are both 8; only the values' width is pruned, to 2.
    block = Block(heads=6, kv_heads=2)
    x = _normal((2, 5, 16), 2)
    v = block.init(jax.random.key(0), x)
    groups = jp.dependency_groups(block.apply, v, x)
    keep = []
    for g in groups:
        if ("params/v/kernel", 2) in g.members:
            keep.append(np.isin(np.arange(g.size), [1, 6]))
        elif ("params/k/kernel", 1) in g.members:  # key/value heads: keep the second
            keep.append(np.arange(g.size) == 1)
        elif ("params/up/kernel", 1) in g.members:
            keep.append(np.arange(g.size) < 10)
        else:  # the query heads within a key/value group: keep two of three
            keep.append(np.arange(g.size) != 0)
    small_block, small = compact_linen(block, v, keep, x)
    assert (small_block.heads, small_block.kv_heads) == (2, 1)
    assert (small_block.head_dim, small_block.v_dim, small_block.mlp) == (8, 2, 10)
    _close(small_block.apply(small, x), jax.jit(block.apply)(_masked(v, groups, keep), x))


def test_sequential_layers_get_their_features():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(6), nn.tanh, nn.Dense(2)])
    x = _normal((3, 4), 3)
    v = model.init(jax.random.key(0), x)
    groups = jp.dependency_groups(model.apply, v, x)
    keep = [np.arange(8) % 2 == 0, np.arange(6) < 5]
    small_model, small = compact_linen(model, v, keep, x)
    assert [getattr(m, "features", None) for m in small_model.layers] == [4, None, 5, None, 2]
    _close(small_model.apply(small, x), model.apply(_masked(v, groups, keep), x))


def test_keeping_everything_returns_the_module_itself():
    model = CNN()
    x = _normal((2, 5, 5, 3), 4)
    v = model.init(jax.random.key(0), x)
    groups = jp.dependency_groups(model.apply, v, x)
    small_model, small = compact_linen(model, v, [np.ones(g.size, bool) for g in groups], x)
    assert small_model is model
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, v)


class Computed(nn.Module):
    """The hidden width is computed in the module's code: no field holds it."""

    base: int = 4

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(2 * self.base)(x)))


def test_sizes_computed_in_code_are_an_error_that_points_to_small_fn():
    model = Computed()
    x = _normal((2, 5), 5)
    v = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="no size fields of Computed") as err:
        compact_linen(model, v, [np.arange(8) < 3], x)
    assert "params/Dense_0/kernel" in str(err.value)
    assert "jaxprune.compact" in str(err.value)


def test_bad_module_arguments():
    x = _normal((2, 5), 6)
    model = Computed()
    v = model.init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="module must be a flax.linen.Module"):
        compact_linen(model.apply, v, [np.ones(8, bool)], x)
    with pytest.raises(ValueError, match="module must be unbound"):
        compact_linen(model.bind(v), v, [np.ones(8, bool)], x)
    # keep is checked as compact checks it, naming the group.
    with pytest.raises(ValueError, match="params/Dense_0"):
        compact_linen(model, v, [np.ones(5, bool)], x)
