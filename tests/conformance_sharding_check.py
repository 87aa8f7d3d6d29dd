"""Run by tests/test_conformance.py with 8 fake CPU devices: sharded == one device.

Every transformation of the conformance table runs its four updates with params sharded over
a 2x4 mesh (kernels along their output axis, model-parallel) and on one device; params and masks
must agree. Importing this module does nothing; it runs as a script.
"""

import jax
import numpy as np
import test_conformance as tc
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def main():
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    specs = {
        "d0": {"kernel": P(None, "model"), "bias": P("model")},
        "d1": {"kernel": P("model", None), "bias": P()},
    }
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    for name in tc.NAMES:
        tx, step, (params, state), trajectory = tc.case(name)
        params = jax.device_put(params, shardings)
        state = tx.init(params) if name not in ("rigl", "set", "static") else state
        for _ in range(tc.STEPS):
            params, state = step(params, state)
        tc.assert_trees_close(params, trajectory[-1][0])
        tc.assert_trees_equal(tc.jp.get_masks(state), tc.jp.get_masks(trajectory[-1][1]))
        print(f"{name}: sharded == one device", flush=True)


if __name__ == "__main__":
    main()
