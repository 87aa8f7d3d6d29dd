"""Prune a small CNN to 90% sparsity on scikit-learn's 8x8 digits, in under a minute on a CPU.

The gradual pruning recipe of Zhu & Gupta (https://arxiv.org/abs/1710.01878), with jaxprune:

1. Train the network densely.
2. Fine-tune it with ``jaxprune.magnitude_pruning`` placed last in the optax chain. Every few
   steps the transformation recomputes a magnitude mask per kernel, and on every step it
   rewrites the updates so that each pruned weight becomes exactly 0.0. The sparsity grows
   from 0% to 90% along a cubic curve, then the network recovers at 90% until the end.

The masks are computed inside the ``jax.jit``-compiled train step: no host round-trip.

Run it with ``make demo`` or::

    python examples/digits.py [--steps 1500] [--seed 0] [--out out/digits] [--quick]

It prints the test accuracies, the per-layer sparsity table, the non-zero parameter counts and
the wall time, writes a plot to ``--out``, and exits with status 1 if the kernels are not 90%
sparse or pruning cost more than 5 points of test accuracy.
"""

from __future__ import annotations

import argparse
import math
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
from tqdm import tqdm

import jaxprune

matplotlib.use("Agg")  # render to files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

TARGET_SPARSITY = 0.9
MAX_ACCURACY_DROP = 5.0  # percentage points
# Each kernel keeps round(n * (1 - s)) weights, so a small kernel lands near, not on, 90%.
SPARSITY_TOLERANCE = 0.005
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


