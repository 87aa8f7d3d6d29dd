"""What one-shot SparseGPT costs, against one matmul of the calibration inputs with the layer.

One ``d × d`` dense layer (default 4096 × 4096, float32) and calibration inputs of
``samples × tokens`` rows (default 128 × 512, the reference protocol). Timed, each jitted and
compiled before timing, interleaved over repetitions:

* baseline: ``X @ W``, one matmul of the calibration inputs with the layer;
* ``hessian``: :func:`hessian_from_inputs` (``2/N · XᵀX`` in float32);
* ``sparsegpt``: :func:`sparsegpt_prune` at 50% sparsity from that Hessian, and with ``2:4``.

All products use ``lax.Precision.HIGHEST`` (SparseGPT always does; the baseline too, so that
the ratio compares like with like). Printed: median milliseconds and the median over the
repetitions of the per-repetition ratio to the baseline.

    .venv/bin/python benchmarks/oneshot.py            # 4096 × 4096, 128 × 512 tokens (GPU)
    .venv/bin/python benchmarks/oneshot.py --small    # 512 × 512, 16 × 128 tokens (CPU, ~1 min)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune._src.posttraining import hessian_from_inputs, sparsegpt_prune


def run(d: int, samples: int, tokens: int, reps: int) -> list[tuple[str, float, float]]:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (samples * tokens, d), jnp.float32)
    w = jax.random.normal(kw, (d, d), jnp.float32) / jnp.sqrt(d)

    matmul = jax.jit(lambda x, w: jnp.matmul(x, w, precision=lax.Precision.HIGHEST))
    hessian = jax.jit(hessian_from_inputs)
    h = jax.block_until_ready(hessian(x))
    candidates = {
        "matmul X @ W (baseline)": lambda: matmul(x, w),
        "hessian_from_inputs(X)": lambda: hessian(x),
        "sparsegpt_prune 50%": jax.jit(lambda w, h: sparsegpt_prune(w, h, 0.5)).__call__,
        "sparsegpt_prune 2:4": jax.jit(lambda w, h: sparsegpt_prune(w, h, n_m=(2, 4))).__call__,
    }
    args = {"sparsegpt_prune 50%": (w, h), "sparsegpt_prune 2:4": (w, h)}
    names = list(candidates)
    for name in names:  # compile and warm up
        jax.block_until_ready(candidates[name](*args.get(name, ())))
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            jax.block_until_ready(candidates[name](*args.get(name, ())))
            times[name].append(time.perf_counter() - t0)
    base = times[names[0]]
    rows = []
    for name in names:
        ratio = statistics.median(t / b for t, b in zip(times[name], base))
        rows.append((name, 1e3 * statistics.median(times[name]), ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="512 × 512, 16 × 128 tokens")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    d, samples, tokens = (512, 16, 128) if args.small else (4096, 128, 512)
    reps = args.reps or (5 if args.small else 10)
    print(
        f"device: {jax.devices()[0].device_kind}; layer {d} x {d} float32; calibration "
        f"{samples} x {tokens} tokens; {reps} repetitions"
    )
    print(f"{'candidate':<28} {'ms':>10} {'÷ matmul':>10}")
    for name, ms, ratio in run(d, samples, tokens, reps):
        print(f"{name:<28} {ms:>10.1f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
