"""Structural pruning: remove half the channels of a small ResNet, for a smaller, faster model.

1. Train a ResNet-style CNN with batch norm on scikit-learn's 8x8 digits (no download).
2. Find its dependency groups from the traced program: each group lists every parameter axis
   that indexes the same channels (a convolution's output channels, its bias, the batch norm's
   scale, offset and running statistics, the next convolution's input channels; residual adds
   tie the groups they join).
3. Score every channel by the L2 norm of its weights over all members of its group (or, with
   ``--criterion fisher``, by its Fisher signal from per-example gradients of 256 training
   examples, ``jax.vmap`` of ``jax.grad``), and keep the best 50% of the channels of every
   group.
4. Compact: slice the pruned channels out of every member. The small function computes the
   same outputs as the dense model with those channels zeroed, on smaller arrays.
5. Fine-tune the small model for a few steps (it is an ordinary differentiable JAX function).

Run it with::

    python examples/compact_cnn.py [--steps 600] [--sparsity 0.5] [--criterion l2|fisher]
                                   [--seed 0] [--quick]

It prints parameters, FLOPs and latency before and after, and the test accuracies, and exits
with status 1 if the small model's outputs differ from the masked model's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp


class ResNet(nn.Module):
    """A stem, an identity block and a strided block with a projection shortcut."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)

        x = nn.relu(bn("stem_bn")(nn.Conv(32, (3, 3), use_bias=False, name="stem")(x)))
        y = nn.relu(bn("b1_bn1")(nn.Conv(32, (3, 3), use_bias=False, name="b1_conv1")(x)))
        y = bn("b1_bn2")(nn.Conv(32, (3, 3), use_bias=False, name="b1_conv2")(y))
        x = nn.relu(x + y)
        y = nn.Conv(64, (3, 3), strides=2, use_bias=False, name="b2_conv1")(x)
        y = nn.relu(bn("b2_bn1")(y))
        y = bn("b2_bn2")(nn.Conv(64, (3, 3), use_bias=False, name="b2_conv2")(y))
        shortcut = bn("b2_proj_bn")(
            nn.Conv(64, (1, 1), strides=2, use_bias=False, name="b2_proj")(x)
        )
        x = nn.relu(y + shortcut)
        return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))


def load(seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed)


def accuracy(fn, variables, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(fn(variables, x)), -1) == y)) * 100


def latency_ms(fn, variables, x, repeats: int) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(variables, x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(variables, x))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def n_params(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def batch_norm_step(model, tx):
    """A jitted train step of a linen classifier with batch norm (``train=True``):
    ``(params, stats, opt, x, y) -> (params, stats, opt, loss)``."""

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new

        (value, new), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt, value

    return step


def train(model, variables, x, y, steps, seed):
    tx = optax.adam(3e-3)
    opt = tx.init(variables["params"])
    step = batch_norm_step(model, tx)
    rng = np.random.default_rng(seed)
    params, stats = variables["params"], variables["batch_stats"]
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        params, stats, opt, _ = step(params, stats, opt, x[idx], y[idx])
    return {"params": params, "batch_stats": stats}


def fine_tune(small_fn, small, x, y, steps, seed):
    """Trains the small model's weights; running statistics stay as compacted."""
    tx = optax.adam(1e-3)
    opt = tx.init(small["params"])

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            logits = small_fn({"params": p, "batch_stats": small["batch_stats"]}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        g = jax.grad(loss)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt

    rng = np.random.default_rng(seed + 1)
    params = small["params"]
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        params, opt = step(params, opt, x[idx], y[idx])
    return {"params": params, "batch_stats": small["batch_stats"]}


def fisher_scores(fn, variables, groups, x, y):
    """Group Fisher scores from per-example gradients (``jax.vmap`` of ``jax.grad``)."""

    def loss(v, xi, yi):  # one example, running statistics as in evaluation
        logits = fn(v, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None]).sum()

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(variables, x, y)
    return jp.group_scores(
        variables, groups, criterion="fisher", grads=grads, exclude="batch_stats"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--criterion", choices=("l2", "fisher"), default="l2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few steps, for a smoke test")
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    repeats = 5 if args.quick else 30

    x_train, x_test, y_train, y_test = load(args.seed)
    model = ResNet()
    variables = model.init(jax.random.key(args.seed), x_train[:1])
    variables = train(model, variables, x_train, y_train, steps, args.seed)

    def fn(v, x):
        return model.apply(v, x)

    groups = jp.dependency_groups(fn, variables, x_test)
    print(f"{len(groups)} dependency groups:")
    for g in groups:
        print(f"  {g.name:28s} {g.size:3d} channels, {len(g.members)} members")
    for b in groups.blocked:
        print(f"  not prunable: {b.path}[axis {b.axis}]: {b.reason}")

    if args.criterion == "fisher":
        scores = fisher_scores(fn, variables, groups, x_train[:256], y_train[:256])
    else:
        scores = jp.group_scores(variables, groups, exclude="batch_stats")
    print(f"channels ranked by {args.criterion}")
    keep = jp.group_masks(scores, groups, sparsity=args.sparsity)
    small, small_fn = jp.compact(fn, variables, keep, x_test)

    masks = jp.structural.group_weight_masks(variables, groups, keep)
    masked = jax.tree.map(lambda w, m: w * m, variables, masks)
    out_masked = np.asarray(jax.jit(fn)(masked, x_test))
    out_small = np.asarray(jax.jit(small_fn)(small, x_test))
    same = np.allclose(out_small, out_masked, rtol=1e-4, atol=1e-4)

    tuned = fine_tune(small_fn, small, x_train, y_train, steps // 4, args.seed)
    return report(fn, variables, small_fn, small, tuned, x_test, y_test, repeats, steps // 4, same)


def report(fn, params, small_fn, small, tuned, x_test, y_test, repeats, tune_steps, same) -> int:
    """Prints parameters, FLOPs, latency and accuracies, dense against compacted; the exit
    status: 0 if the compacted outputs equal the masked model's (``same``), else 1."""
    flops_dense = jp.count_flops(fn, params, x_test)
    flops_small = jp.count_flops(small_fn, small, x_test)
    t_dense = latency_ms(fn, params, x_test, repeats)
    t_small = latency_ms(small_fn, small, x_test, repeats)
    acc_dense = accuracy(jax.jit(fn), params, x_test, y_test)
    acc_small = accuracy(jax.jit(small_fn), small, x_test, y_test)
    acc_tuned = accuracy(jax.jit(small_fn), tuned, x_test, y_test)

    print(f"\n{'':24s}{'dense':>12s}{'compacted':>12s}{'ratio':>8s}")
    rows = [
        ("parameters", n_params(params), n_params(small)),
        ("FLOPs (test set)", flops_dense, flops_small),
        (f"latency ms (n={len(x_test)})", t_dense, t_small),
    ]
    for name, a, b in rows:
        fmt = "{:>12,.0f}" if name != rows[2][0] else "{:>12.2f}"
        print(f"{name:24s}" + fmt.format(a) + fmt.format(b) + f"{b / a:>8.2f}")
    print(
        f"\ntest accuracy: dense {acc_dense:.2f}%, compacted {acc_small:.2f}%, "
        f"compacted + {tune_steps} fine-tuning steps {acc_tuned:.2f}%"
    )
    print(f"compacted outputs equal the masked model's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
