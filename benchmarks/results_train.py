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
# SET and RigL: a mask update every 1% of the steps, but never more often than every
# DST_MIN_INTERVAL steps (the quick budget's 1% is a handful of steps, too few to train the
# connections a mask update grows), the same rule for every budget.
DST_MIN_INTERVAL = 25
# Fisher pruning (Theis et al. 2018) of the trained dense model while fine-tuning: after a
# burn-in of 2 / (1 - decay) steps (docs/fisher.md: a few 1/(1 - decay) steps, for the moving
# average of the signals to fill), one feature every FISHER_FREQUENCY steps, until the FLOPs
# (jp.count_flops of the masked model, one image) are at most the lowest level; the model is
# recorded when it first reaches each level, then fine-tuned like a one-shot row.
FISHER_DECAY = 0.96  # the default, the seed's
FISHER_BURN_IN = 50
FISHER_FREQUENCY = 2
FISHER_LEVELS = (0.9, 0.7, 0.5, 0.3)  # fractions of the dense FLOPs
FISHER_CHUNK = 25  # steps per compiled call between host checks (snapshots stay on device)
# Compaction: latency of one jitted forward pass of a batch of LATENCY_BATCH test images, dense
# and compacted timed alternately LATENCY_REPEATS times after LATENCY_WARMUP calls each.
LATENCY_BATCH = 128
LATENCY_REPEATS = 100
LATENCY_WARMUP = 3


def _mask(masked: bool) -> Callable[[jax.Array], jax.Array]:
    """A ``ChannelMask`` (variable collection ``channel_masks``) or the identity."""
    return jp.fisher.ChannelMask() if masked else (lambda h: h)


class MLP(nn.Module):
    """LeNet-300-100. ``masked``: a channel mask after each hidden layer (Fisher pruning)."""

    masked: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = _mask(self.masked)(nn.relu(nn.Dense(300)(x)))
        x = _mask(self.masked)(nn.relu(nn.Dense(100)(x)))
        return nn.Dense(10)(x)


class PatchConv(nn.Module):
    """A 'VALID' convolution written as shifted slices and one ``einsum``.

    The same function and the same ``(kh, kw, in, out)`` kernel as ``nn.Conv(padding="VALID")``;
    XLA's CPU convolutions of kernels batched by ``jax.vmap`` (grouped convolutions) are several
    times slower than this form, which is a plain ``dot_general`` with a batched kernel.

    ``xla=True``: the same function as one ``lax.conv_general_dilated`` of the same kernel, the
    form ``jp.prune_oneshot`` recognises as a convolution layer (it does not see the kernel
    through this form's reshape and two-axis contraction); used unbatched, to prune.
    """

    features: int
    size: int = 5
    xla: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.size, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.xla:
            y = jax.lax.conv_general_dilated(
                x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return y + b[None, None, None, :]
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
    """LeNet-5: 5x5 convolutions (6, 16 channels) with 2x2 max pooling, then 400-120-84-10.

    ``masked``: a channel mask after each hidden layer's ReLU (Fisher pruning). ``xla_conv``:
    the convolutions as ``lax.conv_general_dilated`` (``PatchConv(xla=True)``), same params.
    """

    masked: bool = False
    xla_conv: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda c: PatchConv(c, xla=self.xla_conv)  # noqa: E731
        x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # 32x32, as LeNet-5's input
        x = max_pool2(_mask(self.masked)(nn.relu(conv(6)(x))))  # 14x14x6
        x = max_pool2(_mask(self.masked)(nn.relu(conv(16)(x))))  # 5x5x16
        x = x.reshape(x.shape[0], -1)
        x = _mask(self.masked)(nn.relu(nn.Dense(120)(x)))
        x = _mask(self.masked)(nn.relu(nn.Dense(84)(x)))
        return nn.Dense(10)(x)


MODELS = {"mlp": MLP, "cnn": CNN}
HEAD = "Dense_2"  # the classifier of both models
# The hidden layers, in call order: ChannelMask_k of the masked model follows HIDDEN[model][k].
HIDDEN = {
    "mlp": ("Dense_0", "Dense_1"),
    "cnn": ("PatchConv_0", "PatchConv_1", "Dense_0", "Dense_1"),
}


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
    extra: dict | None = None  # numbers of the row's own (Fisher, compaction), JSON-ready


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
            # The rows were recorded with jaxprune 0.1.0's default, which ranks the weights
            # the step produces; named here so the recorded results stay what they were.
            recompute_from="updated",
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
            # The rows were recorded with the masks ranked after the phase's first update.
            recompute_from="updated",
        )
        return (lambda extra: optax.chain(adam, tx)), "chain"
    if method in ("static", "set", "rigl"):
        target = sparsities(params, s, dist) if dist == "erk" else s
        update_every, end_step = dst_interval(steps)

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


