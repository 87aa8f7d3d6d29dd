"""jaxprune.sparse(..., mask_dtype="packed"): 1-bit masks, the same training as bool masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxprune as jp
from jaxprune._src import packed as packed_lib

KEY = jax.random.key(0)
SCHEDULE = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)

ALGORITHMS = {
    "rigl": lambda: jp.rigl(0.8, key=jax.random.key(3), update_every=2, end_step=8),
    "set": lambda: jp.set_training(0.8, key=jax.random.key(4), update_every=2, end_step=8),
    "static": lambda: jp.static_sparse(0.7, key=jax.random.key(5)),
    "magnitude_ste": lambda: jp.magnitude_ste(SCHEDULE, sr_ste_lambda=1e-3),
    "random_ste": lambda: jp.random_ste(SCHEDULE, key=jax.random.key(6)),
    "movement": lambda: jp.movement_pruning(SCHEDULE),
    "saliency": lambda: jp.saliency_pruning(SCHEDULE, scope="global"),
}


def params_and_loss():
    params = {
        "a": {"kernel": jax.random.normal(KEY, (64, 33))},  # 2112 entries: a partial last word
        "b": {
            "kernel": jax.random.normal(jax.random.fold_in(KEY, 1), (33, 10)),
            "bias": jnp.zeros(10),
        },
    }
    x = jax.random.normal(jax.random.fold_in(KEY, 2), (16, 64))

    def loss(p):
        h = jnp.tanh(x @ p["a"]["kernel"])
        return jnp.mean((h @ p["b"]["kernel"] + p["b"]["bias"][None]) ** 2)

    return params, loss


def run(name, mask_dtype, steps=9):
    params, loss = params_and_loss()
    tx = jp.sparse(optax.adam(1e-2), ALGORITHMS[name](), mask_dtype=mask_dtype)
    state = tx.init(params)
    params = jp.masked_params(params, state)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(jp.masked_params(p, s))
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    history = []
    for _ in range(steps):
        params, state = step(params, state)
        history.append((params, state))
    assert step._cache_size() == 1
    return history


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_packed_training_equals_bool_training(name):
    # The masks are equal bit for bit; the float arithmetic may be fused differently around the
    # unpacking, so weights and moments agree to float32 rounding.
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)  # noqa: E731
    for (p_bool, s_bool), (p_packed, s_packed) in zip(run(name, "bool"), run(name, "packed")):
        jax.tree.map(np.testing.assert_array_equal, jp.get_masks(s_bool), jp.get_masks(s_packed))
        jax.tree.map(close, p_bool, p_packed)
        # The inner optimizer's state too (RigL and SET reset it where they grow).
        jax.tree.map(close, s_bool.inner, s_packed.inner)
        masked = jp.masked_params(p_packed, s_packed)
        jax.tree.map(close, jp.masked_params(p_bool, s_bool), masked)
        # Pruned weights are exactly zero in the forward pass either way.
        for m, w in zip(jax.tree.leaves(jp.get_masks(s_packed)), jax.tree.leaves(masked)):
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    masks = s_packed.algorithm.masks
    packed = jax.tree.leaves(masks, is_leaf=packed_lib.is_packed)
    assert any(packed_lib.is_packed(m) for m in packed)
    words = masks["a"]["kernel"].words
    assert words.dtype == jnp.uint32 and words.shape == (packed_lib.num_words(64 * 33),)


def test_packed_state_checkpoints_and_is_smaller(tmp_path):
    (params, state), *_ = run("rigl", "packed", steps=1)[::-1]
    bool_state = run("rigl", "bool", steps=1)[-1][1]
    nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))  # noqa: E731
    assert nbytes(state.algorithm.masks) * 7 < nbytes(bool_state.algorithm.masks)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", state)
        ckpt.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = ckpt.restore(tmp_path / "ckpt", target)
    jax.tree.map(np.testing.assert_array_equal, jp.get_masks(restored), jp.get_masks(state))
    jp.check_pruned_zero(params, state)


def test_bad_mask_dtype():
    with pytest.raises(ValueError, match=r"mask_dtype must be one of \('bool', 'packed'\)"):
        jp.sparse(optax.adam(1e-3), ALGORITHMS["static"](), mask_dtype="bits")
