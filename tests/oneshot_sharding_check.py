"""Run by tests/test_posttraining.py in its own process, with 8 fake CPU devices.

``prune_oneshot`` with data-parallel calibration (the batches split over a mesh, given as
``mesh=`` or inferred from the batches' sharding) must give the masks of one device and the
same weights (to 1e-5); the statistics of a layer are summed over the devices by one all-reduce
per statistic at the end, and the per-batch passes communicate nothing.
``python oneshot_sharding_check.py part parts`` checks every ``parts``-th case from the
``part``-th on.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxprune._src import posttraining_runner as runner  # noqa: E402
from jaxprune._src.posttraining_runner import prune_oneshot  # noqa: E402


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(nn.relu(nn.Dense(24)(x)))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def inputs(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def hlo_all_reduces(lowered) -> int:
    hlo = lowered.compile().as_text()
    return hlo.count(" all-reduce(") + hlo.count(" all-reduce-start(")


def spy_on_communication(record):
    """Wraps the runner's compiled passes to count the all-reduces they run."""
    build, reduce = runner._build_site_stats, runner._all_reduce

    def build_spy(fn, n_params, sites, hessian, treedef, dp):
        f = build(fn, n_params, sites, hessian, treedef, dp)
        if dp is None:
            return f

        def g(*args):
            record.append(("pass", hlo_all_reduces(f.lower(*args))))
            return f(*args)

        return g

    def reduce_spy(dp):
        f = reduce(dp)

        def g(tree):
            stats = len(jax.tree.leaves(tree))
            record.append(("reduce", stats, hlo_all_reduces(f.lower(tree))))
            return f(tree)

        return g

    runner._build_site_stats, runner._all_reduce = build_spy, reduce_spy
    return lambda: (
        setattr(runner, "_build_site_stats", build) or setattr(runner, "_all_reduce", reduce)
    )


def compare(name, got, want):
    (gp, gm), (wp, wm) = got, want
    for path, g in jax.tree_util.tree_flatten_with_path(gm)[0]:
        w = dict(jax.tree_util.tree_flatten_with_path(wm)[0])[path]
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{name} {path}")
    for g, w in zip(jax.tree.leaves(gp), jax.tree.leaves(wp), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=name)
    pruned = sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(gm))
    assert pruned > 0, name
    print(f"{name}: masks equal to one device, weights within 1e-5 ({pruned} pruned)")


def main(part: int = 0, parts: int = 1):
    """Checks every ``parts``-th case from the ``part``-th on; part 0 also checks a bad batch."""
    assert jax.device_count() == 8, jax.devices()
    devices = np.array(jax.devices())
    flat = Mesh(devices, ("data",))
    grid = Mesh(devices.reshape(4, 2), ("data", "model"))

    mlp_batches = [inputs(i, (32, 12)) for i in range(3)]
    mlp = MLP()
    mlp_params = mlp.init(jax.random.key(0), mlp_batches[0])
    cnn_batches = [inputs(10 + i, (32, 9, 9, 3)) for i in range(2)]
    cnn = CNN()
    cnn_params = cnn.init(jax.random.key(1), cnn_batches[0])

    record: list = []
    restore = spy_on_communication(record)
    cases = [
        ("MLP sparsegpt, mesh= 1-D", mlp, mlp_params, mlp_batches, {"method": "sparsegpt"}, flat),
        (
            "MLP wanda + OWL, batch sharded over 'data' of a 2-D mesh",
            mlp,
            mlp_params,
            mlp_batches,
            {"method": "wanda", "owl": True, "owl_threshold": 2.0, "owl_lam": 0.05},
            "inferred",
        ),
        ("CNN sparsegpt, mesh= 2-D", cnn, cnn_params, cnn_batches, {"method": "sparsegpt"}, grid),
        (
            "CNN sparsegpt, convolutions as one block, jax.make_mesh",
            cnn,
            cnn_params,
            cnn_batches,
            {
                "method": "sparsegpt",
                "sparsity": 0.6,
                "blocks": lambda path: "convs" if "Conv" in path else None,
            },
            jax.make_mesh((8,), ("batch",)),
        ),
    ]
    for name, model, params, batches, kwargs, mesh in cases[part::parts]:
        want = prune_oneshot(model.apply, params, batches, **kwargs)
        del record[:]
        if mesh == "inferred":
            sharded = jax.device_put(batches, NamedSharding(grid, P("data")))
            got = prune_oneshot(model.apply, params, sharded, **kwargs)
        else:
            got = prune_oneshot(model.apply, params, batches, mesh=mesh, **kwargs)
        compare(name, got, want)
        passes = [r for r in record if r[0] == "pass"]
        reduces = [r for r in record if r[0] == "reduce"]
        assert passes and all(n == 0 for _, n in passes), (name, passes)
        layers = 3 if model is cnn else 2
        groups = 2 if "blocks" in kwargs else layers
        assert len(reduces) == groups + ("owl" in kwargs), (name, reduces)
        assert all(1 <= ops <= stats for _, stats, ops in reduces), (name, reduces)
        print(f"{name}: {len(passes)} passes without communication, {reduces} all-reduces")
        for g, x in zip(jax.tree.leaves(got[0]), jax.tree.leaves(params), strict=True):
            assert g.sharding == x.sharding, (name, g.sharding, x.sharding)
    restore()
    print(f"{len(cases[part::parts])} cases of {len(cases)} checked")
    if part != 0:
        print("oneshot sharding check passed")
        return

    try:
        prune_oneshot(
            mlp.apply, mlp_params, [mlp_batches[0], mlp_batches[1][:12]], mesh=flat, method="wanda"
        )
    except ValueError as e:
        assert "calibration_batches[1]" in str(e) and "multiple of 8" in str(e), e
    else:
        raise AssertionError("a batch of 12 rows on 8 devices was accepted")
    print("oneshot sharding check passed")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
