"""Nothing silently wrong: NaN sparsities, strict masks, misplaced transformations, NNX masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune._src.radix_select import kept_count

KEY = jax.random.key(0)


def _params():
    k1, k2 = jax.random.split(KEY)
    return {
        "Dense_0": {"kernel": jax.random.normal(k1, (8, 6)), "bias": jnp.zeros(6)},
        "head": {"kernel": jax.random.normal(k2, (6, 3)), "bias": jnp.zeros(3)},
    }


class NaNOnTurn(jp.PruningSchedule):
    """Prunes every step at 0.5, but the sparsity is NaN at the step ``bad``."""

    def __init__(self, bad):
        self.bad = bad

    def __call__(self, step):
        s = jnp.where(jnp.asarray(step) == self.bad, jnp.nan, 0.5)
        return jnp.asarray(True), s.astype(jnp.float32)


# --- NaN sparsities -----------------------------------------------------------------------


def test_kept_count_nan_keeps_everything():
    assert int(jax.jit(kept_count, static_argnums=0)(10, jnp.float32(jnp.nan))) == 10
    assert int(kept_count(10, jnp.float32(0.5))) == 5


def test_mask_functions_keep_every_entry_for_a_traced_nan():
    w = jax.random.normal(KEY, (16, 4))
    mask = jax.jit(jp.magnitude_mask)(w, jnp.float32(jnp.nan))
    assert bool(jnp.all(mask))
    masks = jax.jit(jp.global_magnitude_masks)({"a": w, "b": w * 2}, jnp.float32(jnp.nan))
    assert all(bool(jnp.all(m)) for m in jax.tree.leaves(masks))
    # A concrete NaN is refused at once.
    with pytest.raises(ValueError, match="sparsity"):
        jp.magnitude_mask(w, float("nan"))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_nan_sparsity_skips_the_turn_and_counts_it(scope):
    params = _params()
    tx = optax.chain(optax.sgd(0.0), jp.magnitude_pruning(NaNOnTurn(bad=1), scope=scope))
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.zeros_like, p), s, p))
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    before = jp.get_masks(state)
    assert float(jnp.mean(params["Dense_0"]["kernel"] == 0)) == 0.5
    updates, state = step(params, state)  # the NaN turn
    params = optax.apply_updates(params, updates)
    after = jp.get_masks(state)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    assert int(state[1].skipped_turns) == 1
    assert float(jnp.mean(params["Dense_0"]["kernel"] == 0)) == 0.5  # not everything pruned
    assert jp.pruning_summaries(state, params)["skipped_turns"] == 1.0
    _, state = step(params, state)
    assert int(state[1].skipped_turns) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda sch: jp.sparse(optax.sgd(0.0), jp.magnitude_ste(sch)),
        lambda sch: jp.sparse(optax.sgd(0.0), jp.random_ste(sch, key=KEY)),
        lambda sch: jp.sparse(optax.sgd(0.0), jp.saliency_pruning(sch)),
        lambda sch: jp.sparse(optax.sgd(0.0), jp.movement_pruning(sch)),
        lambda sch: optax.chain(optax.sgd(0.0), jp.random_pruning(sch, key=KEY)),
    ],
    ids=["magnitude_ste", "random_ste", "saliency", "movement", "random_pruning"],
)
def test_nan_sparsity_skips_the_turn_of_every_scheduled_algorithm(make):
    # The same rule as magnitude_pruning's (these states keep no count of skipped turns): the
    # masks of the turn before stay, neither every weight kept nor every weight pruned.
    params = _params()
    tx = make(NaNOnTurn(bad=1))
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.arange(x.size, dtype=x.dtype).reshape(x.shape), params)
    step = jax.jit(lambda s: tx.update(grads, s, params))
    _, state = step(state)
    before = jp.get_masks(state)
    assert int(before["Dense_0"]["kernel"].sum()) == 24  # half of 48, pruned at step 0
    _, state = step(state)  # the NaN turn
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jp.get_masks(state))):
        np.testing.assert_array_equal(a, b)


_ONE_HALF = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
_EVERY_LINK = {
    "magnitude_pruning": lambda md: jp.magnitude_pruning(_ONE_HALF, mask_dtype=md),
    "random_pruning": lambda md: jp.random_pruning(_ONE_HALF, key=KEY, mask_dtype=md),
    "acdc": lambda md: jp.acdc(
        0.5, warmup_steps=1, phase_steps=2, final_compressed_steps=2, total_steps=7, mask_dtype=md
    ),
    "static_sparse": lambda md: jp.sparse(
        optax.sgd(0.1), jp.static_sparse(0.5, key=KEY), mask_dtype=md
    ),
    "rigl": lambda md: jp.sparse(
        optax.sgd(0.1), jp.rigl(0.5, key=KEY, update_every=1, end_step=5), mask_dtype=md
    ),
    "magnitude_ste": lambda md: jp.sparse(
        optax.sgd(0.1), jp.magnitude_ste(_ONE_HALF), mask_dtype=md
    ),
    "movement_pruning": lambda md: jp.sparse(
        optax.sgd(0.1), jp.movement_pruning(_ONE_HALF), mask_dtype=md
    ),
}


@pytest.mark.parametrize("mask_dtype", ["bool", "packed"])
@pytest.mark.parametrize("name", sorted(_EVERY_LINK))
def test_update_refuses_params_of_another_structure(name, mask_dtype):
    # Masks are stored in the params' flattening order: params renamed or missing a leaf at
    # update would pair them with the wrong weights. Bool and packed masks alike say which
    # leaves differ.
    w = jnp.arange(1.0, 17.0).reshape(4, 4)
    tx = _EVERY_LINK[name](mask_dtype)
    state = tx.init({"a": w, "b": w + 1})
    for other, only in [({"b": w, "c": w + 1}, "'c'"), ({"a": w}, "'b'")]:
        with pytest.raises(ValueError, match=f"another tree structure.*{only}"):
            tx.update(jax.tree.map(jnp.zeros_like, other), state, other)
    # A leaf of another shape is named too.
    with pytest.raises(ValueError, match=r"leaf 'b' of shape \(4, 5\).*mask of shape \(4, 4\)"):
        other = {"a": w, "b": jnp.ones((4, 5))}
        tx.update(jax.tree.map(jnp.zeros_like, other), state, other)
    # The same paths in other containers are refused too.
    other = {"a": (w,), "b": w + 1}
    state = tx.init({"a": [w], "b": w + 1})
    with pytest.raises(ValueError, match="same leaf paths in other containers"):
        tx.update(jax.tree.map(jnp.zeros_like, other), state, other)


@pytest.mark.parametrize(
    "make, b_after",
    [
        (lambda: jp.magnitude_pruning(_ONE_HALF, scope="global"), 2.0),
        (
            lambda: jp.acdc(
                0.5,
                warmup_steps=0,
                phase_steps=2,
                final_compressed_steps=2,
                total_steps=6,
                scope="global",
            ),
            2.0,
        ),
        (lambda: jp.sparse(optax.sgd(0.1), jp.saliency_pruning(_ONE_HALF, scope="global")), 0.9),
        (lambda: jp.sparse(optax.sgd(0.1), jp.movement_pruning(_ONE_HALF, scope="global")), 0.9),
    ],
    ids=["magnitude_pruning", "acdc", "saliency", "movement"],
)
def test_global_scope_without_a_prunable_leaf_prunes_nothing(make, b_after):
    # Biases and scalars only: the default rule selects nothing, as in layer scope (the global
    # ones used to fail at the first update, ranking an empty list of leaves).
    params = {"b": jnp.ones(4), "s": jnp.ones(())}
    tx = make()
    updates, state = jax.jit(tx.update)(params, tx.init(params), params)
    assert all(np.shape(m) == () and bool(m) for m in jax.tree.leaves(jp.get_masks(state)))
    # Nothing pruned: the updates are the optimizer's alone (the gradient itself for a link
    # alone, -0.1 times it inside sparse(sgd(0.1))).
    np.testing.assert_allclose(optax.apply_updates(params, updates)["b"], b_after)


@pytest.mark.parametrize(
    "returned",
    [0.5, None, (True,), (True, "0.5"), (True, jnp.full(2, 0.5)), (True, 0.5, 1), (True, None)],
    ids=["float", "none", "one", "string", "vector", "three", "none-sparsity"],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda sch: jp.magnitude_pruning(sch),
        lambda sch: jp.random_pruning(sch, key=KEY),
        lambda sch: jp.sparse(optax.sgd(0.1), jp.magnitude_ste(sch)),
        lambda sch: jp.sparse(optax.sgd(0.1), jp.movement_pruning(sch)),
    ],
    ids=["magnitude_pruning", "random_pruning", "magnitude_ste", "movement"],
)
def test_a_custom_schedule_of_the_wrong_form_is_named(make, returned):
    params = {"w": jnp.ones((4, 4))}
    tx = make(lambda step: returned)
    state = tx.init(params)
    with pytest.raises(TypeError, match="a schedule must return"):
        tx.update(params, state, params)


def test_get_masks_with_two_pruning_states_names_them():
    params = {"w": jnp.ones((4, 4))}
    state = jp.sparse(optax.sgd(0.1), jp.static_sparse(0.5, key=KEY)).init(params)
    links = jp.random_pruning(_ONE_HALF, key=KEY).init(params)
    with pytest.raises(ValueError, match=r"found 2 \(SparseMaskState, RandomPruningState\)"):
        jp.get_masks((state, links))
    with pytest.raises(ValueError, match="found 0"):
        jp.get_masks(optax.sgd(0.1).init(params))


def test_packed_masks_with_nnx_params_and_float_flags():
    # Packed masks are stored without nnx Variable wrappers; the structure check knows it.
    # A schedule's float flag is read as a bool.
    from flax import nnx

    class Two(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 4, rngs=rngs)

    params = nnx.state(Two(nnx.Rngs(0)), nnx.Param)
    for tx in [
        jp.magnitude_pruning(_ONE_HALF, mask_dtype="packed"),
        jp.random_pruning(_ONE_HALF, key=KEY, mask_dtype="packed"),
        jp.sparse(optax.sgd(0.1), jp.magnitude_ste(_ONE_HALF), mask_dtype="packed"),
        jp.magnitude_pruning(lambda step: (jnp.float32(1.0), jnp.float32(0.5))),
    ]:
        _, state = tx.update(params, tx.init(params), params)
        assert int(jp.get_masks(state)["l1"]["kernel"].sum()) == 32


# --- apply_masks is strict ----------------------------------------------------------------


def test_apply_masks_refuses_broadcasting_and_non_bool_masks():
    params = {"w": jnp.ones((4, 3))}
    with pytest.raises(ValueError, match=r"'w'.*shape \(1, 3\)"):
        jp.apply_masks(params, {"w": jnp.ones((1, 3), bool)})
    with pytest.raises(TypeError, match="'w'.*float32.*bool"):
        jp.apply_masks(params, {"w": jnp.ones((4, 3))})
    with pytest.raises(ValueError, match="without a mask: \\['v'\\]"):
        jp.apply_masks({"w": jnp.ones(2), "v": jnp.ones(2)}, {"w": jnp.ones(2, bool)})
    out = jp.apply_masks(params, {"w": jnp.bool_(True)})
    np.testing.assert_array_equal(out["w"], params["w"])


# --- structures checked at init -----------------------------------------------------------


def test_custom_structure_with_a_wrong_mask_shape_fails_at_init():
    def transposed(x, s):
        return jnp.ones(x.shape[::-1], bool), jnp.zeros((), x.dtype)

    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5), structure={"Dense_0": transposed})
    with pytest.raises(ValueError, match=r"Dense_0/kernel.*\(6, 8\).*\(8, 6\)"):
        tx.init(_params())

    def no_threshold(x, s):
        return jnp.ones(x.shape, bool)

    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5), structure=no_threshold)
    with pytest.raises(TypeError, match=r"\(mask, threshold\)"):
        tx.init(_params())


# --- leaf selection ----------------------------------------------------------------------


def test_exclude_and_the_default_rule():
    params = _params()
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5), exclude="head")
    masks = jp.get_masks(tx.init(params))
    assert masks["Dense_0"]["kernel"].shape == (8, 6)
    assert masks["head"]["kernel"].shape == ()
    with pytest.raises(ValueError, match="exclude='nothing' matches no pruned leaf"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), exclude="nothing").init(params)
    with pytest.raises(ValueError, match="removes every pruned leaf"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), exclude="kernel").init(params)
    # The default rule, extended by a predicate.
    rule = lambda p, x: jp.default_rule(p, x) and not p.startswith("head")  # noqa: E731
    masks = jp.get_masks(jp.magnitude_pruning(jp.constant_sparsity(0.5), prune=rule).init(params))
    assert masks["head"]["kernel"].shape == () and masks["Dense_0"]["kernel"].ndim == 2
    assert not jp.default_rule("MultiHeadAttention_0/query/bias", jnp.ones((4, 8)))


# --- misplaced transformations -----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optax.chain(p, optax.adam(0.1)),
        lambda p: optax.chain(optax.sgd(0.1), p, optax.clip_by_global_norm(0.01)),
        lambda p: optax.chain(optax.sgd(0.1), p, optax.scale(0.5)),
    ],
    ids=["before-adam", "before-clip", "mid-chain"],
)
def test_check_pruned_zero_catches_a_misplaced_pruning_transformation(make):
    params = _params()
    prune = jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
    tx = make(prune)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    with pytest.raises(jp.PrunedWeightsNotZeroError, match="not the last element"):
        jp.check_pruned_zero(optax.apply_updates(params, updates), state)


def test_check_pruned_zero_passes_when_last():
    params = _params()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adam(0.1),
        jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1)),
    )
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
        jp.check_pruned_zero(params, state)
    with pytest.raises(ValueError, match="no pruning state"):
        jp.check_pruned_zero(params, optax.sgd(0.1).init(params))


# --- summaries speak one vocabulary --------------------------------------------------------


def test_summaries_share_one_vocabulary():
    params = _params()
    tx = optax.chain(
        optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.75, begin_step=0, frequency=1))
    )
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    # No natural zeros: biases moved by -0.1, so the only zeros are the pruned weights.
    masks = jp.get_masks(state)
    logs = jp.pruning_summaries(state, params)
    summary = jp.sparsity_summary(params, masks)
    assert logs["pruned/sparsity"] == summary["pruned"]
    assert logs["overall/sparsity"] == summary["overall"]
    # tfmot's rule keeps round_half_even(48 * 0.25) = 12 and round_half_even(18 * 0.25) = 4.
    assert logs["overall/sparsity"] == pytest.approx((36 + 14) / (48 + 18 + 9))


# --- NNX: one representation of masks ------------------------------------------------------


def test_nnx_masks_work_with_nnx_state_everywhere():
    model = nnx.Sequential(nnx.Linear(6, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    tx = optax.chain(
        optax.sgd(0.1), jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 6))) ** 2))(model)
    optimizer.update(model, grads)
    masks = jp.get_masks(optimizer.opt_state)
    params = nnx.state(model, nnx.Param)

    masked = jp.apply_masks(params, masks)
    assert jax.tree.structure(masked) == jax.tree.structure(params)  # Param wrappers kept
    stripped = jp.strip(params, optimizer.opt_state)
    by_map = jax.tree.map(lambda m, p: jnp.where(m, p[...], 0.0), masks, params)
    for a, b, c in zip(
        jax.tree.leaves(masked), jax.tree.leaves(stripped), jax.tree.leaves(by_map), strict=True
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    kernel = params["layers"][0]["kernel"][...]
    assert float(jnp.mean(kernel == 0)) == 0.5
    jp.check_pruned_zero(params, optimizer.opt_state)
    assert "layers/0/kernel *" in jp.sparsity_table(params, masks)
    # The pure-dict form of the state works too.
    pure = nnx.to_pure_dict(params)
    np.testing.assert_array_equal(
        jp.apply_masks(pure, masks)["layers"][0]["kernel"], masked["layers"][0]["kernel"][...]
    )


# --- Fisher pruning with NaN signals -------------------------------------------------------


def test_fisher_prune_removes_nothing_when_signals_are_nan():
    masks = {"a": jnp.ones(3), "b": jnp.ones(2)}
    signals = {"a": jnp.array([0.5, jnp.nan, 0.9]), "b": jnp.array([0.3, 0.1])}
    out = jp.fisher.fisher_prune(signals, masks)
    for k in masks:
        np.testing.assert_array_equal(out[k], masks[k])
    # A NaN signal of a removed feature does not matter.
    masks = {"a": jnp.array([1.0, 0.0, 1.0]), "b": jnp.ones(2)}
    out = jp.fisher.fisher_prune(signals, masks)
    np.testing.assert_array_equal(out["b"], jnp.array([1.0, 0.0]))


def test_fisher_pruning_skips_nan_turns_and_counts_them():
    masks = {"h": jnp.ones(4)}
    tx = jp.fisher_pruning(masks, frequency=1)
    state = tx.init({})
    nan_grads = {"h": jnp.full((2, 4), jnp.nan)}
    _, state = tx.update({}, state, {}, mask_grads=nan_grads)
    np.testing.assert_array_equal(state.channel_masks["h"], jnp.ones(4))
    assert int(state.skipped_turns) == 1 and int(state.num_pruned) == 0
    good = {"h": jnp.arange(8.0).reshape(2, 4) + 1.0}
    tx2 = jp.fisher_pruning(masks, frequency=1)
    _, s2 = tx2.update({}, tx2.init({}), {}, mask_grads=good)
    assert int(s2.num_pruned) == 1 and int(s2.skipped_turns) == 0
    assert math.isclose(float(jnp.sum(s2.channel_masks["h"])), 3.0)
