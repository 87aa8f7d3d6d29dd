"""Why compaction's latency falls less than its FLOPs on the results models (Fashion-MNIST).

``benchmarks/results.py``'s ``compact-l2-50`` rows keep 50% of the channels of every dependency
group; the CNN then runs 0.32x the dense FLOPs but about 0.8x the latency. This script times, on
random weights (latency does not depend on their values), the dense model and the model that
``jp.compact`` makes at the same shapes:

1. the whole forward pass at several batch sizes (dense and compacted interleaved, the ratio is
   the median of the per-pair ratios), against the FLOP ratio;
2. the CNN's forward pass cut into its stages, each stage jitted on its own input and timed
   dense / compacted interleaved, with each stage's FLOPs (``jp.count_flops``): where the time
   goes and which stages compaction does not shrink;
3. both models with NumPy params, as the ``compact-l2-50`` row times them (each call copies
   the params to the device);
4. the same CNN with its convolutions as ``lax.conv_general_dilated`` instead of the
   shifted-slices ``einsum`` of ``results_train.PatchConv`` (same kernels, same function).

Usage::

    python benchmarks/compaction_latency.py            # batches 1..1024, 40 timings each
    python benchmarks/compaction_latency.py --quick    # fewer batches and timings
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_train as rt  # noqa: E402

import jaxprune as jp  # noqa: E402


def timed_pair(fa: Callable, fb: Callable, args_a: tuple, args_b: tuple, repeats: int) -> dict:
    """Median ms of jitted ``fa(*args_a)`` and ``fb(*args_b)``, timed alternately."""
    fa, fb = jax.jit(fa), jax.jit(fb)
    for _ in range(3):
        jax.block_until_ready(fa(*args_a))
        jax.block_until_ready(fb(*args_b))
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fa(*args_a))
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(fb(*args_b))
        tb.append(time.perf_counter() - t)
    return {
        "a_ms": 1e3 * statistics.median(ta),
        "b_ms": 1e3 * statistics.median(tb),
        "ratio": statistics.median(y / x for x, y in zip(ta, tb, strict=True)),
    }


def compacted(model_name: str, params, x):
    """``(small params, small_fn)`` at 50% of every group's channels, as ``compact-l2-50``."""
    forward = rt._forward(rt.MODELS[model_name]())
    groups = jp.dependency_groups(forward, params, x)
    keep = jp.group_masks(jp.group_scores(params, groups, criterion="l2"), groups, sparsity=0.5)
    return jp.compact(forward, params, keep, x)


# ----------------------------------------------------------------------------- CNN stages


def patches(x: jax.Array, k: int = 5) -> jax.Array:
    """PatchConv's unfolding: (B, H, W, C) -> (B, H-k+1, W-k+1, k*k, C), 25 shifted slices."""
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    taps = [x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)]
    return jnp.concatenate([t[:, :, :, None, :] for t in taps], axis=3)


def conv_matmul(pt: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    kk = w.shape[0] * w.shape[1]
    y = jnp.einsum("bhwpc,pco->bhwo", pt, w.reshape(kk, w.shape[2], w.shape[3]))
    return jax.nn.relu(y + b)


def xla_conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y + b)


def cnn_stages(p: dict) -> list[tuple[str, Callable]]:
    """The CNN's forward pass as a list of ``(name, f(x) -> y)``, params closed over."""
    c0, c1 = p["PatchConv_0"], p["PatchConv_1"]
    d0, d1, d2 = p["Dense_0"], p["Dense_1"], p["Dense_2"]
    return [
        (
            "pad + unfold 1 (25 slices)",
            lambda x: patches(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))),
        ),
        ("conv 1: einsum + bias + ReLU", lambda pt: conv_matmul(pt, c0["kernel"], c0["bias"])),
        ("max pool 1", rt.max_pool2),
        ("unfold 2 (25 slices)", patches),
        ("conv 2: einsum + bias + ReLU", lambda pt: conv_matmul(pt, c1["kernel"], c1["bias"])),
        ("max pool 2 + flatten", lambda h: rt.max_pool2(h).reshape(h.shape[0], -1)),
        (
            "dense 400-120-84-10",
            lambda h: (
                jax.nn.relu(jax.nn.relu(h @ d0["kernel"] + d0["bias"]) @ d1["kernel"] + d1["bias"])
                @ d2["kernel"]
                + d2["bias"]
            ),
        ),
    ]


def run_stages(stages, x):
    outs = [x]
    for _, f in stages:
        outs.append(jax.jit(f)(outs[-1]))
    return outs


