"""The sparse() wrapper: contract, optimizer-state reset, composition, and the guide's code."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune._src import sparse_core, sparse_dst, sparse_ste
from jaxprune._src.sparse_core import SparseState, _reset_grown, masked_params, sparse
from jaxprune._src.sparse_dst import rigl, static_sparse
from jaxprune._src.summaries import get_masks

KEY = jax.random.key(0)
MODULES = [sparse_core, sparse_dst, sparse_ste]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "sparse-training.md"


@pytest.fixture
def jp(monkeypatch):
    """``jaxprune`` with the sparse-training names, as the top-level exports will give them."""
    for mod in MODULES:
        for name in mod.__all__:
            monkeypatch.setattr(jaxprune, name, getattr(mod, name), raising=False)
    return jaxprune


def params_like():
    w = np.random.default_rng(0).standard_normal((6, 6))
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.ones(6)}


def test_update_needs_params():
    tx = sparse(optax.sgd(0.1), static_sparse(0.5, key=KEY))
    state = tx.init(params_like())
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params_like(), state)


def test_bad_wrapper_arguments():
    with pytest.raises(TypeError, match="inner_tx"):
        sparse("adam", static_sparse(0.5, key=KEY))
    with pytest.raises(TypeError, match="algorithm"):
        sparse(optax.sgd(0.1), optax.sgd(0.1))


def test_reset_zeroes_params_shaped_leaves_only():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    state = inner.init(params)
    state = jax.tree.map(lambda x: x + 5, state)
    treedef = jax.tree.structure(params)
    grown = [jnp.array([[True, False, False], [False, False, True]]), None]
    out = _reset_grown(state, treedef, jax.tree.leaves(params), grown)
    adam = out[1][0]
    want = np.where(np.asarray(grown[0]), 0.0, 5.0)
    np.testing.assert_array_equal(np.asarray(adam.mu["a"]), want)
    np.testing.assert_array_equal(np.asarray(adam.nu["a"]), want)
    np.testing.assert_array_equal(np.asarray(adam.mu["b"]), np.full(3, 5.0))
    assert int(adam.count) == 5  # not params-shaped: untouched


def test_works_inside_multisteps_and_scan_and_finds_masks():
    params = masked_params(
        params_like(), sparse(optax.sgd(0.1), static_sparse(0.5, key=KEY)).init(params_like())
    )
    alg = rigl(0.5, key=KEY, update_every=2, end_step=100)
    tx = optax.MultiSteps(sparse(optax.adam(0.1), alg), every_k_schedule=2)
    state = tx.init(params)
    masks = get_masks(state)
    assert masks["w"].shape == (6, 6) and masks["b"].shape == ()

    def body(carry, i):
        p, s = carry
        g = jax.tree.map(lambda x: jnp.sin(x + i), p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(8.0)))((params, state))
    m = np.asarray(get_masks(s)["w"])
    assert m.sum() == 18
    assert np.all(np.asarray(p["w"])[~m] == 0.0)


def test_extra_args_reach_the_inner_optimizer():
    params = params_like()
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    tx = sparse(inner, static_sparse(0.5, key=KEY))
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    u, _ = tx.update(g, state, params, unused_extra=1.0)
    m = np.asarray(get_masks(state)["w"])
    np.testing.assert_allclose(np.asarray(u["b"]), -0.1)
    np.testing.assert_allclose(np.asarray(u["w"])[m], -0.1)
    np.testing.assert_array_equal(np.asarray(u["w"])[~m], -np.asarray(params["w"])[~m])


def test_masked_params_errors_without_a_pruning_state():
    with pytest.raises(ValueError, match="pruning state"):
        masked_params(params_like(), optax.adam(0.1).init(params_like()))


def test_state_is_a_namedtuple_of_arrays():
    state = sparse(optax.adam(0.1), rigl(0.5, key=KEY, end_step=10, update_every=2)).init(
        params_like()
    )
    assert isinstance(state, SparseState)
    assert state.algorithm.count.dtype == jnp.int32
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def _blocks():
    text = DOCS.read_text()
    fence = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
    return [m.group(2) for m in fence.finditer(text) if m.group(1).strip() == "python"]


def test_docs_code_blocks_run(jp):
    del jp
    blocks = _blocks()
    assert len(blocks) >= 4
    for code in blocks:
        exec(compile(code, str(DOCS), "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("jit", [False, True])
def test_signed_keys_order_floats_with_equal_zeros_and_nan_last(jit):
    """Keys ordered as the float values; -0.0 and 0.0 one key (with and without jit: XLA folds
    x + 0.0 into x, so the zeros must be merged another way); NaN above everything."""
    x = jnp.array([-0.0, 0.0, -1.5, 2.0, jnp.inf, -jnp.inf, jnp.nan, 1e-30], jnp.float32)
    keys = np.asarray((jax.jit if jit else lambda f: f)(sparse_core.signed_keys)(x))
    assert keys[0] == keys[1]
    finite = np.asarray(x)[:6]
    order = np.argsort(finite, kind="stable")
    assert np.all(np.diff(keys[:6][order].astype(np.int64)) >= 0)
    assert keys[6] == keys.max() and keys[7] > keys[1]
