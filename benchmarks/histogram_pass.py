"""What one counting pass of the exact selection costs, against one memory pass.

jaxprune's radix select finds the k-th largest magnitude exactly with two histogram passes over
the keys (16-bit digits of 32-bit keys, scatter-adds into 65,536 bins), then builds the mask in
a third pass. This script times the pieces on one leaf, each as a ratio to one memory pass over
it (``sum(|x|)``), interleaved in one process:

* a comparison count, ``sum(key(x) >= c)``: a reduction, what a pass costs without a scatter;
* one histogram pass of the top digit of every key, for digit widths of 8, 11 and 16 bits and
  for one or two copies of the histogram (the selection counts neighbouring keys into two
  copies, so runs of equal keys do not wait on one counter), streamed over chunks of 2**18 keys
  as the selection streams them;
* ``jaxprune.magnitude_mask`` at sparsity 0.9: two histogram passes, the digit picks and the
  mask;
* the exact top-k mask of the sparse-training algorithms (ties at the k-th key broken by
  position, so that exactly k entries are kept) on keys cut to 12 bits, where thousands of keys
  tie at the k-th: on the leaf as rows of 2,048 keys (one count of the ties per row, a running
  count in the row that holds the last tie kept), and on a flat leaf of odd size, which has no
  rows of 256 to 65,536 keys (a running count, chunk by chunk).

It shows whether a histogram pass is bound by the memory it reads, by the size of the
histogram, or by the scatter's own per-key cost. It runs unchanged on CPU, GPU and TPU.

Usage::

    python benchmarks/histogram_pass.py              # one leaf of 2**22 float32 entries
    python benchmarks/histogram_pass.py --quick      # 2**20 entries, few repetitions
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
from jax import lax

import jaxprune as jp
from jaxprune._src import sparse_core
from jaxprune._src.radix_select import KeySource

CHUNK = 1 << 18


def keys_of(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)


def histogram_pass(width: int, lanes: int) -> Callable[[jax.Array], jax.Array]:
    """One pass: the top ``width`` bits of every key counted into ``lanes`` histograms."""

    def run(x: jax.Array) -> jax.Array:
        n = x.size
        chunk = min(CHUNK, n)
        if n % chunk:
            raise ValueError(f"the leaf size {n} must be a multiple of {chunk}")

        def body(i, hist):
            keys = keys_of(lax.dynamic_slice_in_dim(x, i * chunk, chunk))
            digit = (keys >> (32 - width)).astype(jnp.int32)
            lane = lax.iota(jnp.int32, chunk) & (lanes - 1)
            return hist.at[digit * lanes + lane].add(1, mode="promise_in_bounds")

        hist = jnp.zeros(((1 << width) * lanes,), jnp.int32)
        return lax.fori_loop(0, n // chunk, body, hist)

    return run


def count_pass(x: jax.Array) -> jax.Array:
    return jnp.sum(keys_of(x) >= jnp.uint32(0x3F800000), dtype=jnp.int32)  # |x| >= 1.0


def tied_top_k(rows: int | None) -> Callable[[jax.Array], jax.Array]:
    """The exact top-k mask (10% kept) of the keys of ``x`` cut to their top 12 bits, computed
    from ``x`` in every pass as the algorithms compute them: ``x`` seen as ``rows`` rows, or
    for ``None`` all of ``x`` but its last entry, a flat leaf of odd size."""

    def run(x: jax.Array) -> jax.Array:
        leaf = x[:-1] if rows is None else x.reshape(rows, -1)
        source = KeySource((leaf,), lambda a: keys_of(a) & jnp.uint32(0xFFF00000))
        return sparse_core.top_k_sources([source], leaf.size // 10)[0]

    return run


def memory_pass(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.abs(x))


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        jax.block_until_ready(fn())
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def print_hardware() -> None:
    devices = jax.devices()
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}, python {platform.python_version()}",
        flush=True,
    )


def print_ratio_table(
    times: dict[str, list[float]], base: str, unit: str, value: Callable[[float], str]
) -> None:
    """A markdown table: each case's median as ``value(seconds)``, and the median of its
    per-repetition ratios to the case ``base``."""
    print(f"| case | {unit} | ÷ one memory pass |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, times[base]))
        print(f"| {name} | {value(statistics.median(ts))} | {ratio:.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2**20 entries, 5 repetitions")
    parser.add_argument("--log2-size", type=int, default=None, help="log2 of the leaf size (22)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (21)")
    args = parser.parse_args(argv)
    log2 = args.log2_size or (20 if args.quick else 22)
    reps = args.reps or (5 if args.quick else 21)
    if log2 < 18 or reps < 1:
        parser.error("--log2-size must be >= 18 and --reps >= 1")
    print_hardware()
    n = 1 << log2
    x = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
    cases: dict[str, Callable[[jax.Array], object]] = {
        "memory pass, sum(|x|)": memory_pass,
        "comparison count, sum(key >= c)": count_pass,
    }
    for width in (8, 11, 16):
        for lanes in (1, 2):
            cases[f"histogram pass, 2**{width} bins x {lanes} lane(s)"] = histogram_pass(
                width, lanes
            )
    cases["magnitude_mask (2 passes + mask)"] = lambda x: jp.magnitude_mask(x, 0.9)
    cases["exact top-k, tied keys, rows of 2,048"] = tied_top_k(n // 2048)
    cases["exact top-k, tied keys, odd size (chunks)"] = tied_top_k(None)
    compiled = {name: jax.jit(fn).lower(x).compile() for name, fn in cases.items()}
    # Every histogram counts every key once.
    for name, exe in compiled.items():
        if name.startswith("histogram") and int(jnp.sum(exe(x))) != n:
            raise RuntimeError(f"{name}: the histogram does not count every key once")
        if name.startswith("exact top-k") and int(jnp.sum(exe(x))) != exe(x).size // 10:
            raise RuntimeError(f"{name}: the mask does not keep exactly k entries")
    times = interleaved({name: (lambda exe=exe: exe(x)) for name, exe in compiled.items()}, reps)
    print(f"\none float32 leaf of 2**{log2} = {n:,} entries, median of {reps} interleaved runs\n")
    print_ratio_table(
        times, "memory pass, sum(|x|)", "ns per entry", lambda t: f"{t / n * 1e9:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
