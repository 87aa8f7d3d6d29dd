"""Models, methods and the training loop of ``benchmarks/results.py`` (Fashion-MNIST).

Every method trains with the same loop: Adam at one learning rate, the same batches in the same
order (drawn from each seed's key), the same number of steps. The seeds run vmapped in one
compiled program: a method's random keys and fixed masks are per-seed arguments of that
program, so the seeds differ in their initialisation, their data order and their method keys.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune as jp

# Sparse-training algorithms at their papers' defaults, the same for every model and sparsity.
DROP_FRACTION = 0.3  # RigL and SET (Evci et al. 2020)
SR_STE_LAMBDA = 2e-4  # SR-STE (Zhou et al. 2021)
CALIBRATION_BATCHES = 4  # one-shot: batches of the training set, batch size as in training


class MLP(nn.Module):
    """LeNet-300-100."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


class PatchConv(nn.Module):
    """A 'VALID' convolution written as shifted slices and one ``einsum``.

    The same function and the same ``(kh, kw, in, out)`` kernel as ``nn.Conv(padding="VALID")``;
    XLA's CPU convolutions of kernels batched by ``jax.vmap`` (grouped convolutions) are several
    times slower than this form, which is a plain ``dot_general`` with a batched kernel.
    """

    features: int
    size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.size, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
        taps = [x[:, i : i + h, j : j + wd, :] for i in range(k) for j in range(k)]
        # (batch, h, w, k*k, in); concatenate, as count_flops has no rule for stack
        patches = jnp.concatenate([t[:, :, :, None, :] for t in taps], axis=3)
        return (
            jnp.einsum("bhwpc,pco->bhwo", patches, w.reshape(k * k, cin, self.features))
            + b[None, None, None, :]
        )


