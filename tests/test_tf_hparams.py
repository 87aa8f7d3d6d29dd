"""examples/tf_hparams.py: TensorFlow's cifar10 pruning flag, run through jaxprune."""

import importlib.util
import re
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tf_hparams.py"
TINY = (
    "name=tiny,begin_pruning_step=10,end_pruning_step=30,pruning_frequency=5,"
    "target_sparsity=0.8,sparsity_function_begin_step=10,sparsity_function_end_step=30,"
    "threshold_decay=0,weight_sparsity_map=[conv1:0.4]"
)


@pytest.fixture(scope="module")
def example():
    # examples/ is not a package: load the script as a module, without running its __main__.
    spec = importlib.util.spec_from_file_location("examples_tf_hparams", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_the_hparams_string(example, capsys):
    assert example.main([f"--pruning_hparams={TINY}", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "pruning hparams: name=tiny,begin_pruning_step=10,end_pruning_step=30," in out
    assert "parsed config:   PruningConfig(name='tiny'" in out
    # The legacy rule: every 5 steps from step 10 (last_update starts at 0) to 30 inclusive.
    assert "5 mask updates, at steps 10, 15, 20, 25, 30" in out
    assert "all exactly 0.0: True" in out
    assert re.search(r"test accuracy: before pruning \d+\.\d\d%  final \d+\.\d\d%", out)
    rows = dict(re.findall(r"^params/(\w+)/kernel .* (\d+\.\d\d)%$", out, flags=re.MULTILINE))
    assert set(rows) == {"conv1", "conv2", "local3", "local4", "softmax_linear"}
    # The histogram threshold cuts at the start of a bin: at or a little below the target.
    assert 25.0 < float(rows["conv1"]) <= 40.0  # weight_sparsity_map: 0.8 * 0.4 / 0.8
    for name in ("conv2", "local3", "local4", "softmax_linear"):
        assert 70.0 < float(rows[name]) <= 80.0


def test_bad_hparams_are_a_usage_error(example, capsys):
    with pytest.raises(SystemExit) as e:
        example.parse_args(["--pruning_hparams=begin_pruning_step=10,end_pruning_step=5"])
    assert e.value.code == 2
    assert "Pruning must begin before it can end" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--pruning_hparams=sparsity=0.5"])


def test_default_is_the_readme_recipe_scaled_down(example):
    config = example.parse_args([]).config
    assert config.name == "cifar10_pruning" and config.target_sparsity == 0.9
    assert (config.begin_pruning_step, config.end_pruning_step) == (100, 1000)
    assert (config.sparsity_function_begin_step, config.sparsity_function_end_step) == (100, 1000)