def cnn_xla(p: dict, x: jax.Array) -> jax.Array:
    """The CNN with ``lax.conv_general_dilated`` convolutions (same params and function)."""
    x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    x = rt.max_pool2(xla_conv(x, p["PatchConv_0"]["kernel"], p["PatchConv_0"]["bias"]))
    x = rt.max_pool2(xla_conv(x, p["PatchConv_1"]["kernel"], p["PatchConv_1"]["bias"]))
    x = x.reshape(x.shape[0], -1)
    for name in ("Dense_0", "Dense_1"):
        x = jax.nn.relu(x @ p[name]["kernel"] + p[name]["bias"])
    return x @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (15 if args.quick else 40)
    batches = (1, 16, 128, 1024) if args.quick else (1, 8, 32, 128, 512, 1024)
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}; {repeats} interleaved timings per number, medians"
    )
    x1 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    rng = np.random.default_rng(0)
    for model_name in ("mlp", "cnn"):
        model = rt.MODELS[model_name]()
        params = rt.init_params(model, (0,))
        params = jax.tree.map(lambda a: a[0], params)  # device arrays
        forward = rt._forward(model)
        small, small_fn = compacted(model_name, params, x1)
        small = jax.device_put(small)
        flops = float(jp.count_flops(forward, params, x1))
        small_flops = float(jp.count_flops(small_fn, small, x1))
        print(
            f"\n{model_name}: FLOPs per image {flops:,.0f} dense, {small_flops:,.0f} compacted "
            f"({small_flops / flops:.3f}x)"
        )
        print(
            f"  {'batch':>6} {'dense ms':>10} {'compact ms':>11} {'ratio':>6} "
            f"{'dense us/image':>15}"
        )
        for b in batches:
            x = jnp.asarray(rng.random((b, 28, 28, 1)), jnp.float32)
            r = timed_pair(forward, small_fn, (params, x), (small, x), repeats)
            print(
                f"  {b:>6} {r['a_ms']:>10.3f} {r['b_ms']:>11.3f} {r['ratio']:>6.3f} "
                f"{1e3 * r['a_ms'] / b:>15.1f}"
            )
        # As the compact-l2-50 row timed it: params as NumPy arrays, copied to the device on
        # every call of the jitted function.
        x = jnp.asarray(rng.random((128, 28, 28, 1)), jnp.float32)
        host, small_host = jax.device_get(params), jax.device_get(small)
        r = timed_pair(forward, small_fn, (host, x), (small_host, x), repeats)
        dev = timed_pair(forward, forward, (params, x), (host, x), repeats)
        print(
            f"  {128:>6} {r['a_ms']:>10.3f} {r['b_ms']:>11.3f} {r['ratio']:>6.3f}   NumPy params "
            f"(as the row); dense NumPy / device params: {dev['ratio']:.3f}"
        )
        if model_name != "cnn":
            continue

        b = 128
        x = jnp.asarray(rng.random((b, 28, 28, 1)), jnp.float32)
        dense_stages, small_stages = cnn_stages(params), cnn_stages(small)
        dense_outs, small_outs = run_stages(dense_stages, x), run_stages(small_stages, x)
        np.testing.assert_allclose(dense_outs[-1], forward(params, x), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(small_outs[-1], small_fn(small, x), rtol=2e-4, atol=2e-4)
        print(
            f"\n  CNN stages, batch {b}, each jitted on its own input (the stages reproduce both "
            "models' outputs):"
        )
        print(
            f"  {'stage':<30} {'dense ms':>9} {'compact ms':>11} {'ratio':>6} "
            f"{'MFLOPs dense':>13} {'compact':>8} {'output dense':>18} {'compact':>16}"
        )
        totals = [0.0, 0.0]
        for i, ((name, fd), (_, fs)) in enumerate(zip(dense_stages, small_stages, strict=True)):
            r = timed_pair(fd, fs, (dense_outs[i],), (small_outs[i],), repeats)
            fl_d = float(jp.count_flops(fd, dense_outs[i][:1]))
            fl_s = float(jp.count_flops(fs, small_outs[i][:1]))
            totals[0] += r["a_ms"]
            totals[1] += r["b_ms"]
            print(
                f"  {name:<30} {r['a_ms']:>9.3f} {r['b_ms']:>11.3f} {r['ratio']:>6.3f} "
                f"{b * fl_d / 1e6:>13.2f} {b * fl_s / 1e6:>8.2f} "
                f"{str(dense_outs[i + 1].shape):>18} {str(small_outs[i + 1].shape):>16}"
            )
        print(
            f"  {'sum of stages':<30} {totals[0]:>9.3f} {totals[1]:>11.3f} "
            f"{totals[1] / totals[0]:>6.3f}"
        )

        print(
            "\n  The CNN with lax.conv_general_dilated convolutions (same params, same function):"
        )
        np.testing.assert_allclose(cnn_xla(params, x), forward(params, x), rtol=2e-4, atol=2e-4)
        print(
            f"  {'batch':>6} {'dense ms':>10} {'compact ms':>11} {'ratio':>6} "
            f"{'/ PatchConv dense':>18}"
        )
        for b in batches:
            x = jnp.asarray(rng.random((b, 28, 28, 1)), jnp.float32)
            r = timed_pair(cnn_xla, cnn_xla, (params, x), (small, x), repeats)
            base = timed_pair(forward, cnn_xla, (params, x), (params, x), repeats)
            print(
                f"  {b:>6} {r['a_ms']:>10.3f} {r['b_ms']:>11.3f} {r['ratio']:>6.3f} "
                f"{base['ratio']:>18.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
