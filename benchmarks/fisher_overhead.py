"""What Fisher signals cost in a training step, by route.

For two CNNs (the digits CNN of ``examples/fisher_digits.py``, 8x8x1, and a CIFAR-sized one,
32x32x3), batch 64, ``optax.adam``, every step jitted, it times:

* ``plain``: the train step of the model without masks (value_and_grad of the mean loss,
  adam, apply_updates): the baseline;
* ``masked``: the same with a ``ChannelMask`` after every hidden layer, masks passed in as
  ``(C,)`` arrays, no signals (what fine-tuning a masked model costs);
* ``fisher (backward)``: the masked step that also produces the Fisher signals: loss,
  parameter gradients and per-example mask gradients from one backward pass
  (``fisher_value_and_grad(batched=True)``), then ``optax.chain(adam, fisher_pruning(...))``
  on a step where the schedule does not prune (the transformation averages the signals);
* ``fisher (vmap)``: the same, but the parameter gradients come from the plain backward pass
  and the per-example mask gradients from ``per_example_mask_grads(route="vmap")``;
* ``fisher, pruning step``: the backward route on a step that removes a channel (the
  ``lax.cond`` branch runs: marginal FLOPs by ``jax.grad`` of the FLOP count, the ratio rule,
  the recount).

Every ratio is measured in one process with the candidates interleaved (each repetition runs
every candidate once, ``--inner`` calls in a row (by default enough for about 50 ms), in an
order that rotates), after warm-up
calls, as the median over repetitions of the per-repetition ratio candidate / baseline. The
target is ``fisher (backward) / plain <= 1.15``.

Usage::

    python benchmarks/fisher_overhead.py            # both models (a few minutes on 2 cores)
    python benchmarks/fisher_overhead.py --quick    # the digits CNN only, 10 repetitions
    python benchmarks/fisher_overhead.py --reps 60 --inner 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from jaxprune import fisher_pruning
from jaxprune._src.nn import MASK_COLLECTION
from jaxprune.fisher import ChannelMask, fisher_value_and_grad, per_example_mask_grads

BATCH = 64
TARGET = 1.15


class CNN(nn.Module):
    """Convolutions (3x3, SAME, ReLU; ``None`` = 2x2 average pool), then dense layers."""

    convs: tuple
    dense: tuple
    classes: int = 10
    masked: bool = True

    @nn.compact
    def __call__(self, x):
        mask = ChannelMask if self.masked else (lambda: lambda h: h)
        for c in self.convs:
            if c is None:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            else:
                x = mask()(nn.relu(nn.Conv(c, (3, 3))(x)))
        x = x.reshape(x.shape[:-3] + (-1,))
        for d in self.dense:
            x = mask()(nn.relu(nn.Dense(d)(x)))
        return nn.Dense(self.classes)(x)


MODELS = {
    "digits CNN 8x8x1 (16-32-pool-128)": (dict(convs=(16, 32, None), dense=(128,)), (8, 8, 1)),
    "CIFAR-size CNN 32x32x3 (32-32-pool-64-64-pool-256)": (
        dict(convs=(32, 32, None, 64, 64, None), dense=(256,)),
        (32, 32, 3),
    ),
}


def xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def build_steps(config: dict, image: tuple) -> dict[str, Callable[[], object]]:
    """The jitted steps, each bound to its inputs: name -> zero-argument call."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH,) + image), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=BATCH), jnp.int32)
    masked, plain = CNN(**config), CNN(**config, masked=False)
    variables = jax.jit(masked.init)(jax.random.key(0), x[:1])
    params, masks = variables["params"], variables[MASK_COLLECTION]
    adam = optax.adam(1e-3)

    def apply(p, m, xb):
        return masked.apply({"params": p, MASK_COLLECTION: m}, xb)

    x1 = jax.ShapeDtypeStruct((1,) + image, jnp.float32)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)

    def cost_fn(m):
        return jaxprune.count_flops(apply, shapes, m, x1, channel_argnums=1)

    # Burn-in 1: update 0 does not prune, update 1 does; one compiled function serves both.
    pruner = fisher_pruning(masks, frequency=1, burn_in=1, cost_fn=cost_fn, criterion="ratio")
    tx = optax.chain(adam, pruner)

    @jax.jit
    def plain_step(p, s):
        def loss(p):
            return jnp.mean(xent(plain.apply({"params": p}, x), y))

        value, grads = jax.value_and_grad(loss)(p)
        updates, s = adam.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    @jax.jit
    def masked_step(p, s, m):
        def loss(p):
            return jnp.mean(xent(apply(p, m, x), y))

        value, grads = jax.value_and_grad(loss)(p)
        updates, s = adam.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    batch_vg = fisher_value_and_grad(lambda p, m, b: xent(apply(p, m, b[0]), b[1]), batched=True)

    @jax.jit
    def backward_step(p, s):
        m = optax.tree.get(s, "channel_masks")
        value, (grads, mask_grads) = batch_vg(p, m, (x, y))
        updates, s = tx.update(grads, s, p, mask_grads=mask_grads)
        return optax.apply_updates(p, updates), s, value

    def example_loss(p, m, ex):
        return xent(apply(p, m, ex[0][None])[0], ex[1])

    @jax.jit
    def vmap_step(p, s):
        m = optax.tree.get(s, "channel_masks")

        def loss(p):
            return jnp.mean(xent(apply(p, m, x), y))

        value, grads = jax.value_and_grad(loss)(p)
        mask_grads = per_example_mask_grads(example_loss, p, m, (x, y), route="vmap")
        updates, s = tx.update(grads, s, p, mask_grads=mask_grads)
        return optax.apply_updates(p, updates), s, value

    adam_state = adam.init(params)
    state0 = tx.init(params)
    # The same state one update later: count 1, so the next update prunes.
    state1 = jax.tree.map(lambda a: a, state0)
    state1 = (state1[0], state1[1]._replace(count=jnp.ones((), jnp.int32)))

    # Check what each step does before timing it.
    _, after, _ = backward_step(params, state1)
    assert int(after[1].num_pruned) == 1, "the pruning step did not prune"
    _, after, _ = backward_step(params, state0)
    assert int(after[1].num_pruned) == 0, "the non-pruning step pruned"
    _, after_vmap, _ = vmap_step(params, state0)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(after_vmap[1].signals)]),
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(after[1].signals)]),
        rtol=1e-4,
        atol=1e-9,
    )

    return {
        "plain": lambda: plain_step(params, adam_state),
        "masked": lambda: masked_step(params, adam_state, masks),
        "fisher (backward)": lambda: backward_step(params, state0),
        "fisher (vmap)": lambda: vmap_step(params, state0),
        "fisher, pruning step": lambda: backward_step(params, state1),
    }, [plain_step, masked_step, backward_step, vmap_step]


