"""Schedules against tfmot's formulas, and where jaxprune departs from them on purpose."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp


def tfmot_polynomial(step, initial, final, begin, end, power):
    """tfmot's PolynomialDecay value, in numpy float32."""
    p = np.float32(step - begin) / np.float32(end - begin)
    p = np.minimum(np.float32(1), np.maximum(np.float32(0), p))
    decay = np.power(np.float32(1) - p, np.float32(power))
    return np.float32(initial - final) * decay + np.float32(final)


def tfmot_should_prune(step, begin, end, frequency):
    in_range = step >= begin and (step <= end or end < 0)
    return in_range and (step - begin) % frequency == 0


def boundary_steps(begin, end, frequency):
    steps = {-1, 0, begin - 1, begin, begin + 1, end - 1, end, end + 1, end + 1000}
    for turn in range(begin, begin + 4 * frequency, frequency):
        steps |= {turn - 1, turn, turn + 1}
    return sorted(steps)


@pytest.mark.parametrize(
    "initial,final,begin,end,power,frequency",
    [
        (0.0, 0.9, 0, 1000, 3, 100),
        (0.05, 0.75, 3, 250, 3, 100),
        (0.0, 0.8, 0, 100, 2, 7),
        (0.5, 0.1, 10, 50, 0.5, 4),  # decreasing, non-integer power
        (0.2, 0.6, 2, 10, 1, 2),
    ],
)
def test_polynomial_decay_matches_tfmot_at_boundaries(initial, final, begin, end, power, frequency):
    schedule = jp.polynomial_decay(initial, final, begin, end, power=power, frequency=frequency)
    for step in boundary_steps(begin, end, frequency):
        should_prune, sparsity = schedule(step)
        assert sparsity.dtype == jnp.float32 and should_prune.dtype == jnp.bool_
        want = tfmot_polynomial(step, initial, final, begin, end, power)
        np.testing.assert_allclose(np.asarray(sparsity), want, rtol=1e-6, atol=6e-8)
        assert bool(should_prune) == tfmot_should_prune(step, begin, end, frequency), step


def test_polynomial_decay_documented_values():
    # tfmot's window: the last turn falls before end_step, so final is never applied.
    schedule = jp.polynomial_decay(0.05, 0.75, 3, 250, power=3, frequency=100)
    turns = [s for s in range(0, 400) if bool(schedule(s)[0])]
    assert turns == [3, 103, 203]
    np.testing.assert_allclose(float(schedule(203)[1]), 0.74518, atol=1e-5)
    schedule = jp.polynomial_decay(0.0, 0.8, 0, 100, power=2, frequency=7)
    assert max(s for s in range(0, 200) if bool(schedule(s)[0])) == 98
    np.testing.assert_allclose(float(schedule(98)[1]), 0.79968, atol=1e-5)
    # float32: 0.05 reads back as 0.050000012.
    assert float(jp.polynomial_decay(0.05, 0.5, 10, 20)(0)[1]) == pytest.approx(
        0.050000012, abs=1e-9
    )


def test_polynomial_decay_begin_equals_end_is_a_step_function():
    # tfmot returns NaN at step == begin == end; jaxprune returns final_sparsity.
    schedule = jp.polynomial_decay(0.1, 0.6, 5, 5, frequency=1)
    assert float(schedule(4)[1]) == pytest.approx(0.1)
    assert float(schedule(5)[1]) == pytest.approx(0.6)
    assert float(schedule(6)[1]) == pytest.approx(0.6)
    assert [bool(schedule(s)[0]) for s in (4, 5, 6)] == [False, True, False]


@pytest.mark.parametrize("end_step", [-1, 50])
def test_constant_sparsity(end_step):
    schedule = jp.constant_sparsity(0.5, 10, end_step, frequency=7)
    for step in boundary_steps(10, 50, 7) + [10**6 + 10 - (10**6 % 7)]:
        should_prune, sparsity = schedule(step)
        assert float(sparsity) == np.float32(0.5)  # the target even outside the window
        assert bool(should_prune) == tfmot_should_prune(step, 10, end_step, 7), step


def test_end_step_minus_one_prunes_forever():
    schedule = jp.constant_sparsity(0.5, 0, -1, frequency=100)
    assert bool(schedule(10**6)[0])
    assert not bool(schedule(10**6 + 1)[0])


def test_schedules_accept_traced_steps():
    schedule = jp.polynomial_decay(0.0, 0.9, 10, 110, frequency=10)
    jitted = jax.jit(schedule)
    for step in range(-5, 130):
        eager, traced = schedule(step), jitted(jnp.int32(step))
        assert bool(eager[0]) == bool(traced[0])
        # XLA may fuse the final multiply-add under jit: equal to a few ulps.
        np.testing.assert_allclose(float(eager[1]), float(traced[1]), rtol=1e-6, atol=6e-8)
    # Vectorised over steps, XLA on CPU may divide through a reciprocal: equal to 1e-6.
    values = jax.jit(jax.vmap(schedule))(jnp.arange(-5, 130, dtype=jnp.int32))[1]
    want = [float(schedule(s)[1]) for s in range(-5, 130)]
    np.testing.assert_allclose(np.asarray(values), want, rtol=1e-5, atol=1e-7)


