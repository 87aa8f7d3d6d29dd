"""Every selection path gives the mask a full sort gives.

Paths: the single-leaf radix select, the batched per-layer selection (stacked rows and rows in
place), and both counting methods (histogram scatter-adds and scatter-free comparisons).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune._src import masks as masks_lib
from jaxprune._src import radix_select as selection

DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64]
SPECIAL = np.array([0.0, -0.0, 1e-45, 1e-310, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0])


def sorted_kth_key(keys: np.ndarray, k: int) -> int:
    return int(np.sort(keys.ravel())[::-1][k - 1])


def reference_mask(x: np.ndarray, sparsity: float) -> np.ndarray:
    """The mask a full sort gives: |x| >= the k-th largest key (NaN above inf)."""
    keys = np.asarray(selection.magnitude_keys(jnp.asarray(x)))
    k = int(selection.kept_count(x.size, sparsity))
    return keys >= sorted_kth_key(keys, k)


@st.composite
def leaves_strategy(draw):
    dtype = draw(st.sampled_from(DTYPES))
    count = draw(st.integers(1, 5))
    shapes = draw(
        st.lists(
            st.sampled_from([(3,), (2, 3), (4, 4), (1, 7), (2, 2, 3), (17,)]),
            min_size=count,
            max_size=count,
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    specials = draw(st.floats(0.0, 0.5))
    rng = np.random.default_rng(seed)
    leaves = []
    for shape in shapes:
        n = int(np.prod(shape))
        # Few distinct values: many ties.
        values = rng.choice(rng.normal(size=max(1, n // 3)) * 10.0 ** rng.integers(-3, 3), n)
        pick = rng.random(n) < specials
        values = np.where(pick, rng.choice(SPECIAL, n), values)
        leaves.append(values.reshape(shape).astype(np.dtype(dtype)))
    return leaves


@settings(max_examples=6, deadline=None)
@given(leaves=leaves_strategy(), sparsity=st.floats(0.0, 1.0))
def test_batched_masks_equal_per_leaf_masks_and_a_sort(leaves, sparsity):
    with jax.enable_x64(True):
        check_batched(leaves, sparsity)


def check_batched(leaves, sparsity):
    for method in ("histogram", "compare"):
        with selection.selection_method(method):
            batched, thresholds = masks_lib.layer_thresholds(
                [jnp.asarray(x) for x in leaves], sparsity
            )
        for x, m, t in zip(leaves, batched, thresholds):
            want = reference_mask(x, sparsity)
            np.testing.assert_array_equal(m, want, err_msg=method)
            single, single_t = masks_lib.magnitude_threshold(jnp.asarray(x), sparsity)
            np.testing.assert_array_equal(single, want)
            assert t.dtype == x.dtype
            np.testing.assert_array_equal(np.asarray(t), np.asarray(single_t))


@settings(max_examples=6, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    wide=st.booleans(),
    data=st.data(),
)
def test_both_methods_find_the_kth_key_of_every_row(sizes, seed, wide, data):
    with jax.enable_x64(True):
        check_rows(sizes, seed, wide, data)


def check_rows(sizes, seed, wide, data):
    rng = np.random.default_rng(seed)
    ktype = np.uint64 if wide else np.uint32
    top = np.iinfo(ktype).max
    # Keys from a few values (ties), the extremes included.
    extremes = np.array([0, top], ktype)
    pool = np.concatenate([rng.integers(0, top, size=5, dtype=ktype, endpoint=True), extremes])
    rows = [rng.choice(pool, size=n).astype(ktype) for n in sizes]
    ks = [data.draw(st.integers(1, n)) for n in sizes]
    parts = [
        selection.Part(selection.KeySource((jnp.asarray(r),), lambda a: a), i)
        for i, r in enumerate(rows)
    ]
    want = [sorted_kth_key(r, k) for r, k in zip(rows, ks)]
    for method in ("histogram", "compare"):
        got = selection.kth_largest_keys(parts, jnp.asarray(ks), method=method)
        assert [int(v) for v in got] == want, method


def test_stacked_rows_and_rows_in_place_agree():
    rng = np.random.default_rng(0)
    stack = jnp.asarray(rng.normal(size=(6, 5, 4)), jnp.float32)
    ks = jnp.asarray([1, 5, 10, 20, 7, 13])
    src = selection.magnitude_source(stack, jnp.uint32)
    for method in ("histogram", "compare"):
        stacked = selection.kth_largest_keys([selection.Part(src, 0, True)], ks, method=method)
        in_place = [
            selection.Part(selection.magnitude_source(stack[i], jnp.uint32), i) for i in range(6)
        ]
        alone = selection.kth_largest_keys(in_place, ks, method=method)
        np.testing.assert_array_equal(stacked, alone)
        keys = np.asarray(src.keys(stack))
        want = [sorted_kth_key(keys[i], int(k)) for i, k in enumerate(ks)]
        np.testing.assert_array_equal(stacked, want)


def test_large_leaf_in_place_with_chunks_equals_a_sort():
    # Above the CPU chunk size (2**18): the histogram streams over chunks of the leaf.
    x = jax.random.normal(jax.random.key(3), (300_001,))
    small = jax.random.normal(jax.random.key(4), (10, 10))
    masks, _ = masks_lib.layer_thresholds([x, small, small * 2], 0.37)
    for leaf, m in zip([x, small, small * 2], masks):
        np.testing.assert_array_equal(m, reference_mask(np.asarray(leaf), 0.37))


def test_kept_counts_equals_kept_count():
    sizes = [1, 2, 3, 7, 100, 2304, 12345, 2**31 - 1]
    for s in (0.0, 0.1, 0.5, 0.55, 0.999, 1.0, float("nan")):
        got = selection.kept_counts(sizes, s)
        np.testing.assert_array_equal(got, [selection.kept_count(n, s) for n in sizes])
    with pytest.raises(ValueError, match="2\\*\\*31"):
        selection.kept_counts([2**31], 0.5)


def test_bad_method_and_sparsity_shape():
    with pytest.raises(ValueError, match="method"):
        with selection.selection_method("sort"):
            pass
    with pytest.raises(ValueError, match="sparsity"):
        masks_lib.layer_thresholds([jnp.ones((2, 2)), jnp.ones(3)], jnp.zeros(3))
    with pytest.raises(TypeError, match="leaves"):
        masks_lib.layer_thresholds([jnp.ones((2, 2), jnp.int32)], 0.5)


def test_layer_pruning_uses_one_selection_and_compiles_once():
    params = {f"k{i}": jax.random.normal(jax.random.key(i), (6, 5)) for i in range(12)}
    params["big"] = jax.random.normal(jax.random.key(99), (7, 9))
    schedule = jp.polynomial_decay(0.0, 0.7, begin_step=0, end_step=4, frequency=1)
    tx = optax.chain(optax.sgd(0.1), jp.magnitude_pruning(schedule, recompute_from="updated"))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
        return optax.apply_updates(p, u), s

    for i in range(5):
        new_params, state = step(params, state)
        # The masks are those of each leaf ranked alone (w + u, as the step produces it).
        _, s = schedule(i)
        for name, w in params.items():
            want = reference_mask(np.asarray(w - 0.1), float(s))
            np.testing.assert_array_equal(jp.get_masks(state)[name], want)
        params = new_params
    assert step._cache_size() == 1
    # The program does not grow by a selection per leaf: as many scatters for 24 leaves as for 12.
    assert scatters(12) == scatters(24)


def scatters(n):
    params = {f"k{i}": jnp.ones((6, 5)) for i in range(n)}
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1))
    state = tx.init(params)
    return jax.jit(tx.update).lower(params, state, params).as_text().count("stablehlo.scatter")


def cond_outputs(tx, params):
    """Shapes of the outputs of every cond in the traced update of ``tx``."""
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
    return [v.aval.shape for e in jaxpr.eqns if e.primitive.name == "cond" for v in e.outvars]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_bool_masks_leave_the_turn_as_keys(scope):
    # With bool masks, a turn returns one key per leaf (a vector for a leaf of ranked slices),
    # and the masks are compared outside the cond: no mask-sized array passes through it.
    # Leaves of 2**16 entries or more (smaller ones keep their masks in the cond).
    params = {f"k{i}": jax.random.normal(jax.random.key(i), (256, 260)) for i in range(3)}
    params["stack"] = jax.random.normal(jax.random.key(9), (3, 256, 100))
    params["big"] = jax.random.normal(jax.random.key(99), (300, 250))
    sched = jp.constant_sparsity(0.6, begin_step=0, frequency=1)
    tx = jp.magnitude_pruning(sched, scope=scope, stacked_axes={"stack": 0})
    shapes = cond_outputs(tx, params)
    assert shapes and all(np.prod(s) <= 3 for s in shapes), shapes
    # With a small leaf beside them, its mask (and only its) passes through the cond.
    small = dict(params, small=jnp.arange(1.0, 31.0).reshape(6, 5))
    big = [s for s in cond_outputs(tx, small) if np.prod(s) > 3]
    assert big == [(6, 5)], big
    # Packed masks still pass through it as words, and both give the same masks.
    packed = jp.magnitude_pruning(
        sched, scope=scope, stacked_axes={"stack": 0}, mask_dtype="packed"
    )
    assert any(np.prod(s) > 3 for s in cond_outputs(packed, params))
    got = [jax.jit(t.update)(params, t.init(params), params)[1] for t in (tx, packed)]
    for name in params:
        np.testing.assert_array_equal(
            jp.get_masks(got[0])[name], jp.get_masks(got[1])[name], err_msg=name
        )
        for s in got:  # the kept fraction is the schedule's
            assert 0.3 < float(jp.get_masks(s)[name].mean()) < 0.5
