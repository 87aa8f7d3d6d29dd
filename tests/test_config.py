"""PruningConfig: TensorFlow's model_pruning hyperparameters, their string form and validation."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src.config import PruningConfig

CIFAR10 = (
    "name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,target_sparsity=0.9,"
    "sparsity_function_begin_step=10000,sparsity_function_end_step=100000"
)


def test_defaults_are_the_hparams_table():
    # The table of the contrib README, field by field, plus jaxprune's threshold choice.
    expected = {
        "name": "model_pruning",
        "begin_pruning_step": 0,
        "end_pruning_step": -1,
        "weight_sparsity_map": (),
        "block_dims_map": (),
        "threshold_decay": 0.9,
        "pruning_frequency": 10,
        "nbins": 256,
        "block_height": 1,
        "block_width": 1,
        "block_pooling_function": "AVG",
        "initial_sparsity": 0.0,
        "target_sparsity": 0.5,
        "sparsity_function_begin_step": 0,
        "sparsity_function_end_step": 100,
        "sparsity_function_exponent": 3.0,
        "use_tpu": False,
        "threshold": "histogram",
    }
    assert dataclasses.asdict(PruningConfig()) == expected
    assert PruningConfig.parse("") == PruningConfig()
    assert PruningConfig.parse("  ") == PruningConfig()


def test_parse_the_cifar10_command_line():
    config = PruningConfig.parse(CIFAR10)
    assert config == PruningConfig(
        name="cifar10_pruning",
        begin_pruning_step=10000,
        end_pruning_step=100000,
        target_sparsity=0.9,
        sparsity_function_begin_step=10000,
        sparsity_function_end_step=100000,
    )
    assert config.format(only_changed=True) == CIFAR10
    assert PruningConfig.parse(str(config)) == config


def test_parse_lists_commas_inside_brackets_belong_to_the_list():
    config = PruningConfig.parse(
        "weight_sparsity_map=[conv1:0.8,dense.*kernel:0.9],target_sparsity=0.95,"
        "block_dims_map=[dense1:4x4,dense2:1x16,dense3:-1x1]"
    )
    assert config.weight_sparsity_map == (("conv1", 0.8), ("dense.*kernel", 0.9))
    assert config.block_dims_map == (("dense1", (4, 4)), ("dense2", (1, 16)), ("dense3", (-1, 1)))
    assert config.target_sparsity == 0.95
    # As tf.HParams: entries may be separated by spaces too, empty entries are dropped, and
    # spaces around values are ignored.
    spaced = PruningConfig.parse(
        " weight_sparsity_map = [conv1:0.8, dense.*kernel:0.9 ,] , target_sparsity=0.95 ,"
        "block_dims_map=[dense1:4x4 dense2:1x16,,dense3:-1x1],"
    )
    assert spaced == config
    assert PruningConfig.parse("weight_sparsity_map=[]") == PruningConfig()


def test_maps_accept_mappings_pairs_and_tf_strings():
    a = PruningConfig(weight_sparsity_map={"conv1": 0.8}, block_dims_map={"dense": (2, 4)})
    b = PruningConfig(weight_sparsity_map=[("conv1", 0.8)], block_dims_map=[("dense", [2, 4])])
    c = PruningConfig(weight_sparsity_map=["conv1:0.8", ""], block_dims_map=["dense:2x4"])
    assert a == b == c
    assert hash(a) == hash(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.nbins = 3


def test_booleans_and_numbers():
    assert PruningConfig.parse("use_tpu=true").use_tpu is True
    assert PruningConfig.parse("use_tpu=False").use_tpu is False
    assert PruningConfig.parse("use_tpu=1").use_tpu is True
    config = PruningConfig.parse("threshold_decay=0,sparsity_function_exponent=1e0")
    assert config.threshold_decay == 0.0 and isinstance(config.threshold_decay, float)
    assert config.sparsity_function_exponent == 1.0
    assert PruningConfig.parse("threshold=topk").threshold == "topk"


@pytest.mark.parametrize(
    "hparams, message",
    [
        ("begin_pruning_step=-1", "Illegal value for begin_pruning_step"),
        (
            "begin_pruning_step=100,end_pruning_step=50",
            "Pruning must begin before it can end: begin_pruning_step=100",
        ),
        # begin == end is rejected, unlike tfmot; so is any "forever" other than -1.
        ("begin_pruning_step=100,end_pruning_step=100", "Pruning must begin before it can end"),
        ("end_pruning_step=-2", "Pruning must begin before it can end"),
        ("sparsity_function_begin_step=-5", "Illegal value for sparsity_function_begin_step"),
        ("sparsity_function_end_step=0", "Sparsity function requires begin_step < end_step"),
        ("threshold_decay=1.0", r"threshold_decay must be in range \[0,1\)"),
        ("threshold_decay=-0.1", r"threshold_decay must be in range \[0,1\)"),
        ("initial_sparsity=1", r"initial_sparsity must be in range \[0,1\)"),
        ("target_sparsity=1.5", r"target_sparsity must be in range \[0,1\)"),
        ("target_sparsity=nan", r"target_sparsity must be in range \[0,1\)"),
        ("weight_sparsity_map=[conv1:1.0]", "Weight sparsity can not exceed 1.0"),
        ("weight_sparsity_map=[conv1:-0.5]", r"weight_sparsity_map\['conv1'\] must be in range"),
        ("weight_sparsity_map=[conv1:0.5],target_sparsity=0", "needs target_sparsity > 0"),
        ("weight_sparsity_map=[conv1]", "malformed weight_sparsity_map entry 'conv1'"),
        ("weight_sparsity_map=[a:b:0.5]", "malformed weight_sparsity_map entry"),
        ("weight_sparsity_map=[conv1:high]", "could not parse weight_sparsity_map entry"),
        ("weight_sparsity_map=[conv(:0.5]", "not a valid regular expression"),
        ("weight_sparsity_map=[a:0.5,a:0.6]", "has the regex 'a' twice"),
        ("block_dims_map=[dense:4]", "block_dims_map: Expected 2 values for block dim for dense"),
        ("block_dims_map=[dense:4x4x4]", "Expected 2 values"),
        ("block_dims_map=[dense:0x4]", r"block_dims_map\['dense'\] must be >= 1, or -1"),
        ("block_dims_map=[dense:-2x4]", "or -1 for the whole axis"),
        ("block_dims_map=[dense:ax4]", "could not parse block_dims_map entry 'dense'"),
        ("block_height=0", "block_height must be >= 1, or -1"),
        ("block_width=-3", "block_width must be >= 1, or -1"),
        ("block_pooling_function=MIN", "Unknown pooling function for block sparsity"),
        ("block_pooling_function=avg", "must be 'AVG' or 'MAX'"),
        ("pruning_frequency=0", "pruning_frequency must be >= 1"),
        ("nbins=0", "nbins must be >= 1"),
        ("sparsity_function_exponent=0", "sparsity_function_exponent must be"),
        ("sparsity_function_exponent=inf", "sparsity_function_exponent must be"),
        ("threshold=exact", "threshold must be one of"),
        ("end_pruning_step=3000000000", "end_pruning_step must fit in an int32"),
    ],
)
def test_legacy_validation(hparams, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig.parse(hparams)


@pytest.mark.parametrize(
    "hparams, message",
    [
        ("prune_option=weight", "unknown hyperparameter 'prune_option'"),
        ("begin_pruning_step=1.5", "could not parse begin_pruning_step: expected an int"),
        ("nbins=1e3", "could not parse nbins"),
        ("target_sparsity=high", "could not parse target_sparsity: expected a float"),
        ("use_tpu=yes", "could not parse use_tpu"),
        ("nbins=10,nbins=20", "multiple assignments to hyperparameter 'nbins'"),
        ("weight_sparsity_map=conv1:0.5", "could not parse weight_sparsity_map: it is a list"),
        ("nbins=[3]", "could not parse nbins: it takes one value"),
        ("name=a[b", "could not parse name: stray bracket"),
        ("weight_sparsity_map=[conv1:0.5", "unterminated list"),
        ("weight_sparsity_map=[conv1:0.5]x", "unexpected 'x' after its list"),
        ("target_sparsity", "malformed hyperparameter 'target_sparsity'"),
        ("9lives=1", "malformed hyperparameter name '9lives'"),
    ],
)
def test_parse_errors_name_the_hyperparameter(hparams, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig.parse(hparams)


def test_constructor_type_errors():
    with pytest.raises(TypeError, match="begin_pruning_step must be an int"):
        PruningConfig(begin_pruning_step="10")
    with pytest.raises(TypeError, match="nbins must be an int"):
        PruningConfig(nbins=True)
    with pytest.raises(TypeError, match="target_sparsity must be a float"):
        PruningConfig(target_sparsity="0.5")
    with pytest.raises(TypeError, match="use_tpu must be a bool"):
        PruningConfig(use_tpu="no")
    with pytest.raises(TypeError, match="weight_sparsity_map must be a mapping"):
        PruningConfig(weight_sparsity_map="conv1:0.5")
    with pytest.raises(TypeError, match="hparams must be a str"):
        PruningConfig.parse(None)


def test_values_that_cannot_be_written_in_the_string_are_rejected():
    with pytest.raises(ValueError, match="cannot be written in the hparams string"):
        PruningConfig(weight_sparsity_map={"Dense_[01]": 0.5})
    with pytest.raises(ValueError, match="cannot be written in the hparams string"):
        PruningConfig(block_dims_map={"a b": (2, 2)})
    with pytest.raises(ValueError, match="cannot be written in the hparams string"):
        PruningConfig(name="a,b")


# ----- the round trip -----

_REGEX = st.lists(
    st.text(st.sampled_from("AZaz09_/."), min_size=1, max_size=8), min_size=1, max_size=3
)
_FRACTION = st.floats(0.0, 1.0, exclude_max=True)
_STEP = st.integers(0, 2**31 - 2)
_DIM = st.one_of(st.just(-1), st.integers(1, 2**31 - 1))


@st.composite
def configs(draw):
    begin = draw(_STEP)
    sf_begin = draw(_STEP)
    target = draw(_FRACTION)
    return PruningConfig(
        name=draw(
            st.text(st.sampled_from("abcXYZ019_./-= "), max_size=12).filter(
                lambda s: s == s.strip()
            )
        ),
        begin_pruning_step=begin,
        end_pruning_step=draw(st.one_of(st.just(-1), st.integers(begin + 1, 2**31 - 1))),
        weight_sparsity_map=draw(
            st.dictionaries(_REGEX.map("|".join), _FRACTION, max_size=3 if target > 0 else 0)
        ),
        block_dims_map=draw(
            st.dictionaries(_REGEX.map("|".join), st.tuples(_DIM, _DIM), max_size=3)
        ),
        threshold_decay=draw(_FRACTION),
        pruning_frequency=draw(st.integers(1, 2**31 - 1)),
        nbins=draw(st.integers(1, 2**31 - 1)),
        block_height=draw(_DIM),
        block_width=draw(_DIM),
        block_pooling_function=draw(st.sampled_from(["AVG", "MAX"])),
        initial_sparsity=draw(_FRACTION),
        target_sparsity=target,
        sparsity_function_begin_step=sf_begin,
        sparsity_function_end_step=draw(st.integers(sf_begin + 1, 2**31 - 1)),
        sparsity_function_exponent=draw(
            st.floats(0.0, exclude_min=True, allow_infinity=False, allow_nan=False)
        ),
        use_tpu=draw(st.booleans()),
        threshold=draw(st.sampled_from(["histogram", "topk"])),
    )


@settings(max_examples=100, deadline=None)
@given(configs())
def test_parse_format_round_trip(config):
    assert PruningConfig.parse(str(config)) == config
    assert PruningConfig.parse(config.format(only_changed=True)) == config


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("abn_=,[]:x.0159- "), max_size=30))
def test_parse_raises_only_value_errors(text):
    try:
        PruningConfig.parse(text)
    except ValueError:
        pass


def test_parse_on_an_instance_starts_from_its_values():
    # As tf.HParams.parse on an hparams object that was changed before.
    base = PruningConfig(nbins=64, target_sparsity=0.8)
    config = base.parse("target_sparsity=0.9,pruning_frequency=5")
    assert (config.nbins, config.target_sparsity, config.pruning_frequency) == (64, 0.9, 5)
    assert base.target_sparsity == 0.8  # configs are immutable
    assert base.parse("") == base
    assert PruningConfig.parse("nbins=64").target_sparsity == 0.5
