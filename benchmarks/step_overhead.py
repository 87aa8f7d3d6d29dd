"""Overhead of jaxprune in a training step and cost of its mask functions.

Prints ratios, each measured in one process with the candidates interleaved (every repetition
runs each candidate once, in an order that rotates from one repetition to the next), after a
warm-up call, as the median over repetitions of the per-repetition ratio candidate / baseline:

(a) a jitted train step (MLP 784-2048-2048-10, batch 128, ``optax.adam``) with
    ``jaxprune.magnitude_pruning`` last in the chain, on a step where the schedule does NOT
    prune, divided by the same step without pruning (target <= 1.05);
(b) the same compiled step on a step where it prunes, divided by the plain step (<= 1.5);
(c) ``jaxprune.magnitude_mask`` (per leaf) and ``jaxprune.global_magnitude_masks`` over
    realistic kernels totalling 10M and 50M float32 parameters, jitted, divided by one
    elementwise pass ``jnp.sum(jnp.abs(x))`` over the same leaves (<= 15); and, for reference,
    a sort-based global mask (``jnp.sort`` of the concatenated magnitudes) at 10M.

For (a) and (b) one function is compiled; the pruning state's ``count`` alone decides which
branch of the ``lax.cond`` runs (the schedule's window begins at step 1: count 0 does not prune,
count 1 does). The script checks that it does (sparsity of the new kernels).

Usage::

    python benchmarks/step_overhead.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/step_overhead.py --quick    # small sizes, few repetitions (smoke test)
    python benchmarks/step_overhead.py --reps 40  # more repetitions
    python benchmarks/step_overhead.py --packed   # (a), (b) only, with mask_dtype="packed"

With ``--packed`` the pruning state holds its masks 1 bit per parameter
(``magnitude_pruning(mask_dtype="packed")``); (a) and (b) are measured against the same plain
Adam step, (c) is skipped (it does not involve the state), and the bytes of the masks in the
optimizer state are printed for both mask dtypes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

try:  # minor page faults per call: on CPU, XLA's temporaries are fresh pages on every call
    import resource
except ImportError:  # pragma: no cover (not on Windows)
    resource = None

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune as jp

SPARSITY = 0.9

# Kernel shapes: VGG-like 3x3 convolutions and a classifier, ~10.0M parameters.
SHAPES_10M = [(3, 3, 256, 512), (3, 3, 512, 512), (3, 3, 512, 512), (4096, 1000)]
# One transformer block of width 2048 (fused QKV, output, 4x MLP), ~50.3M parameters.
SHAPES_50M = [(2048, 6144), (2048, 2048), (2048, 8192), (8192, 2048)]
# --quick: ~1.2M parameters.
SHAPES_QUICK = [(3, 3, 64, 128), (3, 3, 128, 128), (1024, 1000)]


# ------------------------------------------------------------------------------- timing


def interleaved(
    candidates: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each candidate; one call of each per repetition, order rotated."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(candidates[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return times


def page_faults(fn: Callable[[], object], calls: int = 2) -> float | None:
    """Minor page faults per call of ``fn`` (measured apart from the timed calls)."""
    if resource is None:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        jax.block_until_ready(fn())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over repetitions of num[i] / den[i] (both measured in repetition i)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


class Row(NamedTuple):
    case: str
    ms: float  # median over repetitions
    baseline: str
    baseline_ms: float
    ratio: float  # median of the per-repetition ratios
    target: float | None  # None: printed for reference only
    faults: float | None  # minor page faults per call of the candidate
    baseline_faults: float | None  # and of the baseline


class Table:
    def __init__(self, judge: bool = True) -> None:
        self.rows: list[Row] = []
        self.judge = judge

    def add(self, case, t, base, tb, target, faults=(None, None)) -> Row:
        row = Row(
            case,
            statistics.median(t) * 1e3,
            base,
            statistics.median(tb) * 1e3,
            paired_ratio(t, tb),
            target,
            *faults,
        )
        self.rows.append(row)
        print(
            f"  {case}: {row.ms:.2f} ms / {base}: {row.baseline_ms:.2f} ms = {row.ratio:.2f}",
            flush=True,
        )
        return row

    def print(self) -> None:
        w = max(len(r.case) for r in self.rows)
        wb = max(len(r.baseline) for r in self.rows)
        head = (
            f"{'case':<{w}}  {'ms':>8}  {'baseline':<{wb}}  {'ms':>7}  {'ratio':>6}  "
            f"{'target':<14}  faults/call (base)"
        )
        print(head)
        print("-" * len(head))
        for r in self.rows:
            if r.target is None:
                verdict = "(reference)"
            elif not self.judge:
                verdict = f"<= {r.target:g} (quick)"
            else:
                verdict = f"<= {r.target:g} {'ok' if r.ratio <= r.target else 'MISSED'}"
            faults = "-" if r.faults is None else f"{r.faults:.0f} ({r.baseline_faults:.0f})"
            print(
                f"{r.case:<{w}}  {r.ms:8.2f}  {r.baseline:<{wb}}  {r.baseline_ms:7.2f}  "
                f"{r.ratio:6.2f}  {verdict:<14}  {faults:>18}"
            )


# ------------------------------------------------------------------------ (a), (b) train step


class MLP(nn.Module):
    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for f in self.features[:-1]:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.features[-1])(x)


def _set_count(opt_state, count: int):
    """opt_state with the pruning state's step counter set to ``count``."""

    def fix(s):
        if isinstance(s, jp.MagnitudePruningState):
            return s._replace(count=jnp.asarray(count, jnp.int32))
        return s

    return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, jp.MagnitudePruningState))


