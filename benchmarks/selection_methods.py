"""The two exact selection methods side by side: histogram (scatter-adds) and comparisons.

jaxprune finds the k-th largest magnitude with a radix select that counts keys digit by digit.
It has two ways to count, both exact:

* ``histogram``: scatter-adds of every key's digit into a histogram of up to 65,536 bins per
  row. Fast on CPU; on GPU and TPU scatter-adds into many bins may serialise.
* ``compare``: each pass compares every key with 15 candidate keys and sums the results (no
  scatter); 8 passes for 32-bit keys.

``"auto"`` (the default) takes the histogram on CPU and comparisons elsewhere. This script
times both on the default device, so it runs unchanged on CPU, GPU and TPU and shows whether
``auto``'s choice is right there. Cases: ``jaxprune.magnitude_mask`` on one leaf,
``jaxprune.global_magnitude_masks`` over several leaves, and the batched per-layer selection
of many small leaves (one row each). Every figure is a median of interleaved repetitions
divided by one memory pass over the same data (``sum(|x|)``), in one process; the masks of the
two methods are checked to be identical.

Usage::

    python benchmarks/selection_methods.py            # 10M and 50M parameters
    python benchmarks/selection_methods.py --quick    # 1M, few repetitions (smoke test)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

import jaxprune as jp
from jaxprune._src import masks as masks_lib
from jaxprune._src import radix_select

SPARSITY = 0.9


def compiled(fn: Callable, method: str, *args) -> Callable:
    # The method is read when the function is traced, so each method gets its own program.
    with radix_select.selection_method(method):
        exe = jax.jit(fn).lower(*args).compile()
    return lambda: exe(*args)


def interleaved(candidates: dict[str, Callable], reps: int) -> dict[str, float]:
    """Median seconds of each candidate, run in rotating order after a warm-up."""
    times = {name: [] for name in candidates}
    for fn in candidates.values():
        jax.block_until_ready(fn())
    names = list(candidates)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            jax.block_until_ready(candidates[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def cases(size: int) -> dict[str, tuple[Callable, tuple]]:
    key = jax.random.key(0)
    one = jax.random.normal(key, (size,))
    several = [
        jax.random.normal(jax.random.fold_in(key, i), (size // 4,)) * (i + 1) for i in range(4)
    ]
    # Many small leaves: 256 kernels of size/256 entries each, ranked each on its own.
    n = 256
    small = [jax.random.normal(jax.random.fold_in(key, 100 + i), (size // n,)) for i in range(n)]
    return {
        "magnitude_mask, one leaf": (lambda x: jp.magnitude_mask(x, SPARSITY), (one,)),
        "global_magnitude_masks, 4 leaves": (
            lambda xs: jp.global_magnitude_masks(xs, SPARSITY, prune=lambda p, x: True),
            (several,),
        ),
        f"per layer, {n} leaves": (
            lambda xs: masks_lib.layer_thresholds(xs, SPARSITY)[0],
            (small,),
        ),
    }


def run(size: int, reps: int) -> list[str]:
    lines = []
    for name, (fn, args) in cases(size).items():
        hist = compiled(fn, "histogram", *args)
        comp = compiled(fn, "compare", *args)
        one_pass = jax.jit(lambda a: sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(a)))
        base = one_pass.lower(args).compile()
        got_h, got_c = hist(), comp()
        same = all(
            bool(jnp.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(got_h), jax.tree.leaves(got_c))
        )
        if not same:
            raise RuntimeError(f"{name}: the two methods give different masks")
        t = interleaved(
            {"histogram": hist, "compare": comp, "pass": lambda b=base, a=args: b(a)}, reps
        )
        lines.append(
            f"{name:34s} {size / 1e6:5.0f}M   histogram {t['histogram'] / t['pass']:7.2f}   "
            f"compare {t['compare'] / t['pass']:7.2f}   (one pass {t['pass'] * 1e3:.2f} ms)"
        )
        print("  " + lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M parameters, few repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (20; 5 with --quick)")
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 20)
    if reps < 1:
        parser.error("--reps must be >= 1")
    sizes = [1 << 20] if args.quick else [10_000_000, 50_000_000]
    devices = jax.devices()
    auto = "histogram" if devices[0].platform == "cpu" else "compare"
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}; 'auto' takes {auto} here",
        flush=True,
    )
    print("time of each method / one sum(|x|) pass over the same data, sparsity 0.9:")
    lines = []
    for size in sizes:
        lines += run(size, reps)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
