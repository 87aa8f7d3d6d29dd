"""Structures pool scores; they never compute magnitudes themselves.

``structure.from_scores(scores, s)`` ranks any elementwise non-negative score (checked here
against NumPy), ``structure(x, s)`` is the magnitude rule ``from_scores(|x|, s)``, and the
score-based algorithms take a structure: N:M straight-through training (SR-STE's setting) and
block saliency pruning.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

RNG = np.random.default_rng(0)


def kept_count(size, sparsity):
    """tfmot's rule: max(round_half_to_even(size * (1 - s)), 1) in float32."""
    return max(int(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity)))), 1)


def np_top_kept(scores, sparsity):
    """Kept iff score >= the k-th largest (ties at the threshold kept)."""
    flat = np.sort(scores.ravel())[::-1]
    return scores >= flat[kept_count(scores.size, sparsity) - 1]


def np_blocks(scores, bh, bw, pooling):
    h, w = scores.shape
    nh, nw = -(-h // bh), -(-w // bw)
    out = np.zeros((nh, nw), np.float64)
    for i in range(nh):
        for j in range(nw):
            tile = scores[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw]
            out[i, j] = tile.max() if pooling == "MAX" else tile.mean()
    return out


def np_block_mask(scores, bh, bw, pooling, sparsity):
    keep = np_top_kept(np_blocks(scores.astype(np.float64), bh, bw, pooling), sparsity)
    full = np.repeat(np.repeat(keep, bh, axis=0), bw, axis=1)
    return full[: scores.shape[0], : scores.shape[1]]


def np_unit_mask(scores, sparsity, axis=-1):
    others = tuple(i for i in range(scores.ndim) if i != axis % scores.ndim)
    norms = np.sqrt(np.sum(scores.astype(np.float64) ** 2, axis=others))
    keep = np_top_kept(norms, sparsity)
    shape = [1] * scores.ndim
    shape[axis] = -1
    return np.broadcast_to(keep.reshape(shape), scores.shape)


def np_nm_mask(scores, n, m):
    """n largest of every m along axis 0 (rows), lower index first on ties."""
    keep = np.zeros(scores.shape, bool)
    for c in range(scores.shape[1]):
        for g in range(0, scores.shape[0], m):
            col = scores[g : g + m, c]
            order = sorted(range(len(col)), key=lambda i: (-col[i], i))
            for i in order[: min(n, len(col))]:
                keep[g + i, c] = True
    return keep


def scores_with_ties(shape):
    # Few distinct values: ties inside blocks, groups and at thresholds.
    return RNG.integers(0, 6, size=shape).astype(np.float32) / 4


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_block_from_scores_matches_numpy(pooling, sparsity):
    scores = scores_with_ties((10, 7))
    mask, _ = jp.BlockSparsity((4, 2), pooling).from_scores(jnp.asarray(scores), sparsity)
    np.testing.assert_array_equal(np.asarray(mask), np_block_mask(scores, 4, 2, pooling, sparsity))


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_unit_from_scores_matches_numpy(sparsity):
    scores = scores_with_ties((6, 9))
    mask, _ = jp.UnitSparsity().from_scores(jnp.asarray(scores), sparsity)
    np.testing.assert_array_equal(np.asarray(mask), np_unit_mask(scores, sparsity))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 3), (3, 4)])
def test_nm_from_scores_matches_numpy(n, m):
    scores = scores_with_ties((10, 5))  # 10 rows: a partial last group for m = 3, 4
    mask, thr = jp.NMSparsity(n, m).from_scores(jnp.asarray(scores), None)
    np.testing.assert_array_equal(np.asarray(mask), np_nm_mask(scores, n, m))
    assert float(thr) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "structure",
    [jp.BlockSparsity((2, 3), "avg"), jp.BlockSparsity((4, 1), "max"), jp.UnitSparsity(0)],
    ids=["block-avg", "block-max", "unit"],
)
def test_magnitude_rule_is_from_scores_of_abs(structure, dtype):
    x = jnp.asarray(RNG.standard_normal((8, 9)), dtype)
    for s in (0.0, 0.4, 0.8):
        m1, t1 = structure(x, s)
        m2, t2 = structure.from_scores(jnp.abs(x), s)
        np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
        assert t1.dtype == x.dtype and t2.dtype == x.dtype
        assert float(t1) == float(t2)


