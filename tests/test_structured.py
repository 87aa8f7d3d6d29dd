"""Block, N:M and unit masks, against tfmot's algorithms and where jaxprune departs from them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxprune._src import structured
from jaxprune._src.structured import (
    BlockSparsity,
    NMSparsity,
    UnitSparsity,
    block_mask,
    block_scores,
    block_threshold,
    expand_block_mask,
    nm_mask,
    unit_mask,
    unit_threshold,
)

# ----- a reference of tfmot's block algorithm (pooled block scores, magnitude rule) -----


def tfmot_block_mask(x, sparsity, bh, bw, pooling):
    """tfmot's block mask: SAME-padded (possibly shifted) pooling windows, mask laid from 0.

    Without tfmot's accidental error for a size-1 block grid.
    """
    a = np.abs(np.asarray(x, np.float64))
    h, w = a.shape

    def windows(n, b):
        out = -(-n // b)
        before = (out * b - n) // 2
        return [(max(j * b - before, 0), min((j + 1) * b - before, n)) for j in range(out)]

    rows, cols = windows(h, bh), windows(w, bw)
    pool = np.mean if pooling == "avg" else np.max
    scores = np.array([[pool(a[r0:r1, c0:c1]) for c0, c1 in cols] for r0, r1 in rows])
    n = scores.size
    k = int(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), 1))
    thr = np.sort(scores.ravel())[::-1][k - 1]
    pm = scores >= thr
    return np.kron(pm, np.ones((bh, bw), bool))[:h, :w]


# ----- block masks: golden arrays -----

# Blocks of (2, 3) over (5, 8): rows {0,1} {2,3} {4}; columns {0,1,2} {3,4,5} {6,7}. The last
# block row and column are partial; the total pad is 1 on both axes, so tfmot is not shifted.
X58 = np.array(
    [
        [1, -1, 0, 8, 0, 0, 2, -2],
        [1, 1, 0, 0, 0, 0, 2, 2],
        [0, 0, 3, -3, 3, 1, 0, 0],
        [0, 0, -3, 3, 3, -1, 0, 0],
        [6, 0, 0, 0, 0, 0, 4, 4],
    ],
    np.float32,
)
AVG_SCORES = np.array([[4 / 6, 8 / 6, 2], [1, 14 / 6, 0], [2, 0, 4]], np.float32)
MAX_SCORES = np.array([[1, 8, 2], [3, 3, 0], [6, 0, 4]], np.float32)
# s = 2/3 over 9 blocks: k = 3. avg: threshold 2, tied by two blocks, so 4 blocks are kept.
AVG_MASK = np.array(
    [
        [0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 1],
    ],
    bool,
)
# max: scores 8, 6, 4 are the three largest; threshold 4.
MAX_MASK = np.array(
    [
        [0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 1],
    ],
    bool,
)


@pytest.mark.parametrize("pooling", ["avg", "AVG", "max", "Max"])
def test_block_scores_partial_blocks_golden(pooling):
    want = AVG_SCORES if pooling.lower() == "avg" else MAX_SCORES
    got = block_scores(X58, (2, 3), pooling)
    assert got.shape == (3, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("pooling,want,thr", [("avg", AVG_MASK, 2.0), ("max", MAX_MASK, 4.0)])
def test_block_mask_golden(maybe_jit, pooling, want, thr):
    s = float(np.float32(2 / 3))
    f = maybe_jit(functools.partial(block_threshold, block_shape=(2, 3), pooling=pooling))
    mask, threshold = f(jnp.asarray(X58), s)
    assert mask.dtype == jnp.bool_ and mask.shape == X58.shape
    np.testing.assert_array_equal(mask, want)
    assert threshold.dtype == jnp.float32 and float(threshold) == thr
    mask2 = maybe_jit(lambda x, s: block_mask(x, s, (2, 3), pooling))(jnp.asarray(X58), s)
    np.testing.assert_array_equal(mask2, want)
    # tfmot agrees here: the total pad of each axis is 1.
    np.testing.assert_array_equal(tfmot_block_mask(X58, s, 2, 3, pooling), want)


def test_block_mask_where_tfmot_scores_a_shifted_window():
    # Width 18 in blocks of 4: 5 blocks, total pad 2, pad_before 1. tfmot scores the windows
    # {0-2} {3-6} {7-10} {11-14} {15-17} but masks {0-3} {4-7} {8-11} {12-15} {16-17}.
    x = np.zeros((2, 18), np.float32)
    x[0, 3] = 10.0
    ours = np.zeros((2, 18), bool)
    ours[0, 0:4] = True  # the block holding the 10 is kept
    tfmot = np.zeros((2, 18), bool)
    tfmot[0, 4:8] = True  # tfmot keeps the block after it
    np.testing.assert_array_equal(block_mask(x, 0.9, (1, 4), "avg"), ours)
    np.testing.assert_array_equal(tfmot_block_mask(x, 0.9, 1, 4, "avg"), tfmot)
    np.testing.assert_array_equal(block_mask(x, 0.9, (1, 4), "max"), ours)


@pytest.mark.parametrize("shape,block", [((6, 8), (2, 2)), ((7, 11), (2, 4)), ((5, 8), (2, 3))])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_block_mask_matches_tfmot_where_not_shifted(shape, block, pooling):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    for s in (0.0, 0.3, 0.5, 0.8, 1.0):
        np.testing.assert_array_equal(
            block_mask(x, s, block, pooling), tfmot_block_mask(x, s, *block, pooling)
        )


def test_block_whole_axis_and_oversized_blocks():
    x = np.array([[1, 0, 5, 5, 0, 1], [1, 0, 5, 5, 0, 1], [1, 0, 5, 5, 0, 1]], np.float32)
    # -1: the block spans all 3 rows; pairs of columns score 0.5, 5, 0.5.
    want = np.zeros((3, 6), bool)
    want[:, 2:4] = True
    np.testing.assert_array_equal(block_mask(x, 0.9, (-1, 2), "avg"), want)
    np.testing.assert_array_equal(block_scores(x, (-1, 2)), [[0.5, 5.0, 0.5]])
    np.testing.assert_array_equal(block_mask(x, 0.5, (-1, -1)), np.ones((3, 6), bool))
    # A block larger than the weight is a single (partial) block: kept, at least one block.
    np.testing.assert_array_equal(block_mask(x, 0.99, (4, 8)), np.ones((3, 6), bool))
    np.testing.assert_array_equal(block_scores(x, (4, 8), "avg"), [[2.0]])


def test_block_squeezes_size_one_dims_like_tensorflow():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(4, 6)).astype(np.float32)
    conv = k.reshape(1, 1, 4, 6)  # a 1x1 convolution kernel
    got = block_mask(conv, 0.5, (2, 2))
    assert got.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(got.reshape(4, 6), block_mask(k, 0.5, (2, 2)))
    # A rank-2 leaf with a size-1 dimension is used as it is.
    row = np.array([[1.0, 2.0, 0.1, 0.1, 3.0, 3.0]], np.float32)
    np.testing.assert_array_equal(
        block_mask(row, 0.5, (1, 2), "max"), [[True, True, False, False, True, True]]
    )
    np.testing.assert_array_equal(
        expand_block_mask(jnp.array([[True, False]] * 2), (2, 2), (1, 1, 4, 3)).reshape(4, 3),
        [[1, 1, 0]] * 4,
    )


def test_block_kept_count_rule():
    # All-zero weights: every score ties at 0, nothing is pruned.
    np.testing.assert_array_equal(block_mask(np.zeros((4, 4)), 0.9, (2, 2)), np.ones((4, 4)))
    # Sparsity 1 still keeps one block: the largest.
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    want = np.zeros((4, 4), bool)
    want[2:, 2:] = True
    np.testing.assert_array_equal(block_mask(x, 1.0, (2, 2)), want)
    # 4 blocks at s=0.625: 4 * 0.375 = 1.5 -> 2 blocks (half to even).
    assert int(block_mask(x, 0.625, (2, 2)).sum()) == 8
    # NaN ranks as the largest score: its block is kept.
    x = x.copy()
    x[0, 0] = np.nan
    assert bool(block_mask(x, 1.0, (2, 2))[0, 0]) and int(block_mask(x, 1.0, (2, 2)).sum()) == 4


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_block_low_precision(dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(6, 10)), dtype)
    mask, thr = block_threshold(x, 0.5, (2, 3), "avg")
    assert thr.dtype == dtype
    np.testing.assert_array_equal(mask, block_mask(x.astype(jnp.float32), 0.5, (2, 3)))


def test_block_empty():
    mask, thr = block_threshold(jnp.zeros((0, 4)), 0.5, (2, 2))
    assert mask.shape == (0, 4) and float(thr) == 0.0


def test_block_errors():
    x = jnp.ones((4, 4))
    with pytest.raises(ValueError, match=r"pooling.*'avg', 'max'"):
        block_mask(x, 0.5, (2, 2), "min")
    with pytest.raises(ValueError, match="pooling"):
        block_mask(x, 0.5, (2, 2), None)
    for bad in [(0, 2), (2, -2), (2,), (2, 2, 2), "22", 2]:
        with pytest.raises(ValueError, match="block_shape"):
            block_mask(x, 0.5, bad)
    for bad in [(2.0, 2), (True, 2), ("2", 2)]:
        with pytest.raises(TypeError, match="block_shape"):
            block_mask(x, 0.5, bad)
    for shape in [(2, 3, 4), (5,), (1, 1, 1), ()]:
        with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
            block_mask(jnp.ones(shape), 0.5, (2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        block_mask(jnp.ones((4, 4), jnp.int32), 0.5, (2, 2))
    with pytest.raises(ValueError, match="sparsity"):
        block_mask(x, 1.5, (2, 2))
    with pytest.raises(ValueError, match="block grid"):
        expand_block_mask(jnp.ones((3, 2), bool), (2, 2), (4, 4))
    with pytest.raises(ValueError, match="pooling"):
        BlockSparsity((2, 2), "sum")
    assert BlockSparsity([2, -1], "max") == BlockSparsity((2, -1), "MAX")
    assert hash(BlockSparsity((2, 2)))  # usable as a static argument


# ----- N:M -----


def reference_nm(x, n, m, axis):
    """Per group, the n largest |x| with lower indices first among ties (stable sort)."""
    a = np.moveaxis(np.abs(np.asarray(x, np.float64)), axis, -1)
    a = np.where(np.isnan(a), np.inf, a)  # NaN ranks highest (nothing else is inf here)
    keep = np.zeros(a.shape, bool)
    for start in range(0, a.shape[-1], m):
        group = a[..., start : start + m]
        order = np.argsort(-group, axis=-1, kind="stable")[..., :n]
        np.put_along_axis(keep[..., start : start + m], order, True, axis=-1)
    return np.moveaxis(keep, -1, axis)


def test_nm_golden_2_4(maybe_jit):
    x = np.array(
        [
            [0.1, 4.0, -1.0],
            [-0.5, 3.0, 1.0],
            [2.0, 2.0, 1.0],
            [0.3, -1.0, 1.0],
            [1.0, 0.0, 0.0],
            [-2.0, 0.0, -0.0],
            [0.2, 0.0, 5.0],
            [0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    want = np.array(
        [
            [0, 1, 1],
            [1, 1, 1],  # column 2: four ties at 1.0, the first two are kept
            [1, 0, 0],
            [0, 0, 0],
            [1, 1, 1],  # column 1: all zero, the first two are kept
            [1, 1, 0],
            [0, 0, 1],  # column 2: 5.0, then the lowest-index zero (row 4)
            [0, 0, 0],
        ],
        bool,
    )
    got = maybe_jit(lambda x: nm_mask(x, 2, 4))(jnp.asarray(x))
    assert got.dtype == jnp.bool_ and got.shape == x.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, reference_nm(x, 2, 4, 0))


def test_nm_conv_groups_along_input_channels(maybe_jit):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 8, 5)).astype(np.float32)
    got = maybe_jit(lambda x: nm_mask(x, 2, 4))(jnp.asarray(x))
    np.testing.assert_array_equal(got, reference_nm(x, 2, 4, 2))
    assert np.all(np.asarray(got).reshape(3, 3, 2, 4, 5).sum(axis=3) == 2)


@pytest.mark.parametrize("n,m,length,kept", [(3, 4, 6, [3, 2]), (1, 4, 6, [1, 1]), (2, 8, 5, [2])])
def test_nm_partial_last_group(maybe_jit, n, m, length, kept):
    x = jnp.arange(1.0, length + 1.0)[:, None] * jnp.ones((1, 3))
    got = np.asarray(maybe_jit(lambda x: nm_mask(x, n, m))(x))
    counts = [int(got[start : start + m, 0].sum()) for start in range(0, length, m)]
    assert counts == kept
    np.testing.assert_array_equal(got, reference_nm(np.asarray(x), n, m, 0))


def test_nm_axis_nan_and_trivial_patterns():
    x = jnp.array([[1.0, jnp.nan, 3.0, 2.0, -4.0, 0.5]])
    np.testing.assert_array_equal(nm_mask(x, 1, 3, axis=-1), [[0, 1, 0, 0, 1, 0]])
    np.testing.assert_array_equal(nm_mask(x, 1, 3, axis=1), nm_mask(x, 1, 3, axis=-1))
    assert bool(jnp.all(nm_mask(x, 4, 4, axis=-1)))
    np.testing.assert_array_equal(nm_mask(x, 1, 1, axis=0), np.ones((1, 6), bool))
    assert nm_mask(jnp.zeros((0, 3)), 2, 4).shape == (0, 3)
    mask, thr = NMSparsity(2, 4)(jnp.ones((8, 2), jnp.bfloat16))
    assert int(mask.sum()) == 8 and thr.dtype == jnp.bfloat16


def test_nm_errors():
    x = jnp.ones((8, 4))
    with pytest.raises(ValueError, match="n must be <= m"):
        nm_mask(x, 5, 4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        nm_mask(x, 0, 4)
    with pytest.raises(ValueError, match="m must be >= 1"):
        nm_mask(x, 1, 0)
    with pytest.raises(TypeError, match="n must be an int"):
        nm_mask(x, 2.0, 4)
    with pytest.raises(TypeError, match="m must be an int"):
        nm_mask(x, 2, True)
    with pytest.raises(ValueError, match="axis=2"):
        nm_mask(x, 2, 4, axis=2)
    with pytest.raises(TypeError, match="axis"):
        nm_mask(x, 2, 4, axis=0.5)
    with pytest.raises(ValueError, match="scalar"):
        nm_mask(jnp.float32(1.0), 1, 2)
    with pytest.raises(TypeError, match="floating-point"):
        nm_mask(jnp.ones((4, 4), jnp.int32), 2, 4)
    with pytest.raises(ValueError, match="n must be <= m"):
        NMSparsity(3, 2)
    assert nm_mask(x, np.int64(2), np.int32(4)).sum() == 16


# Fixed shape (so each pattern compiles once); values drawn from a small set to force ties.
NM_SHAPE = (10, 3)


@given(
    x=hnp.arrays(np.float32, NM_SHAPE, elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 7.0])),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 3), (4, 8), (5, 5)]),
)
@settings(max_examples=40, deadline=None)
def test_property_nm_exact_counts(x, nm):
    n, m = nm
    got = np.asarray(jax.jit(nm_mask, static_argnums=(1, 2))(x, n, m))
    np.testing.assert_array_equal(got, reference_nm(x, n, m, 0))
    for start in range(0, NM_SHAPE[0], m):
        size = min(m, NM_SHAPE[0] - start)
        group_kept = got[start : start + m].sum(axis=0)
        # Every full group keeps exactly n; the partial last group min(n, its size).
        assert np.all(group_kept == min(n, size))
        a = np.abs(x[start : start + m])
        kept_min = np.where(got[start : start + m], a, np.inf).min(axis=0)
        pruned_max = np.where(got[start : start + m], -np.inf, a).max(axis=0)
        assert np.all(kept_min >= pruned_max)


@pytest.mark.parametrize("m", [2, 4, 8, 16, 32, 33, 64])
def test_nm_both_ranking_paths_equal_the_reference(m, monkeypatch):
    """Groups of up to 32 are ranked by comparisons, larger ones with lax.top_k: both exact."""
    rng = np.random.default_rng(m)
    # Few distinct values: many ties inside each group; a partial last group.
    x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 2.5, 7.0], np.float32), size=(2 * m + 3, 3))
    for n in sorted({1, m // 2, m - 1} - {0}):
        want = reference_nm(x, n, m, 0)
        got = np.asarray(nm_mask(x, n, m, axis=0))
        np.testing.assert_array_equal(got, want)
        # The other path, forced (traced afresh: the limit is read when tracing), agrees.
        other = 0 if m <= structured._NM_COMPARE_MAX else 64
        monkeypatch.setattr(structured, "_NM_COMPARE_MAX", other)
        forced = structured._nm_mask.__wrapped__(jnp.asarray(x), n, m, 0)
        np.testing.assert_array_equal(np.asarray(forced), want)
        monkeypatch.undo()


# ----- units -----


def test_unit_mask_golden(maybe_jit):
    # Column norms: 5, 0.5, 5, 13, 1 (columns 0 and 2 tie).
    x = np.array([[3.0, 0.3, 0.0, 5.0, 1.0], [4.0, -0.4, -5.0, 12.0, 0.0]], np.float32)
    f = maybe_jit(lambda x, s: unit_threshold(x, s))
    mask, thr = f(jnp.asarray(x), 0.6)  # 5 * 0.4 = 2 kept: 13 and 5, and the tie at 5
    np.testing.assert_array_equal(mask, np.array([[1, 0, 1, 1, 0]] * 2, bool))
    assert float(thr) == 5.0 and thr.dtype == jnp.float32
    mask, thr = f(jnp.asarray(x), 0.9)  # 5 * 0.1 = 0.5 -> 0 -> at least one unit
    np.testing.assert_array_equal(mask, np.array([[0, 0, 0, 1, 0]] * 2, bool))
    assert float(thr) == 13.0
    assert bool(jnp.all(f(jnp.asarray(x), 0.0)[0]))
    # Input units: the rows, norms 5.09 and 14.0.
    np.testing.assert_array_equal(unit_mask(x, 0.5, axis=0), np.array([[0] * 5, [1] * 5], bool))


def test_unit_mask_conv_output_channels(maybe_jit):
    rng = np.random.default_rng(3)
    scale = np.array([1.0, 5.0, 0.1, 3.0, 2.0, 0.5], np.float32)
    x = (rng.normal(size=(3, 3, 4, 6)) * scale).astype(np.float32)
    mask = np.asarray(maybe_jit(lambda x, s: unit_mask(x, s))(jnp.asarray(x), 0.5))
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=(0, 1, 2)))
    keep = norms >= np.sort(norms)[::-1][2]
    np.testing.assert_array_equal(mask, np.broadcast_to(keep, x.shape))
    assert keep.sum() == 3


def test_unit_mask_all_zero_float16_and_structure():
    assert bool(jnp.all(unit_mask(jnp.zeros((3, 4), jnp.float16), 0.75)))
    mask, thr = UnitSparsity(axis=0)(jnp.array([[3.0, 4.0], [0.0, 1.0]], jnp.float16), 0.5)
    np.testing.assert_array_equal(mask, [[1, 1], [0, 0]])
    assert thr.dtype == jnp.float16 and float(thr) == 5.0
    assert unit_mask(jnp.zeros((0, 4)), 0.5).shape == (0, 4)
    # Rank 1: every entry is its own unit, the magnitude rule.
    np.testing.assert_array_equal(unit_mask(jnp.array([1.0, -3.0, 2.0, 0.5]), 0.5), [0, 1, 1, 0])


def test_unit_errors():
    with pytest.raises(ValueError, match="sparsity"):
        unit_mask(jnp.ones((2, 2)), -0.1)
    with pytest.raises(ValueError, match="axis=-3"):
        unit_mask(jnp.ones((2, 2)), 0.5, axis=-3)
    with pytest.raises(ValueError, match="scalar"):
        unit_mask(jnp.float32(2.0), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        unit_mask(jnp.ones((2, 2), jnp.int32), 0.5)
    with pytest.raises(TypeError, match="axis"):
        UnitSparsity(axis="last")


def test_structure_helpers_validate():
    assert structured.check_pooling("avg") == "AVG"
    assert structured.resolve_block_shape((-1, 4), (1, 1, 6, 8)) == (6, 4)
    assert structured.matrix_shape((1, 5)) == (1, 5)


jit_block_mask = jax.jit(block_mask, static_argnums=(2, 3))


@given(
    x=hnp.arrays(np.float32, (5, 8), elements=st.floats(-8, 8, width=32, allow_subnormal=False)),
    sparsity=st.floats(0, 1),
    pooling=st.sampled_from(["avg", "max"]),
)
@settings(max_examples=40, deadline=None)
def test_property_block_mask_matches_tfmot_and_is_blockwise(x, sparsity, pooling):
    got = np.asarray(jit_block_mask(x, sparsity, (2, 3), pooling))
    # Constant on every block (blocks aligned at 0, partial at the ends).
    for r in range(0, 5, 2):
        for c in range(0, 8, 3):
            block = got[r : r + 2, c : c + 3]
            assert block.all() or not block.any()
    blocks = got[::2, ::3]
    k = int(max(np.round(np.float32(9) * (np.float32(1) - np.float32(sparsity))), 1))
    assert blocks.sum() >= k
    # Total pad 1 on both axes: tfmot's result, up to float rounding of near-tied averages.
    scores = np.sort(np.asarray(block_scores(x, (2, 3), pooling)).ravel())
    if np.all(np.diff(scores) > 1e-4):  # no ties, and no near-ties that rounding could flip
        assert blocks.sum() == k
        np.testing.assert_array_equal(got, tfmot_block_mask(x, sparsity, 2, 3, pooling))
