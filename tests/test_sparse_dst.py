"""Static masks, SET and RigL inside sparse(): drop and grow sets against NumPy references.

Test data comes from NumPy (no compilation) and each algorithm compiles one step.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune._src import sparse_core
from jaxprune._src.sparse_core import masked_params, sparse
from jaxprune._src.sparse_dst import drop_fraction_at, rigl, set_training, static_sparse
from jaxprune._src.summaries import get_masks

KEY = jax.random.key(0)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def params_like(seed=0, shape=(8, 16)):
    return {"dense": {"kernel": normal(seed, shape), "bias": normal(seed + 1, shape[1:])}}


def grads_like(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([normal(1000 * seed + i, x.shape) for i, x in enumerate(leaves)])


def ref_kept(n, s):
    # tfmot's count, computed independently: round half to even in float32, at least 1.
    return int(min(max(np.round(np.float32(n) * (np.float32(1) - np.float32(s))), 1), n))


def ref_top(score, allowed, count):
    """Flat indices of the `count` largest `score` among `allowed`, ties by lower index."""
    idx = np.flatnonzero(allowed.reshape(-1))
    vals = score.reshape(-1)[idx]
    order = np.lexsort((idx, -vals))  # by score descending, then index ascending
    out = np.zeros(score.size, bool)
    out[idx[order[:count]]] = True
    return out.reshape(score.shape)


def ref_drop_fraction(t, alpha, end):
    return alpha / 2 * (1 + math.cos(math.pi * min(t, end) / end))


def test_drop_fraction_schedule_values():
    ts = [0, 1, 7, 50, 99, 100, 150]
    got = np.asarray(drop_fraction_at(jnp.asarray(ts), 0.3, 100))
    want = np.asarray([ref_drop_fraction(t, 0.3, 100) for t in ts])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_initial_masks_are_random_with_exact_counts():
    params = params_like(shape=(10, 13))
    algs = {
        "static": lambda k: static_sparse(0.7, key=k),
        "set": lambda k: set_training(0.7, key=k, end_step=10, update_every=2),
        "rigl": lambda k: rigl(0.7, key=k, end_step=10, update_every=2),
    }
    for make in algs.values():
        m0 = get_masks(sparse(optax.sgd(0.1), make(KEY)).init(params))
        m1 = get_masks(sparse(optax.sgd(0.1), make(jax.random.key(1))).init(params))
        assert int(m0["dense"]["kernel"].sum()) == ref_kept(130, 0.7) == 39
        assert m0["dense"]["bias"].shape == ()  # biases are not pruned, and are no None hole
        assert not np.array_equal(m0["dense"]["kernel"], m1["dense"]["kernel"])


def test_initial_masks_are_the_top_k_of_random_bits():
    # The first pruned leaf in flattening order (1: the kernel) draws from fold_in(key, 1).
    params = params_like(shape=(10, 13))
    masks = get_masks(sparse(optax.sgd(0.1), static_sparse(0.7, key=KEY)).init(params))
    bits = jax.random.bits(jax.random.fold_in(KEY, 1), (10, 13), jnp.uint32)
    np.testing.assert_array_equal(
        masks["dense"]["kernel"], ref_top(np.asarray(bits).astype(np.int64), np.ones((10, 13)), 39)
    )


@pytest.mark.parametrize("shapes", [[(10, 13)], [(48, 64), (40, 50)]], ids=["sort", "radix"])
def test_top_k_masks_against_reference(shapes):
    # Small key sets are ranked by a sort, large ones (> SORT_MAX keys) by the radix select;
    # both keep the k largest keys over all leaves, ties by position. Keys cut to 4 bits make
    # most of them tie.
    assert (sum(math.prod(s) for s in shapes) > sparse_core.SORT_MAX) == (len(shapes) == 2)
    keys = [jax.random.bits(jax.random.key(i), s, jnp.uint32) >> 28 for i, s in enumerate(shapes)]
    flat = np.concatenate([np.asarray(x).reshape(-1).astype(np.int64) for x in keys])
    for k in (1, 39, flat.size // 3, flat.size):
        want = ref_top(flat, np.ones(flat.size, bool), k)
        got = np.concatenate([np.asarray(m).reshape(-1) for m in sparse_core.top_k_masks(keys, k)])
        np.testing.assert_array_equal(got, want)
    if len(shapes) == 1:
        np.testing.assert_array_equal(
            jax.jit(sparse_core.sorted_top_k)(keys, 39)[0], sparse_core.top_k_masks(keys, 39)[0]
        )


@pytest.mark.parametrize(
    "shapes, row_lengths",
    [
        ([(300, 257)], [257]),
        ([(70_000,)], [None]),
        (
            [(5, 3, 7, 40), (4096, 2), (1000,), (64, 64), (9, 512), (1 << 17,)],
            [280, 4096, None, 2048, 512, 4096],
        ),
    ],
    ids=["rows", "chunks", "mixed"],
)
def test_top_k_masks_rank_ties_by_position_in_every_layout(shapes, row_lengths):
    # Ties at the k-th key are ranked by rows (one count per row, a running count in the row
    # that holds the last tie kept) where a leaf has rows of 256 to 65536 keys (its last axes,
    # or read flat in rows of a power of two that divides its size), chunk by chunk otherwise.
    # Keys of 2 bits tie by the thousand; k lands at the start, middle and end of rows, of
    # leaves, and past the last tie.
    rng = np.random.default_rng(7)
    keys = [jnp.asarray(rng.integers(0, 4, s), jnp.uint32) for s in shapes]
    flat = np.concatenate([np.asarray(x).reshape(-1).astype(np.int64) for x in keys])
    n_top = int((flat == 3).sum())
    ks = {1, 256, 257, 300, n_top - 1, n_top, n_top + 1, flat.size // 2, flat.size - 1, flat.size}
    ks |= set(rng.integers(1, flat.size, 6).tolist())
    for k in sorted(ks):
        want = ref_top(flat, np.ones(flat.size, bool), k)
        got = np.concatenate([np.asarray(m).reshape(-1) for m in sparse_core.top_k_masks(keys, k)])
        np.testing.assert_array_equal(got, want, err_msg=f"k={k}")
    assert [sparse_core._tie_rows(s) for s in shapes] == row_lengths


def test_static_masks_never_change_and_pruned_weights_stay_zero():
    params = params_like()
    tx = sparse(optax.adam(0.1), static_sparse(0.8, key=KEY))
    state = tx.init(params)
    params = masked_params(params, state)
    m0 = get_masks(state)["dense"]["kernel"]
    step = jax.jit(tx.update)
    for i in range(3):
        g = grads_like(params, 10 + i)
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(get_masks(state)["dense"]["kernel"], m0)
    assert np.all(np.asarray(params["dense"]["kernel"])[~np.asarray(m0)] == 0.0)
    assert np.all(np.asarray(params["dense"]["kernel"])[np.asarray(m0)] != 0.0)
    assert step._cache_size() == 1


@pytest.mark.parametrize("skip", [True, False], ids=["skip_update_on_turn", "update_on_turn"])
def test_rigl_drop_and_grow_against_reference(skip):
    alpha, every, end = 0.4, 2, 10
    params = params_like(seed=3)
    alg = rigl(
        0.75,
        key=KEY,
        drop_fraction=alpha,
        update_every=every,
        end_step=end,
        skip_update_on_turn=skip,
    )
    tx = sparse(optax.adam(0.05), alg)
    state = tx.init(params)
    params = masked_params(params, state)
    step = jax.jit(tx.update)
    k = ref_kept(128, 0.75)
    for t in range(3):
        g = grads_like(params, 100 + t)
        m_old = np.asarray(get_masks(state)["dense"]["kernel"])
        w = np.asarray(params["dense"]["kernel"])
        if t == 2:
            # Give three of the weights the turn drops the largest gradients: they are grown
            # back at once, and must keep their values and moments.
            f = ref_drop_fraction(t, alpha, end)
            assert 0.01 < (f * k) % 1 < 0.99  # far from an integer: float32 cannot flip the floor
            d = math.floor(f * k)
            assert d > 3
            survive = ref_top(np.abs(w), m_old, k - d)
            dropped = np.flatnonzero((m_old & ~survive).reshape(-1))[:3]
            gk = np.array(g["dense"]["kernel"]).reshape(-1)
            gk[dropped] = [50.0, -60.0, 70.0]
            g["dense"]["kernel"] = jnp.asarray(gk.reshape(w.shape))
        before_state, before_params = state, params
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        m_new = np.asarray(get_masks(state)["dense"]["kernel"])
        gk = np.asarray(g["dense"]["kernel"])
        mu_old = np.asarray(before_state.inner[0].mu["dense"]["kernel"])
        mu_new = np.asarray(state.inner[0].mu["dense"]["kernel"])
        nu_old = np.asarray(before_state.inner[0].nu["dense"]["kernel"])
        nu_new = np.asarray(state.inner[0].nu["dense"]["kernel"])
        if t < 2:  # not a turn: Adam runs on the masked gradient, masks stay
            np.testing.assert_array_equal(m_new, m_old)
            assert np.all(mu_new[~m_old] == 0.0)  # pruned weights gather no momentum
            continue
        # Turn t = 2: drop d = floor(f_t k) smallest active magnitudes, grow d largest |g|.
        grow = ref_top(np.abs(gk), ~survive, d)
        np.testing.assert_array_equal(m_new, survive | grow)
        assert m_new.sum() == k
        new = grow & ~m_old
        regrown = grow & m_old
        assert new.any() and np.all(regrown.reshape(-1)[dropped])
        w_new = np.asarray(params["dense"]["kernel"])
        assert np.all(w_new[~m_new] == 0.0) and np.all(w_new[new] == 0.0)
        if not skip:
            # The default: Adam's update on the masked gradient is applied on a turn too, to the
            # weights kept before and after; new connections get a zero gradient on a zeroed
            # state, so their moments stay zero.
            masked_g = {"dense": {"kernel": gk * m_old, "bias": g["dense"]["bias"]}}
            u_ref, s_ref = optax.adam(0.05).update(masked_g, before_state.inner, before_params)
            both = m_new & m_old
            np.testing.assert_allclose(
                w_new[both], (w + np.asarray(u_ref["dense"]["kernel"]))[both], rtol=1e-6
            )
            mu_ref = np.asarray(s_ref[0].mu["dense"]["kernel"])
            nu_ref = np.asarray(s_ref[0].nu["dense"]["kernel"])
            np.testing.assert_allclose(mu_new[~new], mu_ref[~new], rtol=1e-6)
            np.testing.assert_allclose(nu_new[~new], nu_ref[~new], rtol=1e-6)
            assert np.all(mu_new[new] == 0.0) and np.all(nu_new[new] == 0.0)
            assert np.all(mu_old[regrown] != 0.0)
            assert int(state.inner[0].count) == int(before_state.inner[0].count) + 1
            continue
        # The reference applies no optimizer update on a turn: weights kept before and after
        # (survivors and the regrown ones) unchanged, bias too.
        np.testing.assert_array_equal(w_new[m_new & m_old], w[m_new & m_old])
        np.testing.assert_array_equal(
            np.asarray(params["dense"]["bias"]), np.asarray(before_params["dense"]["bias"])
        )
        assert np.all(w_new[~m_new] == 0.0) and np.all(w_new[new] == 0.0)
        # Moments: zero at new connections, untouched elsewhere (the regrown ones included);
        # Adam's count not advanced.
        assert np.all(mu_new[new] == 0.0) and np.all(nu_new[new] == 0.0)
        np.testing.assert_array_equal(mu_new[~new], mu_old[~new])
        np.testing.assert_array_equal(nu_new[~new], nu_old[~new])
        assert np.all(mu_old[regrown] != 0.0)
        assert int(state.inner[0].count) == int(before_state.inner[0].count)
    assert step._cache_size() == 1


@pytest.mark.parametrize("recompute_from", ["updated", "current"])
def test_set_grows_at_random_on_the_updated_weights(recompute_from):
    alpha, every, end = 0.45, 1, 100
    params = params_like(seed=5)
    lr = 0.05
    alg = set_training(
        0.75,
        key=KEY,
        drop_fraction=alpha,
        update_every=every,
        end_step=end,
        recompute_from=recompute_from,
    )
    tx = sparse(optax.sgd(lr, momentum=0.9), alg)
    state = tx.init(params)
    params = masked_params(params, state)
    step = jax.jit(tx.update)
    k = ref_kept(128, 0.75)
    grown_sets, differs = [], []
    for t in range(3):
        g = grads_like(params, 200 + t)
        before_state, before_params = state, params
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        m_old = np.asarray(get_masks(before_state)["dense"]["kernel"])
        m_new = np.asarray(get_masks(state)["dense"]["kernel"])
        if t == 0:
            np.testing.assert_array_equal(m_new, m_old)
            continue
        # SET applies the optimizer's update (SGD with momentum on g * m), then ranks w + u.
        trace = np.asarray(before_state.inner[0].trace["dense"]["kernel"])
        gm = np.where(m_old, np.asarray(g["dense"]["kernel"]), 0.0).astype(np.float32)
        u = -lr * (gm + np.float32(0.9) * trace)
        w = np.asarray(before_params["dense"]["kernel"])
        wu = (w + u.astype(np.float32)).astype(np.float32)
        d = math.floor(ref_drop_fraction(t, alpha, end) * k)
        assert 0.01 < (ref_drop_fraction(t, alpha, end) * k) % 1 < 0.99
        # "updated" (default) ranks w + u; "current" ranks w, the weights before the update.
        ranked = wu if recompute_from == "updated" else w
        survive = ref_top(np.abs(ranked), m_old, k - d)
        differs.append(not np.array_equal(survive, ref_top(np.abs(wu), m_old, k - d)))
        assert m_new.sum() == k and np.all(m_new[survive])
        grown = m_new & ~survive
        assert grown.sum() == d
        grown_sets.append(grown)
        new = m_new & ~m_old
        w_new = np.asarray(params["dense"]["kernel"])
        assert np.all(w_new[~m_new] == 0.0) and np.all(w_new[new] == 0.0)
        np.testing.assert_allclose(w_new[survive], wu[survive], rtol=1e-6)
        assert np.all(np.asarray(state.inner[0].trace["dense"]["kernel"])[new] == 0.0)
    assert not np.array_equal(grown_sets[0], grown_sets[1])
    if recompute_from == "current":
        assert any(differs)  # ranking w + u instead would have dropped other weights
    assert step._cache_size() == 1


def test_dict_sparsity_uses_exact_paths():
    # Shapes the other tests use too: their programs are compiled once.
    params = {"a": normal(0, (10, 13)), "b": normal(1, (8, 16)), "bias": normal(2, (16,))}
    tx = sparse(optax.sgd(0.1), rigl({"a": 0.5, "b": 0.25}, key=KEY, end_step=10, update_every=2))
    masks = get_masks(tx.init(params))
    assert int(masks["a"].sum()) == 65 and int(masks["b"].sum()) == 96
    assert masks["bias"].shape == ()
    with pytest.raises(ValueError, match="unknown leaf paths"):
        sparse(optax.sgd(0.1), static_sparse({"c": 0.5}, key=KEY)).init(params)
    with pytest.raises(ValueError, match="prune"):
        static_sparse({"a": 0.5}, key=KEY, prune="a")


def test_prune_rule_and_erk_distribution():
    distributions = pytest.importorskip("jaxprune._src.distributions")
    params = {"a": normal(0, (10, 13)), "b": normal(1, (8, 16))}
    sp = distributions.erk_sparsities(params, 0.8)
    assert sp["a"] != sp["b"]
    masks = get_masks(sparse(optax.sgd(0.1), static_sparse(sp, key=KEY)).init(params))
    for path in ("a", "b"):
        n = params[path].size
        assert int(masks[path].sum()) == ref_kept(n, sp[path])
    masks = get_masks(sparse(optax.sgd(0.1), static_sparse(0.5, key=KEY, prune="^a$")).init(params))
    assert masks["b"].shape == () and int(masks["a"].sum()) == 65


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(drop_fraction=0.0), ValueError, "drop_fraction"),
        (dict(drop_fraction=1.0), ValueError, "drop_fraction"),
        (dict(drop_fraction="0.3"), TypeError, "drop_fraction"),
        (dict(update_every=0), ValueError, "update_every"),
        (dict(update_every=2.5), TypeError, "update_every"),
        (dict(end_step=100, update_every=100), ValueError, "end_step"),
        (dict(end_step=2**31), ValueError, r"end_step must be an int >= 1 and <= 2147483647"),
        (dict(update_every=2**31 + 5, end_step=2**31 - 1), ValueError, "update_every.*int32"),
        (dict(key=None), ValueError, "key"),
        (dict(key=3), TypeError, "key"),
        (dict(sparsity=1.0), ValueError, "sparsity"),
        (dict(sparsity=-0.1), ValueError, "sparsity"),
        (dict(sparsity="0.5"), TypeError, "sparsity"),
    ],
)
@pytest.mark.parametrize("fn", [rigl, set_training])
def test_bad_arguments(fn, kwargs, error, match):
    args = dict(sparsity=0.5, key=KEY, end_step=1000, update_every=10)
    args.update(kwargs)
    sparsity = args.pop("sparsity")
    with pytest.raises(error, match=match):
        fn(sparsity, **args)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: rigl(0.5, key=KEY, end_step=100, skip_update_on_turn=1), TypeError, "skip_upd"),
        (lambda: set_training(0.5, key=KEY, end_step=100, recompute_from="x"), ValueError, "recom"),
    ],
)
def test_bad_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_legacy_uint32_key_is_accepted():
    params = params_like()
    a = get_masks(
        sparse(optax.sgd(0.1), static_sparse(0.5, key=jax.random.PRNGKey(0))).init(params)
    )
    assert int(a["dense"]["kernel"].sum()) == 64
