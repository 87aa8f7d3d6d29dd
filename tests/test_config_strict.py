"""Strict validation of the legacy hyperparameters and of pruning_from_config.

Rescaled weight_sparsity_map curves that reach 1, windows that do not fit together, int32
ranges, TensorFlow variable names in map regexes, and a fuzz of ``PruningConfig.parse``.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src.config import PruningConfig, PruningConfigWarning, first_update_step
from jaxprune._src.legacy import pruning_from_config

F32 = np.float32
INT32_MAX = 2**31 - 1


# ----- weight_sparsity_map rescales that reach sparsity 1 -----


def np_max_rescaled(config, value):
    """The largest ``s(t) * value / target`` over the curve (and around it), in float32."""
    b, e = config.sparsity_function_begin_step, config.sparsity_function_end_step
    steps = np.unique(np.concatenate([np.linspace(b, e, 101).round(), [b - 1, b, e, e + 1]]))
    p = np.clip((steps - b).astype(F32) / F32(e - b), F32(0), F32(1))
    init, target = config.initial_sparsity, config.target_sparsity
    curve = F32(init - target) * (F32(1) - p) ** F32(config.sparsity_function_exponent)
    curve = curve + F32(target)
    return float(np.max(curve * F32(value / target)))


def test_the_rescale_that_zeroes_a_layer_is_rejected():
    config = PruningConfig(
        initial_sparsity=0.9, target_sparsity=0.1, weight_sparsity_map={"b": 0.5}
    )
    with pytest.raises(ValueError) as e:
        pruning_from_config(config)
    message = str(e.value)
    assert "weight_sparsity_map entry b:0.5" in message
    assert "initial_sparsity=0.9" in message and "0.5/0.1" in message and "4.5 >= 1" in message
    with pytest.raises(ValueError, match="weight_sparsity_map entry b:0.5"):
        pruning_from_config("initial_sparsity=0.9,target_sparsity=0.1,weight_sparsity_map=[b:0.5]")


def test_rescale_decision_matches_the_curve():
    rng = np.random.default_rng(0)
    rejected = accepted = 0
    for _ in range(300):
        initial, target = rng.uniform(0, 0.99, 2)
        value = rng.uniform(0, 0.99)
        config = PruningConfig(
            initial_sparsity=float(initial),
            target_sparsity=float(target),
            sparsity_function_exponent=float(rng.choice([1.0, 2.0, 3.0])),
            weight_sparsity_map={"w": float(value)},
        )
        reaches_one = np_max_rescaled(config, value) >= 1.0
        if reaches_one:
            with pytest.raises(ValueError, match="pruned entirely"):
                pruning_from_config(config)
            rejected += 1
        else:
            pruning_from_config(config)
            accepted += 1
    assert rejected > 50 and accepted > 50


def test_rescale_at_the_boundary():
    # initial 0.8, target 0.4: the largest map value is 0.4 / 0.8 = 0.5 (excluded).
    ok = PruningConfig(initial_sparsity=0.8, target_sparsity=0.4, weight_sparsity_map={"w": 0.49})
    pruning_from_config(ok)
    bad = PruningConfig(initial_sparsity=0.8, target_sparsity=0.4, weight_sparsity_map={"w": 0.5})
    with pytest.raises(ValueError, match="must be below 0.5 here"):
        pruning_from_config(bad)
    # With initial_sparsity <= target_sparsity every value below 1 is fine.
    pruning_from_config(PruningConfig(target_sparsity=0.1, weight_sparsity_map={"w": 0.99}))


def test_the_rescaled_leaf_never_reaches_one_in_training():
    # initial 0.6 > target 0.3 and a map value of 0.45: the leaf's curve starts at 0.9.
    config = PruningConfig(
        pruning_frequency=1,
        threshold="topk",
        threshold_decay=0.0,
        initial_sparsity=0.6,
        target_sparsity=0.3,
        sparsity_function_end_step=4,
        weight_sparsity_map={"a": 0.45},
    )
    tx = pruning_from_config(config)
    params = {"a": jnp.arange(1.0, 101.0).reshape(10, 10), "b": jnp.arange(1.0, 101.0)[None]}
    state, update = tx.init(params), jax.jit(tx.update)
    for _ in range(3):
        updates, state = update(params, state, params)
    kept = int(state.masks["a"].sum())
    # Step 2: s = (0.6 - 0.3) * (1 - 2/4)**3 + 0.3 = 0.3375, rescaled by 1.5: 0.50625.
    assert kept == round(100 * (1 - np.float32(0.3375) * np.float32(1.5)))


# ----- windows that do not fit together -----


def warnings_of(make):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make()
    return [w for w in record if issubclass(w.category, PruningConfigWarning)]


def test_sparsity_window_ending_before_the_first_update_warns():
    assert issubclass(PruningConfigWarning, UserWarning)
    config = PruningConfig(begin_pruning_step=1000, end_pruning_step=5000)  # curve: 0 to 100
    with pytest.warns(PruningConfigWarning, match="applied all at once") as record:
        pruning_from_config(config)
    assert "sparsity_function_end_step=100" in str(record[0].message)
    assert "first mask update at step 1000" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller
    # The first update is at max(begin, frequency): a window ending before it warns too.
    with pytest.warns(PruningConfigWarning, match="first mask update at step 50"):
        pruning_from_config("pruning_frequency=50,sparsity_function_end_step=20")


def test_other_windows_that_do_not_fit_warn():
    with pytest.warns(PruningConfigWarning, match="no mask update can happen"):
        pruning_from_config("begin_pruning_step=0,end_pruning_step=5,pruning_frequency=10")
    with pytest.warns(PruningConfigWarning, match="never target_sparsity"):
        pruning_from_config(
            "end_pruning_step=1000,sparsity_function_begin_step=2000,"
            "sparsity_function_end_step=3000"
        )
    # Updates at 10, 20, 30 and 40: a curve beginning at 42 is never applied, though 42 is
    # before end_pruning_step=45.
    with pytest.warns(PruningConfigWarning, match="last mask update at step 40") as record:
        pruning_from_config(
            "end_pruning_step=45,sparsity_function_begin_step=42,sparsity_function_end_step=100"
        )
    assert "never target_sparsity" in str(record[0].message)
    assert not warnings_of(
        lambda: pruning_from_config(
            "end_pruning_step=45,sparsity_function_begin_step=39,sparsity_function_end_step=100"
        )
    )


@pytest.mark.parametrize(
    "hparams",
    [
        "",
        "name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,"
        "target_sparsity=0.9,sparsity_function_begin_step=10000,sparsity_function_end_step=100000",
        # The curve ends exactly at the first update: a deliberate one-shot prune.
        "pruning_frequency=1,sparsity_function_end_step=1",
        # A constant sparsity needs no ramp.
        "begin_pruning_step=500,initial_sparsity=0.5,target_sparsity=0.5",
        "begin_pruning_step=5,end_pruning_step=40,pruning_frequency=10,sparsity_function_end_step=40",
    ],
)
def test_windows_that_fit_do_not_warn(hparams):
    assert warnings_of(lambda: pruning_from_config(hparams)) == []


def test_first_update_step_against_the_rule():
    rng = np.random.default_rng(1)
    for _ in range(50):
        begin = int(rng.integers(0, 30))
        end = int(rng.choice([-1, begin + int(rng.integers(1, 30))]))
        frequency = int(rng.integers(1, 20))
        config = PruningConfig(
            begin_pruning_step=begin, end_pruning_step=end, pruning_frequency=frequency
        )
        fired = [t for t in range(80) if t >= begin and (end == -1 or t <= end) and t >= frequency]
        assert first_update_step(config) == (fired[0] if fired else None)


# ----- int32 ranges -----

STEP_FIELDS = {
    "begin_pruning_step": "[0, 2147483647]",
    "end_pruning_step": "-1 or [1, 2147483647]",
    "pruning_frequency": "[1, 2147483647]",
    "nbins": "[1, 2147483647]",
    "block_height": "-1 or [1, 2147483647]",
    "block_width": "-1 or [1, 2147483647]",
    "sparsity_function_begin_step": "[0, 2147483646]",
    "sparsity_function_end_step": "[1, 2147483647]",
}


@pytest.mark.parametrize("field, allowed", list(STEP_FIELDS.items()))
@pytest.mark.parametrize("value", [2**31, -(2**31), 2**63])
def test_int_fields_outside_int32_are_rejected(field, allowed, value):
    message = f"{field} must fit in an int32: it must be in {allowed}, got {value}"
    with pytest.raises(ValueError, match=re.escape(message)):
        PruningConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field} must fit in an int32"):
        PruningConfig.parse(f"{field}={value}")


def test_largest_int32_steps_are_accepted():
    config = PruningConfig(
        begin_pruning_step=INT32_MAX - 1,
        end_pruning_step=INT32_MAX,
        pruning_frequency=INT32_MAX,
        sparsity_function_begin_step=INT32_MAX - 1,
        sparsity_function_end_step=INT32_MAX,
    )
    assert first_update_step(config) == INT32_MAX
    with pytest.raises(ValueError, match=r"block_dims_map\['d'\] must fit in an int32"):
        PruningConfig(block_dims_map={"d": (2**31, 4)})
    with pytest.raises(ValueError, match="nbins must fit in an int32"):
        PruningConfig.parse("nbins=" + "9" * 5000)


# ----- TensorFlow names in map regexes -----


def tf_params():
    return {
        "params": {
            "conv1": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
            "Dense_0": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones(4)},
            "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
        }
    }


@pytest.mark.parametrize(
    "hparams, prune, hint",
    [
        (
            "weight_sparsity_map=[conv1/weights:0.5]",
            None,
            r"\('weights' -> 'kernel'\): 'conv1/kernel' would match \['params/conv1/kernel'\]",
        ),
        (
            "block_dims_map=[Dense_0/weights:2x2]",
            None,
            r"'Dense_0/kernel' would match \['params/Dense_0/kernel'\]",
        ),
        ("weight_sparsity_map=[dense_0:0.5]", None, r"Ignoring case it matches \['params/Dense_0"),
        ("", "conv1/biases", r"\('biases' -> 'bias'\): 'conv1/bias' would match"),
        ("", "gamma", r"\('gamma' -> 'scale'\): 'scale' would match \['params/BatchNorm_0/scale'"),
    ],
)
def test_tensorflow_names_are_translated_in_errors(hparams, prune, hint):
    tx = pruning_from_config(hparams, prune=prune)
    with pytest.raises(ValueError, match="matches no (pruned )?leaf") as e:
        tx.init(tf_params())
    assert re.search(hint, str(e.value)), str(e.value)


def test_no_hint_without_a_tensorflow_name():
    with pytest.raises(ValueError, match="matches no pruned leaf") as e:
        pruning_from_config("weight_sparsity_map=[conv9:0.5]").init(tf_params())
    assert "TensorFlow" not in str(e.value) and "Ignoring case" not in str(e.value)


# ----- fuzzing PruningConfig.parse: only ValueError -----

VALID = [
    "name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,target_sparsity=0.9,"
    "sparsity_function_begin_step=10000,sparsity_function_end_step=100000",
    "weight_sparsity_map=[conv1:0.8,dense.*kernel:0.9],block_dims_map=[dense1:4x4,d2:-1x16]",
    "use_tpu=true,threshold=topk,block_pooling_function=MAX,nbins=64,threshold_decay=0.5",
]
PIECES = list("=,[]:x.-+ e()|*?{}\\\t0159") + ["nan", "inf", "1e400", "9" * 30, "(" * 500]


def parse_only_value_errors(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from re (e.g. FutureWarning) is a failure
        try:
            PruningConfig.parse(text)
        except ValueError:
            pass


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_random_strings(text):
    parse_only_value_errors(text)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.floats(0, 1, exclude_max=True),
            st.one_of(st.sampled_from(PIECES), st.text(min_size=1, max_size=3)),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_fuzz_mutations_of_valid_strings(base, edits):
    text = base
    for op, where, piece in edits:
        i = int(where * len(text))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + len(piece) :]
        else:
            text = text[:i] + piece + text[i + len(piece) :]
    parse_only_value_errors(text)


@pytest.mark.parametrize(
    "text",
    [
        "weight_sparsity_map=[" + "(" * 2000 + "a" + ")" * 2000 + ":0.5]",  # RecursionError
        "weight_sparsity_map=[a{99999999999}:0.5]",  # OverflowError
        "block_dims_map=[a{4294967296}:2x2]",
        "nbins=" + "9" * 5000,  # Python's int digit limit
        "end_pruning_step=" + "0" * 30 + "5",
    ],
)
def test_parse_regressions(text):
    parse_only_value_errors(text)