def max_pool2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nn.Module):
    """LeNet-5: 5x5 convolutions (6, 16 channels) with 2x2 max pooling, then 400-120-84-10."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # 32x32, as LeNet-5's input
        x = max_pool2(nn.relu(PatchConv(6)(x)))  # 14x14x6
        x = max_pool2(nn.relu(PatchConv(16)(x)))  # 5x5x16
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


MODELS = {"mlp": MLP, "cnn": CNN}
HEAD = "Dense_2"  # the classifier of both models


class Budget(NamedTuple):
    epochs: float  # may be a fraction: the steps are rounded
    batch_size: int
    learning_rate: float
    seeds: tuple[int, ...]
    finetune_fraction: float  # one-shot fine-tune, as a fraction of the training steps


class Data(NamedTuple):
    x_train: np.ndarray  # (n, 28, 28, 1) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int32
    x_test: np.ndarray
    y_test: np.ndarray


class Outcome(NamedTuple):
    """What one row produced, per seed."""

    accuracy: list[float]  # percent
    sparsity: list[float]  # zeros among the kernels the forward pass uses
    flops: list[float]  # forward pass, batch 1, with the masks of those zeros
    seconds: float  # training (or calibration + pruning [+ fine-tune]) time, all seeds
    params: Any = None  # forward params, stacked over seeds


def prepare(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32)


def steps_per_epoch(data: Data, budget: Budget) -> int:
    return len(data.x_train) // budget.batch_size


def total_steps(data: Data, budget: Budget) -> int:
    return max(1, int(round(budget.epochs * steps_per_epoch(data, budget))))


def gradual_schedule(steps: int, sparsity: float) -> jp.schedules.PolynomialDecay:
    """Zhu & Gupta's cubic curve from 0 over the middle half of training, then fine-tuning.

    Dense for the first quarter, pruning up to the target over the second and third quarters
    (about 100 mask updates), fine-tuning at the target for the last quarter.
    """
    frequency = max(1, steps // 200)
    begin = steps // 4
    end = begin + (steps // 2) // frequency * frequency  # the target is reached on a turn
    return jp.polynomial_decay(0.0, sparsity, begin_step=begin, end_step=end, frequency=frequency)


def legacy_hparams(steps: int, recipe: str) -> str:
    """The recipe's string with its step counts scaled to a run of ``steps`` updates.

    The recipe's window (10,000 to 100,000) is given for a run of 120,000 steps, the length
    that ``examples/tf_hparams.py`` runs it at (its 1,200 steps with every count divided by
    100): every ``*_step`` value is multiplied by ``steps / 120000``. ``pruning_frequency``
    keeps its default (10 steps).
    """
    items = []
    for item in recipe.split(","):
        name, value = item.split("=", 1)
        if name.endswith("_step"):
            value = str(int(round(int(value) * steps / 120000)))
        items.append(f"{name}={value}")
    return ",".join(items)


def sparsities(params: Any, sparsity: float, distribution: str) -> dict[str, float]:
    if distribution == "erk":
        return jp.erk_sparsities(params, sparsity)
    return jp.uniform_sparsities(params, sparsity)


def build_method(spec: dict, params: Any, steps: int) -> tuple[Callable, str]:
    """``(make_tx(extra), kind)``: ``extra`` is the seed's key (or its fixed masks).

    ``kind`` is ``"chain"`` (the params are the forward weights), ``"sparse"`` (the forward
    weights are ``jp.masked_params(params, opt_state)``) or ``"fixed"`` (one-shot fine-tune:
    the per-seed masks stay fixed).
    """
    method = spec["method"]
    lr = spec["learning_rate"]
    s = spec.get("sparsity", 0.0)
    dist = spec.get("distribution", "uniform")
    schedule = gradual_schedule(steps, s) if s else None
    adam = optax.adam(lr)
    if method == "dense":
        return (lambda extra: adam), "chain"
    if method == "gradual":
        structure, exclude, smap = None, None, None
        kind = spec.get("structure")
        if kind == "block4x1":
            # Block masks need rank-2 kernels: the conv kernels stay unstructured.
            structure = {"Dense": jp.BlockSparsity((4, 1))}  # conv kernels: unstructured
        elif kind == "nm24":
            structure = jp.NMSparsity(2, 4)
        elif kind == "unit":
            structure = jp.UnitSparsity()
            exclude = HEAD  # pruning output units of the classifier would remove classes
        if dist == "erk":
            smap = sparsities(params, s, "erk")
        tx = jp.magnitude_pruning(
            schedule,
            scope=spec.get("scope", "layer"),
            structure=structure,
            exclude=exclude,
            sparsity_map=smap,
        )
        return (lambda extra: optax.chain(adam, tx)), "chain"
    if method == "legacy_tf":
        config = jp.tf.PruningConfig.parse(legacy_hparams(steps, spec["hparams"]))
        return (lambda extra: optax.chain(adam, jp.tf.pruning_from_config(config))), "chain"
    if method == "random_pruning":
        smap = sparsities(params, s, dist)
        return (
            lambda key: optax.chain(adam, jp.random_pruning(schedule, key=key, sparsity_map=smap))
        ), "chain"
    if method == "acdc":
        phase = steps // 10
        warmup = phase
        final = steps - warmup - 6 * phase  # three compressed/decompressed cycles
        target = sparsities(params, s, dist) if dist == "erk" else s
        tx = jp.acdc(
            target,
            warmup_steps=warmup,
            phase_steps=phase,
            final_compressed_steps=final,
            total_steps=steps,
        )
        return (lambda extra: optax.chain(adam, tx)), "chain"
    if method in ("static", "set", "rigl"):
        target = sparsities(params, s, dist) if dist == "erk" else s
        update_every = max(1, steps // 100)
        end_step = 3 * steps // 4

        def make(key):
            if method == "static":
                alg = jp.static_sparse(target, key=key)
            else:
                f = jp.set_training if method == "set" else jp.rigl
                alg = f(
                    target,
                    key=key,
                    drop_fraction=DROP_FRACTION,
                    update_every=update_every,
                    end_step=end_step,
                )
            return jp.sparse(adam, alg)

        return make, "sparse"
    if method in ("saliency", "movement", "magnitude_ste", "sr_ste"):
        if method == "saliency":
            alg = jp.saliency_pruning(schedule, scope=spec["scope"])
        elif method == "movement":
            alg = jp.movement_pruning(schedule)
        else:
            lam = SR_STE_LAMBDA if method == "sr_ste" else 0.0
            alg = jp.magnitude_ste(schedule, sr_ste_lambda=lam)
        return (lambda extra: jp.sparse(adam, alg)), "sparse"
    if method == "fixed_masks":
        return (lambda masks: optax.chain(adam, fixed_masks(masks))), "chain"
    raise ValueError(f"unknown method {method!r}")


def fixed_masks(masks: Any) -> optax.GradientTransformation:
    """Last in a chain: pruned weights become and stay exactly 0; no mask ever changes."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params):
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return updates, state

    return optax.GradientTransformation(init, update)


