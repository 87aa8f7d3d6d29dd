"""Cost of the structured masks (N:M, blocks, units) on one leaf, against one memory pass.

N:M masks keep the ``n`` largest magnitudes of every group of ``m`` along an axis. Groups of up
to 32 entries rank each entry by comparisons with the rest of its group (elementwise); larger
groups take the group's n-th largest key with ``lax.top_k``. This script times both ways side
by side on the same leaf (the top_k way forced for small groups too, as jaxprune computed every
N:M mask before), and the block and unit masks, each as a ratio to one memory pass over the
leaf (``sum(|x|)``), interleaved in one process. The masks of the two N:M ways are checked to
be identical. It runs unchanged on CPU, GPU and TPU.

Usage::

    python benchmarks/structured_masks.py            # one 2048x2048 float32 leaf
    python benchmarks/structured_masks.py --quick    # 512x512, few repetitions
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# The timing and the table of benchmarks/histogram_pass.py (run as a script, this directory
# is on the path).
from histogram_pass import interleaved, memory_pass, print_hardware, print_ratio_table

import jaxprune as jp
from jaxprune._src import structured


def nm_by(n: int, m: int, compare_max: int) -> Callable[[jax.Array], jax.Array]:
    """The N:M mask along axis 0, traced with the comparison limit ``compare_max``."""

    def fn(x: jax.Array) -> jax.Array:
        saved = structured._NM_COMPARE_MAX
        structured._NM_COMPARE_MAX = compare_max
        try:
            return structured._nm_mask.__wrapped__(x, n, m, 0)
        finally:
            structured._NM_COMPARE_MAX = saved

    return fn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512x512, 5 repetitions")
    parser.add_argument("--size", type=int, default=None, help="the leaf is size x size (2048)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (21)")
    args = parser.parse_args(argv)
    size = args.size or (512 if args.quick else 2048)
    reps = args.reps or (5 if args.quick else 21)
    if size < 64 or size % 64 or reps < 1:
        parser.error("--size must be a multiple of 64, --reps >= 1")
    print_hardware()
    x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    cases: dict[str, Callable[[jax.Array], object]] = {
        "memory pass, sum(|x|)": memory_pass,
    }
    pairs = []
    for n, m in ((2, 4), (4, 8), (16, 32)):
        by_compare, by_top_k = f"N:M {n}:{m}, comparisons", f"N:M {n}:{m}, lax.top_k"
        cases[by_compare] = nm_by(n, m, 32)
        cases[by_top_k] = nm_by(n, m, 0)
        pairs.append((by_compare, by_top_k))
    cases["blocks 4x4, sparsity 0.5"] = lambda x: jp.block_mask(x, 0.5, (4, 4))
    cases["units (columns), sparsity 0.5"] = lambda x: jp.unit_mask(x, 0.5)
    compiled = {name: jax.jit(fn).lower(x).compile() for name, fn in cases.items()}
    for a, b in pairs:
        if not bool(jnp.all(compiled[a](x) == compiled[b](x))):
            raise RuntimeError(f"{a} and {b} give different masks")
    times = interleaved({name: (lambda exe=exe: exe(x)) for name, exe in compiled.items()}, reps)
    print(f"\none float32 leaf of {size}x{size}, median of {reps} interleaved runs\n")
    print_ratio_table(times, "memory pass, sum(|x|)", "ms", lambda t: f"{t * 1e3:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