def interleaved(candidates, reps: int, inner: int | None, warmup: int = 3):
    """Seconds per call: each repetition times ``inner`` calls of every candidate, rotated.

    ``inner=None`` picks the number of calls that makes one timing last about 50 ms.
    """
    names = list(candidates)
    warm = []
    for _ in range(warmup):
        for name in names:
            t0 = time.perf_counter()
            jax.block_until_ready(candidates[name]())
            warm.append(time.perf_counter() - t0)
    if inner is None:
        inner = max(1, round(0.05 / statistics.median(warm)))
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = candidates[name]
            t0 = time.perf_counter()
            for _ in range(inner - 1):
                fn()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - t0) / inner)
    return times, inner


def ratio(a, b) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def run(quick: bool = False, reps: int = 30, inner: int | None = None) -> list[tuple]:
    rows = []
    models = list(MODELS.items())[:1] if quick else list(MODELS.items())
    for name, (config, image) in models:
        print(f"\n{name}, batch {BATCH}", flush=True)
        steps, compiled = build_steps(config, image)
        times, used = interleaved(steps, reps, inner)
        print(f"  {reps} repetitions x {used} calls", flush=True)
        for fn in compiled:
            assert fn._cache_size() == 1, "a step compiled more than once"
        base = times["plain"]
        print(f"  {'step':<22} {'ms':>7} {'/ plain':>8} {'/ masked':>9} {'/ backward':>11}")
        for case, t in times.items():
            print(
                f"  {case:<22} {statistics.median(t) * 1e3:>7.3f} {ratio(t, base):>8.3f} "
                f"{ratio(t, times['masked']):>9.3f} {ratio(t, times['fisher (backward)']):>11.3f}"
            )
        r = ratio(times["fisher (backward)"], base)
        verdict = "ok" if r <= TARGET else "MISSED"
        print(f"  fisher (backward) / plain = {r:.3f}  (target <= {TARGET}: {verdict})")
        print(
            f"  fisher (vmap) / fisher (backward) = "
            f"{ratio(times['fisher (vmap)'], times['fisher (backward)']):.3f}"
        )
        rows.append((name, r, verdict, times))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits CNN only, 10 repetitions")
    parser.add_argument("--reps", type=int, default=30, help="repetitions (default: 30)")
    parser.add_argument(
        "--inner", type=int, default=None, help="calls per timing (default: enough for about 50 ms)"
    )
    args = parser.parse_args(argv)
    reps = 10 if args.quick else args.reps
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"hardware: {platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}"
        + (f", load average {load[0]:.1f}" if load else "")
    )
    print("candidates interleaved; ratios are medians of per-repetition ratios")
    run(quick=args.quick, reps=reps, inner=args.inner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