def kernel_masks(params: Any) -> Any:
    """True where a kernel (rank >= 2) is non-zero; all True for the other leaves."""
    return jax.tree.map(lambda w: (w != 0) if w.ndim >= 2 else jnp.ones(w.shape, bool), params)


def init_params(model: nn.Module, seeds: tuple[int, ...]) -> Any:
    x = jnp.zeros((1, 28, 28, 1), jnp.float32)
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in seeds])
    return jax.jit(jax.vmap(lambda k: model.init(k, x)["params"]))(keys)


def epoch_order(data: Data, budget: Budget, seed: int, epoch: int) -> np.ndarray:
    """The batches of one epoch for one seed: the same for every method."""
    rng = np.random.default_rng([seed, epoch, 7])
    n = steps_per_epoch(data, budget) * budget.batch_size
    return rng.permutation(len(data.x_train))[:n].reshape(-1, budget.batch_size).astype(np.int32)


def method_keys(seeds: tuple[int, ...]) -> jax.Array:
    return jnp.stack([jax.random.fold_in(jax.random.key(s), 2) for s in seeds])


def train(
    model: nn.Module,
    spec: dict,
    data: Data,
    budget: Budget,
    *,
    params: Any = None,
    extra: Any = None,
    steps: int | None = None,
) -> tuple[Any, float]:
    """Trains all seeds in one vmapped program; returns forward params (stacked) and seconds.

    ``params`` (stacked over seeds) defaults to a fresh initialisation; ``steps`` to the
    budget's; ``extra`` to the seeds' method keys. The time excludes compilation.
    """
    seeds = budget.seeds
    if params is None:
        params = init_params(model, seeds)
    if extra is None:
        extra = method_keys(seeds)
    steps = total_steps(data, budget) if steps is None else steps
    per_epoch = steps_per_epoch(data, budget)
    one = jax.tree.map(lambda a: a[0], params)
    make_tx, kind = build_method(spec, {"params": one}["params"], steps)

    def loss_fn(p, s, x, y):
        fp = jp.masked_params(p, s) if kind == "sparse" else p
        logits = model.apply({"params": fp}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def run_seed(p, s, ex, order, x_all, y_all):
        tx = make_tx(ex)

        def body(carry, idx):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, s, x_all[idx], y_all[idx])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(body, (p, s), order)
        return p, s, losses.mean()

    init = jax.jit(jax.vmap(lambda p, ex: make_tx(ex).init(p)))
    opt_state = init(params, extra)
    run = jax.jit(jax.vmap(run_seed, in_axes=(0, 0, 0, 0, None, None)))
    x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    chunks = []  # (epoch, number of steps) so that a fine-tune can stop mid-epoch
    left, epoch = steps, 0
    while left > 0:
        chunks.append((epoch, min(per_epoch, left)))
        left -= per_epoch
        epoch += 1
    compiled = {}
    seconds = 0.0
    for epoch, n in chunks:
        order = np.stack([epoch_order(data, budget, s, epoch)[:n] for s in seeds])
        args = (params, opt_state, extra, jnp.asarray(order), x_all, y_all)
        if n not in compiled:
            compiled[n] = run.lower(*args).compile()
        start = time.perf_counter()
        params, opt_state, loss = compiled[n](*args)
        jax.block_until_ready(params)
        seconds += time.perf_counter() - start
    if kind == "sparse":
        params = jax.jit(jax.vmap(jp.masked_params))(params, opt_state)
    if not np.all(np.isfinite(np.asarray(loss))):
        raise FloatingPointError(f"{spec}: the training loss is not finite: {loss}")
    return params, seconds


