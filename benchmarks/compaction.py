"""Latency of a compacted ResNet-style CNN against the dense one, at 50% of the channels.

Run with ``python benchmarks/compaction.py [--repeats 30] [--keep 0.5]``. The model is a stem
and three residual stages (64, 128, 256 channels; projection shortcuts where the width or the
stride changes) with batch norm, on a batch of 32 inputs of 32x32x3. Every dependency group
keeps its ``--keep`` best channels by group L2 norm; ``jaxprune``'s compaction slices the rest
out. Both models are compiled first, then timed interleaved (dense, compacted, dense, ...), and
the medians and their ratio (compacted / dense) are printed with the FLOP ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp


class Block(nn.Module):
    features: int
    strides: int

    @nn.compact
    def __call__(self, x):
        bn = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
        y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(bn()(y))
        y = bn()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = bn()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(64, (3, 3))(x)))
        for features, strides in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
            x = Block(features, strides)(x)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def random_variables(model, x, seed=0):
    """Random weights and positive running variances (numpy; nothing compiled)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        v = rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        if "var" in jax.tree_util.keystr(path):
            v = np.abs(v) + np.float32(1.0)
        out.append(v)
    return jax.tree.unflatten(tdef, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed calls of each (>= 20)")
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of channels kept")
    args = ap.parse_args()
    model = ResNet()
    x = np.random.default_rng(1).standard_normal((32, 32, 32, 3)).astype(np.float32)
    variables = random_variables(model, x)

    def fn(v, x):
        return model.apply(v, x)

    groups = jp.dependency_groups(fn, variables, x)
    scores = jp.group_scores(variables, groups, exclude="batch_stats")
    keep = jp.group_masks(scores, groups, sparsity=1.0 - args.keep)
    small, small_fn = jp.compact(fn, variables, keep, x)

    dense_jit, small_jit = jax.jit(fn), jax.jit(small_fn)
    variables = jax.device_put(variables)
    small = jax.device_put(small)
    xd = jax.device_put(x)
    for _ in range(3):
        jax.block_until_ready(dense_jit(variables, xd))
        jax.block_until_ready(small_jit(small, xd))
    t_dense, t_small = [], []
    for _ in range(max(args.repeats, 20)):
        t = time.perf_counter()
        jax.block_until_ready(dense_jit(variables, xd))
        t_dense.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(small_jit(small, xd))
        t_small.append(time.perf_counter() - t)
    md, ms = statistics.median(t_dense), statistics.median(t_small)
    fd, fs = jp.count_flops(fn, variables, x), jp.count_flops(small_fn, small, x)
    pd = sum(int(np.size(a)) for a in jax.tree.leaves(variables))
    ps = sum(int(np.size(a)) for a in jax.tree.leaves(small))
    print(f"device: {jax.devices()[0].platform}; {len(groups)} groups, keep {args.keep:.0%}")
    print(f"{'':14s}{'dense':>14s}{'compacted':>14s}{'ratio':>8s}")
    print(f"{'parameters':14s}{pd:>14,d}{ps:>14,d}{ps / pd:>8.3f}")
    print(f"{'FLOPs':14s}{fd:>14,d}{fs:>14,d}{fs / fd:>8.3f}")
    print(f"{'median ms':14s}{md * 1e3:>14.2f}{ms * 1e3:>14.2f}{ms / md:>8.3f}")


if __name__ == "__main__":
    main()