def test_magnitude_ste_nm_is_two_of_four_on_every_turn():
    """SR-STE's setting: 2:4 masks of |w + u| along the input axis, dense weights kept."""
    params = {"w": jnp.asarray(RNG.standard_normal((8, 6)), jnp.float32)}
    sched = jp.constant_sparsity(0.5, begin_step=0, frequency=2)
    tx = jp.sparse(
        optax.sgd(0.1), jp.magnitude_ste(sched, sr_ste_lambda=1e-3, structure=jp.NMSparsity(2, 4))
    )
    state = tx.init(params)
    step = jax.jit(lambda p, g, s: tx.update(g, s, p))
    for t in range(4):
        grads = {"w": jnp.asarray(RNG.standard_normal((8, 6)), jnp.float32)}
        old_mask = np.asarray(jp.get_masks(state)["w"])
        updates, state = step(params, grads, state)
        new_params = optax.apply_updates(params, updates)
        mask = np.asarray(jp.get_masks(state)["w"])
        if t % 2 == 0:  # a turn: 2:4 of the weights this step produces
            want = np.asarray(jp.nm_mask(new_params["w"], 2, 4))
            np.testing.assert_array_equal(mask, want)
            assert (mask.reshape(2, 4, 6).sum(axis=1) == 2).all()
        else:
            np.testing.assert_array_equal(mask, old_mask)
        params = new_params
        seen = np.asarray(jp.masked_params(params, state)["w"])
        np.testing.assert_array_equal(seen, np.where(mask, np.asarray(params["w"]), 0.0))
        assert np.count_nonzero(np.asarray(params["w"])[~mask]) > 0  # dense weights kept


def test_saliency_with_blocks_ranks_pooled_saliency():
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    g = RNG.standard_normal((8, 4)).astype(np.float32)
    sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
    structure = jp.BlockSparsity((2, 2), "max")
    tx = jp.sparse(optax.sgd(0.0), jp.saliency_pruning(sched, structure=structure))
    state = tx.init({"w": jnp.asarray(w)})
    updates, state = tx.update({"w": jnp.asarray(g)}, state, {"w": jnp.asarray(w)})
    want = np_block_mask(np.abs(w * g), 2, 2, "MAX", 0.5)
    np.testing.assert_array_equal(np.asarray(jp.get_masks(state)["w"]), want)
    new = np.asarray(optax.apply_updates({"w": jnp.asarray(w)}, updates)["w"])
    assert (new[~want] == 0).all() and (new[want] == w[want]).all()


def test_bad_structures_are_refused_early():
    sched = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
    with pytest.raises(TypeError, match="structure must be None or a structure"):
        jp.magnitude_ste(sched, structure="2:4")
    with pytest.raises(TypeError, match="BlockSparsity"):
        jp.saliency_pruning(sched, structure=lambda x, s: (x > 0, 0.0))
    with pytest.raises(ValueError, match="scope='layer'"):
        jp.saliency_pruning(sched, scope="global", structure=jp.NMSparsity(2, 4))
    tx = jp.sparse(optax.sgd(0.1), jp.magnitude_ste(sched, structure=jp.BlockSparsity((2, 2))))
    with pytest.raises(ValueError, match="conv/kernel"):
        tx.init({"conv": {"kernel": jnp.ones((3, 3, 4, 8))}})
    with pytest.raises(TypeError, match="scores must have a floating-point dtype"):
        jp.UnitSparsity().from_scores(jnp.ones((3, 3), jnp.int32), 0.5)
