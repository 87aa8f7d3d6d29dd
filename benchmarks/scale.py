"""Magnitude selection over a billion parameters: peak memory and time.

Two cases, each in a fresh process (so that memory one case frees, and the allocator keeps,
cannot hide the other's peak):

* ``global``: ``jaxprune.global_magnitude_masks(params, 0.9)`` over 8 leaves of ``n / 8``
  entries each (shape ``(rows, 4096)``), ranked together under one threshold;
* ``layer``: ``jaxprune.magnitude_mask(x, 0.9)`` on a single leaf of ``n`` entries.

``n`` is ``--params`` (default 1e9) rounded to whole rows of 4096; the dtype is ``--dtype``
(default bfloat16). Each function is wrapped in ``jax.jit`` and compiled from shapes alone,
before the params exist. The params are then made leaf by leaf, each by one fused kernel
(uniform random bits from a hash of the index, shaped into a bell curve, written straight in
the dtype: no temporaries, no second copy). Two figures per case:

* **peak ÷ param bytes**: ``(param bytes + peak - base) / param bytes``, where ``base`` is the
  process's resident memory once the params exist and ``peak`` its peak resident memory during
  the first call. The kernel's peak is reset by writing ``5`` to ``/proc/self/clear_refs``,
  then read as ``VmHWM`` from ``/proc/self/status`` (Linux); where that reset does not work, a
  thread samples ``VmRSS`` every millisecond instead (the line says which). Target: the
  params, the masks the call returns (1 byte per entry, bool) and at most 0.25 byte per
  parameter of temporaries, i.e. ``<= 1 + 1.25 / itemsize`` (1.625 for bfloat16, 1.3125 for
  float32).
* **time ÷ one pass**: the call's time divided by that of one jitted elementwise pass over the
  same params, ``sum(jnp.sum(jnp.abs(x), dtype=float32))`` over the leaves, compiled alike, run
  in the same process, interleaved with the selection (median of per-repetition ratios).

After the measured call, every mask is checked against the rule: for ``t`` the smallest kept
magnitude, the mask is exactly ``|x| >= t``, and ``#{|x| > t} < k <= #{|x| >= t}`` (one
reduction pass each, no copy).

``--quick`` uses 1e7 parameters: fixed costs (chunk-sized buffers, a few MiB) then weigh on
the ratios, which are not judged against the targets.

Usage::

    python benchmarks/scale.py                    # 1e9 bfloat16 parameters, ~3 minutes
    python benchmarks/scale.py --quick            # 1e7: a smoke test (~15 s)
    python benchmarks/scale.py --params 3e8 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxprune as jp

SPARSITY = 0.9
COLS = 4096
GLOBAL_LEAVES = 8
TEMP_BUDGET = 0.25  # bytes of temporaries per parameter allowed on top of params and masks
CASES = ("global", "layer")


# ----------------------------------------------------------------------------- memory


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Resets the kernel's peak resident memory (VmHWM) to the current; whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    s = _status()
    # After a reset VmHWM is the current VmRSS (give or take what moved in between).
    return s["VmHWM"] - s["VmRSS"] < 16 << 20


class PeakMeter:
    """Peak resident memory during a ``with`` block, and the resident memory before it."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs" if _reset_peak() else "VmRSS sampled every 1 ms"
        self.base = self.peak = 0

    def __enter__(self) -> PeakMeter:
        self._stop = threading.Event()
        self._thread = None
        if self.method.startswith("VmHWM"):
            _reset_peak()
            self.base = _status()["VmRSS"]
        else:
            self.base = self.peak = _status()["VmRSS"]
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status()["VmRSS"])
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self.peak = _status()["VmHWM"]
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _status()["VmRSS"])


# ------------------------------------------------------------------------------ params


def leaf_shapes(case: str, n: int) -> list[tuple[int, int]]:
    if case == "global":
        return [(max(1, round(n / GLOBAL_LEAVES / COLS)), COLS)] * GLOBAL_LEAVES
    return [(max(1, round(n / COLS)), COLS)]


