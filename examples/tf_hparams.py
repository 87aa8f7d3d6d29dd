"""TensorFlow's cifar10 pruning recipe, ported to jaxprune: the same ``--pruning_hparams`` string.

``tf.contrib.model_pruning``'s example trains a CNN on CIFAR-10 with::

    cifar10_train --pruning_hparams=name=cifar10_pruning,begin_pruning_step=10000,\
end_pruning_step=100000,target_sparsity=0.9,sparsity_function_begin_step=10000,\
sparsity_function_end_step=100000

This script takes the same flag, parses it with ``PruningConfig.parse`` and prunes with
``pruning_from_config`` (TensorFlow's legacy algorithm: the histogram threshold with its
moving average, the ``last_update + pruning_frequency <= step`` rule, the separate sparsity
window), on a small CNN and scikit-learn's 8x8 digits (no download), with every step count
divided by 100 so that it runs in well under a minute on a CPU. The layers keep the names of
TensorFlow's cifar10 model (``conv1``, ``conv2``, ``local3``, ``local4``, ``softmax_linear``),
so maps such as ``weight_sparsity_map=[conv1:0.5]`` work as they did there.

Run it with::

    python examples/tf_hparams.py [--pruning_hparams=...] [--steps 1200] [--seed 0]

It prints the parsed config, the steps of the mask updates, the per-layer sparsity table and
the test accuracy before pruning and at the end, and exits with status 1 if a pruned weight is
not exactly zero.
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune
from jaxprune.tf import PruningConfig, pruning_from_config

# The README's cifar10 string, with every step divided by 100.
DEFAULT_HPARAMS = (
    "name=cifar10_pruning,begin_pruning_step=100,end_pruning_step=1000,target_sparsity=0.9,"
    "sparsity_function_begin_step=100,sparsity_function_end_step=1000"
)
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


class CNN(nn.Module):
    """cifar10's layout, shrunk for 8x8 images: two convolutions and three dense layers."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))  # (batch, 8, 8, 16)
        x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # (batch, 4, 4, 32)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128, name="local3")(x))
        x = nn.relu(nn.Dense(64, name="local4")(x))
        return nn.Dense(10, name="softmax_linear")(x)


def load_data():
    """The 1,797 digits bundled with scikit-learn, split 80/20 as ``examples/digits.py``."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # NHWC
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pruning_hparams",
        default=DEFAULT_HPARAMS,
        help="comma separated list of pruning-related hyperparameters (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=1200, help="training steps (default: 1200)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    try:
        args.config = PruningConfig.parse(args.pruning_hparams)
        # Built here so that the checks that need the whole config (a weight_sparsity_map
        # value that would prune a weight entirely) are usage errors too.
        args.pruner = pruning_from_config(args.config)
    except ValueError as e:
        parser.error(f"--pruning_hparams: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    config = args.config
    print(f"pruning hparams: {config.format(only_changed=True) or '(defaults)'}")
    print(f"parsed config:   {config!r}")

    x_train, y_train, x_test, y_test = load_data()
    model = CNN()
    init_key, data_key = jax.random.split(jax.random.key(args.seed))
    # Compiled, init builds all the parameters in one program instead of op by op.
    params = jax.jit(model.init)(init_key, x_train[:1])
    # The pruner goes last: it rewrites the final updates so pruned weights become exactly 0.
    tx = optax.chain(optax.adam(LEARNING_RATE), args.pruner)
    opt_state = jax.jit(tx.init)(params)

    @jax.jit
    def train_step(params, opt_state, step):
        idx = jax.random.choice(
            jax.random.fold_in(data_key, step), len(x_train), (BATCH_SIZE,), replace=False
        )

        def loss_fn(p):
            logits = model.apply(p, x_train[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_train[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        last = optax.tree.get(opt_state, "last_update_step")
        return optax.apply_updates(params, updates), opt_state, loss, last

    @jax.jit
    def accuracy(params):
        logits = model.apply(params, x_test)
        return 100.0 * jnp.mean(jnp.argmax(logits, axis=-1) == y_test)

    # The legacy sparsity curve is tfmot's polynomial formula over its own window.
    curve = jaxprune.polynomial_decay(
        config.initial_sparsity,
        config.target_sparsity,
        config.sparsity_function_begin_step,
        config.sparsity_function_end_step,
        power=config.sparsity_function_exponent,
    )
    target = jax.jit(lambda step: curve(step)[1])
    log_every = max(1, args.steps // 8)
    dense_accuracy = None
    lasts = []
    for step in range(args.steps):
        if step == config.begin_pruning_step:
            dense_accuracy = float(accuracy(params))
        params, opt_state, loss, last = train_step(params, opt_state, step)
        lasts.append(last)
        if step % log_every == 0 or step == args.steps - 1:
            kernels = [np.asarray(x) for x in jax.tree.leaves(params) if x.ndim >= 2]
            zeros = sum(int(np.sum(x == 0)) for x in kernels) / sum(x.size for x in kernels)
            print(
                f"step {step:5d}  loss {float(loss):.3f}  target {float(target(step)):.3f}  "
                f"kernel sparsity {zeros:.3f}"
            )
    lasts = np.asarray(jnp.stack(lasts))
    mask_updates = [t for t in range(1, args.steps) if lasts[t] == t]

    shown = ", ".join(map(str, mask_updates[:6])) + (", ..." if len(mask_updates) > 6 else "")
    print(f"\n{len(mask_updates)} mask updates, at steps {shown or 'none'}")
    print("\nPer-layer sparsity:")
    print(jaxprune.sparsity_table(params))
    thresholds = optax.tree.get(opt_state, "thresholds")["params"]
    print(
        "thresholds: "
        + ", ".join(f"{name} {float(t['kernel']):.4f}" for name, t in thresholds.items())
    )

    masks = optax.tree.get(opt_state, "masks")
    pruned = jax.tree.leaves(
        jax.tree.map(lambda p, m: np.asarray(p)[~np.asarray(m)], params, masks)
    )
    all_zero = all(bool(np.all(x == 0)) for x in pruned)
    print(f"{sum(x.size for x in pruned):,} weights pruned, all exactly 0.0: {all_zero}")
    final = float(accuracy(params))
    before = "n/a" if dense_accuracy is None else f"{dense_accuracy:.2f}%"
    print(f"test accuracy: before pruning {before}  final {final:.2f}%")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    if not all_zero:
        print("FAILED: some pruned weights are not exactly zero", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
