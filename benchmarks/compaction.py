"""Latency of compacted models against the dense ones, at 50% of the channels.

Run with ``python benchmarks/compaction.py [--model resnet|transformer|all] [--repeats 30]
[--keep 0.5]``. Two models, on random weights (latency does not depend on their values):

* ``resnet``: a stem and three residual stages (64, 128, 256 channels; projection shortcuts
  where the width or the stride changes) with batch norm, on a batch of 32 inputs of 32x32x3.
  Every dependency group keeps its ``--keep`` best channels by group L2 norm.
* ``transformer``: one pre-norm transformer block (width 512, 8 heads of 64, MLP 2048, flax's
  ``nn.MultiHeadDotProductAttention``) on a batch of 8 sequences of 256 tokens. Whole heads
  (queries, keys, values and the output projection's rows together) and MLP units keep their
  ``--keep`` best by group L2 norm; the residual stream, which the layer norms reduce over,
  and the width of each head are kept.

``jaxprune``'s compaction slices the rest out. Both models are compiled first, then timed
interleaved (dense, compacted, dense, ...), and the medians and their ratio (compacted /
dense) are printed with the parameter and FLOP ratios.
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


class TransformerBlock(nn.Module):
    heads: int = 8
    mlp: int = 2048

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attention")(h, h)
        h = nn.LayerNorm()(x)
        h = nn.gelu(nn.Dense(self.mlp, name="up")(h))
        return x + nn.Dense(x.shape[-1], name="down")(h)


def resnet_case(keep_fraction):
    model = ResNet()
    x = np.random.default_rng(1).standard_normal((32, 32, 32, 3)).astype(np.float32)
    variables = random_variables(model, x)
    groups = jp.dependency_groups(model.apply, variables, x)
    scores = jp.group_scores(variables, groups, exclude="batch_stats")
    keep = jp.group_masks(scores, groups, sparsity=1.0 - keep_fraction)
    return model.apply, variables, x, groups, keep


def transformer_case(keep_fraction):
    model = TransformerBlock()
    x = np.random.default_rng(1).standard_normal((8, 256, 512)).astype(np.float32)
    variables = random_variables(model, x)
    groups = jp.dependency_groups(model.apply, variables, x)
    scores = jp.group_scores(variables, groups)
    masks = jp.group_masks(scores, groups, sparsity=1.0 - keep_fraction)
    # Whole heads (the group with the query kernel's head axis) and MLP units (the group of
    # the up projection's outputs); groups a mapping leaves out keep every channel.
    chosen = {
        ("params/attention/query/kernel", 1): "heads",
        ("params/up/kernel", 1): "MLP units",
    }
    keep = {}
    for g, m in zip(groups, masks, strict=True):
        for member in g.members:
            if member in chosen:
                keep[g.name] = m
    if len(keep) != len(chosen):
        raise RuntimeError(f"expected groups for {sorted(chosen.values())}, found {len(keep)}")
    return model.apply, variables, x, groups, keep


def measure(name, case, args):
    fn, variables, x, groups, keep = case(args.keep)
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
    pruned = len(keep) if isinstance(keep, dict) else len(groups)
    print(f"{name}: {len(groups)} groups, {pruned} pruned to {args.keep:.0%}, input {x.shape}")
    print(f"{'':14s}{'dense':>14s}{'compacted':>14s}{'ratio':>8s}")
    print(f"{'parameters':14s}{pd:>14,d}{ps:>14,d}{ps / pd:>8.3f}")
    print(f"{'FLOPs':14s}{fd:>14,d}{fs:>14,d}{fs / fd:>8.3f}")
    print(f"{'median ms':14s}{md * 1e3:>14.2f}{ms * 1e3:>14.2f}{ms / md:>8.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("resnet", "transformer", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls of each (>= 20)")
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of channels kept")
    args = ap.parse_args()
    if not 0.0 < args.keep <= 1.0:
        ap.error(f"--keep must be in (0, 1], got {args.keep}")
    print(f"device: {jax.devices()[0].platform}")
    cases = {"resnet": resnet_case, "transformer": transformer_case}
    for name, case in cases.items():
        if args.model in (name, "all"):
            measure(name, case, args)


if __name__ == "__main__":
    main()
