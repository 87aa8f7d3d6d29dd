"""Tests for one-shot post-training pruning: Wanda, SparseGPT, OWL and the model runner."""

import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src import posttraining as pt
from jaxprune._src import posttraining_runner as runner
from jaxprune._src.masks import magnitude_mask
from jaxprune._src.posttraining_runner import prune_oneshot

# ----- references, written directly from the papers' reference code (PyTorch layout) -----


def np_sparsegpt(w_flax, h, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """A NumPy (float64) port of ``SparseGPT.fasterprune``: W is (out, in) as in PyTorch.

    ``prunen`` counts *pruned* entries per group, as in the reference code.
    """
    W = np.array(w_flax, np.float64).T.copy()
    H = np.array(h, np.float64).copy()
    rows, columns = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(columns), np.arange(columns)] += damp
    L = np.linalg.cholesky(H)
    Hinv = np.linalg.inv(L @ L.T)  # cholesky_inverse
    Hinv = np.linalg.cholesky(Hinv).T  # upper factor
    pruned_all = np.zeros_like(W, bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / np.diag(Hinv1).reshape((1, -1)) ** 2
            thresh = np.sort(tmp.flatten())[int(tmp.size * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = np.zeros_like(W1, bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = (
                    W1[:, i : i + prunem] ** 2 / np.diag(Hinv1)[i : i + prunem].reshape(1, -1) ** 2
                )
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                np.put_along_axis(mask1, i + idx, True, axis=1)
            q = w.copy()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        pruned_all[:, i1:i2] = mask1
    return W.T, ~pruned_all.T


def np_wanda(w, norms, sparsity=None, n_m=None):
    """Direct loops: per output column, prune the lowest scores (stable: lower index first)."""
    w = np.asarray(w, np.float32)
    score = np.abs(w) * np.asarray(norms, np.float32)[:, None]
    d_in, d_out = w.shape
    keep = np.ones((d_in, d_out), bool)
    for j in range(d_out):
        if n_m is None:
            k = int(d_in * sparsity)
            order = sorted(range(d_in), key=lambda i, j=j: (score[i, j], i))
            keep[order[:k], j] = False
        else:
            n, m = n_m
            for g in range(0, d_in, m):
                order = sorted(range(g, g + m), key=lambda i, j=j: (score[i, j], i))
                keep[order[: m - n], j] = False
    return keep


def np_owl(scores, sparsity, threshold, lam):
    ratios, sizes = [], []
    for s in scores:
        s = np.asarray(s, np.float64)
        ratios.append(np.mean(s > threshold * np.mean(s)) * 100)  # percent, as the reference
        sizes.append(s.size)
    r = np.array(ratios)
    a = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = a - np.average(a, weights=sizes) + (1 - sparsity)
    return 1 - density


def correlated_inputs(seed, n, d_in):
    """Inputs with correlated features of very different (log-normal) scales."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d_in))
    mix = np.eye(d_in) + 0.5 * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in)
    scales = np.exp(rng.standard_normal(d_in))
    return jnp.asarray((z @ mix) * scales[None, :], jnp.float32)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def uniform(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# ----- Wanda -----


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_wanda_matches_numpy(sparsity):
    w = normal(0, (24, 7))
    norms = uniform(1, (24,))
    mask = pt.wanda_mask(w, norms, sparsity)
    np.testing.assert_array_equal(np.asarray(mask), np_wanda(w, norms, sparsity))
    assert np.all(np.sum(~np.asarray(mask), axis=0) == int(24 * sparsity))


@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (3, 8)])
def test_wanda_nm_matches_numpy(n_m):
    w = normal(2, (32, 5))
    norms = uniform(3, (32,))
    mask = jax.jit(lambda w, n: pt.wanda_mask(w, n, n_m=n_m))(w, norms)
    np.testing.assert_array_equal(np.asarray(mask), np_wanda(w, norms, n_m=n_m))


def test_wanda_ties_lower_index_pruned_first():
    w = jnp.ones((6, 2))
    mask = pt.wanda_mask(w, jnp.ones(6), 0.5)
    assert mask[:, 0].tolist() == [False, False, False, True, True, True]
    mask = pt.wanda_mask(w, jnp.ones(6), n_m=(1, 3))
    assert mask[:, 1].tolist() == [False, False, True, False, False, True]


@pytest.mark.parametrize("d_in", [24, 100, 257])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_wanda_with_ties_matches_numpy_on_short_and_long_columns(d_in, sparsity):
    """Columns of up to 32 inputs are ranked by comparisons, longer ones by the radix
    selection; few distinct weights make ties at the threshold, broken by index in both."""
    rng = np.random.default_rng(d_in)
    w = jnp.asarray(rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], size=(d_in, 9)), jnp.float32)
    norms = jnp.asarray(rng.choice([0.5, 1.0, 2.0], size=d_in), jnp.float32)
    mask = pt.wanda_mask(w, norms, sparsity)
    np.testing.assert_array_equal(np.asarray(mask), np_wanda(w, norms, sparsity))


@pytest.mark.parametrize("n", [3, 8, 32, 33, 200])
def test_lowest_is_a_stable_argsort_rank(n):
    """pt._lowest against NumPy's stable argsort, on both sides of the comparison limit, with
    ties, NaN (last) and -0.0 (equal to 0.0), along a middle axis."""
    rng = np.random.default_rng(n)
    x = rng.choice(np.array([-1.0, -0.0, 0.0, 0.25, 2.0, np.nan], np.float32), size=(3, n, 4))
    x[0, :, 0] = rng.standard_normal(n)  # a slice of distinct values
    order = np.argsort(np.where(x == 0, 0.0, x), axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")
    for count in sorted({0, 1, n // 3, n - 1, n}):
        got = np.asarray(jax.jit(pt._lowest, static_argnums=(1, 2))(jnp.asarray(x), 1, count))
        np.testing.assert_array_equal(got, rank < count, err_msg=f"count={count}")


def test_wanda_bf16():
    w = normal(4, (16, 3)).astype(jnp.bfloat16)
    norms = uniform(5, (16,))
    mask = pt.wanda_mask(w, norms, 0.5)
    np.testing.assert_array_equal(np.asarray(mask), np_wanda(w.astype(jnp.float32), norms, 0.5))


# ----- SparseGPT -----


def _layer(seed, d_in, d_out, n=256):
    return correlated_inputs(seed, n, d_in), normal(seed + 1, (d_in, d_out))


@pytest.mark.parametrize(
    "d_in, block_size, sparsity",
    [(32, 8, 0.5), (30, 7, 0.6), (24, 128, 0.3), (32, 8, 0.0)],
)
def test_sparsegpt_matches_reference(d_in, block_size, sparsity):
    x, w = _layer(10, d_in, 12)
    h = pt.hessian_from_inputs(x)
    new_w, mask = jax.jit(lambda w, h: pt.sparsegpt_prune(w, h, sparsity, block_size=block_size))(
        w, h
    )
    if sparsity == 0:  # documented: sparsity 0 prunes nothing (no update either)
        assert bool(jnp.all(mask))
        np.testing.assert_allclose(np.asarray(new_w), np.asarray(w), rtol=1e-4, atol=1e-4)
        return
    ref_w, ref_mask = np_sparsegpt(w, h, sparsity, blocksize=block_size)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w), ref_w, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(new_w)[~ref_mask] == 0)


@pytest.mark.parametrize("n_m, block_size", [((2, 4), 8), ((3, 8), 16)])
def test_sparsegpt_nm_matches_reference(n_m, block_size):
    x, w = _layer(20, 48, 10)
    h = pt.hessian_from_inputs(x)
    new_w, mask = pt.sparsegpt_prune(w, h, n_m=n_m, block_size=block_size)
    n, m = n_m
    ref_w, ref_mask = np_sparsegpt(w, h, 0.0, prunen=m - n, prunem=m, blocksize=block_size)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w), ref_w, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(mask).reshape(48 // m, m, 10).sum(axis=1) == n)


def test_sparsegpt_dead_inputs():
    x, w = _layer(30, 32, 12)  # the shapes of a case above: no new compilation
    x = x.at[:, jnp.array([3, 11])].set(0.0)  # two inputs that never fire
    h = pt.hessian_from_inputs(x)
    new_w, mask = pt.sparsegpt_prune(w, h, 0.5, block_size=8)
    ref_w, ref_mask = np_sparsegpt(w, h, 0.5, blocksize=8)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w), ref_w, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(new_w)[[3, 11]] == 0)


def test_sparsegpt_bf16_in_bf16_out():
    x, w = _layer(40, 16, 8)
    h = pt.hessian_from_inputs(x.astype(jnp.bfloat16))
    wb = w.astype(jnp.bfloat16)
    new_w, mask = pt.sparsegpt_prune(wb, h, 0.5, block_size=8)
    assert new_w.dtype == jnp.bfloat16 and h.dtype == jnp.float32
    ref_w, ref_mask = np_sparsegpt(wb.astype(jnp.float32), h, 0.5, blocksize=8)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w, np.float32), ref_w, rtol=1e-2, atol=1e-2)


def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude():
    d_in, d_out = 64, 32
    x, w = _layer(50, d_in, d_out, n=512)
    s = 0.5
    sg_w, _ = pt.sparsegpt_prune(w, pt.hessian_from_inputs(x), s, block_size=32)
    wanda_w = jnp.where(pt.wanda_mask(w, jnp.linalg.norm(x, axis=0), s), w, 0.0)
    mag_w = jnp.where(magnitude_mask(w, s), w, 0.0)

    def err(v):
        return float(jnp.linalg.norm(x @ w - x @ v))

    assert err(sg_w) < err(wanda_w) < err(mag_w)


def test_hessian_from_inputs():
    x = normal(0, (3, 5, 4)).astype(jnp.bfloat16)
    x32 = np.asarray(x, np.float64).reshape(15, 4)
    np.testing.assert_allclose(np.asarray(pt.hessian_from_inputs(x)), 2 / 15 * x32.T @ x32, 1e-5)


# ----- OWL -----


def test_owl_matches_numpy_equal_sizes():
    rng = np.random.default_rng(0)
    # Heavier tails in earlier layers: more outliers.
    scores = [np.abs(rng.standard_t(1.0 + i, (40, 30))) for i in range(4)]
    got = pt.owl_sparsities(scores, 0.7, threshold=3.0, lam=0.08)
    np.testing.assert_allclose(got, np_owl(scores, 0.7, 3.0, 0.08), rtol=1e-12)
    np.testing.assert_allclose(np.mean(got), 0.7, rtol=1e-12)
    assert np.ptp(got) == pytest.approx(0.16)


def test_owl_unequal_sizes_total_sparsity_is_target():
    rng = np.random.default_rng(1)
    shapes = [(10, 10), (50, 40), (20, 7)]
    scores = [np.abs(rng.standard_t(1.0 + i, sh)) for i, sh in enumerate(shapes)]
    got = pt.owl_sparsities(scores, 0.5, threshold=2.0, lam=0.1)
    np.testing.assert_allclose(got, np_owl(scores, 0.5, 2.0, 0.1), rtol=1e-12)
    sizes = np.array([np.prod(s) for s in shapes])
    assert np.sum(got * sizes) / np.sum(sizes) == pytest.approx(0.5, abs=1e-12)


def test_owl_equal_ratios_uniform():
    assert pt.owl_sparsities([jnp.ones(5), jnp.ones((3, 3))], 0.6).tolist() == [0.6, 0.6]


# ----- bad input -----


def test_layer_functions_under_jit_with_arrays_closed_over():
    # Concrete arrays closed over by a jitted function are checked for NaN at once, not by
    # bool() of a traced result; lax.map over stacked kernels (nn.scan) works the same way.
    x = jax.random.normal(jax.random.key(1), (32, 16))
    w = jax.random.normal(jax.random.key(0), (16, 8))
    h = pt.hessian_from_inputs(x)
    norms = jnp.linalg.norm(x, axis=0)
    np.testing.assert_array_equal(
        jax.jit(lambda w: pt.wanda_mask(w, norms, 0.5))(w), pt.wanda_mask(w, norms, 0.5)
    )
    got = jax.jit(lambda w: pt.sparsegpt_prune(w, h, 0.5))(w)
    want = pt.sparsegpt_prune(w, h, 0.5)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(jax.jit(lambda: pt.hessian_from_inputs(x))(), h, atol=1e-5)
    stacked = jax.lax.map(lambda w: pt.sparsegpt_prune(w, h, 0.5)[1], jnp.stack([w, 2 * w]))
    np.testing.assert_array_equal(stacked[0], want[1])
    # A NaN weight is named as such (it used to be blamed on the Hessian).
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        pt.sparsegpt_prune(w.at[3, 0].set(jnp.nan), h, 0.5)


def test_bad_inputs():
    w = jnp.ones((8, 3))
    h = jnp.eye(8)
    norms = jnp.ones(8)
    with pytest.raises(ValueError, match=r"sparsity must be in range \[0, 1\)"):
        pt.wanda_mask(w, norms, 1.0)
    with pytest.raises(ValueError, match="sparsity must be in range"):
        pt.sparsegpt_prune(w, h, -0.1)
    with pytest.raises(ValueError, match="1 <= n < m"):
        pt.wanda_mask(w, norms, n_m=(4, 4))
    with pytest.raises(ValueError, match="m=3 must divide"):
        pt.sparsegpt_prune(w, h, n_m=(1, 3), block_size=3)
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        pt.wanda_mask(w, norms, 0.5, n_m=(2, 4))
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        pt.sparsegpt_prune(w, h)
    with pytest.raises(ValueError, match=r"hessian must have shape \(in, in\) = \(8, 8\)"):
        pt.sparsegpt_prune(w, jnp.eye(3), 0.5)
    with pytest.raises(ValueError, match="input_norms must have shape"):
        pt.wanda_mask(w, jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match="input_norms must be finite"):
        pt.wanda_mask(w, norms.at[2].set(jnp.nan), 0.5)
    with pytest.raises(ValueError, match="hessian contains NaN or inf"):
        pt.sparsegpt_prune(w, h.at[0, 1].set(jnp.inf), 0.5)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        pt.hessian_from_inputs(jnp.ones((4, 8)).at[1, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="block_size=6 must be a multiple of m=4"):
        pt.sparsegpt_prune(w, h, n_m=(2, 4), block_size=6)
    with pytest.raises(ValueError, match="damping must be"):
        pt.sparsegpt_prune(w, h, 0.5, damping=0.0)
    with pytest.raises(ValueError, match="not positive definite"):
        pt.sparsegpt_prune(w, -jnp.eye(8) - 1.0, 0.5)
    with pytest.raises(ValueError, match="2-D"):
        pt.wanda_mask(jnp.ones(8), norms, 0.5)
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda s: pt.wanda_mask(w, norms, s))(0.5)
    with pytest.raises(ValueError, match="lower lam"):
        pt.owl_sparsities([jnp.ones(10), jnp.r_[jnp.ones(9), 100.0]], 0.05, lam=0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        pt.owl_sparsities([jnp.array([1.0, jnp.nan])], 0.5)


# ----- the model-level runner -----


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(8)(x)


def _mlp_setup():
    batches = [correlated_inputs(60 + i, 32, 12) for i in range(2)]
    params = _MLP().init(jax.random.key(0), batches[0])
    return params, batches


def _by_hand(p, batches, method, sparsity, sequential, n_m=None):
    """The two layers pruned by calling the layer functions on inputs computed by hand."""
    p = jax.tree.map(lambda x: x, p)
    dense = jax.tree.map(lambda x: x, p)
    layer = p["params"]
    masks = {}
    for name in ("Dense_0", "Dense_1"):
        src = layer if sequential else dense["params"]
        xs = []
        for x in batches:
            h = x
            if name == "Dense_1":
                h = jax.nn.relu(x @ src["Dense_0"]["kernel"] + src["Dense_0"]["bias"][None, :])
            xs.append(h)
        x = jnp.concatenate(xs)
        w = layer[name]["kernel"]
        if method == "wanda":
            mask = pt.wanda_mask(w, jnp.linalg.norm(x, axis=0), sparsity, n_m=n_m)
            new = jnp.where(mask, w, 0.0)
        else:
            new, mask = pt.sparsegpt_prune(w, pt.hessian_from_inputs(x), sparsity, n_m=n_m)
        layer = {**layer, name: {**layer[name], "kernel": new}}
        masks[name] = mask
    return layer, masks


@pytest.mark.parametrize(
    "method, sequential, sparsity, n_m",
    [
        ("wanda", True, 0.5, None),
        ("sparsegpt", True, 0.6, None),
        ("sparsegpt", False, None, (2, 4)),
    ],
)
def test_runner_linen_matches_layer_functions(method, sequential, sparsity, n_m):
    params, batches = _mlp_setup()
    got, masks = prune_oneshot(
        _MLP().apply,
        params,
        batches,
        method=method,
        sparsity=sparsity,
        n_m=n_m,
        sequential=sequential,
    )
    want, want_masks = _by_hand(params, batches, method, sparsity, sequential, n_m)
    for name in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(
            np.asarray(masks["params"][name]["kernel"]), np.asarray(want_masks[name])
        )
        np.testing.assert_allclose(
            np.asarray(got["params"][name]["kernel"]),
            np.asarray(want[name]["kernel"]),
            rtol=1e-4,
            atol=1e-5,
        )
        assert got["params"][name]["bias"] is params["params"][name]["bias"]
        assert masks["params"][name]["bias"].shape == ()


def test_runner_plain_dict_transposed_and_magnitude():
    """A plain function with one (out, in) weight, read through a transpose."""
    params, batches = _mlp_setup()
    plain = {
        "a": params["params"]["Dense_0"]["kernel"],
        "b": params["params"]["Dense_1"]["kernel"].T,  # (out, in): the layout of Equinox
        "scale": jnp.ones(16),
    }

    def fn(p, x):
        return jax.nn.relu(x @ p["a"]) * p["scale"][None, :] @ p["b"].T

    got, masks = prune_oneshot(fn, plain, batches, method="wanda", sparsity=0.25)
    x1 = jnp.concatenate(batches)
    m_a = pt.wanda_mask(plain["a"], jnp.linalg.norm(x1, axis=0), 0.25)
    h = jax.nn.relu(x1 @ jnp.where(m_a, plain["a"], 0.0))
    m_b = pt.wanda_mask(plain["b"].T, jnp.linalg.norm(h, axis=0), 0.25).T
    np.testing.assert_array_equal(np.asarray(masks["a"]), np.asarray(m_a))
    np.testing.assert_array_equal(np.asarray(masks["b"]), np.asarray(m_b))
    assert np.all(np.asarray(got["b"])[~np.asarray(m_b)] == 0)

    got, masks = prune_oneshot(fn, plain, batches, method="magnitude", sparsity=0.7)
    for k in ("a", "b"):
        np.testing.assert_array_equal(
            np.asarray(masks[k]), np.asarray(magnitude_mask(plain[k], 0.7))
        )
    assert masks["scale"].shape == () and got["scale"] is plain["scale"]


def test_runner_layers_rule_and_owl():
    params, batches = _mlp_setup()
    _, masks = prune_oneshot(
        _MLP().apply, params, batches, method="wanda", sparsity=0.5, layers="Dense_1"
    )
    assert masks["params"]["Dense_0"]["kernel"].shape == ()
    assert masks["params"]["Dense_1"]["kernel"].shape == (16, 8)
    # OWL: the per-layer sparsities are owl_sparsities of the dense model's Wanda scores.
    _, masks = prune_oneshot(
        _MLP().apply,
        params,
        batches,
        method="wanda",
        sparsity=0.5,
        owl=True,
        owl_threshold=2.0,
        owl_lam=0.1,
        sequential=False,
    )
    x1 = jnp.concatenate(batches)
    p = params["params"]
    h = jax.nn.relu(x1 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :])
    scores = [
        jnp.abs(p["Dense_0"]["kernel"]) * jnp.linalg.norm(x1, axis=0)[:, None],
        jnp.abs(p["Dense_1"]["kernel"]) * jnp.linalg.norm(h, axis=0)[:, None],
    ]
    want = pt.owl_sparsities(scores, 0.5, threshold=2.0, lam=0.1)
    for name, s, n_in in zip(("Dense_0", "Dense_1"), want, (12, 16)):
        pruned_per_unit = np.sum(~np.asarray(masks["params"][name]["kernel"]), axis=0)
        assert np.all(pruned_per_unit == int(n_in * s))


def test_runner_refusals():
    params, batches = _mlp_setup()
    apply = _MLP().apply
    with pytest.raises(ValueError, match="matches no linear layer"):
        prune_oneshot(apply, params, batches, method="wanda", layers="Conv")
    with pytest.raises(ValueError, match="m=5 must divide the 12 inputs"):
        prune_oneshot(apply, params, batches, method="wanda", n_m=(1, 5))
    with pytest.raises(ValueError, match="owl=True .* n_m"):
        prune_oneshot(apply, params, batches, method="wanda", n_m=(2, 4), owl=True)
    with pytest.raises(ValueError, match=r"method must be one of"):
        prune_oneshot(apply, params, batches, method="obs")
    with pytest.raises(ValueError, match=r"calibration_batches\[1\] has NaN"):
        prune_oneshot(apply, params, [batches[0], batches[1].at[0, 0].set(jnp.nan)])
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        prune_oneshot(apply, params, [])

    tied = {"emb": normal(0, (10, 6)), "w": normal(1, (6, 6))}

    def lm(p, tokens):
        h = p["emb"][tokens] @ p["w"]
        return h @ p["emb"].T  # tied head

    tokens = jnp.arange(8) % 10
    with pytest.raises(ValueError, match=r"'emb' is read by 2 operations .*tied"):
        prune_oneshot(lm, tied, [tokens], method="wanda")
    _, masks = prune_oneshot(lm, tied, [tokens], method="wanda", layers="^w$")
    assert masks["w"].shape == (6, 6) and masks["emb"].shape == ()

    def rnn(p, x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ p["w"]), None), x, None, length=3)[0]

    with pytest.raises(ValueError, match=r"'w' is read inside a scan"):
        prune_oneshot(rnn, {"w": normal(2, (6, 6))}, [normal(3, (4, 6))], method="sparsegpt")

    # A stacked (layers, in, out) kernel, as nn.scan stores it, is refused by name too (it was
    # left unpruned without a word), and layers= can leave it out.
    def stacked(p, x):
        h = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x @ p["w_in"], p["stack"])[0]
        return h

    params = {"w_in": normal(4, (6, 6)), "stack": normal(5, (3, 6, 6))}
    with pytest.raises(ValueError, match=r"'stack' is read inside a scan"):
        prune_oneshot(stacked, params, [normal(6, (4, 6))], method="wanda")
    _, masks = prune_oneshot(stacked, params, [normal(6, (4, 6))], method="wanda", layers="w_in")
    assert masks["w_in"].shape == (6, 6) and masks["stack"].shape == ()


def test_runner_nnx_and_equinox():
    """NNX through nnx.split/merge and Equinox ((out, in) weights under vmap), no hooks."""
    import equinox as eqx
    from flax import nnx

    x = correlated_inputs(70, 32, 12)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(12, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 8, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    _, masks = prune_oneshot(apply, state, [x], method="sparsegpt", sparsity=0.5)
    k1, k2 = state["l1"]["kernel"][...], state["l2"]["kernel"][...]
    b1 = state["l1"]["bias"][...]
    new1, m1 = pt.sparsegpt_prune(k1, pt.hessian_from_inputs(x), 0.5)
    _, m2 = pt.sparsegpt_prune(k2, pt.hessian_from_inputs(jax.nn.relu(x @ new1 + b1[None, :])), 0.5)
    np.testing.assert_array_equal(np.asarray(masks["l1"]["kernel"][...]), np.asarray(m1))
    np.testing.assert_array_equal(np.asarray(masks["l2"]["kernel"][...]), np.asarray(m2))

    mlp = eqx.nn.MLP(12, 8, 16, depth=1, key=jax.random.key(0))
    params, static = eqx.partition(mlp, eqx.is_array)

    def eqx_apply(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    _, masks = prune_oneshot(eqx_apply, params, [x], method="wanda", sparsity=0.5)
    w1 = mlp.layers[0].weight  # (out, in)
    np.testing.assert_array_equal(
        np.asarray(masks.layers[0].weight),
        np.asarray(pt.wanda_mask(w1.T, jnp.linalg.norm(x, axis=0), 0.5).T),
    )
    assert masks.layers[1].weight.shape == (8, 16) and masks.layers[0].bias.shape == ()


def test_runner_reuses_compiled_passes_across_calls(monkeypatch):
    """A second call on the same fn (another method or sparsity) compiles no calibration pass."""
    params, batches = _mlp_setup()
    fn = _MLP().apply
    first = prune_oneshot(fn, params, batches, method="sparsegpt", sparsity=0.5)
    owl_first = prune_oneshot(fn, params, batches, method="wanda", sparsity=0.5, owl=True)
    built = []
    for name in ("_build_site_stats", "_build_all_norms"):
        real = getattr(runner, name)
        monkeypatch.setattr(runner, name, lambda *a, _r=real, _n=name: built.append(_n) or _r(*a))
    again = prune_oneshot(fn, params, batches, method="sparsegpt", sparsity=0.5)
    owl_again = prune_oneshot(fn, params, batches, method="wanda", sparsity=0.5, owl=True)
    assert built == []
    for a, b in ((first, again), (owl_first, owl_again)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Another function (even an equal module's apply) builds its own passes.
    prune_oneshot(_MLP().apply, params, batches, method="wanda", sparsity=0.5)
    assert built == ["_build_site_stats", "_build_site_stats"]


# ----- convolutions -----


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="SAME")(x))
        x = nn.Conv(4, (2, 2), padding="VALID", kernel_dilation=2)(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _patches(x, ksize, strides, padding, rhs_dilation=None):
    """By hand: NHWC patches reordered to the (kh, kw, c) rows of an HWIO kernel."""
    p = jax.lax.conv_general_dilated_patches(
        x,
        ksize,
        strides,
        padding,
        rhs_dilation=rhs_dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # features ordered (c, kh, kw)
    c = x.shape[-1]
    p = jnp.moveaxis(p.reshape(*p.shape[:-1], c, *ksize), -3, -1)
    return p.reshape(-1, int(np.prod(ksize)) * c)


def test_runner_linen_cnn_matches_patches_by_hand():
    """SparseGPT on a linen CNN: each kernel is (kh·kw·c, out), calibrated on its patches."""
    batches = [normal(80 + i, (4, 9, 9, 2)) for i in range(2)]
    model = _CNN()
    params = model.init(jax.random.key(0), batches[0])
    got, masks = prune_oneshot(model.apply, params, batches, method="sparsegpt", sparsity=0.5)
    p = params["params"]
    k0, k1 = p["Conv_0"]["kernel"], p["Conv_1"]["kernel"]  # (3, 3, 2, 6), (2, 2, 6, 4)
    x0 = jnp.concatenate([_patches(b, (3, 3), (2, 2), "SAME") for b in batches])
    new0, m0 = pt.sparsegpt_prune(k0.reshape(18, 6), pt.hessian_from_inputs(x0), 0.5)
    new0 = new0.reshape(k0.shape)
    # Sequential: Conv_1 sees the outputs of the pruned Conv_0.
    h = [
        jax.nn.relu(
            jax.lax.conv_general_dilated(
                b, new0, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + p["Conv_0"]["bias"][None, None, None, :]
        )
        for b in batches
    ]
    x1 = jnp.concatenate([_patches(a, (2, 2), (1, 1), "VALID", rhs_dilation=(2, 2)) for a in h])
    new1, m1 = pt.sparsegpt_prune(k1.reshape(24, 4), pt.hessian_from_inputs(x1), 0.5)
    for name, new, m, k in (("Conv_0", new0, m0, k0), ("Conv_1", new1, m1, k1)):
        np.testing.assert_array_equal(
            np.asarray(masks["params"][name]["kernel"]), np.asarray(m).reshape(k.shape)
        )
        np.testing.assert_allclose(
            np.asarray(got["params"][name]["kernel"]),
            np.asarray(new).reshape(k.shape),
            rtol=1e-4,
            atol=1e-5,
        )
    assert masks["params"]["Dense_0"]["kernel"].shape == (36, 3)  # dense layers too


def test_runner_conv_own_layout_and_lhs_dilation():
    """An (out, in, h, w) kernel is pruned over (in, h, w); a transposed conv is unfolded too."""
    w = normal(90, (5, 3, 2, 2))  # OIHW
    x = normal(91, (2, 3, 6, 6))  # NCHW
    dn = ("NCHW", "OIHW", "NCHW")

    def fn(p, x):
        return jax.lax.conv_general_dilated(
            x, p["w"], (1, 1), ((1, 1), (0, 1)), lhs_dilation=(2, 1), dimension_numbers=dn
        )

    _, masks = prune_oneshot(fn, {"w": w}, [x], method="wanda", sparsity=0.5)
    patches = jax.lax.conv_general_dilated_patches(
        x, (2, 2), (1, 1), ((1, 1), (0, 1)), lhs_dilation=(2, 1), dimension_numbers=dn
    )  # (n, c·kh·kw, h', w'): features in the kernel's (in, h, w) order already
    rows = jnp.moveaxis(patches, 1, -1).reshape(-1, 12)
    want = pt.wanda_mask(w.reshape(5, 12).T, jnp.linalg.norm(rows, axis=0), 0.5)
    np.testing.assert_array_equal(np.asarray(masks["w"]), np.asarray(want.T.reshape(w.shape)))
    # N:M groups run along the flattened inputs: m must divide in = 3·2·2.
    _, masks = prune_oneshot(fn, {"w": w}, [x], method="magnitude", n_m=(2, 4))
    got = np.asarray(masks["w"]).reshape(5, 3, 4)
    assert np.all(got.sum(axis=-1) == 2)
    with pytest.raises(ValueError, match=r"m=8 must divide the 12 inputs of 'w'"):
        prune_oneshot(fn, {"w": w}, [x], method="wanda", n_m=(4, 8))


def test_runner_refuses_grouped_convolution():
    class Depthwise(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), feature_group_count=2, name="dw")(x)
            return nn.Conv(2, (1, 1), name="pw")(x)

    x = normal(95, (2, 5, 5, 4))
    model = Depthwise()
    params = model.init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"'params/dw/kernel' is the kernel of a conv_general_dilated with "
        r"feature_group_count=2 .* exclude it with layers=",
    ):
        prune_oneshot(model.apply, params, [x], method="wanda")
    _, masks = prune_oneshot(model.apply, params, [x], method="wanda", layers="pw")
    assert masks["params"]["dw"]["kernel"].shape == ()
    assert masks["params"]["pw"]["kernel"].shape == (1, 1, 4, 2)


# ----- blocks, batches, progress, arguments -----


def _two_blocks():
    keys = iter(range(100, 104))
    params = {
        f"b{i}": {"a": normal(next(keys), (12, 16)) / 3, "b": normal(next(keys), (16, 12)) / 4}
        for i in range(2)
    }

    def fn(p, x):
        for i in range(2):
            x = x + jax.nn.relu(x @ p[f"b{i}"]["a"]) @ p[f"b{i}"]["b"]
        return x

    return params, fn, [correlated_inputs(110 + i, 32, 12) for i in range(2)]


@pytest.mark.parametrize("blocks", [r"b\d/", lambda path: path.split("/")[0]])
def test_runner_blocks_calibrated_together(blocks):
    """A block's layers all see the inputs from the pruned earlier blocks, not each other."""
    params, fn, batches = _two_blocks()
    got, masks = prune_oneshot(fn, params, batches, method="sparsegpt", sparsity=0.5, blocks=blocks)
    x = jnp.concatenate(batches)
    want, want_masks = {}, {}
    for i in range(2):
        a, b = params[f"b{i}"]["a"], params[f"b{i}"]["b"]
        new_a, m_a = pt.sparsegpt_prune(a, pt.hessian_from_inputs(x), 0.5)
        # b's inputs come through the block's dense a, not the pruned one.
        new_b, m_b = pt.sparsegpt_prune(b, pt.hessian_from_inputs(jax.nn.relu(x @ a)), 0.5)
        want[f"b{i}"], want_masks[f"b{i}"] = {"a": new_a, "b": new_b}, {"a": m_a, "b": m_b}
        x = x + jax.nn.relu(x @ new_a) @ new_b  # the next block sees the pruned one
    for i in range(2):
        for k in ("a", "b"):
            np.testing.assert_array_equal(
                np.asarray(masks[f"b{i}"][k]), np.asarray(want_masks[f"b{i}"][k])
            )
            np.testing.assert_allclose(
                np.asarray(got[f"b{i}"][k]), np.asarray(want[f"b{i}"][k]), rtol=1e-4, atol=1e-5
            )
    # Without blocks, b0/b is calibrated on the pruned b0/a: another result.
    per_layer, _ = prune_oneshot(fn, params, batches, method="sparsegpt", sparsity=0.5)
    assert not np.allclose(np.asarray(per_layer["b0"]["b"]), np.asarray(got["b0"]["b"]))


def test_runner_blocks_owl_and_errors():
    params, fn, batches = _two_blocks()
    _, masks = prune_oneshot(
        fn,
        params,
        batches,
        method="wanda",
        sparsity=0.5,
        blocks=r"b\d",
        owl=True,
        owl_threshold=2.0,
        owl_lam=0.1,
        sequential=False,
    )
    x = jnp.concatenate(batches)
    scores = []
    for i in range(2):  # OWL's ratios per block: the scores of its layers together
        a, b = params[f"b{i}"]["a"], params[f"b{i}"]["b"]
        h = jax.nn.relu(x @ a)
        scores.append(
            jnp.concatenate(
                [
                    (jnp.abs(a) * jnp.linalg.norm(x, axis=0)[:, None]).ravel(),
                    (jnp.abs(b) * jnp.linalg.norm(h, axis=0)[:, None]).ravel(),
                ]
            )
        )
        x = x + h @ b
    want = pt.owl_sparsities(scores, 0.5, threshold=2.0, lam=0.1)
    assert want[0] != want[1]
    for i, s in enumerate(want):
        for k, n_in in (("a", 12), ("b", 16)):
            assert np.all(np.sum(~np.asarray(masks[f"b{i}"][k]), axis=0) == int(n_in * s))

    with pytest.raises(ValueError, match=r"block 'x' are not consecutive .*'b0/b'.* 'b1/a'"):
        prune_oneshot(
            fn,
            params,
            batches,
            method="wanda",
            blocks=lambda path: "x" if path.endswith("/a") else None,
        )
    with pytest.raises(TypeError, match="blocks must be a regex string"):
        prune_oneshot(fn, params, batches, method="wanda", blocks=3)
    with pytest.raises(ValueError, match=r"blocks='layer_\\\\d' matches none of the layers"):
        prune_oneshot(fn, params, batches, method="wanda", blocks=r"layer_\d")
    with pytest.raises(ValueError, match="blocks is not a valid regular expression"):
        prune_oneshot(fn, params, batches, method="wanda", blocks="(")
    with pytest.raises(TypeError, match="blocks must return a hashable block key"):
        prune_oneshot(fn, params, batches, method="wanda", blocks=lambda path: [path])


def test_runner_warns_about_kernels_it_cannot_prune():
    # Rank-3 DenseGeneral kernels (as in attention) are read by a dot_general, but not as an
    # (in, out) layer: they stay dense, and prune_oneshot says which, instead of nothing.
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.DenseGeneral((4, 8))(nn.Dense(16)(x))
            return nn.DenseGeneral(16, axis=(-2, -1))(y)

    model, x = Model(), normal(0, (4, 16))
    params = model.init(jax.random.key(0), x)
    with pytest.warns(UserWarning, match="leaves these leaves dense") as record:
        _, masks = prune_oneshot(model.apply, params, [x], method="wanda", sparsity=0.5)
    message = str(record[0].message)
    assert "params/DenseGeneral_0/kernel" in message and "params/DenseGeneral_1/kernel" in message
    assert "Dense_0/kernel" not in message.replace("DenseGeneral_0/kernel", "")
    assert int(masks["params"]["Dense_0"]["kernel"].sum()) == 16 * 16 // 2
    assert masks["params"]["DenseGeneral_0"]["kernel"].shape == ()
    # layers= naming only such a kernel says why it matches no layer.
    match = r"matches no linear layer.*read otherwise.*DenseGeneral_0"
    with pytest.raises(ValueError, match=match):
        prune_oneshot(model.apply, params, [x], method="wanda", layers="DenseGeneral_0")
    # layers= that leaves them out: no warning.
    prune_oneshot(model.apply, params, [x], method="wanda", layers="Dense_0")


def test_empty_and_mistyped_inputs_are_named():
    w, x = jnp.ones((8, 4)), jnp.ones((4, 8))

    def fn(p, x):
        return x @ p["w"]

    with pytest.raises(ValueError, match="x has no input features"):
        pt.hessian_from_inputs(jnp.ones((4, 0)))
    with pytest.raises(ValueError, match=r"w is empty \(shape \(0, 4\)\)"):
        pt.sparsegpt_prune(jnp.ones((0, 4)), jnp.eye(0), 0.5)
    with pytest.raises(ValueError, match=r"scores_per_layer\[0\] has negative entries"):
        pt.owl_sparsities([-jnp.ones(10), jnp.ones(10)], 0.5)
    # A bool or a string sparsity would convert to a float: refused.
    for bad in (True, "0.5", np.array("0.5"), np.array(False)):
        with pytest.raises(TypeError, match="sparsity must be a real number"):
            magnitude_mask(w, bad)
    # One array as calibration_batches would be read row by row, a dict key by key.
    for bad in (x, {"a": x}):
        with pytest.raises(TypeError, match="calibration_batches must be a sequence"):
            prune_oneshot(fn, {"w": w}, bad, method="wanda")
    with pytest.raises(ValueError, match=r"calibration_batches\[1\]: the batch is empty"):
        prune_oneshot(fn, {"w": w}, [x, jnp.zeros((0, 8))], method="wanda")
    _, masks = prune_oneshot(fn, {"w": w}, (b for b in [x]), method="wanda")  # a generator
    assert int(masks["w"].sum()) == 16


def test_runner_options_refused_before_the_calibration_pass():
    # Checked up front, for every method (a calibration pass of an LLM takes minutes).
    calls = []

    def fn(params, x):
        jax.debug.callback(lambda: calls.append(1))
        return x @ params["w"]

    params = {"w": jnp.ones((8, 4))}
    batches = [jnp.ones((2, 8))]
    for kwargs, match in [
        (dict(method="sparsegpt", block_size=0), "block_size must be >= 1"),
        (dict(method="sparsegpt", damping=-1.0), "damping must be a finite float > 0"),
        (dict(method="wanda", damping="x"), "damping must be a float"),
        (dict(method="sparsegpt", n_m=(2, 4), block_size=6), "multiple of m=4"),
        (dict(method="wanda", owl=True, owl_lam=-1.0), "owl_lam must be"),
        (dict(method="wanda", owl_threshold="5"), "owl_threshold must be a real number"),
    ]:
        kwargs.setdefault("sparsity", None if "n_m" in kwargs else 0.5)
        with pytest.raises((TypeError, ValueError), match=match):
            prune_oneshot(fn, params, batches, **kwargs)
    assert not calls
    # N:M with Wanda does not constrain SparseGPT's block size.
    prune_oneshot(fn, params, batches, method="wanda", sparsity=None, n_m=(1, 8), block_size=6)


def test_runner_inconsistent_batches_refused_before_any_work():
    params, batches = _mlp_setup()
    calls = []

    def fn(p, x):
        calls.append(1)
        return _MLP().apply(p, x)

    x = batches[0]
    cases = [
        ([x, {"x": x}], r"calibration_batches\[1\] has structure .* every batch must be the same"),
        (
            [x, x, x[:, :10]],
            r"calibration_batches\[2\]: the batch has shape \(32, 10\), but "
            r"\(32, 12\) in calibration_batches\[0\]; batches may differ only in their leading",
        ),
        ([x, x.astype(jnp.bfloat16)], r"calibration_batches\[1\]: the batch has dtype bfloat16"),
        ([{"x": x}, {"x": x[None]}], r"calibration_batches\[1\]: 'x' has shape \(1, 32, 12\)"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            prune_oneshot(fn, params, bad, method="wanda")
    assert calls == []
    # Only the batch axis may differ.
    _, masks = prune_oneshot(_MLP().apply, params, [x, x[:8]], method="wanda")
    assert masks["params"]["Dense_0"]["kernel"].shape == (12, 16)


def test_runner_progress_bar(monkeypatch):
    import sys
    import types

    params, batches = _mlp_setup()
    events = []

    class FakeBar:
        def __init__(self, total, desc, unit):
            events.append(("open", total, desc, unit))

        def set_postfix_str(self, s, refresh=True):
            events.append(("layer", s))

        def update(self, n):
            events.append(("update", n))

        def close(self):
            events.append(("close",))

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    prune_oneshot(_MLP().apply, params, batches, method="magnitude", progress=True)
    assert events == [
        ("open", 2, "prune_oneshot (magnitude)", "layer"),
        ("layer", "params/Dense_0/kernel"),
        ("update", 1),
        ("layer", "params/Dense_1/kernel"),
        ("update", 1),
        ("close",),
    ]
    events.clear()
    prune_oneshot(_MLP().apply, params, batches, method="magnitude")  # default: no bar
    assert events == []
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed: a warning, no bar
    with pytest.warns(UserWarning, match="progress=True shows a bar only when tqdm"):
        _, masks = prune_oneshot(_MLP().apply, params, batches, method="magnitude", progress=True)
    assert masks["params"]["Dense_1"]["kernel"].shape == (16, 8)
    with pytest.raises(TypeError, match="progress must be a bool"):
        prune_oneshot(_MLP().apply, params, batches, progress="yes")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh or None"):
        prune_oneshot(_MLP().apply, params, batches, method="wanda", mesh=jax.devices())


ONESHOT_SHARDED_PARTS = 2


@pytest.mark.parametrize("part", range(ONESHOT_SHARDED_PARTS))
def test_runner_data_parallel_equals_one_device(part):
    """8 fake devices in a process of their own (XLA_FLAGS is read when jax is imported).

    The script's four cases in two processes, two each, so that the halves run side by side.
    """
    script = Path(__file__).with_name("oneshot_sharding_check.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(part), str(ONESHOT_SHARDED_PARTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checked = re.search(r"(\d+) cases of (\d+) checked", result.stdout)
    assert checked and int(checked[1]) == len(range(int(checked[2]))[part::ONESHOT_SHARDED_PARTS])
    assert "oneshot sharding check passed" in result.stdout