def dst_interval(steps: int) -> tuple[int, int]:
    """SET and RigL: ``(update_every, end_step)`` of a run of ``steps`` updates.

    A mask update every 1% of the steps but never more often than every ``DST_MIN_INTERVAL``
    steps, until 75% of the run (runs shorter than ``DST_MIN_INTERVAL + 1`` steps get none).
    """
    update_every = max(DST_MIN_INTERVAL, steps // 100)
    return update_every, max(3 * steps // 4, update_every + 1)


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


def shared_counts(state: Any) -> tuple[Any, Any]:
    """``(state, in_axes)`` for ``jax.vmap`` over seeds, with the step counts not batched.

    ``state`` is stacked over the seeds (``jax.vmap(tx.init)``). Its integer leaves that are
    equal across the seeds (the update counts, and the counters derived from them) are
    unstacked and get the axis ``None``; every other leaf keeps axis 0. This keeps every pruning
    turn a conditional: under ``jax.vmap`` a ``lax.cond`` whose predicate is batched becomes a
    ``select`` that runs both branches, so with batched counts every training step paid for a
    whole pruning turn (the mask selection of RigL and SET, N:M groups, saliency scores).
    """
    leaves, treedef = jax.tree.flatten(state)

    def shared(a: Any) -> bool:
        if not (jnp.issubdtype(a.dtype, jnp.integer) and a.ndim == 1):
            return False
        values = np.asarray(a)
        return bool(np.all(values == values[0]))

    axes = [None if shared(a) else 0 for a in leaves]
    unstacked = [a[0] if ax is None else a for a, ax in zip(leaves, axes, strict=True)]
    return treedef.unflatten(unstacked), treedef.unflatten(axes)


def train(
    model: nn.Module,
    spec: dict,
    data: Data,
    budget: Budget,
    *,
    params: Any = None,
    extra: Any = None,
    steps: int | None = None,
    apply: Callable | None = None,
) -> tuple[Any, float]:
    """Trains all seeds in one vmapped program; returns forward params (stacked) and seconds.

    ``params`` (stacked over seeds) defaults to a fresh initialisation; ``steps`` to the
    budget's; ``extra`` to the seeds' method keys; ``apply(params, x) -> logits`` to the
    model's. The time excludes compilation.
    """
    apply = apply or (lambda p, x: model.apply({"params": p}, x))
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
        logits = apply(fp, x)
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
    opt_state, s_axes = shared_counts(init(params, extra))
    run = jax.jit(
        jax.vmap(run_seed, in_axes=(0, s_axes, 0, 0, None, None), out_axes=(0, s_axes, 0))
    )
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
        params = jax.jit(jax.vmap(jp.masked_params, in_axes=(0, s_axes)))(params, opt_state)
    if not np.all(np.isfinite(np.asarray(loss))):
        raise FloatingPointError(f"{spec}: the training loss is not finite: {loss}")
    return params, seconds


def evaluate(
    model: nn.Module, params: Any, data: Data, seconds: float, apply: Callable | None = None
) -> Outcome:
    """Accuracy, kernel sparsity and masked forward FLOPs (batch 1) of each seed.

    ``apply(params, x) -> logits`` defaults to the model's.
    """
    apply = apply or (lambda p, x: model.apply({"params": p}, x))

    @jax.jit
    @jax.vmap
    def correct(p):
        def chunk(carry, xy):
            x, y = xy
            return carry + jnp.sum(jnp.argmax(apply(p, x), -1) == y), None

        x = jnp.asarray(data.x_test)
        y = jnp.asarray(data.y_test)
        size = 1000 if len(x) % 1000 == 0 else len(x)
        xs = x.reshape(-1, size, *x.shape[1:])
        ys = y.reshape(-1, size)
        return jax.lax.scan(chunk, jnp.int32(0), (xs, ys))[0]

    n_test = len(data.x_test)
    accuracy = [100.0 * float(c) / n_test for c in np.asarray(correct(params))]
    x1 = jnp.zeros((1, 28, 28, 1), jnp.float32)

    forward = apply
    sparsity, flops = [], []
    host = jax.device_get(params)  # numpy: no compilation for the per-seed slices and counts
    for i in range(len(accuracy)):
        p = jax.tree.map(lambda a, i=i: a[i], host)
        kernels = [w for w in jax.tree.leaves(p) if w.ndim >= 2]
        zeros = sum(int(np.sum(w == 0)) for w in kernels)
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
    ``spec["layers"]``: ``"dense"`` (the default) prunes the dense kernels only, as when the
    first one-shot rows were run; ``"all"`` every kernel ``prune_oneshot`` finds, the CNN's
    convolutions included (pruned through ``CNN(xla_conv=True)``, the same function and params
    with the convolutions written as ``lax.conv_general_dilated``).
    """
    pattern = spec["pattern"]
    kwargs = {"n_m": (2, 4)} if pattern == "2:4" else {"sparsity": spec["sparsity"]}
    if spec.get("layers", "dense") == "all":
        kwargs["layers"] = None
        if isinstance(model, CNN):
            model = model.clone(xla_conv=True)
    else:
        # Dense layers only (the CNN's two small conv kernels stay dense), as when these rows
        # were first run: prune_oneshot has pruned convolutions too since.
        kwargs["layers"] = r"Dense_\d+/kernel"

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


# ----------------------------------------------------------------------------- Fisher pruning


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *a: np.stack(a), *trees)


def _index(tree: Any, i: int | slice) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _forward(model: nn.Module) -> Callable:
    return lambda p, x: model.apply({"params": p}, x)


def _groups_by_layer(model_name: str, params: Any) -> dict:
    """The dependency group of each hidden layer's output channels, by the layer's name."""
    model = MODELS[model_name]()
    groups = jp.dependency_groups(_forward(model), params, jnp.zeros((1, 28, 28, 1)))
    by_layer = {}
    for layer in HIDDEN[model_name]:
        found = [g for g in groups if (f"{layer}/bias", 0) in g.members]
        if len(found) != 1:
            raise RuntimeError(f"{model_name}: no single dependency group for {layer}'s outputs")
        by_layer[layer] = found[0]
    return {"groups": groups, "by_layer": by_layer}


def fold_channel_masks(
    model_name: str, params: Any, masks: Any, structure: dict
) -> tuple[Any, Any]:
    """``(params with removed channels zeroed, bool weight masks)`` of one seed.

    A removed channel (mask entry 0) is zeroed in every member of its dependency group
    (``jp.structural.group_weight_masks``): the kernel and bias that produce it and the next
    layer's weights that read it. The plain model with these weights computes what the masked model
    computes with these masks, and its zeros are those of a structurally pruned model.
    """
    keep = {}
    for k, layer in enumerate(HIDDEN[model_name]):
        alive = np.asarray(masks[f"ChannelMask_{k}"]["mask"]) > 0.5
        keep[structure["by_layer"][layer].name] = alive
    weight_masks = jp.structural.group_weight_masks(params, structure["groups"], keep)
    weight_masks = jax.tree.map(lambda m, w: np.broadcast_to(m, np.shape(w)), weight_masks, params)
    folded = jax.tree.map(lambda w, m: np.asarray(w) * m, params, weight_masks)
    return folded, weight_masks


def fisher_curve(
    model_name: str, dense: Any, spec: dict, data: Data, budget: Budget
) -> dict[float, Outcome]:
    """Fisher-prunes each seed's trained dense model to every level of ``FISHER_LEVELS``.

    One run per seed (vmapped over the seeds): Adam then ``jp.fisher_pruning`` in one chain,
    the per-example mask gradients from the same backward pass as the parameter gradients
    (``fisher_value_and_grad``). The params and masks are recorded on device the first time a
    seed's FLOPs reach each level; the run stops once every seed is at the lowest level. Each
    recorded model has its removed channels folded into the weights (``fold_channel_masks``)
    and is fine-tuned for ``finetune_fraction`` of the training steps with those zeros fixed,
    the one-shot rows' fine-tune. A level's time is the pruning run's time up to the step the
    last seed reached it, plus its fine-tune.
    """
    model, masked = MODELS[model_name](), MODELS[model_name](masked=True)
    seeds = budget.seeds
    x1 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    ones = jax.tree.map(
        lambda a: jnp.ones(a.shape, a.dtype),
        jax.eval_shape(masked.init, jax.random.key(0), x1)["channel_masks"],
    )
    one = _index(dense, 0)

    def apply_masked(p, m, x):
        return masked.apply({"params": p, "channel_masks": m}, x)

    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), one)
    image = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)

    def cost_fn(m):
        return jp.count_flops(apply_masked, shapes, m, image, channel_argnums=1)

    dense_flops = float(cost_fn(ones))
    levels = [lv * dense_flops for lv in FISHER_LEVELS]
    # beta_rule "signal-per-flop": each seed's beta is set at its first pruning turn (update
    # FISHER_BURN_IN) to the sum of the signals that turn ranks over the sum of the marginal
    # FLOPs of the dense masks (fisher_beta), and kept; a traced beta, one per vmapped seed.
    per_seed_beta = spec.get("beta_rule") == "signal-per-flop"
    if spec.get("beta_rule") not in (None, "signal-per-flop"):
        raise ValueError(f"unknown beta_rule {spec['beta_rule']!r}")
    total_cost = float(sum(jnp.sum(c) for c in jax.tree.leaves(jax.grad(cost_fn)(ones))))

    def make_tx(beta):
        if spec["criterion"] == "ratio":
            rule = {"criterion": "ratio"}
        else:
            rule = {"beta": beta if per_seed_beta else spec["beta"]}
        return optax.chain(
            optax.adam(spec["learning_rate"]),
            jp.fisher_pruning(
                ones,
                frequency=FISHER_FREQUENCY,
                burn_in=FISHER_BURN_IN,
                decay=FISHER_DECAY,
                cost_fn=cost_fn,
                target_flops=levels[-1],
                **rule,
            ),
        )

    tx = make_tx(0.0)

    def losses(p, m, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply_masked(p, m, x), y)

    value_and_grad = jp.fisher.fisher_value_and_grad(losses, batched=True)

    def run_seed(carry, order, x_all, y_all):
        def body(carry, idx):
            p, s, snaps, reached, beta = carry
            masks = optax.tree.get(s, "channel_masks")
            loss, (g, mg) = value_and_grad(p, masks, (x_all[idx], y_all[idx]))
            if per_seed_beta:
                first_turn = s[1].count == FISHER_BURN_IN
                beta = jnp.where(first_turn, fisher_beta(s[1].signals, mg, total_cost), beta)
                u, s = make_tx(beta).update(g, s, p, mask_grads=mg)
            else:
                u, s = tx.update(g, s, p, mask_grads=mg)
            p = optax.apply_updates(p, u)
            state = s[1]
            new_snaps, new_reached = [], []
            for level, snap, r in zip(levels, snaps, reached, strict=True):
                hit = (r < 0) & (state.flops <= level)
                now = (p, state.channel_masks, state.flops)
                new_snaps.append(
                    jax.tree.map(lambda a, b, hit=hit: jnp.where(hit, a, b), now, snap)
                )
                new_reached.append(jnp.where(hit, state.count, r))
            return (p, s, tuple(new_snaps), jnp.stack(new_reached), beta), loss

        return jax.lax.scan(body, carry, order)

    n = len(seeds)
    opt_state = jax.jit(jax.vmap(tx.init))(dense)
    start_snap = (dense, _stack([ones] * n), np.full(n, dense_flops, np.float32))
    snaps = tuple(start_snap for _ in levels)
    reached = np.full((n, len(levels)), -1, np.int32)
    carry = (dense, opt_state, snaps, reached, np.zeros(n, np.float32))
    features = sum(int(m.size) for m in jax.tree.leaves(ones))
    max_steps = FISHER_BURN_IN + 1 + FISHER_FREQUENCY * features
    chunks = math.ceil(max_steps / FISHER_CHUNK)
    per_epoch = steps_per_epoch(data, budget)
    epochs = math.ceil(chunks * FISHER_CHUNK / per_epoch)
    orders = np.stack(
        [np.concatenate([epoch_order(data, budget, s, e) for e in range(epochs)]) for s in seeds]
    )
    x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    run = jax.jit(jax.vmap(run_seed, in_axes=(0, 0, None, None)))
    compiled = None
    seconds, steps_run = 0.0, 0
    for c in range(chunks):
        order = jnp.asarray(orders[:, c * FISHER_CHUNK : (c + 1) * FISHER_CHUNK])
        if compiled is None:
            compiled = run.lower(carry, order, x_all, y_all).compile()
        start = time.perf_counter()
        carry, losses_ = compiled(carry, order, x_all, y_all)
        jax.block_until_ready(carry)
        seconds += time.perf_counter() - start
        steps_run += FISHER_CHUNK
        if np.all(np.asarray(carry[3]) >= 0):
            break
    if not np.all(np.isfinite(np.asarray(losses_))):
        raise FloatingPointError(f"{spec}: the Fisher pruning loss is not finite")
    final_p, final_state, snaps, reached, betas = jax.device_get(carry)
    final = (final_p, optax.tree.get(final_state, "channel_masks"), final_state[1].flops)

    structure = _groups_by_layer(model_name, one)
    folded, weight_masks, info = [], [], []
    for j, level in enumerate(FISHER_LEVELS):
        for i in range(n):
            ok = reached[i, j] >= 0  # else: the run's last model, above the level
            p, m, flops = _index(snaps[j] if ok else final, i)
            fp, wm = fold_channel_masks(model_name, p, m, structure)
            folded.append(fp)
            weight_masks.append(wm)
            info.append(
                {
                    "level": level,
                    "reached_at_step": int(reached[i, j]) if ok else None,
                    "channel_flops": float(flops) / dense_flops,
                    "kept": [
                        int(np.sum(m[f"ChannelMask_{k}"]["mask"] > 0.5))
                        for k in range(len(HIDDEN[model_name]))
                    ],
                }
            )
    # The fine-tunes of every level and seed run together, vmapped; each uses its seed's batches.
    ft_budget = budget._replace(seeds=tuple(seeds) * len(FISHER_LEVELS))
    ft_steps = max(1, int(budget.finetune_fraction * total_steps(data, budget)))
    tuned, ft_seconds = train(
        model,
        {"method": "fixed_masks", "learning_rate": spec["learning_rate"]},
        data,
        ft_budget,
        params=_stack(folded),
        extra=_stack(weight_masks),
        steps=ft_steps,
    )
    out = evaluate(model, tuned, data, 0.0)
    plain_flops = float(jp.count_flops(_forward(model), one, x1))
    curve = {}
    for j, level in enumerate(FISHER_LEVELS):
        sl = slice(j * n, (j + 1) * n)
        last = int(reached[:, j].max()) if np.all(reached[:, j] >= 0) else steps_run
        level_seconds = seconds * last / steps_run + ft_seconds / len(FISHER_LEVELS)
        per_seed = info[sl]
        curve[level] = Outcome(
            out.accuracy[sl],
            out.sparsity[sl],
            out.flops[sl],
            level_seconds,
            _index(tuned, slice(j * n, (j + 1) * n)),
            {
                "channel_flops": [d["channel_flops"] for d in per_seed],
                "reached_at_step": [d["reached_at_step"] for d in per_seed],
                "kept_channels": [d["kept"] for d in per_seed],
                "pruning_steps_run": steps_run,
                "finetune_steps": ft_steps,
                "flops_dense": plain_flops,
                **({"beta": [float(b) for b in betas]} if per_seed_beta else {}),
            },
        )
    return curve


def fisher_beta(signals: Any, mask_grads: Any, total_cost: float) -> jax.Array:
    """The beta of ``signal − beta · FLOPs`` at a pruning turn: the network's signal per FLOP.

    ``sum_k s_k / sum_k c_k``, with ``s`` the averaged signals the turn ranks (``signals``
    updated with this batch's ``mask_grads``, as ``fisher_pruning`` does) and ``c`` the
    marginal FLOPs of the features (``total_cost``: their sum). A feature then scores below
    zero exactly when its own signal per FLOP saved, ``s_k / c_k``, is below the network's.
    """
    turn = jp.fisher.update_fisher_signals(
        signals, jp.fisher.fisher_batch_signals(mask_grads), decay=FISHER_DECAY
    )
    return sum(jnp.sum(a) for a in jax.tree.leaves(turn)) / total_cost


# ----------------------------------------------------------------------------- compaction


def latency(fn_a: Callable, a: Any, fn_b: Callable, b: Any, x: Any) -> dict:
    """Median ms of jitted ``fn_a(a, x)`` and ``fn_b(b, x)``, timed alternately."""
    fa, fb = jax.jit(fn_a), jax.jit(fn_b)
    x = jax.device_put(x)
    for _ in range(LATENCY_WARMUP):
        jax.block_until_ready(fa(a, x))
        jax.block_until_ready(fb(b, x))
    ta, tb = [], []
    for _ in range(LATENCY_REPEATS):
        t = time.perf_counter()
        jax.block_until_ready(fa(a, x))
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(fb(b, x))
        tb.append(time.perf_counter() - t)
    return {
        "dense_ms": 1e3 * statistics.median(ta),
        "compact_ms": 1e3 * statistics.median(tb),
        "ratio": statistics.median(y / x for x, y in zip(ta, tb, strict=True)),
        "repeats": LATENCY_REPEATS,
        "batch": int(x.shape[0]),
    }


def compaction(model_name: str, dense: Any, spec: dict, data: Data, budget: Budget) -> Outcome:
    """Removes ``spec["sparsity"]`` of the channels of every dependency group, compacts,
    fine-tunes the small model, and measures it against the dense one.

    Per seed: ``jp.dependency_groups`` of the trained dense model, channels scored by the
    norm (``spec["criterion"]``) of all their weights across the group (``jp.group_scores``),
    the same fraction kept in each group (``jp.group_masks``), then ``jp.compact``. Every
    group keeps the same number of channels for every seed, so the small models share one
    function and are fine-tuned together (vmapped) for ``finetune_fraction`` of the training
    steps. Sparsity is the fraction of the dense model's kernel weights removed; FLOPs are
    ``jp.count_flops`` of the compacted model; the latency is seed 0's.
    """
    model = MODELS[model_name]()
    forward = _forward(model)
    seeds = budget.seeds
    x = jnp.asarray(data.x_train[: budget.batch_size])
    small, small_fn, seconds = [], None, 0.0
    for i in range(len(seeds)):
        p = _index(dense, i)
        start = time.perf_counter()
        groups = jp.dependency_groups(forward, p, x)
        scores = jp.group_scores(p, groups, criterion=spec["criterion"])
        keep = jp.group_masks(scores, groups, sparsity=spec["sparsity"])
        q, fn = jp.compact(forward, p, keep, x)
        jax.block_until_ready(q)
        seconds += time.perf_counter() - start
        small_fn = small_fn or fn  # the same program for every seed: only shapes enter it
        masked = jax.tree.map(
            lambda w, m: w * m, p, jp.structural.group_weight_masks(p, groups, keep)
        )
        got, want = np.asarray(small_fn(q, x)), np.asarray(forward(masked, x))
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"{model_name}: the compacted model of seed {seeds[i]} differs")
        small.append(q)
    small = _stack(small)
    ft_steps = max(1, int(budget.finetune_fraction * total_steps(data, budget)))
    tuned, ft_seconds = train(
        model,
        {"method": "dense", "learning_rate": spec["learning_rate"]},
        data,
        budget,
        params=small,
        steps=ft_steps,
        apply=small_fn,
    )
    out = evaluate(model, tuned, data, seconds + ft_seconds, apply=small_fn)

    def kernel_size(tree):
        return sum(int(w.size) for w in jax.tree.leaves(tree) if w.ndim >= 2)

    def size(tree):
        return sum(int(w.size) for w in jax.tree.leaves(tree))

    one, small_one = _index(dense, 0), _index(tuned, 0)
    removed = 1.0 - kernel_size(small_one) / kernel_size(one)
    xb = jnp.asarray(data.x_test[:LATENCY_BATCH])
    x1 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    return out._replace(
        sparsity=[removed] * len(seeds),
        extra={
            "params_dense": size(one),
            "params_compact": size(small_one),
            "flops_dense": float(jp.count_flops(forward, one, x1)),
            "latency": latency(forward, one, small_fn, small_one, xb),
            "finetune_steps": ft_steps,
            "shapes": {
                "/".join(str(getattr(k, "key", k)) for k in path): list(a.shape)
                for path, a in jax.tree_util.tree_flatten_with_path(small_one)[0]
            },
        },
    )
