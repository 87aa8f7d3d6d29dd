"""from_tfmot: a tfmot schedule on jaxprune's update count, against a NumPy tfmot reference.

tfmot's Keras wrapper adds 1 to its step before each batch, so the batch of jaxprune's update
``t`` is tfmot's step ``t + 1``. The reference below re-implements tfmot's schedule formulas
(float32, as TensorFlow computes them) and the wrapper's mask rule in NumPy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune.schedules import ConstantSparsity, PolynomialDecay
from jaxprune.tf import TfmotSchedule, from_tfmot

F32 = np.float32


# ----- NumPy reference: tfmot's schedules at tfmot's step -----


def np_should_prune(step, begin, end, frequency):
    in_range = step >= begin and (step <= end or end < 0)
    return bool(in_range and (step - begin) % frequency == 0)  # Python % is a floor modulo


def np_polynomial(step, initial, final, begin, end, power, frequency):
    p = F32(step - begin) / F32(end - begin)
    p = min(F32(1.0), max(F32(0.0), p))
    sparsity = F32(initial - final) * np.power(F32(1.0) - p, F32(power)) + F32(final)
    return np_should_prune(step, begin, end, frequency), F32(sparsity)


def np_constant(step, target, begin, end, frequency):
    return np_should_prune(step, begin, end, frequency), F32(target)


def np_reference(kind, args, step):
    return (np_polynomial if kind == "poly" else np_constant)(step, *args)


def make(kind, args):
    if kind == "poly":
        initial, final, begin, end, power, frequency = args
        return PolynomialDecay(initial, final, begin, end, power=power, frequency=frequency)
    target, begin, end, frequency = args
    return ConstantSparsity(target, begin, end, frequency=frequency)


def evaluate(schedule, steps):
    should_prune, sparsity = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
    return np.asarray(should_prune), np.asarray(sparsity)


def check_every_update(kind, args, n_updates):
    got_prune, got_sparsity = evaluate(from_tfmot(make(kind, args)), np.arange(n_updates))
    for t in range(n_updates):
        want_prune, want_sparsity = np_reference(kind, args, t + 1)  # tfmot's step of update t
        assert bool(got_prune[t]) == want_prune, t
        np.testing.assert_allclose(got_sparsity[t], want_sparsity, rtol=1e-6, atol=1e-7)
    return [t for t in range(n_updates) if got_prune[t]]


CASES = [
    ("poly", (0.5, 0.8, 0, 1000, 3.0, 100), 1100),  # begin_step = 0
    ("poly", (0.0, 0.75, 3, 250, 3.0, 100), 300),  # end not on the frequency grid
    ("poly", (0.1, 0.9, 0, 100, 1.5, 7), 130),  # non-integer power, end off the grid
    ("poly", (0.0, 0.75, 2, 10, 1.0, 2), 15),
    ("poly", (0.2, 0.6, 1, 50, 2.0, 1), 60),  # every step
    ("const", (0.5, 0, -1, 3), 40),  # end_step = -1
    ("const", (0.6, 5, -1, 10), 60),
    ("const", (0.3, 0, 20, 4), 30),
]


@pytest.mark.parametrize("kind, args, n", CASES)
def test_every_update_equals_tfmot_at_its_step(kind, args, n):
    turns = check_every_update(kind, args, n)
    begin, frequency = (args[2], args[5]) if kind == "poly" else (args[1], args[3])
    first = begin if begin > 0 else frequency  # tfmot never sees step 0
    assert turns[0] == first - 1


@settings(max_examples=10, deadline=None)
@given(
    initial=st.floats(0.0, 0.99),
    final=st.floats(0.0, 0.99),
    begin=st.integers(0, 40),
    length=st.integers(1, 60),
    power=st.sampled_from([1.0, 2.0, 3.0, 0.5]),
    frequency=st.integers(1, 13),
)
def test_random_polynomial_schedules(initial, final, begin, length, power, frequency):
    check_every_update("poly", (initial, final, begin, begin + length, power, frequency), 120)


def test_the_first_turn_of_a_schedule_that_begins_at_0():
    # tfmot: PolynomialDecay(0.5, 0.8, begin_step=0, end_step=1000, frequency=100) prunes first
    # at step 100 (the 100th batch) to 0.8 - 0.3 * 0.9 ** 3 = 0.5813.
    schedule = from_tfmot(PolynomialDecay(0.5, 0.8, 0, 1000, frequency=100))
    should_prune, sparsity = schedule(99)
    assert bool(should_prune) and round(float(sparsity), 4) == 0.5813
    assert float(sparsity) == pytest.approx(0.8 - 0.3 * 0.9**3, rel=1e-6)
    turns, values = evaluate(schedule, np.arange(1000))
    assert np.flatnonzero(turns).tolist() == list(range(99, 1000, 100))
    assert float(values[999]) == pytest.approx(0.8, rel=1e-6)
    # Shifting the window by one and moving begin_step=0 to frequency - 1 (a common recipe)
    # gets the turns right but not the values: 0.5 at the first turn, off by up to 0.08.
    shifted = PolynomialDecay(0.5, 0.8, 99, 999, frequency=100)
    _, wrong = evaluate(shifted, np.arange(1000))
    assert float(wrong[99]) == 0.5
    gap = np.max(np.abs(wrong[turns] - values[turns]))
    assert 0.07 < gap < 0.09


def turns_of(schedule, n):
    return np.flatnonzero(evaluate(schedule, np.arange(n))[0]).tolist()


def test_tfmot_timelines():
    # tfmot's turns are anchored at begin_step; when end_step is off the frequency grid the last
    # turn falls before it, and PolynomialDecay never applies final_sparsity.
    a = from_tfmot(PolynomialDecay(0.0, 0.75, 3, 250, frequency=100))
    assert turns_of(a, 300) == [2, 102, 202]  # tfmot steps 3, 103, 203
    assert float(a(202)[1]) == pytest.approx(0.75 - 0.75 * (47 / 247) ** 3, rel=1e-6)
    b = from_tfmot(PolynomialDecay(0.0, 0.8, 0, 100, frequency=7))
    assert turns_of(b, 120)[-1] == 97  # tfmot step 98
    c = from_tfmot(ConstantSparsity(0.5, 0, -1, 3))
    assert turns_of(c, 7) == [2, 5]  # tfmot steps 3 and 6
    assert bool(c(999_998)[0])  # end_step = -1 prunes forever: tfmot's step 999_999
    d = from_tfmot(PolynomialDecay(0.0, 0.75, 2, 10, power=1, frequency=2))
    values = evaluate(d, np.arange(12))[1]
    got = [(t, round(float(values[t]), 4)) for t in turns_of(d, 12)]
    assert got == [(1, 0.0), (3, 0.1875), (5, 0.375), (7, 0.5625), (9, 0.75)]


def test_saturated_count_does_not_wrap():
    schedule = from_tfmot(ConstantSparsity(0.5, 0, -1, 1))
    top = np.iinfo(np.int32).max
    assert bool(schedule(jnp.int32(top))[0])  # step + 1 would wrap below begin_step
    assert bool(schedule(jnp.int32(top - 1))[0])


def test_attributes_and_configs():
    poly = PolynomialDecay(0.2, 0.8, 0, 100, frequency=10)
    adapted = from_tfmot(poly)
    assert isinstance(adapted, TfmotSchedule) and adapted.schedule is poly
    assert adapted.final_sparsity_value == 0.8 and adapted.initial_sparsity == 0.2
    const = from_tfmot(ConstantSparsity(0.5))
    assert const.final_sparsity_value == 0.5 and not hasattr(const, "initial_sparsity")
    # tfmot's get_config() dict, or an object that returns one (duck-typed tfmot schedule).
    config = {
        "class_name": "PolynomialDecay",
        "config": {
            "initial_sparsity": 0.2,
            "final_sparsity": 0.8,
            "power": 3,
            "begin_step": 0,
            "end_step": 100,
            "frequency": 10,
        },
    }

    class FakeTfmot:
        def get_config(self):
            return config

        def __call__(self, step):
            raise AssertionError("a tfmot schedule cannot run on JAX arrays")

    assert from_tfmot(config) == from_tfmot(FakeTfmot()) == adapted
    assert repr(adapted).startswith("TfmotSchedule(schedule=PolynomialDecay(")
    assert hash(adapted) == hash(from_tfmot(config))
    # A plain callable works too.
    fn = from_tfmot(lambda step: (step % 2 == 0, jnp.float32(0.5)))
    assert [bool(fn(t)[0]) for t in range(4)] == [False, True, False, True]
    assert fn.final_sparsity_value is None


def test_bad_input():
    with pytest.raises(ValueError, match="already a TfmotSchedule"):
        from_tfmot(from_tfmot(ConstantSparsity(0.5)))
    with pytest.raises(TypeError, match="schedule must be a PruningSchedule"):
        from_tfmot(0.5)
    with pytest.raises(ValueError, match="class_name must be one of"):
        from_tfmot({"class_name": "ExponentialDecay", "config": {}})
    with pytest.raises(ValueError, match="get_config"):
        from_tfmot({"target_sparsity": 0.5})
    with pytest.raises(TypeError, match="config of ConstantSparsity"):
        from_tfmot({"class_name": "ConstantSparsity", "config": {"sparsity": 0.5}})
    with pytest.raises(ValueError, match="final_sparsity must be in range"):
        from_tfmot(
            {
                "class_name": "PolynomialDecay",
                "config": {
                    "initial_sparsity": 0.0,
                    "final_sparsity": 1.0,
                    "begin_step": 0,
                    "end_step": 10,
                },
            }
        )


# ----- the transformation against NumPy tfmot -----


def np_tfmot_mask(w, sparsity):
    a = np.abs(w).reshape(-1)
    k = max(int(np.round(F32(a.size) * (F32(1.0) - F32(sparsity)))), 1)  # half to even
    threshold = np.sort(a)[::-1][k - 1]
    return (np.abs(w) >= threshold).reshape(w.shape)


def test_masks_follow_tfmot_batch_by_batch():
    # tfmot's wrapper per batch: step += 1; on a turn, mask from the current weights; w *= mask.
    args = (0.3, 0.8, 0, 20, 3.0, 4)
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((6, 10)).astype(F32)
    deltas = F32(0.05) * rng.standard_normal((24, 6, 10)).astype(F32)

    w, mask, expected = w0.copy(), np.ones(w0.shape, bool), []
    for batch in range(24):
        step = batch + 1
        should_prune, sparsity = np_reference("poly", args, step)
        if should_prune:
            mask = np_tfmot_mask(w, sparsity)
        w = w * mask  # the forward pass sees the masked weight
        expected.append(mask)
        # jaxprune keeps pruned weights at zero; tfmot lets them move until the next mask.
        w = np.where(mask, w + deltas[batch], F32(0.0))

    tx = jp.magnitude_pruning(from_tfmot(make("poly", args)), recompute_from="current")

    def body(carry, delta):
        params, state = carry
        updates, state = tx.update({"w": delta}, state, params)
        return (optax.apply_updates(params, updates), state), state.masks["w"]

    params = {"w": jnp.asarray(w0)}
    _, masks = jax.jit(lambda c, d: jax.lax.scan(body, c, d))(
        (params, tx.init(params)), jnp.asarray(deltas)
    )
    for batch in range(24):
        np.testing.assert_array_equal(np.asarray(masks[batch]), expected[batch], err_msg=batch)
    assert math.isclose(1 - expected[-1].mean(), 0.8, abs_tol=1 / 60)


def test_sparsity_map_reads_the_wrapped_schedule():
    schedule = from_tfmot(PolynomialDecay(0.6, 0.5, 0, 10, frequency=1))
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
    # 0.6 * 0.9 / 0.5 > 1: the initial sparsity of the wrapped schedule is checked.
    with pytest.raises(ValueError, match="initial sparsity 0.6"):
        jp.magnitude_pruning(schedule, sparsity_map={"a": 0.9}).init(params)
    jp.magnitude_pruning(schedule, sparsity_map={"a": 0.7}).init(params)


# ----- strict validation of schedules -----

TOO_BIG = 2**31


@pytest.mark.parametrize(
    "make_schedule, match",
    [
        (lambda: ConstantSparsity(0.5, begin_step=TOO_BIG), r"begin_step must be at most"),
        (lambda: ConstantSparsity(0.5, 0, end_step=TOO_BIG), r"end_step must be at most"),
        (lambda: ConstantSparsity(0.5, frequency=TOO_BIG), r"frequency must be in \[1, "),
        (lambda: PolynomialDecay(0.0, 0.5, TOO_BIG, TOO_BIG + 5), "begin_step must be at"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, TOO_BIG), "end_step must be at most"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, frequency=2**40), "frequency must be in"),
        (lambda: jp.schedule_from_optax(lambda c: 0.5, begin_step=TOO_BIG), "begin_step must"),
        (lambda: PolynomialDecay(float("nan"), 0.5, 0, 10), r"initial_sparsity must be in"),
        (lambda: PolynomialDecay(0.0, float("inf"), 0, 10), r"final_sparsity must be in"),
        (lambda: ConstantSparsity(float("nan")), r"target_sparsity must be in range"),
        (lambda: ConstantSparsity(np.float32("-inf")), r"target_sparsity must be in range"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=math.inf), "power must be > 0 and"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=math.nan), "power must be > 0 and"),
        (lambda: jp.schedule_from_optax(lambda c: math.nan), "sparsities in"),
    ],
)
def test_out_of_range_arguments_fail_at_construction(make_schedule, match):
    with pytest.raises(ValueError, match=match):
        make_schedule()


def test_int32_message_names_the_range():
    with pytest.raises(ValueError) as e:
        ConstantSparsity(0.5, begin_step=TOO_BIG)
    assert "2147483647" in str(e.value) and str(TOO_BIG) in str(e.value)
    # The largest int32 is accepted, and runs.
    schedule = ConstantSparsity(0.5, begin_step=2**31 - 1, frequency=2**31 - 1)
    assert bool(schedule(jnp.int32(2**31 - 1))[0]) and not bool(schedule(0)[0])
