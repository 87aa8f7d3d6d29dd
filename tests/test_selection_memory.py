"""Selections on large leaves keep no full-size temporaries, and stay exact (CPU chunked paths).

XLA's CPU compiler widens bfloat16 slices to float32; in the chunked loops that once kept a
float32 copy of the weights alive through the selection (4 bytes per entry), and the masks were
built in one buffer and copied to another. The compiled programs' temporaries must not grow
with the leaves (``benchmarks/scale.py`` measures the process's peak at 1e9 parameters).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune._src import masks as masks_lib
from jaxprune._src import radix_select as selection

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]


def temp_bytes(fn, *args) -> int:
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_temporaries_do_not_grow_with_the_leaves(dtype):
    small, large = (600, 1000), (2400, 1000)  # above the CPU chunk (2**18), with a tail
    s = jnp.float32(0.9)
    grow = {}
    for name, fn, args in [
        ("single", masks_lib._magnitude_threshold, lambda sh: (sh, s, None)),
        ("single + update", masks_lib._magnitude_threshold, lambda sh: (sh, s, sh)),
        ("global", masks_lib._global_threshold, lambda sh: ([sh, sh, sh], s, None)),
    ]:
        a, b = (temp_bytes(fn, *args(jax.ShapeDtypeStruct(sh, dtype))) for sh in (small, large))
        grow[name] = (b - a) / (np.prod(large) - np.prod(small))
    # Bytes of temporaries per added entry (per leaf): was 4 + 1 for bfloat16, 1 for the
    # others (the mask built in one buffer, then copied).
    assert max(grow.values()) < 0.05, grow


def reference_mask(x, sparsity: float, keys=None) -> np.ndarray:
    keys = np.asarray(selection.magnitude_keys(jnp.asarray(x)) if keys is None else keys)
    k = int(selection.kept_count(keys.size, sparsity))
    return keys >= np.sort(keys.ravel())[::-1][k - 1]


def sum_keys(x, u):
    # The keys of x + u as optax.apply_updates stores it: rounded to x's dtype (eager ops
    # store every result; the selection forces the rounding inside its compiled program).
    return selection.magnitude_keys((x + u).astype(x.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_masks_equal_a_sort(dtype):
    rng = np.random.default_rng(0)
    n = 2 * 2**18 + 12345  # two chunks and a tail; the mask's last chunk overlaps
    x = jnp.asarray(rng.normal(size=n) * 3, dtype)
    u = jnp.asarray(rng.normal(size=n) * 0.3, dtype)
    ties = jnp.asarray(np.round(rng.normal(size=(300, 1000)), 1), dtype)  # many ties
    for s in (0.0, 0.37, 0.9, 1.0):
        np.testing.assert_array_equal(jp.magnitude_mask(x, s), reference_mask(np.asarray(x), s))
        got, _ = masks_lib.magnitude_threshold(x, s, u)
        np.testing.assert_array_equal(got, reference_mask(None, s, sum_keys(x, u)))
        masks = jp.global_magnitude_masks({"a": x.reshape(-1, 1), "b": ties}, s)
        both = np.concatenate([np.asarray(x), np.asarray(ties).ravel()])
        want = reference_mask(both, s)
        np.testing.assert_array_equal(masks["a"].ravel(), want[:n])
        np.testing.assert_array_equal(masks["b"].ravel(), want[n:])
