"""Structural pruning of a transformer: remove half of its attention heads and MLP units.

1. Train a small transformer classifier on scikit-learn's 8x8 digits (no download): each
   image is a sequence of 8 tokens (its rows, 8 pixels each), embedded to width 64 with a
   learned position embedding, then two pre-norm blocks (4 heads of 16, MLP 256, flax's
   ``nn.MultiHeadDotProductAttention``), a mean over the tokens and a linear classifier.
2. Find its dependency groups from the traced program. Each head is a group of its own kind:
   its query, key and value projections (kernel slices and biases) and its rows of the output
   projection go together. Each block's MLP units are another group. The residual stream
   (width 64) is not prunable: the layer norms reduce over it, and the listing says so.
3. Score heads and units by their L2 norm over every member of the group, and keep the best
   half of each block's heads and of each MLP's units (``--sparsity``); the width of each
   head is kept.
4. Compact: slice them out of every member. The small function computes the same outputs as
   the dense model with those heads and units zeroed, on smaller arrays.
5. Fine-tune the small model for a few steps (it is an ordinary differentiable JAX function).

Run it with::

    python examples/compact_transformer.py [--steps 800] [--sparsity 0.5] [--seed 0] [--quick]

It prints parameters, FLOPs and latency before and after, and the test accuracies, and exits
with status 1 if the small model's outputs differ from the masked model's.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The measurements and the report are those of the CNN example.
from compact_cnn import report  # noqa: E402

WIDTH, HEADS, MLP, BLOCKS = 64, 4, 256, 2


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(HEADS, name="attention")(h, h)
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.gelu(nn.Dense(MLP, name="up")(h))
        return x + nn.Dense(WIDTH, name="down")(h)


class Transformer(nn.Module):
    @nn.compact
    def __call__(self, images):
        x = images.reshape(images.shape[0], 8, 8)  # 8 tokens of 8 pixels
        x = nn.Dense(WIDTH, name="embed")(x)
        x = x + self.param("position", nn.initializers.normal(0.02), (8, WIDTH))[None]
        for i in range(BLOCKS):
            x = Block(name=f"block{i}")(x)
        x = nn.LayerNorm(name="ln_out")(x)
        return nn.Dense(10, name="head")(jnp.mean(x, axis=1))


def load(seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed)


def train(fn, params, x, y, steps, seed, lr):
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(fn(p, xb), yb).mean()

        g = jax.grad(loss)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        params, opt = step(params, opt, x[idx], y[idx])
    return params


def heads_and_units(groups, masks):
    """``keep`` for the heads' and the MLP units' groups only (the others stay whole)."""
    keep = {}
    for g, m in zip(groups, masks, strict=True):
        for path, axis in g.members:
            # A query kernel is (width, heads, head width): axis 1 is its heads.
            heads = path.endswith("attention/query/kernel") and axis == 1
            if heads or (path.endswith("/up/kernel") and axis == 1):
                keep[g.name] = m
    return keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few steps, for a smoke test")
    args = ap.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        ap.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    steps = 40 if args.quick else args.steps
    repeats = 5 if args.quick else 30

    x_train, x_test, y_train, y_test = load(args.seed)
    model = Transformer()
    params = model.init(jax.random.key(args.seed), x_train[:1])
    params = train(model.apply, params, x_train, y_train, steps, args.seed, 2e-3)

    groups = jp.dependency_groups(model.apply, params, x_test)
    print(f"{len(groups)} dependency groups:")
    for g in groups:
        print(f"  {g.name:44s} {g.size:4d} channels, {len(g.members)} members")
    reasons = {}
    for b in groups.blocked:
        reasons.setdefault(b.reason, []).append(f"{b.path}[{b.axis}]")
    for reason, axes in reasons.items():
        print(f"  not prunable, {len(axes)} axes ({reason}), e.g. {axes[0]}")

    scores = jp.group_scores(params, groups)
    keep = heads_and_units(groups, jp.group_masks(scores, groups, sparsity=args.sparsity))
    if len(keep) != 2 * BLOCKS:
        print(f"expected a heads group and a units group per block, found {len(keep)}")
        return 1
    small, small_fn = jp.compact(model.apply, params, keep, x_test)
    q = small["params"]["block0"]["attention"]["query"]["kernel"]
    print(
        f"block0 keeps {q.shape[1]} of {HEADS} heads, "
        f"{small['params']['block0']['up']['kernel'].shape[1]} of {MLP} MLP units"
    )

    full = [keep.get(g.name, np.ones(g.size, bool)) for g in groups]
    masks = jp.structural.group_weight_masks(params, groups, full)
    masked = jax.tree.map(lambda w, m: w * m, params, masks)
    out_masked = np.asarray(jax.jit(model.apply)(masked, x_test))
    out_small = np.asarray(jax.jit(small_fn)(small, x_test))
    same = np.allclose(out_small, out_masked, rtol=1e-4, atol=1e-4)

    tuned = train(small_fn, small, x_train, y_train, steps // 4, args.seed + 1, 1e-3)
    return report(
        model.apply, params, small_fn, small, tuned, x_test, y_test, repeats, steps // 4, same
    )


if __name__ == "__main__":
    sys.exit(main())
