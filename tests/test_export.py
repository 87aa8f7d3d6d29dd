"""Strip (TensorFlow's strip_pruning_vars), BCOO export and compact saving."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import sparse

import jaxprune as jp
from jaxprune._src.export import load_sparse, save_sparse, strip, to_bcoo
from jaxprune._src.oneshot import prune_weights
from jaxprune._src.transform import MagnitudePruningState


def bits(x):
    x = np.asarray(x)
    return x.reshape(-1).view(np.dtype(f"u{x.dtype.itemsize}"))


def assert_bit_exact(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(bits(got), bits(want))


def pruning_run():
    params = {
        "Dense_0": {
            "kernel": jnp.array([[1.0, -2, 3, -4], [5, -6, 7, -8], [9, -10, 11, -12]]),
            "bias": jnp.ones(4),
        },
    }
    tx = optax.chain(
        optax.sgd(1.0), jp.magnitude_pruning(jp.constant_sparsity(0.5, begin_step=0, frequency=1))
    )
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    return params, optax.apply_updates(params, updates), state


def test_strip_fuses_masks_and_drops_state():
    raw, trained, state = pruning_run()
    # Stripping the raw (unmasked) weights fuses the masks in.
    stripped = strip(raw, state)
    assert jax.tree.structure(stripped) == jax.tree.structure(raw)
    want = np.array([[0, 0, 0, 0], [0, 0, 7, -8], [9, -10, 11, -12]], np.float32)
    assert_bit_exact(stripped["Dense_0"]["kernel"], want)  # +0.0 where -2, -4, -6 were
    assert stripped["Dense_0"]["bias"] is raw["Dense_0"]["bias"]
    # Stripping the trained params changes nothing: they are already exactly zero there.
    for a, b in zip(jax.tree.leaves(strip(trained, state)), jax.tree.leaves(trained), strict=True):
        assert_bit_exact(a, b)
    with pytest.raises(ValueError, match="do not match"):
        strip({"w": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match="found 0"):
        strip(raw, optax.sgd(1.0).init(raw))


def test_strip_nnx_state():
    # Training the nnx.split state with a plain optax loop: params and masks both hold
    # nnx.Param wrappers, and the stripped tree keeps them.
    _, params = nnx.split(nnx.Linear(8, 4, rngs=nnx.Rngs(0)))
    _, masks = prune_weights(params, 0.75)
    state = MagnitudePruningState(
        count=jnp.int32(1), masks=masks, thresholds=jax.tree.map(lambda x: x[...].max(), params)
    )
    stripped = strip(params, (optax.EmptyState(), state))
    assert jax.tree.structure(stripped) == jax.tree.structure(params)
    assert float(jnp.mean(stripped["kernel"][...] == 0)) == 0.75
    np.testing.assert_array_equal(
        stripped["kernel"][...], jnp.where(masks["kernel"][...], params["kernel"][...], 0.0)
    )
    assert stripped["bias"][...] is params["bias"][...]


def test_to_bcoo_round_trip_exact():
    rng = np.random.default_rng(0)

    def kernel(shape, kept, dtype):
        keep = np.zeros(np.prod(shape), bool)
        keep[rng.permutation(keep.size)[:kept]] = True
        keep = keep.reshape(shape)
        return jnp.asarray(rng.normal(size=shape), dtype), jnp.asarray(keep)

    (a, mask_a), (c, mask_c) = (
        kernel((16, 12), 38, jnp.float32),
        kernel((2, 3, 4, 5), 24, jnp.bfloat16),
    )
    params = {"a": a, "b": jnp.asarray(rng.normal(size=(12,)), jnp.float32), "c": c}
    masks = {"a": mask_a, "b": jnp.bool_(True), "c": mask_c}
    pruned = {"a": jnp.where(mask_a, a, 0.0), "b": params["b"], "c": jnp.where(mask_c, c, 0)}
    for sp in (to_bcoo(pruned), to_bcoo(params, masks=masks)):
        assert isinstance(sp["a"], sparse.BCOO) and isinstance(sp["c"], sparse.BCOO)
        assert sp["b"] is params["b"]  # not pruned: returned as it is
        assert sp["a"].nse == 38
        assert sp["c"].nse == 24 and sp["c"].dtype == jnp.bfloat16
        for key in ("a", "c"):
            assert_bit_exact(sp[key].todense(), pruned[key])
    # A regex rule chooses the leaves when there are no masks.
    sp = to_bcoo(pruned, prune="^a$")
    assert isinstance(sp["a"], sparse.BCOO) and not isinstance(sp["c"], sparse.BCOO)
    # -0.0 counts as zero: it is not stored and comes back as +0.0.
    sp = to_bcoo({"w": jnp.array([[-0.0, 1.0], [0.0, 0.0]])})
    assert sp["w"].nse == 1
    assert_bit_exact(sp["w"].todense(), np.array([[0.0, 1.0], [0.0, 0.0]], np.float32))
    # An all-zero leaf stores nothing.
    assert to_bcoo({"w": jnp.zeros((3, 3))})["w"].nse == 0
    with pytest.raises(ValueError, match="not both"):
        to_bcoo(params, masks=masks, prune="a")
    with pytest.raises(ValueError, match="matches no leaf"):
        to_bcoo(params, prune="z")
    # A BCOO leaf works in a matmul like the dense one.
    x = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)
    np.testing.assert_allclose(x @ to_bcoo(pruned)["a"], x @ pruned["a"], rtol=1e-5, atol=1e-6)


def sparse_model(dtype, sparsity=0.9):
    """A model whose kernels are 90% zeros (random positions), built without compiling."""
    rng = np.random.default_rng(1)

    def kernel(*shape):
        return jnp.asarray(
            np.where(rng.random(shape) >= sparsity, rng.normal(size=shape), 0.0), dtype
        )

    return {
        "Dense_0": {
            "kernel": kernel(256, 128),
            "bias": jnp.asarray(rng.normal(size=(128,)), dtype),
        },
        "Conv_0": {"kernel": kernel(3, 3, 16, 32)},
        "layers": [{"scale": jnp.ones((4,), dtype)}, {"count": jnp.arange(3, dtype=jnp.int32)}],
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_save_load_bit_exact_and_small(tmp_path, dtype):
    params = sparse_model(dtype)
    path = os.fspath(tmp_path / "model.npz")
    save_sparse(path, params)
    loaded = load_sparse(path, like=params)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert isinstance(got, np.ndarray)
        assert_bit_exact(got, want)
    dense_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
    size = os.path.getsize(path)
    assert size * 4 <= dense_bytes, (size, dense_bytes)
    # Smaller than numpy's own compressed dense file, too.
    dense_path = tmp_path / "dense.npz"
    np.savez_compressed(
        dense_path, *[np.asarray(x).view(np.uint8) for x in jax.tree.leaves(params)]
    )
    assert size < os.path.getsize(dense_path)


def test_save_load_nested_dicts_and_special_values():
    x = np.array([[np.nan, -0.0, 0.0, 1e-45], [np.inf, -np.inf, -2.5, 0.0]], np.float32)
    x[0, 0] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0]  # NaN payload
    params = {
        "a": {"w": jnp.asarray(x), "n": np.int8(-3)},
        "list": [np.zeros((5, 5)), np.array([True, False])],
        "f64": np.array([0.1, 0.0, 0.0, 0.0]),
        "empty": np.zeros((0, 3), np.float32),
    }
    f = io.BytesIO()
    save_sparse(f, params)
    f.seek(0)
    loaded = load_sparse(f)
    assert set(loaded) == {"a", "list", "f64", "empty"}
    want = x.copy()
    want[0, 1] = 0.0  # zeros are not stored: -0.0 comes back as +0.0
    assert_bit_exact(loaded["a"]["w"], want)
    assert loaded["a"]["n"] == -3 and loaded["a"]["n"].dtype == np.int8
    assert_bit_exact(loaded["list"]["0"], np.zeros((5, 5)))
    assert_bit_exact(loaded["list"]["1"], np.array([True, False]))
    assert_bit_exact(loaded["f64"], params["f64"])
    assert loaded["empty"].shape == (0, 3)
    # A single array is a tree too.
    f = io.BytesIO()
    save_sparse(f, jnp.array([0.0, 3.0]))
    f.seek(0)
    assert_bit_exact(load_sparse(f), np.array([0.0, 3.0], np.float32))


def test_save_without_suffix_and_no_pickle(tmp_path):
    params = sparse_model(jnp.float32)
    save_sparse(tmp_path / "model", params)  # numpy adds .npz
    path = tmp_path / "model.npz"
    with np.load(path, allow_pickle=False) as z:  # every array loads without pickle
        assert all(z[k].dtype == np.uint8 for k in z.files)
    loaded = load_sparse(path)
    assert_bit_exact(loaded["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert_bit_exact(loaded["layers"]["1"]["count"], np.arange(3, dtype=np.int32))


def test_load_into_like_errors_and_shape_dtype_structs(tmp_path):
    params = {"w": jnp.zeros((4, 4)), "b": jnp.ones(4)}
    path = tmp_path / "p.npz"
    save_sparse(path, params)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    loaded = load_sparse(path, like=abstract)
    assert_bit_exact(loaded["b"], np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"missing from the file \['c'\]"):
        load_sparse(path, like={**params, "c": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"in the file but not in like \['b'\]"):
        load_sparse(path, like={"w": params["w"]})
    with pytest.raises(ValueError, match="'w' was saved as float32"):
        load_sparse(path, like={"w": jnp.zeros((4, 5)), "b": params["b"]})
    with pytest.raises(ValueError, match="bfloat16"):
        load_sparse(path, like={"w": jnp.zeros((4, 4), jnp.bfloat16), "b": params["b"]})
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(3))
    with pytest.raises(ValueError, match="not a jaxprune sparse file"):
        load_sparse(other)
    with pytest.raises(TypeError, match="not an array of numbers"):
        save_sparse(tmp_path / "bad.npz", {"s": np.array(["text"])})


def test_save_load_nnx_state(tmp_path):
    params = nnx.state(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), nnx.Param)
    pruned, _ = prune_weights(params, 0.5)
    save_sparse(tmp_path / "m.npz", pruned)
    loaded = load_sparse(tmp_path / "m.npz", like=params)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    assert_bit_exact(loaded["kernel"][...], pruned["kernel"][...])
    assert set(load_sparse(tmp_path / "m.npz")) == {"kernel", "bias"}