def evaluate(model: nn.Module, params: Any, data: Data, seconds: float) -> Outcome:
    """Accuracy, kernel sparsity and masked forward FLOPs (batch 1) of each seed."""

    @jax.jit
    @jax.vmap
    def correct(p):
        def chunk(carry, xy):
            x, y = xy
            return carry + jnp.sum(jnp.argmax(model.apply({"params": p}, x), -1) == y), None

        x = jnp.asarray(data.x_test)
        y = jnp.asarray(data.y_test)
        size = 1000 if len(x) % 1000 == 0 else len(x)
        xs = x.reshape(-1, size, *x.shape[1:])
        ys = y.reshape(-1, size)
        return jax.lax.scan(chunk, jnp.int32(0), (xs, ys))[0]

    n_test = len(data.x_test)
    accuracy = [100.0 * float(c) / n_test for c in np.asarray(correct(params))]
    x1 = jnp.zeros((1, 28, 28, 1), jnp.float32)

    def forward(p, x):
        return model.apply({"params": p}, x)

    sparsity, flops = [], []
    for i in range(len(accuracy)):
        p = jax.tree.map(lambda a, i=i: a[i], params)
        kernels = [w for w in jax.tree.leaves(p) if w.ndim >= 2]
        zeros = sum(int(jnp.sum(w == 0)) for w in kernels)
        sparsity.append(zeros / sum(math.prod(w.shape) for w in kernels))
        masks = jax.tree.map(lambda w: (w != 0) if w.ndim >= 2 else True, p)
        flops.append(float(jp.count_flops(forward, p, x1, weight_masks=(masks, None))))
    return Outcome(accuracy, sparsity, flops, seconds, params)


def oneshot(
    model: nn.Module,
    dense: Any,
    spec: dict,
    data: Data,
    budget: Budget,
) -> tuple[Any, float, Any]:
    """Prunes each seed's trained dense params; returns stacked params, seconds, masks.

    Calibration: the first ``CALIBRATION_BATCHES`` batches of the seed's first epoch.
    """
    pattern = spec["pattern"]
    kwargs = {"n_m": (2, 4)} if pattern == "2:4" else {"sparsity": spec["sparsity"]}

    def fn(p, x):
        return model.apply({"params": p}, x)

    pruned, masks, times = [], [], []
    for i, seed in enumerate(budget.seeds):
        p = jax.tree.map(lambda a, i=i: a[i], dense)
        order = epoch_order(data, budget, seed, 0)[:CALIBRATION_BATCHES]
        batches = [jnp.asarray(data.x_train[idx]) for idx in order]
        start = time.perf_counter()
        q, m = jp.prune_oneshot(fn, p, batches, method=spec["criterion"], **kwargs)
        jax.block_until_ready(q)
        times.append(time.perf_counter() - start)
        pruned.append(q)
        masks.append(m)
    # The first seed's call compiles; the others reuse the compiled layer functions, so their
    # mean is the cost of pruning itself (for one seed: its time, compilation included).
    seconds = len(times) * statistics.fmean(times[1:] or times)
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
    return stack(pruned), seconds, stack([kernel_masks(q) for q in pruned])