def _kernel_sparsity(params) -> float:
    kernels = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
    zeros = sum(int(jnp.sum(x == 0)) for x in kernels)
    return zeros / sum(x.size for x in kernels)


def _mask_bytes(opt_state) -> int:
    """Bytes of the masks in the pruning state (bool arrays or packed uint32 words)."""
    state = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda s: isinstance(s, jp.MagnitudePruningState)
        )
        if isinstance(s, jp.MagnitudePruningState)
    ][0]
    return sum(x.nbytes for x in jax.tree.leaves(state.masks))


def bench_train_step(
    table: Table, widths: Sequence[int], batch: int, reps: int, mask_dtype: str = "bool"
) -> None:
    model = MLP(tuple(widths[1:]))
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, widths[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, widths[-1])
    params = model.init(kp, x)
    n = sum(p.size for p in jax.tree.leaves(params))
    print(
        f"(a, b) train step: MLP {'-'.join(map(str, widths))} ({n / 1e6:.2f}M parameters), "
        f"batch {batch}, adam, mask_dtype={mask_dtype!r}",
        flush=True,
    )

    def make_step(tx):
        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, opt_state):
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        return step

    plain_tx = optax.adam(1e-3)
    plain_step = make_step(plain_tx)
    plain_state = plain_tx.init(params)

    variants = [
        (scope, source) for source in ("updated", "current") for scope in ("layer", "global")
    ]
    for scope, source in variants:
        # The window begins at step 1: count 0 is a non-pruning step, count 1 a pruning one.
        schedule = jp.constant_sparsity(SPARSITY, begin_step=1, frequency=1)
        pruning = jp.magnitude_pruning(
            schedule, scope=scope, recompute_from=source, mask_dtype=mask_dtype
        )
        tx = optax.chain(optax.adam(1e-3), pruning)
        step = make_step(tx)
        state = tx.init(params)
        if (scope, source) == variants[0]:
            other = "bool" if mask_dtype == "packed" else "packed"
            other_tx = jp.magnitude_pruning(schedule, mask_dtype=other)
            sizes = {mask_dtype: _mask_bytes(state), other: _mask_bytes(other_tx.init(params))}
            print(
                f"  masks in the optimizer state: bool {sizes['bool']:,} bytes, "
                f"packed {sizes['packed']:,} bytes ({sizes['bool'] / sizes['packed']:.2f}x less)",
                flush=True,
            )
        idle_state, prune_state = _set_count(state, 0), _set_count(state, 1)

        # Same compiled function for both; check that the branch taken is the intended one.
        p_idle = step(params, idle_state)[0]
        p_prune = step(params, prune_state)[0]
        s_idle, s_prune = _kernel_sparsity(p_idle), _kernel_sparsity(p_prune)
        if not (s_idle < 0.01 and abs(s_prune - SPARSITY) < 0.01):
            raise RuntimeError(f"branch check failed: sparsity {s_idle} / {s_prune}")
        if mask_dtype == "packed":
            ref = jp.magnitude_pruning(schedule, scope=scope, recompute_from=source)
            ref_tx = optax.chain(optax.adam(1e-3), ref)
            ref_p = make_step(ref_tx)(params, _set_count(ref_tx.init(params), 1))[0]
            same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p_prune, ref_p)
            if not all(jax.tree.leaves(same)):
                raise RuntimeError("packed masks give other params than bool masks")
        cache_size = getattr(step, "_cache_size", None)
        if cache_size is not None and cache_size() != 1:
            raise RuntimeError("the pruning and non-pruning steps compiled separately")

        candidates = {
            "plain": lambda: plain_step(params, plain_state),
            "idle": lambda step=step, s=idle_state: step(params, s),
            "prune": lambda step=step, s=prune_state: step(params, s),
        }
        times = interleaved(candidates, reps)
        table.add(
            f"(a) {scope:6s} {source:7s} non-pruning step",
            times["idle"],
            "plain step",
            times["plain"],
            1.05,
            (page_faults(candidates["idle"]), page_faults(candidates["plain"])),
        )
        table.add(
            f"(b) {scope:6s} {source:7s} pruning step",
            times["prune"],
            "plain step",
            times["plain"],
            1.5,
            (page_faults(candidates["prune"]), page_faults(candidates["plain"])),
        )