class CNN(nnx.Module):
    """Two 3x3 convolutions (16 and 32 channels), a 2x2 average pool and two dense layers."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.hidden = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x))  # (batch, 8, 8, 16)
        x = nnx.relu(self.conv2(x))  # (batch, 8, 8, 32)
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))  # (batch, 4, 4, 32)
        x = x.reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.hidden(x)))


class Data(NamedTuple):
    x_train: jax.Array  # (1437, 8, 8, 1) float32 in [0, 1]
    y_train: jax.Array  # (1437,) int
    x_test: jax.Array  # (360, 8, 8, 1)
    y_test: jax.Array  # (360,)


class Record(NamedTuple):
    """One point of the plot, taken after update ``step`` (counted over both phases)."""

    step: int
    target: float  # the schedule's sparsity
    sparsity: float  # the actual fraction of zeros in the kernels
    accuracy: float  # test accuracy, percent


def load_data() -> Data:
    """The 1,797 digits bundled with scikit-learn (no download), with a fixed 80/20 split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # NHWC
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return Data(*(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test)))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, data: Data):
    """A jit-compiled step: sample a batch, take the gradient, apply ``tx``."""

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, data_key, step):
        # One key per global step: the same batches whatever the split between the phases.
        key = jax.random.fold_in(data_key, step)
        idx = jax.random.choice(key, len(data.x_train), (BATCH_SIZE,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(params, data.x_train[idx], data.y_train[idx])
        # magnitude_pruning ranks the current weights, so the update needs the params.
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def make_accuracy(graphdef: nnx.GraphDef, data: Data):
    """A jit-compiled function: the test accuracy of ``params``, in percent."""

    @jax.jit
    def accuracy(params):
        logits = nnx.merge(graphdef, params)(data.x_test)
        return 100.0 * jnp.mean(jnp.argmax(logits, axis=-1) == data.y_test)

    return accuracy


def kernel_sparsity(params) -> float:
    """The fraction of exact zeros over the leaves that the pruner manages."""
    # magnitude_pruning's default rule prunes float leaves of rank >= 2: the four kernels.
    kernels = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
    zeros = sum(int(jnp.sum(x == 0)) for x in kernels)
    return zeros / sum(math.prod(x.shape) for x in kernels)


def count_nonzero(params) -> int:
    return sum(int(jnp.count_nonzero(x)) for x in jax.tree.leaves(params))


def train(params, tx, graphdef, data, *, key, first, steps, log_every, schedule=None, desc):
    """Runs ``steps`` updates of ``tx`` from global step ``first``; returns params and logs.

    A :class:`Record` is taken right after updates ``0, log_every, 2 * log_every, ...`` (in
    phase 2, right after each mask update) and right before the next ones, so that the plot
    shows both what each pruning turn costs and how fine-tuning recovers it. ``schedule``
    gives the target sparsity of the phase's update ``t`` (None: dense training).

    Returns:
      ``(params, opt_state, records)``.
    """
    train_step = make_train_step(graphdef, tx, data)
    accuracy = make_accuracy(graphdef, data)
    opt_state = tx.init(params)
    records = []
    with tqdm(range(steps), desc=desc, unit="step") as bar:
        for t in bar:
            params, opt_state, loss = train_step(params, opt_state, key, first + t)
            if t % log_every in (0, log_every - 1) or t == steps - 1:
                target = 0.0 if schedule is None else float(schedule(t)[1])
                sparsity, acc = kernel_sparsity(params), float(accuracy(params))
                records.append(Record(first + t + 1, target, sparsity, acc))
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1f}%", sparsity=f"{sparsity:.1%}")
    return params, opt_state, records


def make_schedule(prune_steps: int) -> jaxprune.schedules.PolynomialDecay:
    """0% to 90% over the first two thirds of fine-tuning, then 90% until the end.

    The schedule counts the fine-tuning optimizer's updates, from 0. Its cubic curve (Zhu &
    Gupta's) prunes fast while many weights are redundant, then slowly.
    """
    frequency = max(1, prune_steps // 40)  # updates between two mask updates
    # The final sparsity is applied only if end_step is itself a pruning turn, that is
    # (end_step - begin_step) % frequency == 0 (tfmot's rule): round it down to the grid.
    end_step = (2 * prune_steps // 3) // frequency * frequency
    return jaxprune.polynomial_decay(
        0.0, TARGET_SPARSITY, begin_step=0, end_step=end_step, frequency=frequency
    )


def plot(history: list[Record], dense_steps: int, path: Path) -> None:
    """Test accuracy (top) and target and actual kernel sparsity (bottom) over the steps."""
    steps, target, sparsity, acc = (np.array(column) for column in zip(*history, strict=True))
    dense_acc = acc[steps == dense_steps][-1]
    fig, (acc_ax, sp_ax) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 6), layout="constrained", height_ratios=(2, 3)
    )
    fig.suptitle("Magnitude pruning of a CNN on 8x8 digits with jaxprune")

    acc_ax.plot(steps, acc, color="tab:orange", label="test accuracy")
    acc_ax.axhline(dense_acc, color="tab:gray", linestyle=":", label="dense accuracy")
    # Zoom on the interesting range; the first steps of dense training fall below it.
    acc_ax.set_ylim(min(90.0, acc[steps > dense_steps].min() - 2), 100.5)
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title(
        "each dip: just after a mask update; fine-tuning then recovers",
        fontsize="medium",
    )
    # Below the plateau of dense training, where no line runs.
    acc_ax.legend(loc="lower center", bbox_to_anchor=(0.27, 0.02))

    sp_ax.plot(steps, 100 * target, "--", color="tab:gray", label="target (schedule)")
    # Masks change only on pruning turns: a staircase under the schedule's curve.
    label = "actual (exact zeros in kernels)"
    sp_ax.step(steps, 100 * sparsity, where="post", color="tab:blue", label=label)
    sp_ax.set_ylim(-3, 100)
    sp_ax.set_ylabel("kernel sparsity (%)")
    sp_ax.set_xlabel("training step")
    sp_ax.legend(loc="upper left")
    sp_ax.text(dense_steps / 2, 50, "phase 1: dense training", ha="center")
    sp_ax.text((dense_steps + steps[-1]) / 2, 50, "phase 2: pruning", ha="center")

    for ax in (acc_ax, sp_ax):
        ax.axvline(dense_steps, color="black", linewidth=0.8)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check(dense_acc: float, pruned_acc: float, sparsity: float) -> list[str]:
    """The demo's pass criteria; returns what failed (nothing when all is well)."""
    problems = []
    if abs(sparsity - TARGET_SPARSITY) > SPARSITY_TOLERANCE:
        problems.append(f"kernel sparsity is {sparsity:.2%}, expected {TARGET_SPARSITY:.0%}")
    if pruned_acc < dense_acc - MAX_ACCURACY_DROP:
        problems.append(
            f"pruned accuracy {pruned_acc:.2f}% is more than {MAX_ACCURACY_DROP:g} points "
            f"below dense {dense_acc:.2f}%"
        )
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=1500,
        help="training steps in all: 40%% dense, then 60%% pruning (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation and batches (default: 0)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/digits"), help="output folder (default: out/digits)"
    )
    parser.add_argument("--quick", action="store_true", help="a short run (500 steps) for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 500
    if args.steps < 50:
        parser.error(f"--steps must be at least 50, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"jaxprune {jaxprune.__version__} demo; writing to {args.out}/")

    data = load_data()
    print(f"digits: {len(data.x_train)} train / {len(data.x_test)} test images, seed {args.seed}")
    init_key, data_key = jax.random.split(jax.random.key(args.seed))
    # Train the parameters as a pytree of plain arrays: nnx.as_pure drops the nnx.Param
    # wrappers (as nnx.Optimizer does), and nnx.merge rebuilds the model inside the step.
    graphdef, params = nnx.split(CNN(rngs=nnx.Rngs(params=init_key)))
    params = nnx.as_pure(params)
    dense_steps = args.steps * 2 // 5
    prune_steps = args.steps - dense_steps

    # Phase 1: dense training.
    tx = optax.adam(LEARNING_RATE)
    params, _, history = train(
        params,
        tx,
        graphdef,
        data,
        key=data_key,
        first=0,
        steps=dense_steps,
        log_every=max(1, dense_steps // 40),
        desc="phase 1, dense  ",
    )
    dense_params, dense_acc = params, history[-1].accuracy

    # Phase 2: fine-tuning while pruning. The pruner goes last in the chain, so that it
    # masks the final updates: whatever adam proposes for a pruned weight is replaced by -w.
    schedule = make_schedule(prune_steps)
    tx = optax.chain(optax.adam(LEARNING_RATE), jaxprune.magnitude_pruning(schedule))
    params, opt_state, records = train(
        params,
        tx,
        graphdef,
        data,
        key=data_key,
        first=dense_steps,
        steps=prune_steps,
        log_every=schedule.frequency,
        schedule=schedule,
        desc="phase 2, pruning",
    )
    history += records
    pruned_acc = history[-1].accuracy

    print("\nPer-layer sparsity after pruning:")
    print(jaxprune.sparsity_table(params))

    # The masks live in the optimizer state; every weight they prune is exactly 0.0.
    masks = jaxprune.get_masks(opt_state)
    pruned = jax.tree.leaves(jax.tree.map(lambda p, m: p[~m], params, masks))
    n_pruned, all_zero = sum(x.size for x in pruned), all(bool(jnp.all(x == 0)) for x in pruned)
    print(f"\n{n_pruned:,} weights pruned by the masks, all exactly 0.0: {all_zero}")

    sparsity = kernel_sparsity(params)
    dense_nz, pruned_nz = count_nonzero(dense_params), count_nonzero(params)
    print(f"kernel sparsity:     {sparsity:.2%} (target {TARGET_SPARSITY:.0%})")
    print(
        f"test accuracy:       dense {dense_acc:.2f}%  pruned {pruned_acc:.2f}%  "
        f"({pruned_acc - dense_acc:+.2f} points)"
    )
    print(
        f"non-zero parameters: dense {dense_nz:,}  pruned {pruned_nz:,}  "
        f"({dense_nz / pruned_nz:.1f}x fewer)"
    )

    plot_path = args.out / "digits_pruning.png"
    plot(history, dense_steps, plot_path)
    print(f"plot:                {plot_path}")
    print(f"wall time:           {time.perf_counter() - start:.1f} s (after imports)")

    problems = check(dense_acc, pruned_acc, sparsity)
    if not all_zero:
        problems.append("some pruned weights are not exactly zero")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
