"""The compiled train step does not grow with the number of pruned leaves beyond one kernel each.

XLA compiles one kernel per distinct fused computation; kernels with the same body (e.g. the
mask of every 16x16 kernel) are compiled once. So compile time stays close to the plain step's
when the number of *distinct* fused computations does not grow with the number of leaves. These
tests count them in the compiled HLO of a train step with 4 and with 16 pruned leaves of one
shape: the counts must not grow (``benchmarks/compile_time.py`` measures the time itself).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxprune as jp


def distinct_kernels(compiled_text: str) -> int:
    """The number of distinct computation bodies in compiled HLO text (names ignored)."""
    bodies = set()
    for comp in re.split(r"\n(?=\S)", compiled_text):
        if not comp.startswith("%"):
            continue
        body = comp.split("{", 1)[-1]
        body = re.sub(r"metadata=\{[^}]*\}", "", body)
        bodies.add(re.sub(r"%[\w.\-]+", "%", body))
    return len(bodies)


def params_of(n: int) -> dict:
    kernels = {f"k{i}": jnp.full((16, 16), i + 1.0) for i in range(n)}
    biases = {f"b{i}": jnp.zeros(16) for i in range(n)}
    return kernels | biases


def compiled_step(tx: optax.GradientTransformation, n: int) -> str:
    params = params_of(n)

    def step(p, s):
        grads = jax.tree.map(lambda a: a * 0.1, p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    return jax.jit(step).lower(params, tx.init(params)).compile().as_text()


SCHEDULE = jp.constant_sparsity(0.5, begin_step=0, frequency=1)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("recompute_from", ["updated", "current"])
def test_magnitude_pruning_kernels_do_not_grow_with_leaves(scope, recompute_from):
    tx = optax.chain(
        optax.adam(1e-3),
        jp.magnitude_pruning(SCHEDULE, scope=scope, recompute_from=recompute_from),
    )
    # 4 and 64 leaves: a kernel per leaf would add 60. Between nearby sizes the count can move
    # by one where XLA fuses the selection's small per-row kernels differently (4 leaves: 54,
    # 16 leaves: 55, 64 leaves: 48 with recompute_from="updated", the rows counted in 11-bit
    # and then 8-bit digits), which says nothing about growth with the number of leaves.
    few, many = (distinct_kernels(compiled_step(tx, n)) for n in (4, 64))
    assert many <= few, (few, many)


def test_plain_step_reference():
    # The premise of the tests above: identical leaves give identical kernels.
    few, many = (distinct_kernels(compiled_step(optax.adam(1e-3), n)) for n in (4, 16))
    assert many == few


def test_batched_masks_are_exact():
    # The masks and thresholds that the batched selection hands to each leaf are those of the
    # leaf ranked on its own, in every float dtype and for NaN thresholds.
    from jaxprune._src import masks as masks_lib

    key = jax.random.key(0)
    leaves = [
        jax.random.normal(jax.random.fold_in(key, i), (16, 16)).astype(dtype)
        for i, dtype in enumerate([jnp.float32, jnp.bfloat16, jnp.float16, jnp.float32])
    ]
    leaves[3] = leaves[3].at[0, 0].set(jnp.nan).at[1, 1].set(-jnp.inf)
    leaves.append(jnp.full((16, 16), jnp.nan))  # the threshold itself is NaN
    masks, thresholds = masks_lib.layer_thresholds(leaves, jnp.float32(0.7))
    for x, m, t in zip(leaves, masks, thresholds):
        want_m, want_t = masks_lib.magnitude_threshold(x, 0.7)
        assert t.dtype == x.dtype
        assert bool(jnp.all(m == want_m))
        assert jnp.array_equal(t, want_t, equal_nan=True)
