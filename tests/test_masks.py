"""Magnitude masks (tfmot's kept-count rule) and the exact radix selection routine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxprune as jp
from jaxprune._src import radix_select


def reference_mask(x, sparsity):
    """A full-sort reference: tfmot's rule, with NaN ranked above inf (and kept)."""
    a = np.abs(np.asarray(x, np.float64)).ravel()
    n = a.size
    k = int(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), 1))
    k = min(k, n)
    # Rank NaN above inf by mapping it past the largest finite-or-inf value.
    key = np.where(np.isnan(a), np.inf, a)
    nan_rank = np.isnan(a)
    order = sorted(range(n), key=lambda i: (nan_rank[i], key[i]), reverse=True)
    pivot = order[k - 1]
    if nan_rank[pivot]:
        mask = nan_rank
    else:
        mask = nan_rank | (key >= key[pivot])
    return mask.reshape(np.shape(x))


@pytest.mark.parametrize(
    "n,sparsity,kept",
    [
        (4, 0.375, 2),  # n(1 - s) = 2.5 -> 2 (half to even)
        (12, 0.625, 4),  # 4.5 -> 4
        (64, 0.5234375, 30),  # 30.5 -> 30
        (64, 0.5078125, 32),  # 31.5 -> 32
        (5, 0.5, 2),  # 2.5 -> 2
        (3, 0.5, 2),  # 1.5 -> 2
        (2, 0.25, 2),  # 1.5 -> 2
        (2, 0.75, 1),  # 0.5 -> 0 -> at least one
        (10, float(np.float32(0.200000018)), 8),
        (10, 0.0, 10),
        (10, 0.99, 1),
        (10, 1.0, 1),
    ],
)
def test_kept_count_rounding(maybe_jit, n, sparsity, kept):
    x = jnp.arange(1, n + 1, dtype=jnp.float32) * jnp.where(jnp.arange(n) % 2 == 0, 1, -1)
    mask = maybe_jit(jp.magnitude_mask)(x, sparsity)
    assert mask.dtype == jnp.bool_ and mask.shape == x.shape
    assert int(mask.sum()) == kept
    # The kept entries are the largest magnitudes.
    if kept < n:
        assert float(jnp.abs(x)[mask].min()) > float(jnp.abs(x)[~mask].max())


def test_ties_are_all_kept(maybe_jit):
    # tfmot's rule keeps every tie at the threshold: 40 values, 4 magnitudes, s=0.5 -> k=20 but
    # 34 kept.
    values = np.array([4.0] * 4 + [-3.0] * 10 + [2.0] * 20 + [-1.0] * 6, np.float32)
    x = jnp.asarray(np.random.default_rng(0).permutation(values))
    mask = maybe_jit(jp.magnitude_mask)(x, 0.5)
    assert int(mask.sum()) == 34
    assert bool(jnp.all(mask == (jnp.abs(x) >= 2.0)))


@pytest.mark.parametrize("x", [jnp.zeros(16), jnp.ones(8), -2.5 * jnp.ones((3, 5))])
def test_all_zero_and_constant_are_never_pruned(maybe_jit, x):
    assert bool(jnp.all(maybe_jit(jp.magnitude_mask)(x, 0.99)))


def test_zero_sparsity_keeps_everything(maybe_jit):
    x = jax.random.normal(jax.random.key(0), (7, 9))
    assert bool(jnp.all(maybe_jit(jp.magnitude_mask)(x, 0.0)))


def test_nan_and_inf(maybe_jit):
    x = jnp.array([jnp.nan, 1.0, -jnp.inf, 0.5, 2.0, -jnp.nan, 0.0, jnp.inf])
    f = maybe_jit(jp.magnitude_mask)
    # NaN ranks above inf: the two NaNs and two infs are the four largest.
    np.testing.assert_array_equal(f(x, 0.5), [1, 0, 1, 0, 0, 1, 0, 1])
    # k = 2 falls among the NaNs: only NaNs are kept.
    np.testing.assert_array_equal(f(x, 0.75), [1, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(f(x, 0.375), [1, 0, 1, 0, 1, 1, 0, 1])


def test_subnormals_and_signed_zeros(maybe_jit):
    tiny = np.float32(1e-45)  # the smallest float32 subnormal
    x = jnp.asarray(np.array([0.0, -0.0, tiny, -2 * tiny, 1e-38, 0.0], np.float32))
    mask = maybe_jit(jp.magnitude_mask)(x, 0.5)
    np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(97,), (6, 11), (3, 3, 4, 5)])
