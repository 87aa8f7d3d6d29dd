r"""What one-shot pruning costs: SparseGPT's time on one layer, and the runner's memory.

**Time.** One ``d × d`` dense layer (default 4096 × 4096, float32) and calibration inputs of
``samples × tokens`` rows (default 128 × 512, the reference protocol). Timed, each jitted and
compiled before timing, interleaved over repetitions:

* baseline: ``X @ W``, one matmul of the calibration inputs with the layer;
* ``hessian``: :func:`hessian_from_inputs` (``2/N · XᵀX`` in float32);
* ``sparsegpt``: :func:`sparsegpt_prune` at 50% sparsity from that Hessian, and with ``2:4``;
* ``wanda_mask`` at 50% and ``2:4`` (the input norms of the same inputs), and Wanda's 50% mask
  by two stable argsorts per output column, as jaxprune computed it before (the masks are
  checked to be equal).

All products use ``lax.Precision.HIGHEST`` (SparseGPT always does; the baseline too, so that
the ratio compares like with like). Printed: median milliseconds and the median over the
repetitions of the per-repetition ratio to the baseline.

**Memory.** :func:`jaxprune.prune_oneshot` on the byte-level transformer of
``examples/oneshot_lm.py`` (width 128, 2 pre-norm blocks, 4 heads, 64-byte context: 470,784
float32 parameters, random weights, as memory does not depend on them), its 8 block kernels
pruned at 50% (``layers=r"block_\d+/"``) from 4 batches of 32 random windows. The bytes of all
live arrays (``jax.live_arrays()``: the caller's params and batches included, XLA's buffers
inside a compiled pass not) are summed at every point the runner's ``_probe`` hook marks: after
each calibration batch is added, when a layer's (or block's) statistics are complete, once a
layer's Hessian is formed, and after each layer is pruned. Printed, ÷ the parameter bytes: the
peak (absolute), the peak minus what was alive before the call (what the runner allocates:
pruned copies of the layers, their masks, one layer's statistics), the largest Hessian of one
layer (or one block, with ``blocks=``), and the target, 1.5 + that Hessian.

    .venv/bin/python benchmarks/oneshot.py            # 4096 × 4096, 128 × 512 tokens (GPU)
    .venv/bin/python benchmarks/oneshot.py --small    # 512 × 512, 16 × 128 tokens (CPU, ~1 min)
    .venv/bin/python benchmarks/oneshot.py --only memory
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import posttraining_runner
from jaxprune._src.posttraining import hessian_from_inputs, sparsegpt_prune, wanda_mask
from jaxprune._src.posttraining_runner import prune_oneshot


def wanda_by_argsort(w: jax.Array, norms: jax.Array) -> jax.Array:
    """Wanda's 50% mask as jaxprune computed it before 2026-12-03: two stable argsorts per
    output column (the rank of every score), for comparison."""
    scores = jnp.abs(w) * norms[:, None]
    order = jnp.argsort(scores, axis=0, stable=True)
    return jnp.argsort(order, axis=0, stable=True) >= w.shape[0] // 2


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
    norms = jnp.linalg.norm(x, axis=0)
    candidates["wanda_mask 50%"] = jax.jit(lambda w, n: wanda_mask(w, n, 0.5)).__call__
    candidates["wanda_mask 2:4"] = jax.jit(lambda w, n: wanda_mask(w, n, n_m=(2, 4))).__call__
    candidates["wanda 50% by argsort (before)"] = jax.jit(wanda_by_argsort).__call__
    args = {"sparsegpt_prune 50%": (w, h), "sparsegpt_prune 2:4": (w, h)}
    for name in ("wanda_mask 50%", "wanda_mask 2:4", "wanda 50% by argsort (before)"):
        args[name] = (w, norms)
    names = list(candidates)
    for name in names:  # compile and warm up
        jax.block_until_ready(candidates[name](*args.get(name, ())))
    now = candidates["wanda_mask 50%"](w, norms)
    if not bool(jnp.all(now == candidates["wanda 50% by argsort (before)"](w, norms))):
        raise RuntimeError("wanda_mask and the argsort ranks give different masks")
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


class Block(nn.Module):
    """examples/oneshot_lm.py's pre-norm block: causal self-attention, then a 4x GELU MLP."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x):
        batch, length, width = x.shape
        head_dim = width // self.heads
        h = nn.LayerNorm(name="ln_attn")(x)
        qkv = nn.Dense(3 * width, name="attn_qkv")(h)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, head_dim), 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        logits = jnp.where(causal[None, None], logits, jnp.finfo(logits.dtype).min)
        attention = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        x = x + nn.Dense(width, name="attn_out")(attention.reshape(batch, length, width))
        h = nn.Dense(4 * width, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x))
        return x + nn.Dense(width, name="mlp_out")(nn.gelu(h))


