"""Lingvo-style accessors (jaxprune.tf) and pruning summaries (add_pruning_summaries)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune._src.accessors import (
    get_masked_weights,
    get_thresholds,
    get_weight_sparsity,
    get_weights,
)
from jaxprune._src.summaries import pruning_summaries
from jaxprune._src.transform import register_pruning_state

SCHEDULE = jp.polynomial_decay(0.0, 0.75, begin_step=0, end_step=4, power=1, frequency=2)


def trained():
    """Params and optimizer state after 3 updates (pruned at steps 0 and 2, s = 0 and 0.375)."""
    rng = np.random.default_rng(0)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
            "bias": jnp.zeros((4,), jnp.float32),
        },
        "out": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
    }
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(SCHEDULE))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    return params, state


PARAMS, STATE = trained()


def test_get_thresholds_and_sparsity():
    thresholds = get_thresholds(STATE)
    assert list(thresholds) == ["dense/kernel", "out/kernel"]
    masks = jp.get_masks(STATE)
    for path, (outer, inner) in {
        "dense/kernel": ("dense", "kernel"),
        "out/kernel": ("out", "kernel"),
    }.items():
        m, w = np.asarray(masks[outer][inner]), np.asarray(PARAMS[outer][inner])
        t = thresholds[path]
        assert t.dtype == jnp.float32 and t.shape == ()
        # The threshold is the smallest kept magnitude (no update moved kept weights since).
        assert float(t) > 0
        assert np.all(np.abs(w[~m]) == 0)
    sparsity = get_weight_sparsity(STATE)
    # s = 0.375 at step 2: 32 * 0.625 = 20 kept of 32; 8 * 0.625 = 5 kept of 8.
    assert sparsity == {"dense/kernel": 12 / 32, "out/kernel": 3 / 8}


def test_get_weights_and_masked_weights():
    weights = get_weights(PARAMS, STATE)
    assert list(weights) == ["dense/kernel", "out/kernel"]
    assert weights["dense/kernel"] is PARAMS["dense"]["kernel"]
    masked = get_masked_weights(PARAMS, STATE)
    masks = jp.get_masks(STATE)
    want = jnp.where(masks["out"]["kernel"], PARAMS["out"]["kernel"], 0.0)
    np.testing.assert_array_equal(masked["out/kernel"], want)
    # Raw weights keep their pruned values: lingvo never overwrites the variable.
    raw = {"out": {"kernel": jnp.ones((4, 2))}, "dense": PARAMS["dense"]}
    assert float(get_weights(raw, STATE)["out/kernel"].sum()) == 8.0
    np.testing.assert_array_equal(
        get_masked_weights(raw, STATE)["out/kernel"], masks["out"]["kernel"].astype(jnp.float32)
    )


def test_pruning_summaries_exact():
    summary = pruning_summaries(STATE, PARAMS, schedule=SCHEDULE)
    thresholds = get_thresholds(STATE)
    assert summary == {
        "dense/kernel/sparsity": 12 / 32,
        "dense/kernel/threshold": float(thresholds["dense/kernel"]),
        "out/kernel/sparsity": 3 / 8,
        "out/kernel/threshold": float(thresholds["out/kernel"]),
        "pruned/sparsity": 15 / 40,
        "overall/sparsity": 15 / 44,  # the dense bias (4 entries) counts, unpruned
        "skipped_turns": 0.0,
        "target_sparsity": float(SCHEDULE(3)[1]),  # the step count is 3
    }
    assert summary["target_sparsity"] == pytest.approx(0.5625)
    assert all(type(v) is float for v in summary.values())
    assert "target_sparsity" not in pruning_summaries(STATE)


def test_before_any_pruning_step():
    params = {"w": jnp.ones((3, 3))}
    state = jp.magnitude_pruning(SCHEDULE).init(params)
    assert pruning_summaries(state, params) == {
        "w/sparsity": 0.0,
        "w/threshold": 0.0,
        "pruned/sparsity": 0.0,
        "overall/sparsity": 0.0,
        "skipped_turns": 0.0,
    }
    assert get_weight_sparsity(state) == {"w": 0.0}


def test_errors():
    with pytest.raises(ValueError, match="found 0"):
        get_thresholds(optax.adam(1e-3).init(PARAMS))
    other = {"w": jnp.ones((3, 3))}
    with pytest.raises(ValueError, match="do not match the masks"):
        get_weights(other, STATE)
    wrong_shape = jax.tree.map(lambda x: jnp.ones((1, *x.shape)), PARAMS)
    with pytest.raises(ValueError, match="shape"):
        get_masked_weights(wrong_shape, STATE)
    with pytest.raises(ValueError, match="do not match the masks"):
        pruning_summaries(STATE, other)
    with pytest.raises(TypeError, match="schedule"):
        pruning_summaries(STATE, schedule=0.5)


def test_nnx_optimizer_state():
    model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1)))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    params = nnx.state(model, nnx.Param)
    assert get_weight_sparsity(optimizer.opt_state) == {"kernel": 0.5}
    masked = get_masked_weights(params, optimizer.opt_state)
    np.testing.assert_array_equal(masked["kernel"], model.kernel[...])
    summary = pruning_summaries(optimizer.opt_state, params)
    assert summary["pruned/sparsity"] == 0.5
    assert summary["overall/sparsity"] == 12 / 28  # the bias counts, unpruned


class MasksOnlyState(NamedTuple):
    masks: object


register_pruning_state(MasksOnlyState)


def test_state_type_without_thresholds_or_count():
    state = MasksOnlyState(masks={"w": jnp.array([[True, False]]), "b": jnp.bool_(True)})
    assert get_weight_sparsity(state) == {"w": 0.5}
    assert pruning_summaries(state) == {"w/sparsity": 0.5, "pruned/sparsity": 0.5}
    with pytest.raises(ValueError, match="MasksOnlyState.*keeps no thresholds"):
        get_thresholds(state)
    with pytest.raises(ValueError, match="no step count"):
        pruning_summaries(state, schedule=SCHEDULE)
