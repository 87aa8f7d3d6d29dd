"""Fisher-prune the channels of a digits CNN to at most 50% of its FLOPs while fine-tuning.

The recipe of Theis et al., "Faster gaze prediction with dense networks and Fisher pruning"
(https://arxiv.org/abs/1801.05787), with jaxprune, on scikit-learn's 8x8 digits:

1. Train the CNN densely. Every layer's output channels pass through an ``NNXChannelMask``
   (ones), whose mask is an ``nnx.Variable`` of its own, outside the parameters.
2. Fine-tune with ``jaxprune.fisher_pruning`` last in the optax chain. Each step gets the
   parameter gradients and the per-example gradients of the loss with respect to the masks
   from one backward pass (``jaxprune.fisher.fisher_value_and_grad``); the transformation keeps a
   moving average of their squares and, every ``--frequency`` steps, removes the channel with
   the smallest signal over all layers, until ``jaxprune.count_flops`` says the network costs
   at most ``--target`` of its dense FLOPs.
3. Compare the rules: ``beta = 0`` (signal alone) with the FLOP-aware, hyperparameter-free
   rule (signal / marginal FLOPs) and, with ``--beta``, the trade-off signal - beta * FLOPs.

Everything happens inside one ``jax.jit``-compiled train step per rule; the FLOP count is a JAX
function of the masks, traced once. Run it with::

    python examples/fisher_digits.py [--dense-steps 600] [--frequency 8] [--target 0.5]
                                     [--beta 1e-6] [--seed 0] [--out out/fisher_digits]

It prints test accuracy against FLOPs along the way and at the end, writes a plot to ``--out``
and exits with status 1 if a rule ends above the FLOPs target or loses more than 5 points of
test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune
from jaxprune import fisher_pruning
from jaxprune.fisher import ChannelMaskVariable, NNXChannelMask, fisher_value_and_grad

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
MAX_ACCURACY_DROP = 5.0  # percentage points
RECOVERY_STEPS = 200  # fine-tuning after the target is reached
LAYERS = ("conv1", "conv2", "hidden")


class DigitsCNN(nnx.Module):
    """conv 3x3 (16) -> conv 3x3 (32) -> 2x2 average pool -> dense 128 -> dense 10.

    A channel mask follows every hidden layer's non-linearity, as in the paper.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv1_mask = NNXChannelMask(16)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2_mask = NNXChannelMask(32)
        self.hidden = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.hidden_mask = NNXChannelMask(128)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1_mask(nnx.relu(self.conv1(x)))  # (B, 8, 8, 16)
        x = self.conv2_mask(nnx.relu(self.conv2(x)))  # (B, 8, 8, 32)
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))  # (B, 4, 4, 32)
        x = x.reshape(x.shape[0], -1)
        return self.out(self.hidden_mask(nnx.relu(self.hidden(x))))


def load_data():
    """The 1,797 digits bundled with scikit-learn, split 80/20 with a fixed seed."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # NHWC in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))


class Model(NamedTuple):
    graphdef: nnx.GraphDef
    params: nnx.State  # pure arrays
    masks: nnx.State  # pure arrays, one (C,) mask per layer

    def apply(self, params, masks, x):
        return nnx.merge(self.graphdef, params, masks)(x)


def build_model(seed: int) -> Model:
    model = DigitsCNN(rngs=nnx.Rngs(params=seed))
    graphdef, params, masks = nnx.split(model, nnx.Param, ChannelMaskVariable)
    return Model(graphdef, nnx.as_pure(params), nnx.as_pure(masks))


def mask_of(masks, layer: str) -> jax.Array:
    return masks[f"{layer}_mask"]["mask"]


def make_cost_fn(model: Model):
    """FLOPs of one example's forward pass, as a JAX function of the masks."""
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), model.params)
    x1 = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    return lambda masks: jaxprune.count_flops(model.apply, params, masks, x1, channel_argnums=1)


def make_accuracy(model: Model, x, y):
    @jax.jit
    def accuracy(params, masks):
        return 100.0 * jnp.mean(jnp.argmax(model.apply(params, masks, x), -1) == y)

    return accuracy


def sample(key, step, x, y):
    idx = jax.random.choice(jax.random.fold_in(key, step), x.shape[0], (BATCH_SIZE,), replace=False)
    return x[idx], y[idx]