class ByteLM(nn.Module):
    """examples/oneshot_lm.py's model: byte embedding, positions, blocks, norm, head."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    max_len: int = 64

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(256, self.width, name="embed")(tokens)
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        x = x + positions[None, : tokens.shape[1]]
        for i in range(self.depth):
            x = Block(self.width, self.heads, name=f"block_{i}")(x)
        return nn.Dense(256, name="head")(nn.LayerNorm(name="ln_final")(x))


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def memory() -> tuple[dict, list[tuple[str, float, float, float, float, float]]]:
    """Peak live bytes during prune_oneshot on the example model, per method, ÷ param bytes."""
    model = ByteLM()
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, 256, (32, 64)), jnp.int32) for _ in range(4)]
    params = model.init(jax.random.key(0), batches[0])
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    kernels = {
        "/".join(str(k.key) for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if str(path[-1].key) == "kernel" and "block_" in str(path[1].key)
    }
    hessian = {name: 4 * x.shape[0] ** 2 for name, x in kernels.items()}
    block_hessian = {}
    for name, h in hessian.items():
        block = name.split("/")[1]
        block_hessian[block] = block_hessian.get(block, 0) + h
    info = {
        "params": sum(x.size for x in jax.tree.leaves(params)),
        "param_bytes": param_bytes,
        "pruned": sum(x.size for x in kernels.values()),
    }
    runs = [
        ("magnitude", {"method": "magnitude"}, 0),
        ("wanda", {"method": "wanda"}, 0),
        ("sparsegpt", {"method": "sparsegpt"}, max(hessian.values())),
        (
            "sparsegpt, blocks=block_i",
            {"method": "sparsegpt", "blocks": r"block_\d+/"},
            max(block_hessian.values()),
        ),
    ]
    rows = []
    for name, kwargs, h_bytes in runs:
        peak = [0]

        def probe(peak=peak):
            peak[0] = max(peak[0], live_bytes())

        # Compile first (the compiled passes are cached per fn), then measure a warm call.
        prune_oneshot(model.apply, params, batches, sparsity=0.5, layers=r"block_\d+/", **kwargs)
        before = live_bytes()
        posttraining_runner._probe = probe
        t0 = time.perf_counter()
        try:
            out = prune_oneshot(
                model.apply, params, batches, sparsity=0.5, layers=r"block_\d+/", **kwargs
            )
            jax.block_until_ready(out)
        finally:
            posttraining_runner._probe = None
        seconds = time.perf_counter() - t0
        probe()  # the result, with the caller's params
        del out
        rows.append(
            (
                name,
                peak[0] / param_bytes,
                (peak[0] - before) / param_bytes,
                h_bytes / param_bytes,
                1.5 + h_bytes / param_bytes,
                seconds,
            )
        )
    return info, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="512 × 512, 16 × 128 tokens")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", choices=("time", "memory"), default=None)
    args = parser.parse_args()
    if args.only != "memory":
        timing(args)
    if args.only != "time":
        info, rows = memory()
        print(
            f"\nprune_oneshot memory: examples/oneshot_lm.py's model, {info['params']:,} "
            f"float32 params ({info['param_bytes']:,} bytes), {info['pruned']:,} pruned at 50%; "
            "live arrays ÷ param bytes"
        )
        print(
            f"{'method':<26} {'peak':>6} {'alloc':>6} {'hessian':>8} {'target':>7} {'ok':>3} "
            f"{'s (warm)':>9}"
        )
        for name, peak, alloc, h, target, seconds in rows:
            ok = "yes" if alloc <= target else "no"
            print(
                f"{name:<26} {peak:>6.2f} {alloc:>6.2f} {h:>8.2f} {target:>7.2f} {ok:>3} "
                f"{seconds:>9.2f}"
            )
        print(
            "peak: the largest sum of live array bytes (the caller's params and batches "
            "included); alloc: peak minus the bytes alive before the call; target: 1.5 + "
            "hessian, compared with alloc"
        )


def timing(args) -> None:
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
