"""Training runs with pruning that checkpoint with orbax, and their resumed second halves.

Two recipes, the same run in each: Flax linen params with an optax state in a dict
(``linen_*``), and an NNX model with its ``nnx.Optimizer`` (``nnx_*``). Each recipe has
``init``, ``train(state, start, stop, on_step)``, ``save`` and ``restore``.

``tests/test_checkpoint.py`` trains both without interruption, saving a checkpoint in the
middle of the pruning schedule, then runs this file as a script in a fresh process::

    python tests/checkpoint_check.py CHECKPOINT_DIR

which, for each recipe, restores the latest checkpoint under ``CHECKPOINT_DIR/<recipe>``, trains
to the end and saves the result as the checkpoint of step ``STEPS``. Importing this module has
no side effects.
"""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

import jaxprune as jp

STEPS = 16
# Pruning turns at updates 0, 4, 8 and 12 (sparsity 0.0 -> 0.9); the checkpoint after 6
# updates falls between two turns, with two turns still to come.
SCHEDULE = jp.polynomial_decay(0.0, 0.9, begin_step=0, end_step=12, frequency=4)
SAVE_AT = 6


def make_tx():
    return optax.chain(
        optax.adam(1e-2),
        jp.magnitude_pruning(SCHEDULE, sparsity_map={"(Dense_2|out)/": 0.5}),
    )


def batch(step):
    """The batch of update ``step``: a pure function of the step, so a resumed run sees it too."""
    x = jax.random.normal(jax.random.fold_in(jax.random.key(1), step), (32, 16))
    return x, jnp.sin(2 * x[:, :4])


def manager(directory):
    return ocp.CheckpointManager(directory)


def save(mngr, step, tree):
    mngr.save(step, args=ocp.args.StandardSave(tree))
    mngr.wait_until_finished()


# ----- Flax linen: params and optax state in one dict -----


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4)(x)


LINEN_MODEL = MLP()
LINEN_TX = make_tx()


def linen_init():
    """``{"params": ..., "opt_state": ...}`` before the first update."""
    params = LINEN_MODEL.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
    return {"params": params, "opt_state": LINEN_TX.init(params)}


@jax.jit
def linen_step(state, x, y):
    def loss_fn(params):
        return jnp.mean((LINEN_MODEL.apply({"params": params}, x) - y) ** 2)

    params, opt_state = state["params"], state["opt_state"]
    updates, opt_state = LINEN_TX.update(jax.grad(loss_fn)(params), opt_state, params)
    return {"params": optax.apply_updates(params, updates), "opt_state": opt_state}


def linen_train(state, start, stop, on_step=None):
    """Updates ``start, ..., stop - 1``; ``on_step(updates_done, state)`` after each."""
    for step in range(start, stop):
        state = linen_step(state, *batch(step))
        if on_step is not None:
            on_step(step + 1, state)
    return state


def linen_save(mngr, step, state):
    save(mngr, step, state)


def linen_restore(mngr, step):
    # The target gives orbax the tree to rebuild (MagnitudePruningState and the other optax
    # NamedTuples, not the dicts and lists it would return without one), and each leaf's
    # shape and dtype; jax.eval_shape builds it without running the initialisers.
    target = jax.eval_shape(linen_init)
    return mngr.restore(step, args=ocp.args.StandardRestore(target))


def linen_count(state):
    return int(jp.get_pruning_state(state["opt_state"]).count)


# ----- Flax NNX: a model and its nnx.Optimizer -----


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden1 = nnx.Linear(16, 32, rngs=rngs)
        self.hidden2 = nnx.Linear(32, 32, rngs=rngs)
        self.out = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


def nnx_init():
    """``(model, optimizer)`` before the first update."""
    model = NNXMLP(nnx.Rngs(0))
    return model, nnx.Optimizer(model, make_tx(), wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)


def nnx_train(state, start, stop, on_step=None):
    model, optimizer = state
    for step in range(start, stop):
        nnx_step(model, optimizer, *batch(step))
        if on_step is not None:
            on_step(step + 1, state)
    return state


def nnx_save(mngr, step, state):
    model, optimizer = state
    save(mngr, step, {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})


def nnx_restore(mngr, step):
    # Abstract objects (shapes only) give the target, and are then filled in place.
    model, optimizer = nnx.eval_shape(nnx_init)
    target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    return model, optimizer


def nnx_count(state):
    return int(jp.get_pruning_state(state[1].opt_state).count)


RECIPES = {
    "linen": (linen_init, linen_train, linen_save, linen_restore, linen_count),
    "nnx": (nnx_init, nnx_train, nnx_save, nnx_restore, nnx_count),
}


def main(directory):
    for name, (_, train, save_fn, restore, count) in RECIPES.items():
        with manager(Path(directory) / name) as mngr:
            step = mngr.latest_step()
            state = restore(mngr, step)
            assert count(state) == step, (name, count(state), step)
            state = train(state, step, STEPS)
            save_fn(mngr, STEPS, state)
        print(f"{name}: resumed at update {step}, trained to {STEPS}, saved")


if __name__ == "__main__":
    main(sys.argv[1])
