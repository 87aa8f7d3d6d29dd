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


# ----------------------------------------------------------------------------- Fisher, compaction


def random_dense(model_name, seeds=(0,)):
    """Stacked random params of the plain model, made with numpy (nothing compiled)."""
    import jax

    model = rt.MODELS[model_name]()
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    rng = np.random.default_rng(0)

    def draw(a):
        fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 1
        return (rng.standard_normal((len(seeds), *a.shape)) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(draw, shapes["params"])


@pytest.fixture
def fast_structural(monkeypatch):
    """Short Fisher runs and latency loops; a random 'trained' dense model (no training)."""
    monkeypatch.setattr(rt, "FISHER_BURN_IN", 2)
    monkeypatch.setattr(rt, "FISHER_FREQUENCY", 1)
    monkeypatch.setattr(rt, "FISHER_CHUNK", 16)
    monkeypatch.setattr(rt, "LATENCY_REPEATS", 2)
    monkeypatch.setattr(rt, "LATENCY_WARMUP", 1)
    monkeypatch.setattr(results, "dense_params", lambda name, *args: random_dense(name))


def test_fisher_rows_prune_to_every_level(tmp_path, fast_structural):
    root = write_idx(tmp_path)
    args = base_args(tmp_path, root) + ["--only", "fisher-ratio-*"]
    assert results.main(args) == 0
    saved = json.loads((tmp_path / "r.json").read_text())["rows"]
    names = [f"tiny/mlp/fisher-ratio-{round(100 * lv)}" for lv in rt.FISHER_LEVELS]
    assert sorted(saved) == sorted(names)
    rows = [saved[n] for n in names]
    for level, row in zip(rt.FISHER_LEVELS, rows, strict=True):
        extra = row["extra"]
        assert row["config"]["fisher"]["frequency"] == 1
        assert extra["reached_at_step"][0] is not None
        assert level - 0.05 < extra["channel_flops"][0] <= level
        # the folded weights' FLOPs follow the channel masks' count
        assert abs(row["flops"]["mean"] / 533210 - level) < 0.05
    flops = [r["flops"]["mean"] for r in rows]
    steps = [r["extra"]["reached_at_step"][0] for r in rows]
    sparsity = [r["sparsity"]["mean"] for r in rows]
    seconds = [r["seconds"] for r in rows]
    assert flops == sorted(flops, reverse=True) and steps == sorted(steps)
    assert sparsity == sorted(sparsity) and seconds == sorted(seconds)
    md = (tmp_path / "R.md").read_text()
    assert "| `fisher-ratio-30` | Fisher, FLOP-aware (signal ÷ FLOPs) | 30% FLOPs |" in md
    assert "results_flops_mlp.png" in md and (tmp_path / "results_flops_mlp.png").exists()


def test_compact_row_halves_the_hidden_layers(tmp_path, fast_structural):
    root = write_idx(tmp_path)
    assert results.main(base_args(tmp_path, root) + ["--only", "mlp/compact-*"]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["rows"]["tiny/mlp/compact-l2-50"]
    extra = row["extra"]
    assert extra["shapes"]["Dense_0/kernel"] == [784, 150]
    assert extra["shapes"]["Dense_1/kernel"] == [150, 50]
    assert extra["shapes"]["Dense_2/kernel"] == [50, 10]
    assert extra["params_dense"] == 266610 and extra["params_compact"] == 125810
    assert row["flops"]["mean"] < 0.5 * extra["flops_dense"]
    assert 0.5 < row["sparsity"]["mean"] < 0.55  # kernel weights removed
    assert extra["latency"]["dense_ms"] > 0 and extra["latency"]["compact_ms"] > 0
    md = (tmp_path / "R.md").read_text()
    assert "| parameters | 266,610 | 125,810 | 0.472 |" in md


def test_fold_channel_masks_computes_the_masked_cnn():
    """Removed channels zeroed in their groups: the plain CNN equals the masked one."""
    import jax
    import jax.numpy as jnp

    params = jax.tree.map(lambda a: a[0], random_dense("cnn"))
    rng = np.random.default_rng(1)
    sizes = (6, 16, 120, 84)
    masks = {
        f"ChannelMask_{k}": {"mask": (rng.random(c) < 0.6).astype(np.float32)}
        for k, c in enumerate(sizes)
    }
    folded, weight_masks = rt.fold_channel_masks(
        "cnn", params, masks, rt._groups_by_layer("cnn", params)
    )
    # PatchConv_1's removed channels also zero their rows of the flattened Dense_0 kernel
    dropped = np.flatnonzero(masks["ChannelMask_1"]["mask"] == 0)
    assert not folded["Dense_0"]["kernel"].reshape(25, 16, 120)[:, dropped].any()
    x = jnp.asarray(rng.random((2, 28, 28, 1)), jnp.float32)
    plain = rt.CNN().apply({"params": folded}, x)
    masked = rt.CNN(masked=True).apply({"params": params, "channel_masks": masks}, x)
    np.testing.assert_allclose(plain, masked, rtol=1e-5, atol=1e-5)


def test_dst_interval_leaves_steps_between_updates():
    assert rt.dst_interval(117) == (25, 87)  # quick CNN: updates at 25, 50, 75
    assert rt.dst_interval(468) == (25, 351)  # quick MLP: 14 updates
    assert rt.dst_interval(10000) == (100, 7500)  # 1% of the steps once that is longer
    assert rt.dst_interval(10) == (25, 26)  # shorter than the interval: no update
    rigl = next(r for r in results.all_rows() if r["method"] == "rigl")
    assert results.method_settings(rigl, 468) == {"update_every": 25, "end_step": 351}


def test_structural_rows_listed_and_bad_names_refused(tmp_path, capsys):
    assert results.main(["--list", "--only", "cnn/fisher-*", "--only", "*/compact-*"]) == 0
    listed = capsys.readouterr().out.split()
    assert "cnn/fisher-b0-90" in listed and "cnn/fisher-ratio-30" in listed
    assert "mlp/compact-l2-50" in listed and "cnn/compact-l2-50" in listed
    with pytest.raises(SystemExit) as e:
        results.main(["--list", "--only", "cnn/fisher-beta-20"])
    assert e.value.code == 2 and "matches no row" in capsys.readouterr().err


def test_new_row_kinds_listed_for_their_models(capsys):
    assert results.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    for model in ("mlp", "cnn"):
        assert f"{model}/fisher-beta-90" in listed and f"{model}/fisher-beta-30" in listed
        # the control comes after every Fisher row of its model: it reads their step counts
        fisher = [i for i, n in enumerate(listed) if n.startswith(f"{model}/fisher-")]
        assert listed.index(f"{model}/dense-long") > max(fisher)
    all_kernels = [n for n in listed if "-all-" in n]
    assert len(all_kernels) == 6 and all(n.startswith("cnn/oneshot-") for n in all_kernels)
    assert "cnn/oneshot-sparsegpt-all-50-ft" in all_kernels
    assert not any("-all-2:4" in n for n in listed)
    # the rows recorded before keep their configuration: no new key in their row dicts
    old = next(r for r in results.all_rows() if r["name"] == "oneshot-wanda-50")
    assert "layers" not in old and "models" not in old
    b0 = next(r for r in results.all_rows() if r["name"] == "fisher-b0-90")
    assert b0 == {
        "name": "fisher-b0-90",
        "group": "Fisher pruning",
        "method": "fisher",
        "rule": "b0",
        "criterion": "difference",
        "beta": 0.0,
        "flops_kept": 0.9,
    }


def test_fisher_beta_rows_and_their_dense_control(tmp_path, fast_structural):
    """fisher-beta-*: a beta > 0 per seed; dense-long: as many steps as the longest one."""
    root = write_idx(tmp_path)
    args = base_args(tmp_path, root) + ["--only", "fisher-beta-*", "--only", "dense-long"]
    assert results.main(args) == 0
    saved = json.loads((tmp_path / "r.json").read_text())["rows"]
    names = [f"tiny/mlp/fisher-beta-{round(100 * lv)}" for lv in rt.FISHER_LEVELS]
    assert sorted(saved) == sorted(names + ["tiny/mlp/dense-long"])
    for level, name in zip(rt.FISHER_LEVELS, names, strict=True):
        row = saved[name]
        assert row["config"]["row"]["beta_rule"] == "signal-per-flop"
        (beta,) = row["extra"]["beta"]  # one seed
        assert 0 < beta < float("inf")
        assert row["extra"]["reached_at_step"][0] is not None
        assert level - 0.05 < row["extra"]["channel_flops"][0] <= level
    # Once more, by hand: the network's signal per FLOP from the same signals.
    signals = {"a": np.array([1.0, 3.0]), "b": np.array([2.0])}
    grads = {"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 1), np.float32)}
    got = rt.fisher_beta(signals, grads, total_cost=12.0)
    assert abs(float(got) - rt.FISHER_DECAY * 6.0 / 12.0) < 1e-6

    control = saved["tiny/mlp/dense-long"]
    longest = max(saved[n]["extra"]["reached_at_step"][0] for n in names)
    info = control["config"]["dense_long"]
    assert info["longest_fisher_row"] == "fisher-beta-30"
    assert info["pruning_steps"] == longest
    assert info["steps"] == control["config"]["steps"] + longest + info["finetune_steps"]
    assert control["flops"]["mean"] == 533210 and control["sparsity"]["mean"] == 0
    md = (tmp_path / "R.md").read_text()
    assert (
        f"| `dense-long` | dense, as many steps as the longest Fisher row | {info['steps']} " in md
    )
    assert "| `fisher-beta-50` | Fisher, signal − β·FLOPs" in md
    assert "β of the `fisher-beta-*` rows, per seed" in md

    # Resumed with nothing changed, nothing is trained again.
    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(results, "run_row", fail)
        assert results.main(args) == 0


def test_dense_long_needs_the_fisher_rows(tmp_path, no_training):
    root = write_idx(tmp_path)
    with pytest.raises(RuntimeError, match=r"run --only 'mlp/fisher-\*' first"):
        results.main(base_args(tmp_path, root) + ["--only", "dense-long"])


# ----------------------------------------------------------------------------- one-shot, all


def test_cnn_xla_conv_is_the_same_function_and_params():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).random((2, 28, 28, 1)), jnp.float32)
    params = rt.CNN().init(jax.random.key(0), x)["params"]
    xla = rt.CNN(xla_conv=True)
    assert jax.tree.structure(xla.init(jax.random.key(0), x)["params"]) == jax.tree.structure(
        params
    )
    np.testing.assert_allclose(
        xla.apply({"params": params}, x), rt.CNN().apply({"params": params}, x), atol=1e-5
    )


def test_oneshot_all_kernel_rows_prune_the_convolutions(tmp_path, fast_structural):
    root = write_idx(tmp_path)
    args = base_args(tmp_path, root) + ["--models", "cnn"]
    args += ["--only", "oneshot-magnitude-all-50-ft", "--only", "oneshot-magnitude-50"]
    assert results.main(args) == 0
    saved = json.loads((tmp_path / "r.json").read_text())["rows"]
    dense_only, every = (
        saved["tiny/cnn/oneshot-magnitude-50"],
        saved["tiny/cnn/oneshot-magnitude-all-50-ft"],
    )
    assert every["config"]["row"]["layers"] == "all"
    # 50% of every kernel (the dense-only row leaves the conv kernels' 2,550 weights dense)
    assert abs(every["sparsity"]["mean"] - 0.5) < 1e-9
    assert abs(dense_only["sparsity"]["mean"] - 0.5 * 58920 / 61470) < 1e-9
    # the conv layers hold most of the FLOPs: pruning them halves the count
    assert every["flops"]["mean"] < 0.55 * 850795 < dense_only["flops"]["mean"]
    md = (tmp_path / "R.md").read_text()
    assert (
        "| `oneshot-magnitude-all-50-ft` | magnitude 50%, conv + dense kernels + fine-tune |" in md
    )


def test_two_four_does_not_apply_to_the_cnn_convolutions():
    """N:M groups run along a kernel's kh*kw*cin inputs: 25 and 150 here, not multiples of 4."""
    import jax
    import jax.numpy as jnp

    import jaxprune as jp

    x = jnp.zeros((4, 28, 28, 1), jnp.float32)
    model = rt.CNN(xla_conv=True)
    params = model.init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match=r"m=4 must divide the 25 inputs of .*PatchConv_0"):
        jp.prune_oneshot(
            lambda p, b: model.apply({"params": p}, b), params, [x], method="magnitude", n_m=(2, 4)
        )
