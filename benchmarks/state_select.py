"""Why RigL's and SET's steps between turns cost more than a plain step: a selected state.

An Adam-style update of one 2048x2048 weight with its two moments, jitted with the weight and
moments donated, written three ways:

* ``plain``: the new moments are the stored state, and the weight update reads them;
* ``select``: the stored state is ``where(turn, old, new)`` (RigL's skip on a turn; a reset of
  grown entries, ``where(grown, 0, new)``, has the same shape), the update is zeroed on a turn;
* ``select-first``: the same results computed in another order, the update computed from the
  selected moments (exact here because the update is zero on a turn; not available to
  ``jaxprune.sparse``, which does not know the inner optimizer's formulas).

It prints the copies XLA inserts in each compiled program and the median time of each, run
interleaved with ``turn`` false, with the ratio to ``plain``.

Usage::

    python benchmarks/state_select.py [--reps 30] [--size 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

B1, B2, LR, EPS = 0.9, 0.999, 1e-3, 1e-8


def moments(mu, nu, g):
    return B1 * mu + (1 - B1) * g, B2 * nu + (1 - B2) * g * g


def plain(w, mu, nu, g, turn):
    m, v = moments(mu, nu, g)
    return w - LR * m / (jnp.sqrt(v) + EPS), m, v


def select(w, mu, nu, g, turn):
    m, v = moments(mu, nu, g)
    u = jnp.where(turn, 0.0, m / (jnp.sqrt(v) + EPS))
    return w - LR * u, jnp.where(turn, mu, m), jnp.where(turn, nu, v)


def select_first(w, mu, nu, g, turn):
    m, v = moments(mu, nu, g)
    m, v = jnp.where(turn, mu, m), jnp.where(turn, nu, v)
    u = jnp.where(turn, 0.0, m / (jnp.sqrt(v) + EPS))
    return w - LR * u, m, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30, help="timed calls of each (>= 5)")
    ap.add_argument("--size", type=int, default=2048, help="the weight is size x size")
    args = ap.parse_args()
    if args.reps < 5 or args.size < 1:
        ap.error("--reps must be >= 5 and --size >= 1")
    shape = (args.size, args.size)
    turn = jnp.array(False)
    fns = {"plain": plain, "select": select, "select-first": select_first}
    compiled, state = {}, {}
    for name, fn in fns.items():
        args_ = [jnp.ones(shape) for _ in range(4)] + [turn]
        compiled[name] = jax.jit(fn, donate_argnums=(0, 1, 2)).lower(*args_).compile()
        state[name] = [jnp.full(shape, 0.5) for _ in range(3)]
    g = jnp.full(shape, 0.1)
    times = {name: [] for name in fns}
    for r in range(args.reps + 2):
        for name in fns:
            w, mu, nu = state[name]
            t0 = time.perf_counter()
            out = compiled[name](w, mu, nu, g, turn)
            jax.block_until_ready(out)
            if r >= 2:  # warm-up
                times[name].append(time.perf_counter() - t0)
            state[name] = list(out)
    base = statistics.median(times["plain"])
    print(f"{args.size}x{args.size} float32, Adam moments donated; turn = False")
    print(f"{'variant':14s}{'copies':>8s}{'median ms':>11s}{'ratio':>8s}")
    for name in fns:
        copies = compiled[name].as_text().count(" copy(")
        med = statistics.median(times[name])
        print(f"{name:14s}{copies:>8d}{med * 1e3:>11.2f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