def train_dense(model: Model, data, key, steps: int):
    x, y = data

    def loss_fn(params, xb, yb):
        logits = model.apply(params, model.masks, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    tx = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(params, opt_state, t):
        grads = jax.grad(loss_fn)(params, *sample(key, t, x, y))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = model.params, tx.init(model.params)
    for t in range(steps):
        params, opt_state = step(params, opt_state, t)
    return params


class Record(NamedTuple):
    step: int
    flops: float  # fraction of dense
    accuracy: float
    kept: tuple[int, ...]  # channels kept per layer


def prune_while_finetuning(
    model,
    params,
    data,
    key,
    accuracy,
    *,
    first_step,
    frequency,
    burn_in,
    target,
    label,
    max_steps,
    **rule,
):
    """Fine-tunes with fisher_pruning until the FLOPs target, then RECOVERY_STEPS more."""
    x, y = data
    cost_fn = make_cost_fn(model)
    dense_flops = float(cost_fn(model.masks))
    pruner = fisher_pruning(
        model.masks,
        frequency=frequency,
        burn_in=burn_in,
        cost_fn=cost_fn,
        target_flops=target * dense_flops,
        **rule,
    )
    tx = optax.chain(optax.adam(LEARNING_RATE), pruner)

    def losses(p, masks, batch):  # per-example losses; masks arrive as (B, C) rows
        xb, yb = batch
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, masks, xb), yb)

    value_and_grad = fisher_value_and_grad(losses, batched=True)

    @jax.jit
    def step(params, opt_state, t):
        masks = optax.tree.get(opt_state, "channel_masks")
        _, (grads, mask_grads) = value_and_grad(params, masks, sample(key, t, x, y))
        updates, opt_state = tx.update(grads, opt_state, params, mask_grads=mask_grads)
        return optax.apply_updates(params, updates), opt_state

    def record(t, params, state):
        kept = tuple(int(jnp.sum(mask_of(state.channel_masks, k))) for k in LAYERS)
        acc = float(accuracy(params, state.channel_masks))
        return Record(t, float(state.flops) / dense_flops, acc, kept)

    opt_state = tx.init(params)
    history = [record(first_step, params, opt_state[1])]
    print(
        f"\n[{label}] prune one channel every {frequency} steps to <= {target:.0%} of "
        f"{dense_flops:,.0f} FLOPs per image"
    )
    print(f"  {'step':>5}  {'FLOPs':>6}  {'test acc':>8}  kept channels {'/'.join(LAYERS)}")
    reached_at = None
    t = 0
    while t < max_steps and (reached_at is None or t < reached_at + RECOVERY_STEPS):
        params, opt_state = step(params, opt_state, first_step + t)
        t += 1
        state = opt_state[1]
        if t >= burn_in and (t - burn_in) % frequency == 1 or t == max_steps:
            history.append(record(first_step + t, params, state))
            r = history[-1]
            if len(history) % 10 == 2 or (reached_at is None and r.flops <= target):
                print(
                    f"  {r.step:>5}  {r.flops:>6.1%}  {r.accuracy:>7.2f}%  "
                    + " / ".join(map(str, r.kept))
                )
            if reached_at is None and r.flops <= target:
                reached_at = t
    final = record(first_step + t, params, opt_state[1])
    history.append(final)
    print(
        f"  {final.step:>5}  {final.flops:>6.1%}  {final.accuracy:>7.2f}%  "
        + " / ".join(map(str, final.kept))
        + f"  (after {RECOVERY_STEPS} recovery steps)"
    )
    return history, reached_at


