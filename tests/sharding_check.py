"""Run by tests/test_sharding.py in its own process, with 8 fake CPU devices.

A jitted training step with magnitude pruning, per layer and global, data-parallel (batch
sharded) and model-parallel (kernels sharded over a mesh axis), must give the same masks and
params as the same step on one device, and the masks must carry their params' sharding. N:M
masks of a leaf split along either axis are computed without gathering it.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxprune as jp  # noqa: E402


def init_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (32, 64)),
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 16)) * 0.5,
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def data():
    x = jax.random.normal(jax.random.key(1), (64, 32))
    return x, jnp.sin(x[:, :16])


def run(scope, params_sharding=None, data_sharding=None, steps=6):
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=4, frequency=2)
    tx = optax.chain(optax.adam(0.05), jp.magnitude_pruning(schedule, scope=scope))
    params = init_params()
    x, y = data()
    if params_sharding is not None:
        params = jax.device_put(params, params_sharding)
    if data_sharding is not None:
        x, y = jax.device_put((x, y), data_sharding)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, jp.get_masks(state)


def check_no_gather(mesh, model_parallel):
    """Global selection works on the shards: histograms are all-reduced, weights never gathered."""
    params = jax.device_put(init_params(), model_parallel)
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1), scope="global")
    state = tx.init(params)
    programs = {
        "global_magnitude_masks": jax.jit(lambda p: jp.global_magnitude_masks(p, 0.9)).lower(
            params
        ),
        "magnitude_pruning update": jax.jit(lambda u, s, p: tx.update(u, s, p)).lower(
            params, state, params
        ),
    }
    for name, lowered in programs.items():
        hlo = lowered.compile().as_text()
        assert "all-gather(" not in hlo, f"{name} gathers weights:\n{hlo}"
        assert "all-reduce(" in hlo, name
        print(f"{name}: no all-gather, histograms all-reduced")


def check_nm_no_gather(mesh):
    """N:M masks of a leaf split along either axis: no gather, and the masks of one device."""
    plain = init_params()
    structure = jp.NMSparsity(2, 4)  # groups along axis -2, the default
    tx = jp.magnitude_pruning(jp.constant_sparsity(0.5, frequency=1), structure=structure)
    _, want = tx.update(plain, tx.init(plain), plain)
    for spec in (P("model", None), P(None, "model")):
        params = {**plain, "w2": jax.device_put(plain["w2"], NamedSharding(mesh, spec))}
        state = tx.init(params)
        update = jax.jit(tx.update)
        hlo = update.lower(params, state, params).compile().as_text()
        assert "all-gather(" not in hlo, f"N:M masks with w2 on {spec} gather:\n{hlo}"
        _, state = update(params, state, params)
        np.testing.assert_array_equal(state.masks["w2"], want.masks["w2"])
        print(f"N:M masks, w2 split as {spec}: no all-gather, masks equal to one device")


def check_explicit_axes():
    """On a mesh with Explicit axes (jax.make_mesh's default) masks equal the unsharded ones."""
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    plain = init_params()
    shardings = {
        "w1": NamedSharding(mesh, P(None, "model")),
        "b1": NamedSharding(mesh, P("model")),
        "w2": NamedSharding(mesh, P("model", None)),
    }
    params = jax.device_put(plain, shardings)
    for scope in ("layer", "global"):
        tx = jp.magnitude_pruning(jp.constant_sparsity(0.7, frequency=1), scope=scope)
        _, state = jax.jit(tx.update)(params, tx.init(params), params)
        _, want = tx.update(plain, tx.init(plain), plain)
        for leaf in ("w1", "w2"):
            np.testing.assert_array_equal(state.masks[leaf], want.masks[leaf])
            assert state.masks[leaf].sharding.spec == shardings[leaf].spec, leaf
    print("explicit axes: masks equal to one device and sharded like their params")


def main():
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    model_parallel = {
        "w1": NamedSharding(mesh, P(None, "model")),
        "b1": NamedSharding(mesh, P("model")),
        "w2": NamedSharding(mesh, P("model", None)),
    }
    data_parallel = NamedSharding(mesh, P("data", None))
    check_no_gather(mesh, model_parallel)
    check_nm_no_gather(mesh)
    check_explicit_axes()
    for scope in ("layer", "global"):
        ref_params, ref_masks = run(scope)
        for name, kwargs in {
            "data-parallel": {"data_sharding": data_parallel},
            "model-parallel": {"params_sharding": model_parallel, "data_sharding": data_parallel},
        }.items():
            params, masks = run(scope, **kwargs)
            for leaf in ("w1", "w2"):
                np.testing.assert_array_equal(masks[leaf], ref_masks[leaf], err_msg=name)
                assert masks[leaf].dtype == jnp.bool_
                # Pruned weights are exactly zero on every shard.
                assert not np.any(np.asarray(params[leaf])[~np.asarray(masks[leaf])])
                np.testing.assert_allclose(
                    params[leaf], ref_params[leaf], rtol=1e-5, atol=1e-6, err_msg=name
                )
                if "params_sharding" in kwargs:
                    assert masks[leaf].sharding.is_equivalent_to(
                        params[leaf].sharding, masks[leaf].ndim
                    ), (name, leaf, masks[leaf].sharding, params[leaf].sharding)
            sparsity = jp.sparsity_summary(params, masks)["pruned"]
            assert abs(sparsity - 0.8) < 0.01, (scope, name, sparsity)
            print(f"{scope} {name}: masks equal to one device, sparsity {sparsity:.4f}")
    print("sharding check passed")


if __name__ == "__main__":
    main()