@given(
    # XLA on CPU flushes float32 subnormals to zero: sparsities are never that small in practice.
    initial=st.one_of(st.just(0.0), st.floats(1e-6, 0.99)),
    final=st.one_of(st.just(0.0), st.floats(1e-6, 0.99)),
    begin=st.integers(0, 100),
    length=st.integers(1, 500),
    power=st.floats(0.1, 5),
)
@settings(max_examples=40, deadline=None)
def test_polynomial_decay_monotone_with_exact_endpoints(initial, final, begin, length, power):
    end = begin + length
    schedule = jp.polynomial_decay(initial, final, begin, end, power=power)
    values = np.asarray(jax.vmap(lambda s: schedule(s)[1])(jnp.arange(begin - 3, end + 4)))
    # Before begin the value is f32(initial - final) + f32(final), as in tfmot: initial to 1 ulp.
    np.testing.assert_allclose(values[:4], np.float32(initial), rtol=0, atol=1e-7)
    assert values[-1] == np.float32(final) and values[-4] == np.float32(final)
    steps = np.diff(values)
    tol = 1e-6
    assert np.all(steps <= tol) if initial >= final else np.all(steps >= -tol)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: jp.constant_sparsity(1.5, begin_step=-1), "begin_step should be >= 0"),
        (lambda: jp.polynomial_decay(1.5, 0.5, 0, -1), "end_step cannot be -1"),
        (lambda: jp.constant_sparsity(0.5, 0, -2), "end_step can be -1 or >= 0"),
        (lambda: jp.polynomial_decay(0.0, 0.5, 10, 5), "begin_step should be <= end_step"),
        (lambda: jp.constant_sparsity(0.5, 0, frequency=0), "frequency should be > 0"),
        (lambda: jp.polynomial_decay(0.0, 0.5, 0, 10, frequency=-3), "frequency should be > 0"),
        (lambda: jp.polynomial_decay(0.0, 0.5, 0, 10, power=0), "power must be > 0"),
        (
            lambda: jp.polynomial_decay(1.0, 0.5, 0, 10),
            r"initial_sparsity must be in range \[0,1\)",
        ),
        (lambda: jp.polynomial_decay(1.5, 1.5, 0, 10), "initial_sparsity"),
        (lambda: jp.polynomial_decay(0.0, -0.1, 0, 10), "final_sparsity"),
        (lambda: jp.constant_sparsity(1.0), r"target_sparsity must be in range \[0,1\)"),
    ],
)
def test_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_validation_types():
    with pytest.raises(TypeError, match="begin_step"):
        jp.constant_sparsity(0.5, begin_step=1.5)
    with pytest.raises(TypeError, match="target_sparsity"):
        jp.constant_sparsity("0.5")
    with pytest.raises(TypeError, match="step must be an integer"):
        jp.constant_sparsity(0.5)(1.0)


def test_edge_values_accepted():
    jp.constant_sparsity(0.999999)
    jp.polynomial_decay(0.0, 0.999999, 0, 0)


def test_get_config_round_trip():
    for schedule in (
        jp.polynomial_decay(0.1, 0.8, 5, 50, power=2, frequency=5),
        jp.constant_sparsity(0.3, 2, 40, frequency=3),
    ):
        config = schedule.get_config()
        rebuilt = type(schedule).from_config(config["config"])
        assert rebuilt == schedule and hash(rebuilt) == hash(schedule)
        assert config["class_name"] == type(schedule).__name__


def test_custom_schedule_with_tfmot_helper_names():
    class EveryOther(jp.PruningSchedule):
        def __init__(self):
            self._validate_step(0, 10, 2, True)
            self._validate_sparsity(0.4, "sparsity")

        def __call__(self, step):
            return self._should_prune_in_step(step, 0, 10, 2), jnp.float32(0.4)

    schedule = EveryOther()
    assert [bool(schedule(s)[0]) for s in range(13)] == [s % 2 == 0 and s <= 10 for s in range(13)]
    with pytest.raises(ValueError, match="frequency"):
        jp.PruningSchedule.validate_step(0, 10, 0, True)


def test_schedule_from_optax():
    curve = optax.linear_schedule(0.0, 0.8, 100)
    schedule = jp.schedule_from_optax(curve, begin_step=50, end_step=150, frequency=10)
    values = [float(schedule(s)[1]) for s in (0, 49, 50, 100, 150, 151, 1000)]
    np.testing.assert_allclose(values, [0, 0, 0, 0.4, 0.8, 0.8, 0.8], atol=1e-6)
    assert [bool(schedule(s)[0]) for s in (49, 50, 55, 60, 150, 160)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert schedule.final_sparsity_value == pytest.approx(0.8)
    with pytest.raises(ValueError, match="schedule"):
        jp.schedule_from_optax(optax.linear_schedule(0.0, 1.5, 10), end_step=10)
    with pytest.raises(TypeError, match="callable"):
        jp.schedule_from_optax(0.5)


def test_unsigned_steps_and_array_sparsities():
    schedule = jp.polynomial_decay(0.05, 0.75, begin_step=3, end_step=250)
    assert float(schedule(np.uint32(0))[1]) == pytest.approx(0.05, abs=1e-6)
    jp.constant_sparsity(jnp.float32(0.5))
    jp.constant_sparsity(np.int64(0))