def make_leaf(seed: int, shape: tuple[int, int], dtype) -> jax.Array:
    """A leaf of bell-shaped random values (std 1), made by one fused elementwise kernel.

    A hash of the index (lowbias32) gives 32 random bits; the sum of their two 16-bit halves
    has a triangular distribution. Nothing but the output is allocated.
    """

    @jax.jit
    def make():
        i = lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(shape[1])
        h = (i + lax.broadcasted_iota(jnp.uint32, shape, 1)) * jnp.uint32(0x9E3779B9)
        h = h + jnp.uint32((seed * 0x85EBCA6B + 1) & 0xFFFFFFFF)
        h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
        h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
        h = h ^ (h >> 16)
        a = (h & 0xFFFF).astype(jnp.float32)
        b = (h >> 16).astype(jnp.float32)
        return ((a + b - 65535.0) * (1.0 / 26755.0)).astype(dtype)

    return jax.block_until_ready(make())


# --------------------------------------------------------------------------- one case


def _select_fn(case: str) -> Callable:
    if case == "global":
        return lambda params: jp.global_magnitude_masks(params, SPARSITY)
    return lambda params: {"w": jp.magnitude_mask(params["w"], SPARSITY)}


def _one_pass(params):
    return sum(jnp.sum(jnp.abs(x), dtype=jnp.float32) for x in jax.tree.leaves(params))


@jax.jit
def _kept_min_pruned_max(x, mask):
    """The smallest kept and the largest pruned magnitude (float32: exact), and #kept."""
    a = jnp.abs(x.astype(jnp.float32))
    kept_min = jnp.min(jnp.where(mask, a, jnp.inf))
    pruned_max = jnp.max(jnp.where(mask, -jnp.inf, a))
    return kept_min, pruned_max, jnp.sum(mask, dtype=jnp.int32)


@jax.jit
def _count_above(x, t):
    return jnp.sum(jnp.abs(x.astype(jnp.float32)) > t, dtype=jnp.int32)


def kept_count(size: int) -> int:
    """tfmot's k: max(round_half_to_even(float32(size) * (1 - s)), 1), computed in float32."""
    k = np.round(np.float32(size) * (np.float32(1) - np.float32(SPARSITY)))
    return int(min(max(k, 1), size))


def check_masks(case: str, params: dict, masks: dict) -> None:
    """Raises unless the masks are the rule's: ``|x| >= t``, t the k-th largest ``|x|``."""
    groups = [list(params)] if case == "global" else [[name] for name in params]
    for names in groups:
        stats = [_kept_min_pruned_max(params[m], masks[m]) for m in names]
        t = min(float(s[0]) for s in stats)
        pruned_max = max(float(s[1]) for s in stats)
        kept = sum(int(s[2]) for s in stats)
        above = sum(int(_count_above(params[m], t)) for m in names)
        k = kept_count(sum(params[m].size for m in names))
        # Every kept |x| >= t > every pruned |x|: the mask is |x| >= t; and t is the k-th.
        if not (pruned_max < t and above < k <= kept):
            raise RuntimeError(
                f"{case}: the masks break the rule: t = {t}, largest pruned {pruned_max}, "
                f"{above} above t, {kept} kept, k = {k}"
            )


def run_case(case: str, n: int, dtype: str, reps: int) -> dict:
    """Measures one case in this process; returns its figures."""
    dtype = jnp.dtype(dtype)
    shapes = leaf_shapes(case, n)
    names = [f"w{i}" for i in range(len(shapes))] if case == "global" else ["w"]
    structs = {name: jax.ShapeDtypeStruct(s, dtype) for name, s in zip(names, shapes)}
    # Compiled from shapes, before the params exist: the compiler's memory is not measured.
    select = jax.jit(_select_fn(case)).lower(structs).compile()
    one_pass = jax.jit(_one_pass).lower(structs).compile()
    xla_temp = select.memory_analysis().temp_size_in_bytes

    rss_before = _status()["VmRSS"]
    params = {
        name: make_leaf(i, s, dtype) for i, (name, s) in enumerate(zip(names, shapes), start=1)
    }
    size = sum(x.size for x in params.values())
    param_bytes = sum(x.nbytes for x in params.values())
    meter = PeakMeter()
    with meter:
        t0 = time.perf_counter()
        masks = jax.block_until_ready(select(params))
        first = time.perf_counter() - t0
    mask_bytes = sum(m.nbytes for m in masks.values())
    check_masks(case, params, masks)
    del masks

    # Timing: the selection and one pass, interleaved, order alternating.
    jax.block_until_ready(one_pass(params))
    times: dict[str, list[float]] = {"select": [], "pass": []}
    candidates = {"select": lambda: select(params), "pass": lambda: one_pass(params)}
    for r in range(reps):
        order = ["select", "pass"] if r % 2 == 0 else ["pass", "select"]
        for name in order:
            t0 = time.perf_counter()
            out = jax.block_until_ready(candidates[name]())
            times[name].append(time.perf_counter() - t0)
            del out
    ratio = statistics.median(a / b for a, b in zip(times["select"], times["pass"]))
    return {
        "case": case,
        "dtype": dtype.name,
        "size": size,
        "leaves": len(shapes),
        "param_bytes": param_bytes,
        "mask_bytes": mask_bytes,
        "rss_before_params": rss_before,
        "base": meter.base,
        "peak": meter.peak,
        "method": meter.method,
        "xla_temp": xla_temp,
        "first_s": first,
        "select_s": statistics.median(times["select"]),
        "pass_s": statistics.median(times["pass"]),
        "ratio": ratio,
    }


