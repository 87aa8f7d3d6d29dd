"""Zero-weight sparse training (RigL, SET, static, saliency): the forward pass may read the
params directly once they start sparse, with the same outputs and gradients as through
masked_params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

SCHEDULE = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)
ALGORITHMS = {
    "rigl": lambda: jp.rigl(0.8, key=jax.random.key(3), update_every=2, end_step=8),
    "set": lambda: jp.set_training(0.8, key=jax.random.key(4), update_every=2, end_step=8),
    "static": lambda: jp.static_sparse(0.7, key=jax.random.key(5)),
    "saliency": lambda: jp.saliency_pruning(SCHEDULE),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_forward_through_params_equals_forward_through_masked_params(name):
    key = jax.random.key(0)
    params = {
        "w1": jax.random.normal(key, (12, 16)),
        "w2": jax.random.normal(jax.random.fold_in(key, 1), (16, 3)),
    }
    x = jax.random.normal(jax.random.fold_in(key, 2), (8, 12))

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"]) ** 2)

    tx = jp.sparse(optax.adam(1e-2), ALGORITHMS[name]())
    state = tx.init(params)
    start = jp.masked_params(params, state)  # both runs start from the sparse weights

    def run(masked: bool):
        @jax.jit
        def step(p, s):
            g = jax.grad(lambda q: loss(jp.masked_params(q, s) if masked else q))(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, s, out = start, state, []
        for _ in range(9):
            # The params the forward pass reads are the masked ones, exactly.
            jax.tree.map(np.testing.assert_array_equal, p, jp.masked_params(p, s))
            p, s = step(p, s)
            out.append((p, jp.get_masks(s)))
        return out

    for (p_a, m_a), (p_b, m_b) in zip(run(True), run(False)):
        jax.tree.map(np.testing.assert_array_equal, m_a, m_b)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), p_a, p_b)