# ------------------------------------------------------------------------------ (c) masks


def _leaves(shapes: Sequence[tuple[int, ...]]) -> list[jax.Array]:
    key = jax.random.key(1)
    return [
        jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32) for i, s in enumerate(shapes)
    ]


@jax.jit
def _abs_sum(leaves):
    return sum(jnp.sum(jnp.abs(x)) for x in leaves)


@jax.jit
def _layer_masks(leaves):
    return [jp.magnitude_mask(x, SPARSITY) for x in leaves]


@jax.jit
def _global_masks(leaves):
    return jp.global_magnitude_masks(leaves, SPARSITY)


@jax.jit
def _sort_global_masks(leaves):
    """Reference: the same global mask from a full sort of the concatenated magnitudes."""
    mags = jnp.concatenate([jnp.abs(x).reshape(-1) for x in leaves])
    n = mags.size
    k = max(int(np.round(np.float32(n) * (np.float32(1) - np.float32(SPARSITY)))), 1)
    thr = jnp.sort(mags)[n - k]
    return [jnp.abs(x) >= thr for x in leaves]


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def bench_masks(table: Table, shapes, reps: int, sort_reps: int) -> None:
    leaves = _leaves(shapes)
    n = sum(x.size for x in leaves)
    label = _fmt_count(n)
    print(f"(c) masks over {label} float32 parameters: {shapes}", flush=True)
    # Exactness check against the sort reference (same rule: |w| >= k-th largest).
    if sort_reps:
        got = _global_masks(leaves)
        want = _sort_global_masks(leaves)
        if not all(bool(jnp.array_equal(a, b)) for a, b in zip(got, want, strict=True)):
            raise RuntimeError("global_magnitude_masks disagrees with the sort reference")
    candidates = {
        "base": lambda: _abs_sum(leaves),
        "layer": lambda: _layer_masks(leaves),
        "global": lambda: _global_masks(leaves),
    }
    times = interleaved(candidates, reps)
    base = f"sum|x| {label}"
    table.add(
        f"(c) magnitude_mask per leaf, {label}",
        times["layer"],
        base,
        times["base"],
        15,
        (page_faults(candidates["layer"]), page_faults(candidates["base"])),
    )
    table.add(
        f"(c) global_magnitude_masks, {label}",
        times["global"],
        base,
        times["base"],
        15,
        (page_faults(candidates["global"]), page_faults(candidates["base"])),
    )
    if sort_reps:
        sort = {"base": candidates["base"], "sort": lambda: _sort_global_masks(leaves)}
        times = interleaved(sort, sort_reps)
        table.add(
            f"    jnp.sort-based global mask, {label}",
            times["sort"],
            base,
            times["base"],
            None,
            (page_faults(sort["sort"], calls=1), page_faults(sort["base"])),
        )


# ------------------------------------------------------------------------------------ main


def run(quick: bool = False, reps: int | None = None, packed: bool = False) -> Table:
    """Runs every measurement, printing progress; returns the table (printed by main)."""
    reps = reps if reps is not None else (5 if quick else 20)
    if reps < 1:
        raise ValueError("reps must be >= 1")
    sort_reps = max(3, reps // 4)
    devices = jax.devices()
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}, python {platform.python_version()}; "
        f"{reps} interleaved repetitions, ratio = median of per-repetition ratios",
        flush=True,
    )
    table = Table(judge=not quick)
    if packed:
        widths, batch = ((784, 256, 256, 10), 32) if quick else ((784, 2048, 2048, 10), 128)
        bench_train_step(table, widths, batch, reps, mask_dtype="packed")
    elif quick:
        bench_train_step(table, (784, 256, 256, 10), 32, reps)
        bench_masks(table, SHAPES_QUICK, reps, sort_reps)
    else:
        bench_train_step(table, (784, 2048, 2048, 10), 128, reps)
        bench_masks(table, SHAPES_10M, reps, sort_reps)
        bench_masks(table, SHAPES_50M, reps, 0)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 20; 5 with --quick)"
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="(a), (b) with magnitude_pruning(mask_dtype='packed'); (c) skipped",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    table = run(args.quick, args.reps, args.packed)
    print()
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
