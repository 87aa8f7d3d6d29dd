"""benchmarks/results.py: its data path, argument errors and resumable JSON (no real training)."""

import gzip
import json
import os
import struct
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import results  # noqa: E402
import results_train as rt  # noqa: E402

FILES = {
    "train-images-idx3-ubyte": (3, (16, 28, 28)),
    "train-labels-idx1-ubyte": (1, (16,)),
    "t10k-images-idx3-ubyte": (3, (8, 28, 28)),
    "t10k-labels-idx1-ubyte": (1, (8,)),
}


def write_idx(root, truncate=None):
    """Tiny gzipped idx files, header written by hand with struct."""
    rng = np.random.default_rng(0)
    for name, (ndim, shape) in FILES.items():
        high = 256 if ndim == 3 else 10
        data = rng.integers(0, high, shape).astype(np.uint8)
        payload = struct.pack(">BBBB", 0, 0, 8, ndim) + struct.pack(f">{ndim}I", *shape)
        payload += data.tobytes()
        if name == truncate:
            payload = payload[:-5]
        with gzip.open(os.path.join(root, name + ".gz"), "wb") as f:
            f.write(payload)
    return str(root)


def base_args(tmp_path, data_root):
    return [
        "--budget", "tiny", "--models", "mlp", "--data-root", data_root,
        "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "R.md"),
        "--plots", str(tmp_path), "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to train or prune fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(results, "run_row", fail)
    monkeypatch.setattr(rt, "train", fail)


def test_load_data_through_results(tmp_path):
    data = results.load_data(write_idx(tmp_path), "tiny")
    assert data.x_train.shape == (16, 28, 28, 1) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (8, 28, 28, 1) and data.y_test.shape == (8,)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.y_train.dtype == np.int32 and data.y_train.max() < 10


def test_missing_file_fails_before_training(tmp_path, no_training):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        results.main(base_args(tmp_path, str(tmp_path)) + ["--only", "dense"])
    assert not (tmp_path / "r.json").exists()


def test_corrupted_file_fails_before_training(tmp_path, no_training):
    root = write_idx(tmp_path, truncate="t10k-images-idx3-ubyte")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        results.main(base_args(tmp_path, root) + ["--only", "dense"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "lottery"], "unknown method 'lottery'"),
        (["--sparsity", "1.0"], r"in \[0, 1\)"),
        (["--sparsity", "-0.1"], r"in \[0, 1\)"),
        (["--models", "resnet"], "unknown model"),
        (["--only", "no-such-row"], "matches no row"),
    ],
)
def test_argument_errors(tmp_path, no_training, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        results.main(base_args(tmp_path, str(tmp_path)) + extra)
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_corrupted_json_fails_before_training(tmp_path, no_training):
    root = write_idx(tmp_path)
    (tmp_path / "r.json").write_text('{"rows": [')
    with pytest.raises(json.JSONDecodeError):
        results.main(base_args(tmp_path, root) + ["--only", "dense"])


def fake_outcome(*args, **kwargs):
    return rt.Outcome([80.0], [0.0], [1000.0], 1.5)


def test_resume_skips_present_rows_and_runs_others(tmp_path, monkeypatch):
    root = write_idx(tmp_path)
    calls = []

    def hook(model_name, row, *args):
        calls.append(f"{model_name}/{row['name']}")
        return fake_outcome()

    monkeypatch.setattr(results, "run_row", hook)
    args = base_args(tmp_path, root) + ["--only", "dense", "--only", "gm-layer-90"]
    assert results.main(args) == 0
    assert calls == ["mlp/dense", "mlp/gm-layer-90"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["rows"]) == {"tiny/mlp/dense", "tiny/mlp/gm-layer-90"}
    assert saved["rows"]["tiny/mlp/dense"]["accuracy"]["mean"] == 80.0
    assert "| `gm-layer-90` |" in (tmp_path / "R.md").read_text()

    # Present rows with the same config are skipped; a changed config is recomputed.
    calls.clear()
    saved["rows"]["tiny/mlp/gm-layer-90"]["config"]["budget"]["learning_rate"] = 0.5
    (tmp_path / "r.json").write_text(json.dumps(saved))
    assert results.main(args) == 0
    assert calls == ["mlp/gm-layer-90"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_save_results_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    results.save_results(path, {"rows": {"a": 1}})
    with pytest.raises(TypeError):
        results.save_results(path, {"rows": {"a": object()}})
    assert json.loads(path.read_text()) == {"rows": {"a": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_row_names_are_unique_and_cover_the_methods():
    names = [r["name"] for r in results.all_rows()]
    assert len(names) == len(set(names))
    assert {r["method"] for r in results.all_rows()} == set(results.METHODS)
    assert set(results.QUICK_ROWS) <= set(names)


def test_legacy_hparams_scaled():
    s = rt.legacy_hparams(1200, results.TF_CIFAR10_HPARAMS)
    assert "begin_pruning_step=100," in s and "sparsity_function_end_step=1000" in s
    assert "target_sparsity=0.9" in s
