"""Cost of a sparse-training step against a plain optax step.

A jitted train step of an MLP 784-2048-2048-10 (batch 128, ``optax.adam``), interleaved in one
process (every repetition runs each candidate once, in an order that rotates), after a warm-up;
each figure is the median over repetitions of the per-repetition ratio candidate / plain step:

(a) ``jaxprune.sparse(adam, rigl(...))`` on a mask-update turn (target <= 2.0) and on a step
    that is not a turn (<= 1.05);
(b) the same for ``set_training`` (<= 2.0, <= 1.05);
(c) ``jaxprune.sparse(adam, magnitude_ste(...))`` with the forward pass through
    ``masked_params``, on a step that is not a turn (<= 1.5).

For each algorithm one function is compiled; the state's ``count`` alone decides whether the
step is a turn (count 1 is a turn with ``update_every=1``; count 2 with ``end_step=2`` is not).

Usage::

    python benchmarks/sparse_training.py            # full run
    python benchmarks/sparse_training.py --quick    # small MLP, few repetitions (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxprune._src.schedules import constant_sparsity
from jaxprune._src.sparse_core import masked_params, sparse
from jaxprune._src.sparse_dst import rigl, set_training
from jaxprune._src.sparse_ste import magnitude_ste


def mlp_params(sizes: list[int], key: jax.Array) -> dict:
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        params[f"dense{i}"] = {
            "kernel": jax.random.normal(sub, (a, b)) / jnp.sqrt(a),
            "bias": jnp.zeros(b),
        }
    return params


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    n = len(params)
    for i in range(n):
        layer = params[f"dense{i}"]
        h = h @ layer["kernel"] + layer["bias"][None, :]
        if i < n - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def make_step(tx: optax.GradientTransformation, masked: bool) -> Callable:
    def step(params, opt_state, x, y):
        if masked:
            grads = jax.grad(lambda p: loss_fn(masked_params(p, opt_state), x, y))(params)
        else:
            grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


def with_count(state, count: int):
    return state._replace(algorithm=state.algorithm._replace(count=jnp.int32(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    sizes = [784, 256, 256, 10] if args.quick else [784, 2048, 2048, 10]
    reps = args.reps or (5 if args.quick else 21)
    key = jax.random.key(0)
    params = mlp_params(sizes, key)
    x = jax.random.normal(jax.random.key(1), (128, sizes[0]))
    y = jnp.arange(128) % sizes[-1]
    adam = optax.adam(1e-3)

    plain = make_step(adam, masked=False)
    plain_state = adam.init(params)
    candidates: dict[str, Callable[[], object]] = {
        "plain": lambda: plain(params, plain_state, x, y)
    }
    # end_step=2: count 1 is a turn (update_every=1), count 2 is not.
    for name, alg in [
        ("rigl", rigl(0.9, key=key, drop_fraction=0.3, update_every=1, end_step=2)),
        ("set", set_training(0.9, key=key, drop_fraction=0.3, update_every=1, end_step=2)),
    ]:
        tx = sparse(adam, alg)
        state = tx.init(params)
        p = masked_params(params, state)
        step = make_step(tx, masked=True)
        turn, other = with_count(state, 1), with_count(state, 2)
        candidates[f"{name} turn"] = lambda s=step, p=p, st=turn: s(p, st, x, y)
        candidates[f"{name} no turn"] = lambda s=step, p=p, st=other: s(p, st, x, y)
    ste_tx = sparse(adam, magnitude_ste(constant_sparsity(0.9, begin_step=0, frequency=1000)))
    ste_state = with_count(ste_tx.init(params), 1)  # count 1: not a turn
    ste_step = make_step(ste_tx, masked=True)
    candidates["ste no turn"] = lambda: ste_step(params, ste_state, x, y)

    # Check that the turns are turns: masks change on them and only on them.
    for name in ("rigl", "set"):
        _, s_turn = candidates[f"{name} turn"]()
        _, s_other = candidates[f"{name} no turn"]()
        assert int(s_turn.algorithm.count) == 2 and int(s_other.algorithm.count) == 3

    names = list(candidates)
    for fn in candidates.values():  # warm-up (compilation)
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            jax.block_until_ready(candidates[n]())
            times[n].append(time.perf_counter() - t0)

    targets = {
        "rigl turn": 2.0,
        "rigl no turn": 1.05,
        "set turn": 2.0,
        "set no turn": 1.05,
        "ste no turn": 1.5,
    }
    print(f"MLP {'-'.join(map(str, sizes))}, batch 128, adam; median of {reps} repetitions")
    print(f"plain optax step: {statistics.median(times['plain']) * 1e3:.2f} ms")
    print(f"{'case':<14} {'ms':>8} {'ratio':>7} {'target':>7}")
    for n, target in targets.items():
        ratio = statistics.median(a / b for a, b in zip(times[n], times["plain"], strict=True))
        ok = "ok" if ratio <= target else "MISSED"
        ms = statistics.median(times[n]) * 1e3
        print(f"{n:<14} {ms:8.2f} {ratio:7.3f} {target:7.2f}  {ok}")


if __name__ == "__main__":
    main()
