"""The examples run end to end and keep their promises."""

import importlib.util
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    # examples/ is not a package: load the script as a module, without running its __main__.
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    return _load("digits")


def test_digits_demo_prunes_to_90_percent(digits, tmp_path, capsys):
    out = tmp_path / "digits"
    assert digits.main(["--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out

    assert f"writing to {out}/" in stdout
    assert (out / "digits_pruning.png").stat().st_size > 10_000
    assert "kernel sparsity:     90.00% (target 90%)" in stdout
    assert "all exactly 0.0: True" in stdout
    # Every kernel row of the sparsity table is at 90%, up to the rounding of n * (1 - s).
    kernel_rows = re.findall(r"^\S+/kernel .* (\d+\.\d\d)%$", stdout, flags=re.MULTILINE)
    assert len(kernel_rows) == 4
    assert all(abs(float(s) - 90.0) < 0.5 for s in kernel_rows)
    dense, pruned = map(float, re.search(r"dense (\S+)%  pruned (\S+)%", stdout).groups())
    assert dense > 90.0
    assert pruned > dense - 5.0


def test_digits_check_fails_visibly(digits):
    assert digits.check(dense_acc=97.0, pruned_acc=96.0, sparsity=0.9) == []
    assert len(digits.check(dense_acc=97.0, pruned_acc=96.0, sparsity=0.8)) == 1
    assert len(digits.check(dense_acc=97.0, pruned_acc=90.0, sparsity=0.9)) == 1


def test_digits_rejects_too_few_steps(digits):
    with pytest.raises(SystemExit):
        digits.parse_args(["--steps", "10"])


def test_fisher_digits_reaches_its_flops_target(tmp_path, capsys):
    fisher = _load("fisher_digits")
    out = tmp_path / "fisher"
    argv = ["--dense-steps", "150", "--frequency", "2", "--burn-in", "5", "--target", "0.8"]
    assert fisher.main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert list(out.glob("*.png"))
    # In the final table, every rule's row reports FLOPs at or under the 80% target.
    final = stdout.split("At the end:")[1].split("plot:")[0]
    rows = re.findall(r"^  (\S.*?)\s+(\d+\.\d)%\s+(\d+\.\d\d)%\s+(\d+)\s", final, re.M)
    assert len(rows) == 2, final
    assert all(float(flops) <= 80.0 for _, flops, _, _ in rows), final


def test_compact_cnn_gives_a_smaller_model_with_the_same_outputs(capsys):
    compact_cnn = _load("compact_cnn")
    assert compact_cnn.main(["--quick"]) == 0
    stdout = capsys.readouterr().out
    assert "compacted outputs equal the masked model's: True" in stdout
    ratios = {
        name: float(ratio)
        for name, ratio in re.findall(r"^(parameters|FLOPs) .*?(\d+\.\d\d)$", stdout, re.M)
    }
    assert set(ratios) == {"parameters", "FLOPs"}, stdout
    # Half the channels of every group go: each pruned kernel keeps about a quarter.
    assert ratios["parameters"] < 0.4 and ratios["FLOPs"] < 0.4, ratios


def test_compact_cnn_ranks_channels_by_fisher_signals(capsys):
    compact_cnn = _load("compact_cnn")
    assert compact_cnn.main(["--quick", "--criterion", "fisher"]) == 0
    stdout = capsys.readouterr().out
    assert "channels ranked by fisher" in stdout
    assert "compacted outputs equal the masked model's: True" in stdout


def test_compact_transformer_removes_half_the_heads_and_units(capsys):
    compact_transformer = _load("compact_transformer")
    assert compact_transformer.main(["--quick"]) == 0
    stdout = capsys.readouterr().out
    assert "compacted outputs equal the masked model's: True" in stdout
    assert "block0 keeps 2 of 4 heads, 128 of 256 MLP units" in stdout
    # The residual stream is reported, with the reason, not silently left out.
    assert re.search(r"not prunable, \d+ axes \(reduced over by reduce_sum", stdout), stdout
    ratios = {
        name: float(ratio)
        for name, ratio in re.findall(r"^(parameters|FLOPs) .*?(\d+\.\d\d)$", stdout, re.M)
    }
    assert set(ratios) == {"parameters", "FLOPs"}, stdout
    # Half the heads and units of each block: about half the parameters and the FLOPs (the
    # embedding, the norms and the classifier stay).
    assert 0.45 < ratios["parameters"] < 0.6 and 0.45 < ratios["FLOPs"] < 0.6, ratios


def test_compact_transformer_rejects_a_bad_sparsity(capsys):
    compact_transformer = _load("compact_transformer")
    with pytest.raises(SystemExit):
        compact_transformer.main(["--quick", "--sparsity", "1.0"])
    assert "--sparsity must be in [0, 1)" in capsys.readouterr().err
