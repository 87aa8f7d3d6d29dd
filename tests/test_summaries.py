"""Exact sparsity counts and the readable table."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune._src import summaries


def test_summary_counts_exactly():
    params = {
        "dense": {"kernel": jnp.asarray(np.eye(7, 9), jnp.float32), "bias": jnp.zeros(9)},
        "step": jnp.int32(4),  # integer leaves are not counted
        "half": jnp.asarray([0.0, 1.0, -0.0, 2.0], jnp.float16),
    }
    summary = jp.sparsity_summary(params)
    assert summary == {
        "dense/bias": 1.0,
        "dense/kernel": 1 - 7 / 63,
        "half": 0.5,
        "overall": (9 + 56 + 2) / (9 + 63 + 4),
    }


def test_summary_and_table_with_masks():
    params = {"w": jnp.asarray([[0.0, 1.0], [0.0, 3.0]]), "b": jnp.zeros(3)}
    masks = {"w": jnp.asarray([[False, True], [False, True]]), "b": jnp.bool_(True)}
    summary = jp.sparsity_summary(params, masks)
    assert summary["pruned"] == 0.5 and summary["overall"] == 5 / 7
    table = jp.sparsity_table(params, masks)
    assert "w *" in table and "b *" not in table
    assert table.splitlines()[-2].split() == ["pruned", "4", "2", "50.00%"]
    with pytest.raises(ValueError, match="structure of params"):
        jp.sparsity_summary(params, {"w": masks["w"]})


def test_chunked_counting(monkeypatch):
    # Leaves past the chunk size are counted row by row, summed in int64 on the host.
    monkeypatch.setattr(summaries, "_CHUNK", 5)
    x = jnp.asarray([0.0, 1, 0, 2, 0, 0, 3, 0, 0, 0, 4, 5, 0])
    assert summaries._zeros_and_size(x) == (8, 13)


def test_nnx_state():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    summary = jp.sparsity_summary(nnx.state(model, nnx.Param))
    assert summary["bias"] == 1.0 and summary["kernel"] == 0.0
    assert "kernel" in jp.sparsity_table(nnx.state(model, nnx.Param))


def test_counts_large_leaves_by_rows(monkeypatch):
    monkeypatch.setattr(summaries, "_CHUNK", 4)
    x = jnp.asarray([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    assert summaries._zeros_and_size(x) == (4, 6)
