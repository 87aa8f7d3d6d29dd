"""How long count_flops takes on a ResNet-50 forward pass (batch 1, 224x224).

Run with ``python benchmarks/flops_count.py``. Prints the time of
``count_flops`` (tracing included), of ``jax.make_jaxpr`` alone (the baseline,
measured in the same process) and of XLA's own count
(``jax.jit(f).lower(...).cost_analysis()``), and checks that the counts agree.
The parameters are abstract (``jax.eval_shape``), so nothing is compiled.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprune._src.flops import count_flops, flops_report

BLOCKS, WIDTHS = (3, 4, 6, 3), (64, 128, 256, 512)


def channel_masks(keep: float = 0.5):
    """Two masks per bottleneck, keeping the first ``keep`` of the features."""
    masks = []
    for blocks, features in zip(BLOCKS, WIDTHS, strict=True):
        m = (jnp.arange(features) < keep * features).astype(jnp.float32)
        masks.extend([(m, m)] * blocks)
    return masks


class Bottleneck(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, masks=None):
        norm = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
        h = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
        if masks is not None:  # Fisher pruning's masks, after the non-linearities
            h = h * masks[0][None, None, None, :]
        h = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(h)
        h = nn.relu(norm()(h))
        if masks is not None:
            h = h * masks[1][None, None, None, :]
        h = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(h))
        if x.shape != h.shape:
            x = nn.Conv(4 * self.features, (1, 1), self.strides, use_bias=False)(x)
            x = norm()(x)
        return nn.relu(h + x)


class ResNet50(nn.Module):
    classes: int = 1000

    @nn.compact
    def __call__(self, x, masks=None):
        x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        k = 0
        for i, (blocks, features) in enumerate(zip(BLOCKS, WIDTHS, strict=True)):
            for j in range(blocks):
                block_masks = None if masks is None else masks[k]
                x = Bottleneck(features, 2 if i > 0 and j == 0 else 1)(x, block_masks)
                k += 1
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.classes)(x)


def _time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = ResNet50()
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    # Warm up both paths once (imports, caches that any caller pays once).
    jax.make_jaxpr(model.apply)(variables, x)
    count_flops(model.apply, variables, x)

    # Alternate the two so that load from other processes hits both alike.
    t_jaxprs, t_counts = [], []
    for _ in range(args.repeats):
        t, jaxpr = _time(lambda: jax.make_jaxpr(model.apply)(variables, x), 1)
        t_jaxprs.append(t)
        t, flops = _time(lambda: count_flops(model.apply, variables, x), 1)
        t_counts.append(t)
    t_jaxpr, t_count = statistics.median(t_jaxprs), statistics.median(t_counts)
    t_xla, cost = _time(lambda: jax.jit(model.apply).lower(variables, x).cost_analysis(), 1)
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    report = flops_report(model.apply, variables, x)

    # Pruning-aware: two channel masks per bottleneck, half of each kept.
    masks = channel_masks(0.5)
    count_flops(model.apply, variables, x, masks, channel_argnums=2)  # warm-up
    t_masked, pruned = _time(
        lambda: count_flops(model.apply, variables, x, masks, channel_argnums=2), args.repeats
    )
    marginal = jax.jit(
        jax.grad(lambda m: count_flops(model.apply, variables, x, m, channel_argnums=2))
    )
    t_grad_first, _ = _time(lambda: jax.block_until_ready(marginal(masks)), 1)
    t_grad, grads = _time(lambda: jax.block_until_ready(marginal(masks)), args.repeats)

    print(f"ResNet-50, batch 1, 224x224 ({len(jaxpr.eqns)} top-level equations)")
    print(f"count_flops:            {flops:,} flops ({flops / 2e9:.2f} GMACs)")
    print(f"XLA cost_analysis:      {int(cost['flops']):,} flops")
    # XLA adds up its per-op counts in float32; this count is an exact int.
    print(f"agreement:              {flops / cost['flops']:.6f}")
    print(f"transcendentals:        {report.transcendentals:,}")
    print(f"time count_flops:       {t_count * 1e3:8.1f} ms (median of {args.repeats})")
    print(f"time jax.make_jaxpr:    {t_jaxpr * 1e3:8.1f} ms (baseline)")
    print(f"time XLA lower + cost:  {t_xla * 1e3:8.1f} ms")
    print(f"count_flops / make_jaxpr: {t_count / t_jaxpr:.2f}x")
    print(f"counting overhead:      {(t_count - t_jaxpr) * 1e3:8.1f} ms")
    print(f"pruned (masks keep 1/2 of the bottleneck features): {float(pruned):,.0f} flops")
    print(f"time pruned count:      {t_masked * 1e3:8.1f} ms (tracing included)")
    print(f"time marginal costs:    {t_grad_first * 1e3:8.1f} ms (jit(grad), 32 masks, first call)")
    print(f"                        {t_grad * 1e3:8.1f} ms (later calls)")
    print(f"marginal cost of feature 0 of the first mask: {float(grads[0][0][0]):,.0f} flops")


if __name__ == "__main__":
    main()