def test_matches_full_sort(maybe_jit, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape) * 3, dtype)
    for sparsity in (0.1, 0.5, 0.9, 0.97):
        mask = maybe_jit(jp.magnitude_mask)(x, sparsity)
        np.testing.assert_array_equal(mask, reference_mask(np.asarray(x, np.float32), sparsity))


def test_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        # Values that differ only beyond float32's precision must still be ranked exactly.
        base = rng.normal(size=200)
        x = jnp.asarray(np.concatenate([base, base + 1e-12]), jnp.float64)
        mask = jax.jit(jp.magnitude_mask)(x, 0.5)
        assert mask.dtype == jnp.bool_
        np.testing.assert_array_equal(mask, reference_mask(np.asarray(x), 0.5))


def test_traced_sparsity_matches_concrete():
    x = jax.random.normal(jax.random.key(1), (50, 20))
    f = jax.jit(jp.magnitude_mask)
    for s in (0.0, 0.3, 0.75, 1.0):
        np.testing.assert_array_equal(f(x, jnp.float32(s)), jp.magnitude_mask(x, s))


def test_kth_largest_key_is_exact_on_large_random_input():
    x = jax.random.normal(jax.random.key(2), (300_000,))
    keys = radix_select.magnitude_keys(x)
    sorted_keys = np.sort(np.asarray(keys))[::-1]
    f = jax.jit(radix_select.kth_largest_key)
    for k in (1, 2, 1000, 150_000, 299_999, 300_000):
        assert int(f([keys], k)) == int(sorted_keys[k - 1])


def test_kth_largest_key_over_several_arrays():
    rng = np.random.default_rng(5)
    arrays = [jnp.asarray(rng.integers(0, 2**31 - 1, size=s), jnp.uint32) for s in (10, 300, 7)]
    everything = np.sort(np.concatenate([np.asarray(a) for a in arrays]))[::-1]
    for k in (1, 17, 200, 317):
        assert int(radix_select.kth_largest_key(arrays, k)) == int(everything[k - 1])


def test_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        jp.magnitude_mask(jnp.arange(4), 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be in range \[0, 1\]"):
        jp.magnitude_mask(jnp.ones(4), 1.5)
    with pytest.raises(ValueError, match="sparsity"):
        jp.magnitude_mask(jnp.ones(4), -0.1)


def test_empty_array():
    assert jp.magnitude_mask(jnp.zeros((0, 3)), 0.5).shape == (0, 3)


# ----- global masks -----


def test_global_masks_share_one_threshold(maybe_jit):
    rng = np.random.default_rng(0)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=30), jnp.float32),
        },
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)) * 0.1, jnp.float32)},
        "step": jnp.int32(3),
    }
    masks = maybe_jit(lambda p: jp.global_magnitude_masks(p, 0.8))(params)
    # Unselected leaves get a scalar True, so tree code over params and masks works.
    assert masks["dense"]["bias"].shape == () and bool(masks["dense"]["bias"])
    assert masks["step"].shape == ()
    pruned = jp.apply_masks(params, masks)
    assert bool(jnp.all(pruned["dense"]["bias"] == params["dense"]["bias"]))
    flat = np.concatenate([np.ravel(params["conv"]["kernel"]), np.ravel(params["dense"]["kernel"])])
    want = reference_mask(flat, 0.8)
    got = np.concatenate([np.ravel(masks["conv"]["kernel"]), np.ravel(masks["dense"]["kernel"])])
    np.testing.assert_array_equal(got, want)
    # The conv kernel, ten times smaller, loses far more than the dense one.
    assert float(masks["conv"]["kernel"].mean()) < float(masks["dense"]["kernel"].mean())


def test_global_mixed_dtypes():
    params = {
        "a": jnp.asarray([[4.0, 1.0], [0.5, 0.25]], jnp.bfloat16),
        "b": jnp.asarray([[3.0, 2.0], [0.75, 0.125]]),
    }
    masks = jp.global_magnitude_masks(params, 0.5)
    # One threshold over both dtypes: the four largest of eight are 4, 3, 2 and 1.
    np.testing.assert_array_equal(masks["a"], [[True, True], [False, False]])
    np.testing.assert_array_equal(masks["b"], [[True, True], [False, False]])


