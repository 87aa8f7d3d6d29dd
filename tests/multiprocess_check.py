"""Run by tests/test_multiprocess.py: pruning under JAX's multi-controller runtime, on a CPU.

``python multiprocess_check.py child PROCESS_ID PORT OUT`` is one of two processes, each with
4 CPU devices, that ``jax.distributed.initialize`` joins into one system of 8 devices (CPU
collectives go through gloo, jax's default). ``python multiprocess_check.py reference PORT
OUT`` is a single process with 8 CPU devices, initialized the same way (``num_processes=1``,
so its collectives are gloo's too), that runs the same steps on the same mesh. Each writes what
it found under ``OUT``; the test compares them.

A training step with magnitude pruning (per layer, then global) runs on a (data, model) mesh
with the batch split over ``data`` and the kernels over ``model``. The mesh deals the devices
to the processes so that collectives cross the processes' boundary and no process holds a
whole kernel. A child also checks that the compiled step gathers no weight, and saves its
params and optimizer state (masks included) with orbax, from both processes, then restores
them with the same shardings."""

import os
import sys
import time

_START = time.monotonic()

# Before jax starts: 4 devices in a child, 8 in the reference.
_DEVICES = 4 if sys.argv[1:2] == ["child"] else 8
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()

import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxprune as jp  # noqa: E402

SIZES = (64, 128, 128, 16)  # an MLP 64-128-128-16
BATCH = 48  # 24 rows per data shard: no kernel has a dimension of 24 or 48
STEPS = 6  # pruning turns at steps 0, 2 and 4
SCOPES = ("layer", "global")
KERNELS = ("w1", "w2", "w3")

# Which process owns each device of the (data, model) = (2, 4) mesh. Every column (a data
# all-reduce) but the first and the last, and every row (a model all-reduce), holds devices of
# both processes; process 0 holds model shards 0-2 of each kernel, process 1 shards 1-3.
OWNER = ((0, 0, 0, 1), (0, 1, 1, 1))


def log(message):
    """Progress on stderr, which the test prints when a process fails or hangs."""
    elapsed, cpu = time.monotonic() - _START, time.process_time()
    print(f"[{elapsed:6.1f}s, cpu {cpu:5.1f}s] {message}", file=sys.stderr, flush=True)


def host_params():
    """The initial params, the same numbers in every process."""
    rng = np.random.default_rng(0)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
        w = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        params[f"w{i}"] = w.astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    return params


def global_batch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32)
    return x, np.sin(x[:, : SIZES[-1]]).astype(np.float32)


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    h = jnp.tanh(h @ params["w2"] + params["b2"][None])
    return jnp.mean((h @ params["w3"] + params["b3"][None] - y) ** 2)


def make_mesh():
    """The same logical mesh in a child (2 processes) and in the reference (1 process)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    by_process = [devices[:4], devices[4:]]  # in the reference: 4 devices play each process
    grid = [[by_process[p].pop(0) for p in row] for row in OWNER]
    return Mesh(np.array(grid), ("data", "model"))


def shardings(mesh):
    """Kernels alternately by columns and by rows over ``model``; the batch over ``data``."""
    params = {
        "w1": NamedSharding(mesh, P(None, "model")),
        "b1": NamedSharding(mesh, P("model")),
        "w2": NamedSharding(mesh, P("model", None)),
        "b2": NamedSharding(mesh, P()),
        "w3": NamedSharding(mesh, P(None, "model")),
        "b3": NamedSharding(mesh, P("model")),
    }
    return params, NamedSharding(mesh, P("data", None))


def make_tx(scope):
    schedule = jp.polynomial_decay(0.0, 0.8, begin_step=0, end_step=4, frequency=2)
    return optax.chain(optax.adam(0.05), jp.magnitude_pruning(schedule, scope=scope))


def global_array(value, sharding):
    """A global array from host data every process has whole: each places its own shards."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def state_shardings(tx, params):
    """A state leaf shaped like a param (a mask, Adam's moments) takes the param's sharding;
    the others (counts, thresholds, the scalar masks of unpruned leaves) are replicated."""
    replicated = NamedSharding(jax.tree.leaves(params)[0].sharding.mesh, P())
    return optax.tree_utils.tree_map_params(
        tx,
        lambda leaf, p: p.sharding if leaf.ndim else replicated,
        jax.eval_shape(tx.init, params),
        params,
        transform_non_params=lambda _: replicated,
    )


def train(scope, mesh):
    """STEPS jitted training steps on the mesh: params, optimizer state, the compiled step."""
    param_sharding, batch_sharding = shardings(mesh)
    tx = make_tx(scope)
    params = jax.tree.map(global_array, host_params(), param_sharding)
    opt_shardings = state_shardings(tx, params)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    xs, ys = (global_array(a, batch_sharding) for a in global_batch())

    def train_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # Fixed out_shardings: the step returns what it takes, so it compiles once.
    step = (
        jax.jit(train_step, out_shardings=(param_sharding, opt_shardings))
        .lower(params, opt_state, xs, ys)
        .compile()
    )
    log(f"{scope}: compiled the training step")
    for _ in range(STEPS):
        params, opt_state = step(params, opt_state, xs, ys)
    masks = jp.get_masks(opt_state)
    for name in KERNELS:
        assert masks[name].dtype == jnp.bool_, name
        assert masks[name].sharding.is_equivalent_to(params[name].sharding, 2), (
            scope,
            name,
            masks[name].sharding,
            params[name].sharding,
        )
    log(f"{scope}: trained")
    return params, opt_state, step


_COLLECTIVE = re.compile(r"=\s*(.*?)\s+(all-gather|all-reduce)(?:-start)?\(")
_SHAPE = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


