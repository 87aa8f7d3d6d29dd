"""How long structural pruning's graph work takes on a ResNet-50 (batch 1, 224x224).

Torch-Pruning's users report tracing that fails or hangs on real models. Here the dependency
groups come from one jaxpr; this script times, in one process and interleaved (median of
``--repeats``):

* ``jax.make_jaxpr(model.apply)``: the baseline, tracing alone;
* ``jaxprune.dependency_groups``: tracing plus the graph analysis (abstract params: nothing is
  computed);
* ``jaxprune.compact`` at half the channels of every group (concrete params), and the FLOPs of
  the compacted function (``count_flops``), against the dense model's.

Usage::

    python benchmarks/structural_trace.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops_count import ResNet50  # noqa: E402  (the same model as the FLOP benchmark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    devices = jax.devices()
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}",
        flush=True,
    )
    model = ResNet50()
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    jax.make_jaxpr(model.apply)(abstract, x)  # warm-up of both
    groups = jp.dependency_groups(model.apply, abstract, x)
    times: dict[str, list[float]] = {"make_jaxpr": [], "dependency_groups": []}
    for _ in range(args.repeats):
        for name, fn in (
            ("make_jaxpr", lambda: jax.make_jaxpr(model.apply)(abstract, x)),
            ("dependency_groups", lambda: jp.dependency_groups(model.apply, abstract, x)),
        ):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_jaxpr = statistics.median(times["make_jaxpr"])
    t_groups = statistics.median(times["dependency_groups"])
    print(
        f"ResNet-50: {len(groups)} groups, {len(groups.blocked)} blocked axes "
        f"({sum(len(g.members) for g in groups)} member axes)"
    )
    print(f"make_jaxpr:          {t_jaxpr * 1e3:8.1f} ms")
    print(f"dependency_groups:   {t_groups * 1e3:8.1f} ms  ({t_groups / t_jaxpr:.2f}x make_jaxpr)")

    variables = model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype))
    keep = [np.arange(g.size) < (g.size + 1) // 2 for g in groups]
    t0 = time.perf_counter()
    small, small_fn = jp.compact(model.apply, variables, keep, jnp.zeros(x.shape, x.dtype))
    t_compact = time.perf_counter() - t0
    dense = jp.count_flops(model.apply, variables, x)
    reduced = jp.count_flops(small_fn, small, x)
    n_dense = sum(a.size for a in jax.tree.leaves(variables))
    n_small = sum(a.size for a in jax.tree.leaves(small))
    print(f"compact at half the channels: {t_compact * 1e3:8.1f} ms (one call, tracing included)")
    print(
        f"  parameters {n_small / n_dense:.3f}x, FLOPs {reduced / dense:.3f}x of the dense "
        f"model ({dense / 2e9:.2f} GMACs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