def test_global_rules():
    params = {"w": jnp.ones((2, 2)), "b": jnp.arange(2.0), "n": jnp.arange(3)}
    masks = jp.global_magnitude_masks(params, 0.5, prune="^b$")
    np.testing.assert_array_equal(masks["b"], [False, True])
    assert masks["w"].shape == ()
    masks = jp.global_magnitude_masks(
        params, 0.5, prune=lambda path, x: x.ndim == 1 and path == "b"
    )
    assert masks["b"].shape == (2,)
    with pytest.raises(ValueError, match="matches no leaf"):
        jp.global_magnitude_masks(params, 0.5, prune="kernel")
    with pytest.raises(TypeError, match="'n'.*not a floating-point"):
        jp.global_magnitude_masks(params, 0.5, prune="n")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        jp.global_magnitude_masks(params, 0.5, prune="(")
    with pytest.raises(TypeError, match="prune must be"):
        jp.global_magnitude_masks(params, 0.5, prune=3)


# ----- properties -----

# A few fixed shapes, so each compiles once; the values are what hypothesis explores.
SHAPES = [(1,), (7,), (4, 6), (2, 3, 5), (9, 2)]
float_arrays = st.sampled_from(SHAPES).flatmap(
    lambda shape: hnp.arrays(
        np.float32, shape, elements=st.floats(-100, 100, width=32, allow_subnormal=False)
    )
)
jit_mask = jax.jit(jp.magnitude_mask)


@given(x=float_arrays, sparsity=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_property_kept_count(x, sparsity):
    mask = np.asarray(jit_mask(x, sparsity))
    np.testing.assert_array_equal(mask, reference_mask(x, sparsity))
    k = int(max(np.round(np.float32(x.size) * (np.float32(1) - np.float32(sparsity))), 1))
    assert mask.sum() >= min(k, x.size)
    # Exactly k unless ties at the threshold.
    if len(np.unique(np.abs(x))) == x.size:
        assert mask.sum() == min(k, x.size)


@given(x=float_arrays, s1=st.floats(0, 1), s2=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_property_masks_nested_as_sparsity_grows(x, s1, s2):
    low, high = min(s1, s2), max(s1, s2)
    looser = np.asarray(jit_mask(x, low))
    tighter = np.asarray(jit_mask(x, high))
    assert np.all(looser | ~tighter)  # tighter ⊆ looser


@given(
    xs=st.lists(float_arrays.filter(lambda a: a.ndim >= 2), min_size=1, max_size=3),
    sparsity=st.floats(0, 1),
)
@settings(max_examples=25, deadline=None)
def test_property_global_vs_per_layer(xs, sparsity):
    params = {f"l{i}": x for i, x in enumerate(xs)}
    masks = jax.jit(jp.global_magnitude_masks)(params, sparsity)
    flat = np.concatenate([x.ravel() for x in xs])
    got = np.concatenate([np.asarray(masks[f"l{i}"]).ravel() for i in range(len(xs))])
    np.testing.assert_array_equal(got, reference_mask(flat, sparsity))
    if len(xs) == 1:
        np.testing.assert_array_equal(masks["l0"], jit_mask(xs[0], sparsity))


def test_updated_bfloat16_weights_are_ranked_as_stored():
    # 1 + 2**-9 and 1 + 2**-10 are both stored as 1.0 in bfloat16: the two weights tie and
    # both survive, even where XLA would keep their sum in float32 (excess precision).
    from jaxprune._src import masks as masks_lib

    x = jnp.array([1.0, 1.0, 0.1, 0.1], jnp.bfloat16)
    u = jnp.array([2.0**-9, 2.0**-10, 0.0, 0.0], jnp.bfloat16)
    want = [True, True, False, False]
    assert masks_lib.magnitude_threshold(x, 0.75, u)[0].tolist() == want
    assert masks_lib.global_threshold([x], 0.75, [u])[0][0].tolist() == want
    for m in masks_lib.layer_thresholds([x, x], 0.75, [u, u])[0]:
        assert m.tolist() == want
