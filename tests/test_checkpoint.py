"""Checkpointing with orbax in the middle of pruning, and resuming in a fresh process.

The runs (Flax linen with an optax state, and NNX with ``nnx.Optimizer``), the checkpoint
helpers and the resumed halves live in ``tests/checkpoint_check.py``; docs:
``docs/checkpoints.md``.
"""

import subprocess
import sys

import checkpoint_check as cc
import jax
import numpy as np
from flax import nnx
from orbax.checkpoint import metadata as ocp_metadata

import jaxprune as jp


def bits(x):
    """A leaf as dtype, shape and raw bytes: equal only if bit for bit identical."""
    x = np.asarray(x)
    return x.dtype, x.shape, x.tobytes()


def as_tree(name, state):
    """Everything a recipe's checkpoint holds, as one pytree."""
    if name == "linen":
        return state
    model, optimizer = state
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def params_and_masks(name, state):
    if name == "linen":
        return state["params"], jp.get_masks(state["opt_state"])
    model, optimizer = state
    return nnx.state(model, nnx.Param), jp.get_masks(optimizer.opt_state)


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    reference, at_save = {}, {}
    for name, (init, train, save, _, _) in cc.RECIPES.items():
        with cc.manager(tmp_path / name) as mngr:

            def on_step(done, state, name=name, save=save, mngr=mngr):
                if done == cc.SAVE_AT:
                    save(mngr, done, state)
                    # A copy: NNX updates its variables in place.
                    at_save[name] = jax.tree.map(np.array, params_and_masks(name, state))

            # The uninterrupted run, which saves a checkpoint on its way.
            reference[name] = as_tree(name, train(init(), 0, cc.STEPS, on_step))

    # A fresh process restores those checkpoints, trains to the end and saves step STEPS.
    result = subprocess.run(
        [sys.executable, "-W", "error", cc.__file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    for name, (*_, restore, _) in cc.RECIPES.items():
        assert f"{name}: resumed at update {cc.SAVE_AT}" in result.stdout
        with cc.manager(tmp_path / name) as mngr:
            assert mngr.all_steps() == [cc.SAVE_AT, cc.STEPS]
            resumed = restore(mngr, cc.STEPS)
            on_disk = mngr.item_metadata(cc.SAVE_AT).tree

        # Params and the whole optimizer state (Adam's moments, the step counts, masks and
        # thresholds) are bit for bit those of the uninterrupted run.
        tree = as_tree(name, resumed)
        assert jax.tree.structure(tree) == jax.tree.structure(reference[name]), name
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference[name])):
            assert bits(a) == bits(b), name

        params, masks = params_and_masks(name, resumed)
        pruned = 0
        for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
            assert m.dtype == np.bool_, name
            if m.ndim:
                pruned += 1
                assert m.shape == w.shape
                assert not np.any(np.asarray(w)[~np.asarray(m)].view(np.uint32))  # +0.0
        assert pruned == 3, name  # the three kernels
        # The checkpoint was taken mid-pruning: the two turns after it pruned more.
        mid = jp.sparsity_summary(*at_save[name])["pruned"]
        end = jp.sparsity_summary(params, masks)["pruned"]
        assert 0.5 < mid < end - 0.2, (name, mid, end)

        # On disk the masks are booleans (one byte per weight), not floats.
        flat = jax.tree_util.tree_flatten_with_path(
            on_disk, is_leaf=lambda x: isinstance(x, ocp_metadata.ArrayMetadata)
        )[0]
        stored = {jax.tree_util.keystr(path): meta.dtype for path, meta in flat}
        mask_dtypes = {k: v for k, v in stored.items() if "['masks']" in k}
        assert len(mask_dtypes) == 6, (name, stored)  # three kernels, three biases
        assert set(mask_dtypes.values()) == {np.dtype(bool)}, (name, mask_dtypes)