def plot(results, dense_acc, target, path: Path) -> None:
    fig, (acc_ax, ch_ax) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    fig.suptitle("Fisher pruning of a digits CNN with jaxprune: accuracy against FLOPs")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    styles = ["-", "--", ":"]
    for (label, history, _), color in zip(results, colors, strict=False):
        flops = 100 * np.array([r.flops for r in history])
        acc = np.array([r.accuracy for r in history])
        acc_ax.plot(flops, acc, color=color, label=label)
        acc_ax.plot(flops[-1], acc[-1], "o", color=color)
        kept = np.array([r.kept for r in history])
        for j, (layer, style) in enumerate(zip(LAYERS, styles, strict=True)):
            ch_ax.plot(
                flops, 100 * kept[:, j] / kept[0, j], style, color=color, label=f"{label}: {layer}"
            )
    for ax in (acc_ax, ch_ax):
        ax.axvline(100 * target, color="black", linewidth=0.8)
        ax.text(100 * target, 1.0, " target", transform=ax.get_xaxis_transform(), va="top")
        ax.set_xlim(102, 100 * target - 5)  # pruning goes right to left
        ax.set_xlabel("FLOPs per image (% of dense)")
        ax.grid(alpha=0.3)
    acc_ax.axhline(dense_acc, color="tab:gray", linestyle=":", label="dense network")
    lowest = min(r.accuracy for _, history, _ in results for r in history)
    acc_ax.set_ylim(min(90.0, lowest - 1.0), 100.2)  # zoom on the interesting range
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.legend(loc="lower left")
    acc_ax.set_title(f"test accuracy while pruning (dots: after {RECOVERY_STEPS} more steps)")
    ch_ax.set_ylabel("channels kept (% of the layer)")
    ch_ax.set_ylim(-3, 103)
    ch_ax.legend(loc="lower left", fontsize="small", ncol=len(results))
    ch_ax.set_title("which layers each rule prunes")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check(dense_acc, target, results) -> list[str]:
    problems = []
    for label, history, _ in results:
        final = history[-1]
        if final.flops > target + 1e-6:
            problems.append(f"{label}: FLOPs at {final.flops:.1%} of dense, target {target:.0%}")
        if final.accuracy < dense_acc - MAX_ACCURACY_DROP:
            problems.append(
                f"{label}: accuracy {final.accuracy:.2f}% is more than "
                f"{MAX_ACCURACY_DROP:g} points below dense {dense_acc:.2f}%"
            )
    return problems


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dense-steps", type=int, default=600, help="dense training steps (default: %(default)s)"
    )
    parser.add_argument(
        "--frequency", type=int, default=8, help="steps between two removals (default: %(default)s)"
    )
    parser.add_argument(
        "--burn-in",
        type=int,
        default=50,
        help="fine-tuning steps before the first removal (default: %(default)s)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=0.5,
        help="FLOPs target as a fraction of dense (default: %(default)s)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=None,
        help="also run the rule signal - beta * FLOPs with this beta",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/fisher_digits"),
        help="output folder for the plot (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.target < 1.0:
        parser.error("--target must be in (0, 1)")
    if args.frequency < 1 or args.dense_steps < 1 or args.burn_in < 0:
        parser.error("--frequency and --dense-steps must be >= 1, --burn-in >= 0")
    if args.beta is not None and args.beta < 0:
        parser.error("--beta must be >= 0")
    return args


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data()
    print(
        f"jaxprune {jaxprune.__version__}: Fisher pruning on {len(x_train)} train / "
        f"{len(x_test)} test digits (8x8), seed {args.seed}"
    )
    model = build_model(args.seed)
    accuracy = make_accuracy(model, x_test, y_test)
    data_key = jax.random.key(args.seed + 1)

    params = train_dense(model, (x_train, y_train), data_key, args.dense_steps)
    dense_acc = float(accuracy(params, model.masks))
    print(f"dense network after {args.dense_steps} steps: test accuracy {dense_acc:.2f}%")

    rules = [("beta = 0 (signal only)", {}), ("FLOP-aware: signal / FLOPs", {"criterion": "ratio"})]
    if args.beta is not None:
        rules.append((f"signal - {args.beta:g} * FLOPs", {"beta": args.beta}))
    results = []
    for label, rule in rules:
        history, reached = prune_while_finetuning(
            model,
            params,
            (x_train, y_train),
            data_key,
            accuracy,
            first_step=args.dense_steps,
            frequency=args.frequency,
            burn_in=args.burn_in,
            target=args.target,
            label=label,
            max_steps=4000,
            **rule,
        )
        results.append((label, history, reached))

    print("\nAt the end:")
    print(
        f"  {'rule':<28} {'FLOPs':>6} {'test acc':>9} {'steps to target':>16}  "
        f"kept {'/'.join(LAYERS)}"
    )
    print(f"  {'dense':<28} {1:>6.1%} {dense_acc:>8.2f}% {'':>16}  16/32/128")
    for label, history, reached in results:
        f = history[-1]
        print(
            f"  {label:<28} {f.flops:>6.1%} {f.accuracy:>8.2f}% {reached or 'never':>16}  "
            + "/".join(map(str, f.kept))
        )
    path = args.out / "fisher_digits.png"
    plot(results, dense_acc, args.target, path)
    print(f"plot: {path}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    problems = check(dense_acc, args.target, results)
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
