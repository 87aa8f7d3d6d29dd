"""Shared test configuration."""

import os

# Tests check what programs compute, not how fast: XLA's CPU backend compiles in about 30%
# less time with LLVM's optimisations off, and IEEE results do not change (XLA never allows LLVM
# to reassociate floating-point operations). Processes that tests start inherit the setting
# through XLA_FLAGS. JAXPRUNE_TEST_OPTIMIZED=1 keeps the default optimisation level.
if os.environ.get("JAXPRUNE_TEST_OPTIMIZED") != "1" and "optimization_level" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402 (after XLA_FLAGS, which the backend reads when it starts)
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(params=["jit", "eager"])
def maybe_jit(request):
    """Runs a function jitted and eagerly: masks must agree either way."""
    if request.param == "jit":
        return jax.jit
    return lambda f, **kw: f


# Scripts that tests run in a process of their own (they set XLA_FLAGS before importing jax).
collect_ignore = [
    "sharding_check.py",
    "conformance_sharding_check.py",
    "multiprocess_check.py",
    "oneshot_sharding_check.py",
]
