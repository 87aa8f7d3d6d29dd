"""Shared test configuration."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(params=["jit", "eager"])
def maybe_jit(request):
    """Runs a function jitted and eagerly: masks must agree either way."""
    if request.param == "jit":
        return jax.jit
    return lambda f, **kw: f


# Scripts that tests run in a process of their own (they set XLA_FLAGS before importing jax).
collect_ignore = ["sharding_check.py", "conformance_sharding_check.py", "oneshot_sharding_check.py"]
