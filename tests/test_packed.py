"""magnitude_pruning(mask_dtype="packed"): masks 1 bit per parameter, bit for bit as bool."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune._src.packed import PackedMask, is_packed, num_words, pack, unpack


def mlp_params(key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "params": {
            "Dense_0": {"kernel": jax.random.normal(k1, (12, 16)), "bias": jnp.zeros(16)},
            "Dense_1": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)},
            # 15 entries: the last word is padded.
            "Embed_0": {"embedding": jax.random.normal(k3, (5, 3))},
        },
    }


def loss_fn(params, x, y):
    p = params["params"]
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
    out = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None]
    return jnp.mean((out - y) ** 2) + 1e-3 * jnp.sum(p["Embed_0"]["embedding"] ** 2)


def batch(i):
    x = jax.random.normal(jax.random.key(100 + i), (8, 12))
    return x, jnp.sin(x[:, :4])


def bits(x):
    x = np.asarray(x)
    return x.dtype, x.shape, x.tobytes()


def same_bits(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(bits(x) == bits(y) for x, y in zip(la, lb, strict=True))


def run(tx, params, steps):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    history = []
    for i in range(steps):
        params, state = step(params, state, *batch(i))
        history.append((params, state))
    return history, step


# ------------------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("shape", [(), (1,), (3,), (32,), (33,), (64,), (7, 9), (2, 3, 64), (0,)])
def test_pack_unpack_round_trip(shape):
    mask = np.random.default_rng(0).random(shape) > 0.4
    words = pack(mask)
    assert words.dtype == jnp.uint32 and words.shape == (num_words(mask.size),)
    assert np.array_equal(unpack(words, shape), mask)
    jitted = jax.jit(unpack, static_argnums=1)(jax.jit(pack)(mask), shape)
    assert np.array_equal(jitted, mask)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_bit_order_is_flat_little_endian_with_zero_padding(values):
    words = np.asarray(pack(np.array(values)))
    want = [0] * num_words(len(values))
    for i, v in enumerate(values):
        want[i // 32] |= int(v) << (i % 32)
    assert words.tolist() == want
    assert unpack(words, (len(values),)).tolist() == values


def test_unpack_checks_the_number_of_words():
    with pytest.raises(ValueError, match="words"):
        unpack(jnp.zeros(2, jnp.uint32), (100,))


def test_packed_mask_is_a_pytree_node_with_a_static_shape():
    pm = PackedMask.from_bool(np.ones((5, 3), bool))
    leaves, treedef = jax.tree.flatten(pm)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.uint32
    assert jax.tree.unflatten(treedef, leaves).shape == (5, 3)
    assert np.asarray(pm.words).tolist() == [2**15 - 1]  # padding bits are zero
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(pm)[0]]
    assert paths == [".words"]


# ----------------------------------------------------------------- in magnitude_pruning


def test_unknown_mask_dtype_is_a_value_error():
    with pytest.raises(ValueError, match=r"mask_dtype must be one of \('bool', 'packed'\)"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), mask_dtype="uint8")
    with pytest.raises(ValueError, match="mask_dtype"):
        jp.magnitude_pruning(jp.constant_sparsity(0.5), mask_dtype=bool)


BAD_DTYPE = {
    "random_pruning": lambda d: jp.random_pruning(jp.constant_sparsity(0.5), key=0, mask_dtype=d),
    "acdc": lambda d: jp.acdc(
        0.5, warmup_steps=0, phase_steps=1, final_compressed_steps=1, total_steps=3, mask_dtype=d
    ),
    "pruning_from_config": lambda d: jp.tf.pruning_from_config("target_sparsity=0.5", mask_dtype=d),
}


@pytest.mark.parametrize("name", sorted(BAD_DTYPE))
def test_every_transformation_checks_mask_dtype(name):
    with pytest.raises(ValueError, match=r"mask_dtype must be one of \('bool', 'packed'\)"):
        BAD_DTYPE[name]("uint8")
    with pytest.raises(ValueError, match="mask_dtype"):
        BAD_DTYPE[name](None)


def test_packed_acdc_fills_dense_phases_without_padding_bits():
    """A decompressed phase stores all-True masks; the padding bits of the last word stay 0."""
    params = {"w": jnp.linspace(-1.0, 1.0, 35).reshape(5, 7)}  # 35 bits: 2 words, 29 padding

    def make(mask_dtype):
        return jp.acdc(
            0.5,
            warmup_steps=0,
            phase_steps=1,
            final_compressed_steps=1,
            total_steps=3,
            mask_dtype=mask_dtype,
        )

    packed_tx, bool_tx = make("packed"), make("bool")
    state, bool_state = packed_tx.init(params), bool_tx.init(params)
    zeros = {"w": jnp.zeros((5, 7))}
    words = []
    for _ in range(3):  # compressed, dense, final compressed
        _, state = packed_tx.update(zeros, state, params)
        _, bool_state = bool_tx.update(zeros, bool_state, params)
        words.append(np.asarray(state.masks["w"].words))
        np.testing.assert_array_equal(jp.get_masks(state)["w"], bool_state.masks["w"])
    np.testing.assert_array_equal(words[1], [0xFFFFFFFF, 0b111])
    kept = [sum(bin(int(x)).count("1") for x in w) for w in words]
    assert kept == [18, 35, 18]  # round(35 * 0.5) = 18 kept when compressed


def test_packed_state_holds_uint32_words():
    params = mlp_params()
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5), mask_dtype="packed")
    state = tx.init(params)
    m = state.masks["params"]
    for name, leaf in [("Dense_0", "kernel"), ("Dense_1", "kernel"), ("Embed_0", "embedding")]:
        pm = m[name][leaf]
        x = params["params"][name][leaf]
        assert isinstance(pm, PackedMask) and pm.shape == x.shape
        assert pm.words.dtype == jnp.uint32 and pm.words.shape == (math.ceil(x.size / 32),)
    assert m["Dense_0"]["bias"].shape == () and m["Dense_0"]["bias"].dtype == jnp.bool_
    # eval_shape, as checkpoint targets are built.
    abstract = jax.eval_shape(tx.init, params)
    assert abstract.masks["params"]["Embed_0"]["embedding"].words.shape == (1,)


CASES = {
    "layer": dict(scope="layer"),
    "global": dict(scope="global"),
    "structure": dict(
        structure={"Dense_0": jp.BlockSparsity((2, 2)), "Dense_1": jp.NMSparsity(2, 4)}
    ),
    "global+structure": dict(scope="global", structure={"Dense_0": jp.BlockSparsity((2, 2))}),
}


@pytest.mark.parametrize("recompute_from", ["current", "updated"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_trajectories_are_bit_identical_to_bool(case, recompute_from):
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=1, end_step=7, frequency=2)
    params = mlp_params()
    runs = {}
    for dtype in ("bool", "packed"):
        prune = jp.magnitude_pruning(
            schedule, recompute_from=recompute_from, mask_dtype=dtype, **CASES[case]
        )
        runs[dtype] = run(optax.chain(optax.adam(0.05), prune), params, 9)
    for (pb, sb), (pp, sp) in zip(runs["bool"][0], runs["packed"][0], strict=True):
        assert same_bits(pb, pp)
        assert same_bits(jp.get_masks(sb), jp.get_masks(sp))
        assert same_bits(sb[0], sp[0])  # Adam's moments
        bool_state, packed_state = jp.get_pruning_state(sb), jp.get_pruning_state(sp)
        assert same_bits(bool_state.thresholds, packed_state.thresholds)
        assert int(bool_state.count) == int(packed_state.count)
        # The packed words are the packing of the bool masks.
        words = jax.tree.map(
            lambda m: m.words if isinstance(m, PackedMask) else m, sp[1].masks, is_leaf=is_packed
        )
        assert same_bits(words, jax.tree.map(lambda m: pack(m) if np.ndim(m) else m, sb[1].masks))
    final = jp.get_masks(runs["packed"][0][-1][1])
    kernel = final["params"]["Dense_0"]["kernel"]
    assert kernel.dtype == jnp.bool_ and 0 < float(jnp.mean(~kernel)) < 1
    assert runs["packed"][1]._cache_size() == 1  # no recompilation


def test_stacked_axes_packed_is_bit_identical():
    params = {"layers": {"kernel": jax.random.normal(jax.random.key(3), (3, 10, 7))}}
    grads = {"layers": {"kernel": jax.random.normal(jax.random.key(4), (3, 10, 7))}}
    schedule = jp.constant_sparsity(0.6, begin_step=0, frequency=1)
    out = {}
    for dtype in ("bool", "packed"):
        tx = optax.chain(
            optax.adam(0.1),
            jp.magnitude_pruning(schedule, stacked_axes={"layers/": 0}, mask_dtype=dtype),
        )
        state = tx.init(params)
        p = params
        for _ in range(3):
            u, state = jax.jit(tx.update)(grads, state, p)
            p = optax.apply_updates(p, u)
        out[dtype] = (p, jp.get_masks(state), jp.get_pruning_state(state).thresholds)
    assert same_bits(out["bool"], out["packed"])


def pruned_pair(**kwargs):
    """Params and states after a few steps, for bool and packed masks."""
    schedule = jp.constant_sparsity(0.5, begin_step=0, frequency=1)
    out = {}
    for dtype in ("bool", "packed"):
        tx = optax.chain(optax.adam(0.05), jp.magnitude_pruning(schedule, mask_dtype=dtype))
        history, _ = run(tx, mlp_params(), 3)
        out[dtype] = history[-1]
    return out


def test_accessors_on_a_packed_state():
    out = pruned_pair()
    (pb, sb), (pp, sp) = out["bool"], out["packed"]
    assert same_bits(pb, pp)
    masks = jp.get_masks(sp)
    assert same_bits(masks, jp.get_masks(sb))
    assert masks["params"]["Embed_0"]["embedding"].shape == (5, 3)
    assert masks["params"]["Embed_0"]["embedding"].dtype == jnp.bool_
    # apply_masks: with get_masks, and with the packed masks of the state directly.
    assert same_bits(jp.apply_masks(pp, masks), jp.apply_masks(pb, jp.get_masks(sb)))
    assert same_bits(jp.apply_masks(pp, sp[1].masks), jp.apply_masks(pb, jp.get_masks(sb)))
    jp.check_pruned_zero(pp, sp)
    assert jp.pruning_summaries(sp, pp) == jp.pruning_summaries(sb, pb)
    assert jp.pruning_summaries(sp)["params/Dense_0/kernel/sparsity"] == 0.5
    assert same_bits(jp.strip(pp, sp), jp.strip(pb, sb))
    assert jp.sparsity_table(pp, masks) == jp.sparsity_table(pb, jp.get_masks(sb))
    assert jp.sparsity_table(pp, sp[1].masks) == jp.sparsity_table(pb, jp.get_masks(sb))
    assert jp.sparsity_summary(pp, sp[1].masks) == jp.sparsity_summary(pb, jp.get_masks(sb))
    for name in ("get_thresholds", "get_weight_sparsity"):
        assert getattr(jp.tf, name)(sp) == getattr(jp.tf, name)(sb)
    for name in ("get_weights", "get_masked_weights"):
        assert same_bits(getattr(jp.tf, name)(pp, sp), getattr(jp.tf, name)(pb, sb))


def test_check_pruned_zero_catches_a_misplaced_packed_pruning():
    params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
    prune = jp.magnitude_pruning(
        jp.constant_sparsity(0.5, begin_step=0, frequency=1), mask_dtype="packed"
    )
    bad = optax.chain(prune, optax.adam(0.1))
    state = bad.init(params)
    updates, state = bad.update(params, state, params)
    with pytest.raises(jp.PrunedWeightsNotZeroError, match="w \\(2 of 2\\)"):
        jp.check_pruned_zero(optax.apply_updates(params, updates), state)


def test_nnx_optimizer_with_packed_masks():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(12, 33, rngs=rngs)
            self.l2 = nnx.Linear(33, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    prune = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=2), mask_dtype="packed")
    optimizer = nnx.Optimizer(model, optax.chain(optax.adam(1e-2), prune), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for i in range(5):
        step(model, optimizer, *batch(i))
    kernel = model.l1.kernel[...]
    masks = jp.get_masks(optimizer.opt_state)
    assert masks["l1"]["kernel"].shape == (12, 33)
    assert bool(jnp.all((kernel != 0) == masks["l1"]["kernel"]))
    assert float(jnp.mean(kernel == 0)) == pytest.approx(0.5, abs=0.01)
    jp.check_pruned_zero(nnx.state(model, nnx.Param), optimizer.opt_state)


def test_orbax_round_trip_keeps_masks_packed(tmp_path):
    params = mlp_params()
    tx = optax.chain(
        optax.adam(0.05),
        jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0), mask_dtype="packed"),
    )
    history, _ = run(tx, params, 2)
    state = {"params": history[-1][0], "opt_state": history[-1][1]}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(2, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()
        target = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
        restored = mngr.restore(2, args=ocp.args.StandardRestore(target))
    assert same_bits(restored, state)
    words = restored["opt_state"][1].masks["params"]["Dense_0"]["kernel"]
    assert isinstance(words, PackedMask) and words.words.dtype == jnp.uint32
    assert same_bits(jp.get_masks(restored["opt_state"]), jp.get_masks(state["opt_state"]))
    with ocp.CheckpointManager(
        tmp_path / "ckpt", item_handlers=ocp.StandardCheckpointHandler()
    ) as mngr:
        stored = mngr.item_metadata(2).tree
    on_disk = stored["opt_state"][1]["masks"]["params"]["Dense_0"]["kernel"]["words"]
    assert on_disk.dtype == np.uint32 and tuple(on_disk.shape) == (6,)