def collectives(hlo, op):
    """``(dtype, dims)`` of the result of every ``op`` (all-gather, all-reduce) in HLO text."""
    found = []
    for m in _COLLECTIVE.finditer(hlo):
        if m.group(2) == op:
            for dtype, dims in _SHAPE.findall(m.group(1)):
                found.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return found


def check_hlo(step, params):
    """No all-gather brings a weight together; the pruning histograms are all-reduced.

    XLA may gather activations (they have a batch dimension) for the forward or backward pass:
    an all-gather shaped like a kernel, or without a batch dimension, fails.
    """
    hlo = step.as_text()
    kernels = {params[n].shape for n in KERNELS} | {params[n].shape[::-1] for n in KERNELS}
    gathered = collectives(hlo, "all-gather")
    bad = [s for _, s in gathered if s in kernels or not {BATCH, BATCH // 2} & set(s)]
    assert not bad, f"the training step gathers weights: {bad}\n{hlo}"
    reduced = collectives(hlo, "all-reduce")
    # The radix select's histograms: int32 counts, (rows << digit width) of them.
    histograms = [s for t, s in reduced if t == "s32" and len(s) == 1 and s[0] >= 1024]
    assert histograms, reduced
    return {
        "all_gathers": [f"{t}{list(s)}" for t, s in gathered],
        "all_reduces": [f"{t}{list(s)}" for t, s in reduced],
        "histogram_all_reduces": len(histograms),
    }


def write_shards(path, tree):
    """Every leaf at its full shape, filled in where this process holds it, and where that is.

    No process can fetch a whole leaf it does not hold (and none is gathered for the test):
    the test puts the processes' shards together.
    """
    arrays = {}
    for key, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(key)
        value, held = np.zeros(a.shape, a.dtype), np.zeros(a.shape, bool)
        for shard in a.addressable_shards:
            value[shard.index] = np.asarray(shard.data)
            held[shard.index] = True
        arrays[name], arrays[f"held{name}"] = value, held
    np.savez(path, **arrays)


def results(params, opt_state):
    masks = jp.get_masks(opt_state)
    return {"params": params, "masks": {n: masks[n] for n in KERNELS}}


def check_checkpoint(directory, params, opt_state):
    """Save params and optimizer state from both processes; restore them, sharded the same."""
    import orbax.checkpoint as ocp

    state = {"params": params, "opt_state": opt_state}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, state)
        checkpointer.wait_until_finished()
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory, target)
    want = jax.tree_util.tree_flatten_with_path(state)[0]
    have = jax.tree.leaves(restored)
    assert len(want) == len(have)
    for (key, a), b in zip(want, have):
        name = jax.tree_util.keystr(key)
        assert (b.shape, b.dtype) == (a.shape, a.dtype), name
        assert b.sharding.is_equivalent_to(a.sharding, a.ndim), name
        # Each process compares the shards it holds.
        for sa, sb in zip(a.addressable_shards, b.addressable_shards):
            assert (sa.device, sa.index) == (sb.device, sb.index), name
            np.testing.assert_array_equal(np.asarray(sb.data), np.asarray(sa.data), err_msg=name)
    masks = jp.get_masks(restored["opt_state"])  # the target rebuilt the pruning state
    assert all(masks[n].dtype == jnp.bool_ for n in KERNELS)
    return len(want)


def check_summaries(params, opt_state):
    """The host-side checks count where the weights live, in every process."""
    from jaxprune._src import summaries

    masks = jp.get_masks(opt_state)
    found = {"summary": jp.sparsity_summary(params, masks)}
    jp.check_pruned_zero(params, opt_state)
    try:
        jp.check_pruned_zero(jax.tree.map(lambda p: p + 1.0, params), opt_state)
        raise AssertionError("check_pruned_zero missed non-zero pruned weights")
    except jp.PrunedWeightsNotZeroError as e:
        found["not_zero"] = str(e).splitlines()[0]
    # Large leaves are counted row by row; here the rows are spread over both processes.
    chunk, summaries._CHUNK = summaries._CHUNK, 16
    try:
        assert jp.sparsity_summary(params, masks) == found["summary"]
        jp.check_pruned_zero(params, opt_state)
    finally:
        summaries._CHUNK = chunk
    return found


def child(process_id, port, out):
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    assert jax.process_count() == 2, jax.process_count()
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
    log(f"process {process_id} of 2 started")
    report = {"cpu_collectives": jax.config.jax_cpu_collectives_implementation, "runs": {}}
    mesh = make_mesh()
    for scope in SCOPES:
        params, opt_state, step = train(scope, mesh)
        info = check_hlo(step, params)
        info["fully_addressable"] = any(params[n].is_fully_addressable for n in KERNELS)
        write_shards(out / f"process{process_id}-{scope}.npz", results(params, opt_state))
        info.update(check_summaries(params, opt_state))
        log(f"{scope}: summaries")
        if scope == "global":
            info["checkpoint_leaves"] = check_checkpoint(
                (out / "checkpoint").absolute(), params, opt_state
            )
            log("checkpoint saved and restored")
        report["runs"][scope] = info
    (out / f"process{process_id}.json").write_text(json.dumps(report))
    multihost_utils.sync_global_devices("multiprocess check done")
    log("done")


def reference(port, out):
    # One process, but through the same runtime and the same (gloo) collectives.
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=1, process_id=0
    )
    assert jax.process_count() == 1 and jax.device_count() == 8, jax.devices()
    log("reference started")
    mesh = make_mesh()
    for scope in SCOPES:
        params, opt_state, _ = train(scope, mesh)
        write_shards(out / f"reference-{scope}.npz", results(params, opt_state))
    log("done")


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        reference(sys.argv[2], Path(sys.argv[3]))