# ------------------------------------------------------------------------------ driver


def run(n: int, dtype: str, reps: int, cases: Sequence[str] = CASES) -> list[dict]:
    """Runs each case in a fresh process; returns their figures."""
    results = []
    for case in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--params", str(n)]
        cmd += ["--dtype", dtype, "--reps", str(reps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise RuntimeError(f"case {case} failed (exit {proc.returncode})")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def format_row(r: dict, judge: bool) -> str:
    itemsize = r["param_bytes"] / r["size"]
    used = r["peak"] - r["base"]  # masks and temporaries
    temp = (used - r["mask_bytes"]) / r["size"]
    peak_ratio = (r["param_bytes"] + used) / r["param_bytes"]
    target = 1 + (1 + TEMP_BUDGET) / itemsize
    if not judge:
        verdict = f"<= {target:g} (quick)"
    else:
        verdict = f"<= {target:g} {'ok' if peak_ratio <= target else 'MISSED'}"
    what = f"{r['leaves']} leaves" if r["case"] == "global" else "1 leaf"
    return (
        f"{r['case']:<6}  {r['size']:>13,} {r['dtype']} ({what})  "
        f"time {r['ratio']:6.2f}x one pass ({r['select_s']:.2f} s / {r['pass_s']:.3f} s)  "
        f"peak {peak_ratio:.3f}x param bytes {verdict}  "
        f"(masks {r['mask_bytes'] / r['size']:.2f} + temporaries {temp:+.3f} B/param; "
        f"XLA temp {r['xla_temp'] / 2**20:.1f} MiB)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=None, help="parameters (1e9)")
    parser.add_argument("--quick", action="store_true", help="1e7 parameters (smoke test)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (3)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, JSON out
    args = parser.parse_args(argv)
    n = int(args.params if args.params is not None else (1e7 if args.quick else 1e9))
    if n < COLS * GLOBAL_LEAVES or n >= 2**31 or args.reps < 1:
        parser.error(f"--params must be in [{COLS * GLOBAL_LEAVES}, 2**31) and --reps >= 1")
    if args.case:
        print(json.dumps(run_case(args.case, n, args.dtype, args.reps)), flush=True)
        return 0
    devices = jax.devices()
    print(
        f"hardware: {devices} ({devices[0].device_kind}), {os.cpu_count()} CPUs "
        f"({platform.machine()}), jax {jax.__version__}, python {platform.python_version()}",
        flush=True,
    )
    print(
        f"sparsity {SPARSITY}; peak = (param bytes + peak RSS during the call - RSS once the "
        "params exist) / param bytes",
        flush=True,
    )
    results = run(n, args.dtype, args.reps)
    mib = 2**20
    for r in results:
        print(
            f"  {r['case']}: RSS {r['rss_before_params'] / mib:.0f} MiB before the params, "
            f"{r['base'] / mib:.0f} MiB with them ({r['param_bytes'] / mib:.0f} MiB of params), "
            f"peak {r['peak'] / mib:.0f} MiB ({r['method']}); first call {r['first_s']:.2f} s",
            flush=True,
        )
    print()
    judge = not args.quick and n >= 10**8
    for r in results:
        print(format_row(r, judge))
    return 0


if __name__ == "__main__":
    sys.exit(main())
