"""Run by tests/test_conformance.py with 8 fake CPU devices: sharded == one device.

Every transformation of the conformance table (or every ``parts``-th one from the ``part``-th
on, with ``python conformance_sharding_check.py part parts``) runs its four updates with params
sharded over a 2x4 mesh (kernels along their output axis, model-parallel) and on one device;
params and masks must agree. Fisher pruning's channel masks and signals are sharded like the
channels they mask (d0's outputs, along "model"). Importing this module does nothing; it runs
as a script.
"""

import sys

import jax
import numpy as np
import test_conformance as tc
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def main(part: int = 0, parts: int = 1):
    """Checks every ``parts``-th transformation of the table, from the ``part``-th on."""
    assert jax.device_count() == 8, jax.devices()
    chosen = set((tc.NAMES + tc.FISHER_NAMES)[part::parts])
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    specs = {
        "d0": {"kernel": P(None, "model"), "bias": P("model")},
        "d1": {"kernel": P("model", None), "bias": P()},
    }
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    for name in [n for n in tc.NAMES if n in chosen]:
        tx, step, (params, state), trajectory = tc.case(name)
        params = jax.device_put(params, shardings)
        state = tx.init(params) if name not in tc.SPARSE_FROM_START else state
        for _ in range(tc.STEPS):
            params, state = step(params, state)
        tc.assert_trees_close(params, trajectory[-1][0])
        tc.assert_trees_equal(tc.jp.get_masks(state), tc.jp.get_masks(trajectory[-1][1]))
        print(f"{name}: sharded == one device", flush=True)
    channels = NamedSharding(mesh, P("model"))
    for name in [n for n in tc.FISHER_NAMES if n in chosen]:
        tx, step, _, trajectory = tc.fisher_case(name)
        params = jax.device_put(tc.init_params(), shardings)
        state = tx.init(params)
        fisher = tc.fisher_state_of(state)
        sharded = fisher._replace(
            channel_masks=jax.device_put(fisher.channel_masks, channels),
            signals=jax.device_put(fisher.signals, channels),
        )
        state = (state[0], sharded)
        for _ in range(tc.STEPS):
            params, state = step(params, state)
        assert params["d0"]["kernel"].sharding.is_equivalent_to(shardings["d0"]["kernel"], 2)
        tc.assert_trees_close(params, trajectory[-1][0])
        tc.assert_trees_equal(tc.channel_masks(state), tc.channel_masks(trajectory[-1][1]))
        tc.assert_trees_close(
            tc.fisher_state_of(state).signals, tc.fisher_state_of(trajectory[-1][1]).signals
        )
        print(f"{name}: sharded == one device", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
