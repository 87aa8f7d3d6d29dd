"""Compile time and step time of a pruned train step with hundreds of pruned leaves.

A 24-layer MLP-style model, each layer made of 8 kernels of 48x48 (and their biases): 192
pruned kernels. The jitted train step with ``optax.adam`` and ``jaxprune.magnitude_pruning``
last in the chain is compared with the same step without pruning, in one process:

* compile time: ``jax.jit(step).lower(...).compile()`` (tracing, lowering and XLA
  compilation), the median of ``--compiles`` fresh compilations each, as the ratio pruned /
  plain (target <= 2 for per-layer pruning);
* step time: the compiled steps run interleaved, on a step where the schedule prunes and on one
  where it does not, as the median of per-repetition ratios pruned / plain. A control runs with
  them: the plain step that also returns, unchanged, as many arrays as the pruning link's state
  holds (a mask and a threshold per leaf). Each output of a jitted call is a buffer that the
  runtime creates, so with hundreds of small leaves the control shows what the state's arrays
  alone cost, whatever the step computes.

Every pruned step is checked to reach the schedule's sparsity on the pruning step.

Usage::

    python benchmarks/compile_time.py            # layer and global scope
    python benchmarks/compile_time.py --quick    # 6 layers, fewer repetitions (smoke test)
    python benchmarks/compile_time.py --stacked  # the layers stacked by lax.scan, as nn.scan
                                                 # stores them (stacked_axes: layer by layer)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

import jaxprune as jp

WIDTH = 48
KERNELS_PER_LAYER = 8
SPARSITY = 0.8


def init_params(layers: int) -> dict:
    key = jax.random.key(0)
    params = {}
    for layer in range(layers):
        block = {}
        for j in range(KERNELS_PER_LAYER):
            k = jax.random.fold_in(key, layer * KERNELS_PER_LAYER + j)
            block[f"kernel_{j}"] = jax.random.normal(k, (WIDTH, WIDTH)) / WIDTH**0.5
            block[f"bias_{j}"] = jnp.zeros((WIDTH,))
        params[f"layer_{layer}"] = block
    return params


def loss_fn(params: dict, x: jax.Array) -> jax.Array:
    if "stack" in params:
        return stacked_loss(params, x)
    h = x
    for block in params.values():
        for j in range(KERNELS_PER_LAYER):
            h = jnp.tanh(h @ block[f"kernel_{j}"] + block[f"bias_{j}"][None])
    return jnp.mean((h - x) ** 2)


def stacked_params(layers: int) -> dict:
    """The same model with its layers stacked, as ``nn.scan`` stores them: 8 leaves of
    ``(layers, 48, 48)`` (pruned with ``stacked_axes``, ranked layer by layer) and 8 biases."""
    flat = init_params(layers)
    return {
        "stack": {
            name: jnp.stack([flat[f"layer_{i}"][name] for i in range(layers)])
            for name in flat["layer_0"]
        }
    }


def stacked_loss(params: dict, x: jax.Array) -> jax.Array:
    def body(h, block):
        for j in range(KERNELS_PER_LAYER):
            h = jnp.tanh(h @ block[f"kernel_{j}"] + block[f"bias_{j}"][None])
        return h, None

    h, _ = jax.lax.scan(body, x, params["stack"])
    return jnp.mean((h - x) ** 2)


def make_step(tx: optax.GradientTransformation):
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def make_carry_step(tx: optax.GradientTransformation):
    """The plain step that also takes ``extra`` arrays and returns them unchanged."""
    step = make_step(tx)

    def carry_step(params, opt_state, x, extra):
        return *step(params, opt_state, x), extra

    return carry_step


def compile_seconds(step, args, repeats: int) -> tuple[float, object]:
    """Median seconds to trace, lower and compile ``step`` from scratch; and the executable."""
    times, compiled = [], None
    for _ in range(repeats):
        jax.clear_caches()
        t0 = time.perf_counter()
        compiled = jax.jit(step).lower(*args).compile()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compiled


def set_count(opt_state, count: int):
    def fix(s):
        if isinstance(s, jp.MagnitudePruningState):
            return s._replace(count=jnp.asarray(count, jnp.int32))
        return s

    return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, jp.MagnitudePruningState))


def _named(params) -> list[tuple[str, jax.Array]]:
    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(params)]


def kernel_sparsity(params) -> float:
    kernels = [x for p, x in _named(params) if "kernel" in p]
    return sum(int(jnp.sum(x == 0)) for x in kernels) / sum(x.size for x in kernels)


def run(
    layers: int, reps: int, compiles: int, scopes: Sequence[str], stacked: bool = False
) -> list[str]:
    params = stacked_params(layers) if stacked else init_params(layers)
    x = jax.random.normal(jax.random.key(1), (32, WIDTH))
    pruned = sum(x.ndim >= 2 and "kernel" in p for p, x in _named(params))
    how = "stacked by lax.scan into" if stacked else "="
    print(
        f"model: {layers} layers x {KERNELS_PER_LAYER} kernels {WIDTH}x{WIDTH} {how} {pruned} "
        f"pruned leaves, {sum(x.size for x in jax.tree.leaves(params)):,} parameters; adam",
        flush=True,
    )
    plain_tx = optax.adam(1e-3)
    plain_args = (params, plain_tx.init(params), x)
    plain_compile, plain_exe = compile_seconds(make_step(plain_tx), plain_args, compiles)
    print(f"  plain step compiles in {plain_compile:.2f} s", flush=True)
    lines = []
    for scope in scopes:
        # The window begins at step 1: count 0 does not prune, count 1 does (one executable).
        schedule = jp.constant_sparsity(SPARSITY, begin_step=1, frequency=1)
        axes = {"kernel": 0} if stacked else None
        # The kernels only: stacked, the biases are rank-2 leaves that the default rule
        # would prune too, unlike the flat model's rank-1 biases.
        pruning = jp.magnitude_pruning(schedule, scope=scope, stacked_axes=axes, prune="kernel")
        tx = optax.chain(optax.adam(1e-3), pruning)
        state = tx.init(params)
        idle, prune = set_count(state, 0), set_count(state, 1)
        seconds, exe = compile_seconds(make_step(tx), (params, idle, x), compiles)
        got = kernel_sparsity(exe(params, prune, x)[0])
        if abs(got - SPARSITY) > 0.01 or kernel_sparsity(exe(params, idle, x)[0]) > 0.01:
            raise RuntimeError(f"{scope}: the pruned step does not prune as scheduled ({got})")
        # A control: the plain step that also takes and returns, unchanged, as many arrays as
        # the pruning link adds to the optimizer state. Every output of a jitted call is a
        # buffer of its own, and with hundreds of small leaves that per-array cost shows.
        extra = jax.tree.leaves(state[1])
        carry = jax.jit(make_carry_step(plain_tx)).lower(*plain_args, extra).compile()
        candidates = {
            "plain": lambda: plain_exe(*plain_args),
            "carry": lambda carry=carry, extra=extra: carry(*plain_args, extra),
            "idle": lambda exe=exe, idle=idle: exe(params, idle, x),
            "prune": lambda exe=exe, prune=prune: exe(params, prune, x),
        }
        times = {name: [] for name in candidates}
        for fn in candidates.values():
            jax.block_until_ready(fn())
        names = list(candidates)
        for r in range(reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                jax.block_until_ready(candidates[name]())
                times[name].append(time.perf_counter() - t0)

        def ratio(name, times=times):
            return statistics.median(a / b for a, b in zip(times[name], times["plain"]))

        lines.append(
            f"scope={scope:6s} compile {seconds:6.2f} s / {plain_compile:.2f} s = "
            f"{seconds / plain_compile:5.2f}x   non-pruning step {ratio('idle'):5.2f}x   "
            f"pruning step {ratio('prune'):5.2f}x   (plain step "
            f"{statistics.median(times['plain']) * 1e3:.2f} ms; the plain step returning "
            f"{len(extra)} more arrays, as many as the pruning state has: {ratio('carry'):.2f}x)"
        )
        print("  " + lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 layers, few repetitions")
    parser.add_argument("--layers", type=int, default=None, help="number of layers (24)")
    parser.add_argument("--reps", type=int, default=None, help="step repetitions (30)")
    parser.add_argument("--compiles", type=int, default=None, help="compilations each (3)")
    parser.add_argument("--scope", choices=("layer", "global", "both"), default="both")
    parser.add_argument(
        "--stacked",
        action="store_true",
        help="layers stacked in 8 leaves and run by lax.scan (pruned with stacked_axes)",
    )
    args = parser.parse_args(argv)
    layers = args.layers or (6 if args.quick else 24)
    reps = args.reps or (5 if args.quick else 30)
    compiles = args.compiles or (1 if args.quick else 3)
    if min(layers, reps, compiles) < 1:
        parser.error("--layers, --reps and --compiles must be >= 1")
    scopes = ("layer", "global") if args.scope == "both" else (args.scope,)
    devices = jax.devices()
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}, python {platform.python_version()}",
        flush=True,
    )
    lines = run(layers, reps, compiles, scopes, args.stacked)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
