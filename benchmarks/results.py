"""Results on real data: every jaxprune method on Fashion-MNIST, one table and one plot.

A LeNet-300-100 MLP and a LeNet-5-style CNN (Flax linen) on Fashion-MNIST (60,000 training and
10,000 test images), trained with the same seeds, budget (epochs, batch size, Adam learning
rate) and batches in the same order for every method; the seeds of a row run vmapped in one
compiled program. Each row gives the test accuracy (mean ± std over the seeds), the sparsity of
the kernels the forward pass uses, the forward FLOPs of one image with those zeros masked
(``jp.count_flops(..., weight_masks=)``), and the training time ÷ the dense model's.

Rows are resumable: a row already in ``--json`` for the same configuration is not trained
again, and the JSON is rewritten atomically after each row.

Usage::

    python benchmarks/results.py --quick           # a subset of rows, a short budget
    python benchmarks/results.py                   # every row, the full budget
    python benchmarks/results.py --only 'mlp/rigl-*' --only cnn/dense
    python benchmarks/results.py --list            # the row names

Fisher pruning rows (``fisher-<rule>-<FLOPs %>``) come four to a pruning run: one run per
rule and model prunes to every level of ``FLOPs kept``. ``dense-long`` trains the dense model
for as many steps as the longest Fisher row of the same model in ``--json`` (run the Fisher rows
first). Compaction rows (``compact-l2-50``) also record parameters and the measured latency of
the compacted model. ``oneshot-*-all-*`` rows (CNN only) prune the convolution kernels too.

Writes ``benchmarks/RESULTS.md`` (the table), ``benchmarks/results.json`` (every number),
``benchmarks/results_mlp.png`` / ``results_cnn.png`` (accuracy against sparsity) and
``results_flops_mlp.png`` / ``results_flops_cnn.png`` (Fisher pruning and compaction:
accuracy against the FLOPs kept).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_train as rt  # noqa: E402
from datasets import DEFAULT_ROOT, load_fashion_mnist  # noqa: E402

HERE = Path(__file__).resolve().parent
# TensorFlow's cifar10 pruning recipe (tf.contrib.model_pruning's README), as in
# examples/tf_hparams.py before its steps are divided by 100.
TF_CIFAR10_HPARAMS = (
    "name=cifar10_pruning,begin_pruning_step=10000,end_pruning_step=100000,target_sparsity=0.9,"
    "sparsity_function_begin_step=10000,sparsity_function_end_step=100000"
)
# Epochs per model (a fraction is rounded to whole steps); the rest is shared.
BUDGETS = {
    "full": {
        "epochs": {"mlp": 4, "cnn": 0.5},
        "batch_size": 128,
        "learning_rate": 1e-3,
        "seeds": (0, 1, 2),
    },
    "quick": {
        "epochs": {"mlp": 1, "cnn": 0.25},
        "batch_size": 128,
        "learning_rate": 1e-3,
        "seeds": (0, 1, 2),
    },
    # For tests: a tiny budget on tiny data.
    "tiny": {"epochs": {"mlp": 1, "cnn": 1}, "batch_size": 8, "learning_rate": 1e-3, "seeds": (0,)},
}
FINETUNE_FRACTION = 0.1  # one-shot fine-tune: a tenth of the training steps
METHODS = (
    "dense",
    "gradual",
    "legacy_tf",
    "random_pruning",
    "saliency",
    "movement",
    "magnitude_ste",
    "sr_ste",
    "static",
    "set",
    "rigl",
    "acdc",
    "oneshot",
    "fisher",
    "dense_long",
    "compact",
)
SPARSE_TRAINING = (
    ("random_pruning", {}),
    ("saliency", {"scope": "layer"}),
    ("saliency", {"scope": "global"}),
    ("movement", {}),
    ("magnitude_ste", {}),
    ("sr_ste", {}),
    ("static", {}),
    ("set", {}),
    ("rigl", {}),
    ("acdc", {}),
)
# Per-leaf targets (ERK) are taken by these; the others take one schedule for every leaf.
TAKES_DISTRIBUTION = {"gradual", "random_pruning", "static", "set", "rigl", "acdc"}
QUICK_ROWS = (
    "dense",
    "gm-layer-80",
    "gm-layer-90",
    "gm-global-90",
    "static-uniform-90",
    "set-uniform-90",
    "rigl-uniform-90",
    "oneshot-magnitude-50",
    "oneshot-wanda-50",
    "oneshot-sparsegpt-50",
    "oneshot-magnitude-all-50",
    "oneshot-wanda-all-50",
    "oneshot-sparsegpt-all-50",
    *(
        f"fisher-{rule}-{round(100 * lv)}"
        for rule in ("b0", "ratio", "beta")
        for lv in rt.FISHER_LEVELS
    ),
    "dense-long",
    "compact-l2-50",
)
# Fisher pruning's rules: the signal alone (beta = 0); the hyperparameter-free FLOP-aware rule
# that docs/fisher.md recommends, signal / FLOPs saved ("ratio"); and the paper's penalised
# rule, signal - beta * FLOPs saved, with each seed's beta set at its first pruning turn to the
# network's signal per FLOP, sum of signals / sum of marginal FLOPs (rt.fisher_beta).
FISHER_RULES = (
    ("b0", {"criterion": "difference", "beta": 0.0}),
    ("ratio", {"criterion": "ratio"}),
    ("beta", {"criterion": "difference", "beta_rule": "signal-per-flop"}),
)


def row_name(method: str, extra: dict, sparsity: float, dist: str) -> str:
    label = method if "scope" not in extra else f"{method}_{extra['scope']}"
    return f"{label}-{dist}-{round(100 * sparsity)}"


def all_rows() -> list[dict]:
    """Every row, in table order: ``{"name", "group", "method", ...}``.

    A row with ``"models"`` is run for those models only; the others for every model.
    """
    rows = [{"name": "dense", "group": "dense", "method": "dense"}]
    for scope in ("layer", "global"):
        for s in (0.5, 0.8, 0.9, 0.95):
            rows.append(
                {
                    "name": f"gm-{scope}-{round(100 * s)}",
                    "group": "gradual magnitude",
                    "method": "gradual",
                    "scope": scope,
                    "sparsity": s,
                }
            )
    for structure, s in (("block4x1", 0.8), ("nm24", 0.5), ("unit", 0.8)):
        rows.append(
            {
                "name": f"gm-{structure}-{round(100 * s)}",
                "group": "gradual magnitude, structured",
                "method": "gradual",
                "structure": structure,
                "sparsity": s,
            }
        )
    for s, dists in ((0.9, ("uniform", "erk")), (0.8, ("uniform",))):
        for dist in dists:
            if dist == "erk":  # the magnitude baseline for the ERK rows
                rows.append(
                    {
                        "name": f"gm-erk-{round(100 * s)}",
                        "group": "sparse training",
                        "method": "gradual",
                        "scope": "layer",
                        "distribution": "erk",
                        "sparsity": s,
                    }
                )
            for method, extra in SPARSE_TRAINING:
                if dist == "erk" and method not in TAKES_DISTRIBUTION:
                    continue
                rows.append(
                    {
                        "name": row_name(method, extra, s, dist),
                        "group": "sparse training",
                        "method": method,
                        "distribution": dist,
                        "sparsity": s,
                        **extra,
                    }
                )
    rows.append(
        {
            "name": "legacy-tf-cifar10",
            "group": "legacy pruning_from_config",
            "method": "legacy_tf",
            "hparams": TF_CIFAR10_HPARAMS,
            "sparsity": 0.9,
        }
    )
    for finetune in (False, True):
        for pattern in ("50", "2:4"):
            for criterion in ("magnitude", "wanda", "sparsegpt"):
                rows.append(
                    {
                        "name": f"oneshot-{criterion}-{pattern}" + ("-ft" if finetune else ""),
                        "group": "one-shot" + (" + fine-tune" if finetune else ""),
                        "method": "oneshot",
                        "criterion": criterion,
                        "pattern": pattern,
                        "sparsity": 0.5,
                        "finetune": finetune,
                    }
                )
    # The CNN's convolutions pruned too (the MLP has none: its rows above prune every kernel).
    # 2:4 does not apply to them: N:M groups run along a kernel's flattened inputs, kh*kw*cin
    # = 25 and 150 here, which 4 does not divide (prune_oneshot refuses them).
    for finetune in (False, True):
        for criterion in ("magnitude", "wanda", "sparsegpt"):
            rows.append(
                {
                    "name": f"oneshot-{criterion}-all-50" + ("-ft" if finetune else ""),
                    "group": "one-shot, all kernels" + (" + fine-tune" if finetune else ""),
                    "method": "oneshot",
                    "criterion": criterion,
                    "pattern": "50",
                    "sparsity": 0.5,
                    "finetune": finetune,
                    "layers": "all",
                    "models": ["cnn"],
                }
            )
    for rule, options in FISHER_RULES:
        for level in rt.FISHER_LEVELS:
            rows.append(
                {
                    "name": f"fisher-{rule}-{round(100 * level)}",
                    "group": "Fisher pruning",
                    "method": "fisher",
                    "rule": rule,
                    **options,
                    "flops_kept": level,
                }
            )
    # The control of the Fisher rows' extra training: dense, as many steps as the longest one.
    rows.append({"name": "dense-long", "group": "dense control", "method": "dense_long"})
    rows.append(
        {
            "name": "compact-l2-50",
            "group": "structural compaction",
            "method": "compact",
            "criterion": "l2",
            "sparsity": 0.5,  # of the channels of every dependency group
        }
    )
    return rows


def method_settings(row: dict, steps: int) -> dict:
    """The settings of a row's method that its numbers depend on, beyond the row and budget."""
    if row["method"] in ("set", "rigl"):
        update_every, end_step = rt.dst_interval(steps)
        return {"update_every": update_every, "end_step": end_step}
    if row["method"] == "fisher":
        return {
            "fisher": {
                "decay": rt.FISHER_DECAY,
                "burn_in": rt.FISHER_BURN_IN,
                "frequency": rt.FISHER_FREQUENCY,
                "levels": list(rt.FISHER_LEVELS),
            }
        }
    if row["method"] == "compact":
        return {"latency": {"batch": rt.LATENCY_BATCH, "repeats": rt.LATENCY_REPEATS}}
    return {}


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset of rows, a short budget")
    parser.add_argument("--budget", choices=sorted(BUDGETS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROWNAME",
        help="run only these rows: NAME, MODEL/NAME, with * wildcards (repeatable)",
    )
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated (default: mlp,cnn)")
    parser.add_argument("--method", action="append", default=[], help="only rows of this method")
    parser.add_argument("--sparsity", type=float, action="append", default=[])
    parser.add_argument("--data-root", default=DEFAULT_ROOT, help="the Fashion-MNIST idx files")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    parser.add_argument("--md", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--plots", type=Path, default=HERE, help="folder of the PNG plots")
    parser.add_argument("--cache", type=Path, default=Path("out/results"), help="dense params")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    parser.add_argument("--no-train", action="store_true", help="only rewrite table and plots")
    args = parser.parse_args(argv)
    args.budget = args.budget or ("quick" if args.quick else "full")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in rt.MODELS:
            parser.error(f"unknown model {m!r}; choose from {sorted(rt.MODELS)}")
    for m in args.method:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for s in args.sparsity:
        if not (0.0 <= s < 1.0) or math.isnan(s):
            parser.error(f"--sparsity must be in [0, 1), got {s}")
    args.rows = select_rows(args)
    if args.only and not args.rows:
        parser.error(f"--only {args.only} matches no row; --list prints the names")
    return args


def select_rows(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(model, row) pairs to run, in table order."""
    rows = all_rows()
    if args.budget == "quick" and not args.only:
        rows = [r for r in rows if r["name"] in QUICK_ROWS]
    chosen = []
    for model in args.models:
        for row in rows:
            if "models" in row and model not in row["models"]:
                continue
            full = f"{model}/{row['name']}"
            if args.only and not any(
                fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(row["name"], p)
                for p in args.only
            ):
                continue
            if args.method and row["method"] not in args.method:
                continue
            if args.sparsity and not any(
                abs(row.get("sparsity", 0.0) - s) < 1e-9 for s in args.sparsity
            ):
                continue
            chosen.append((model, row))
    return chosen


# ----------------------------------------------------------------------------- JSON


def model_budget(budget: dict, model: str) -> dict:
    """The budget of one model: its epochs, the shared batch size, learning rate and seeds."""
    return {**budget, "epochs": budget["epochs"][model], "seeds": list(budget["seeds"])}


def config_of(model: str, row: dict, budget: dict, n_train: int, n_test: int) -> dict:
    """Everything a row's numbers depend on: a row with the same config is not rerun."""
    return {
        "model": model,
        "row": {k: v for k, v in row.items() if k != "group"},
        "budget": model_budget(budget, model),
        "finetune_fraction": FINETUNE_FRACTION,
        "data": [n_train, n_test],
        "version": 1,
    }


def load_results(path: Path) -> dict:
    if not path.exists():
        return {"rows": {}}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), dict):
        raise ValueError(f"{path}: not a results file (no 'rows' object)")
    return data


def save_results(path: Path, data: dict) -> None:
    """Atomic: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_done(results: dict, key: str, config: dict) -> bool:
    row = results["rows"].get(key)
    return row is not None and row.get("config") == config


def row_config(model: str, row: dict, budget_name: str, data: rt.Data) -> dict:
    """The config a row of ``model`` has when run now with this budget and data."""
    budget_dict = BUDGETS[budget_name]
    config = config_of(model, row, budget_dict, len(data.x_train), len(data.x_test))
    config["steps"] = rt.total_steps(data, make_budget(budget_name, model))
    config.update(method_settings(row, config["steps"]))
    return config


def make_budget(budget_name: str, model: str) -> rt.Budget:
    budget_dict = BUDGETS[budget_name]
    return rt.Budget(
        **{**model_budget(budget_dict, model), "seeds": budget_dict["seeds"]},
        finetune_fraction=FINETUNE_FRACTION,
    )


def dense_long_steps(results: dict, budget_name: str, model: str, data: rt.Data) -> dict:
    """``dense-long``'s steps: those of the longest Fisher row of ``model`` in ``results``.

    A Fisher row's model (the seed that reached the row's level last) has trained for the
    dense row's steps, then the pruning run's steps up to that level, then the fine-tune
    steps. Only rows recorded with the current configuration count.

    Raises:
      RuntimeError: if ``results`` holds no such Fisher row of ``model``.
    """
    longest = None
    for row in all_rows():
        if row["method"] != "fisher":
            continue
        key = f"{budget_name}/{model}/{row['name']}"
        config = row_config(model, row, budget_name, data)
        if not is_done(results, key, config):
            continue
        e = results["rows"][key]["extra"]
        pruning = max(s if s is not None else e["pruning_steps_run"] for s in e["reached_at_step"])
        total = config["steps"] + pruning + e["finetune_steps"]
        if longest is None or total > longest["steps"]:
            longest = {
                "steps": total,
                "longest_fisher_row": row["name"],
                "pruning_steps": pruning,
                "finetune_steps": e["finetune_steps"],
            }
    if longest is None:
        raise RuntimeError(
            f"{budget_name}/{model}/dense-long trains as long as the longest Fisher row of "
            f"{model}, but the results file has none with this configuration: run "
            f"--only '{model}/fisher-*' first"
        )
    return longest


# ----------------------------------------------------------------------------- data


def load_data(root: str, budget: str) -> rt.Data:
    """Both splits, through ``datasets.load_fashion_mnist`` (its errors propagate)."""
    x_train, y_train = rt.prepare(*load_fashion_mnist(root, split="train"))
    x_test, y_test = rt.prepare(*load_fashion_mnist(root, split="test"))
    return rt.Data(x_train, y_train, x_test, y_test)


# ----------------------------------------------------------------------------- running


def dense_params(model_name, model, data, budget, args, results, dense_cache):
    """The trained dense params of every seed: from this run, the cache, or trained again."""
    if model_name in dense_cache:
        return dense_cache[model_name]
    path = args.cache / f"dense_{model_name}_{args.budget}.npz"
    tag = json.dumps(config_of(model_name, {"method": "dense"}, BUDGETS[args.budget], 0, 0))
    tag += f"/{len(data.x_train)}"
    if path.exists():
        with np.load(path) as f:
            if str(f["tag"]) == tag:
                flat = {k: f[k] for k in f.files if k != "tag"}
                params = unflatten(flat)
                dense_cache[model_name] = params
                return params
    params, _ = rt.train(model, {"method": "dense", **lr_of(budget)}, data, budget)
    store_dense(path, tag, params)
    dense_cache[model_name] = params
    return params


def store_dense(path: Path, tag: str, params: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in flatten(params).items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, tag=np.array(tag), **flat)
    os.replace(tmp, path)


def flatten(tree: Any, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = jnp.asarray(v)
    return tree


def lr_of(budget: rt.Budget) -> dict:
    return {"learning_rate": budget.learning_rate}


def run_row(model_name, row, data, budget, args, results, dense_cache) -> rt.Outcome:
    """Trains (or prunes) one row and measures it.

    ``dense_cache`` holds this run's dense params by model name, and the Fisher curves by
    ``(model name, rule)``: one pruning run gives the rows of every level of a rule.
    """
    model = rt.MODELS[model_name]()
    spec = {**row, **lr_of(budget)}
    if row["method"] == "fisher":
        key = (model_name, "fisher", row["rule"])
        if key not in dense_cache:
            dense = dense_params(model_name, model, data, budget, args, results, dense_cache)
            dense_cache[key] = rt.fisher_curve(model_name, dense, spec, data, budget)
        return dense_cache[key][row["flops_kept"]]
    if row["method"] == "compact":
        dense = dense_params(model_name, model, data, budget, args, results, dense_cache)
        return rt.compaction(model_name, dense, spec, data, budget)
    if row["method"] == "dense_long":
        params, seconds = rt.train(
            model, {"method": "dense", **lr_of(budget)}, data, budget, steps=row["steps"]
        )
        return rt.evaluate(model, params, data, seconds)
    if row["method"] != "oneshot":
        params, seconds = rt.train(model, spec, data, budget)
        if row["method"] == "dense":
            tag = json.dumps(config_of(model_name, {"method": "dense"}, BUDGETS[args.budget], 0, 0))
            tag += f"/{len(data.x_train)}"
            store_dense(args.cache / f"dense_{model_name}_{args.budget}.npz", tag, params)
            dense_cache[model_name] = params
        return rt.evaluate(model, params, data, seconds)
    dense = dense_params(model_name, model, data, budget, args, results, dense_cache)
    pruned, seconds, masks = rt.oneshot(model, dense, spec, data, budget)
    if row["finetune"]:
        steps = max(1, int(FINETUNE_FRACTION * rt.total_steps(data, budget)))
        ft = {"method": "fixed_masks", **lr_of(budget)}
        pruned, ft_seconds = rt.train(
            model, ft, data, budget, params=pruned, extra=masks, steps=steps
        )
        seconds += ft_seconds
    return rt.evaluate(model, pruned, data, seconds)


def summarize(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.list:
        for model, row in args.rows:
            print(f"{model}/{row['name']}")
        return 0
    results = load_results(args.json)  # a corrupted results file fails here, before training
    budget_dict = BUDGETS[args.budget]
    data = None if args.no_train else load_data(args.data_root, args.budget)
    dense_cache: dict = {}
    ran = 0
    if data is not None:
        print(
            f"Fashion-MNIST {len(data.x_train)}/{len(data.x_test)}, budget {args.budget}: "
            f"{budget_dict}; {len(args.rows)} rows",
            flush=True,
        )
        for model_name, row in args.rows:
            budget = make_budget(args.budget, model_name)
            key = f"{args.budget}/{model_name}/{row['name']}"
            config = row_config(model_name, row, args.budget, data)
            if row["method"] == "dense_long":
                config["dense_long"] = dense_long_steps(results, args.budget, model_name, data)
                row = {**row, "steps": config["dense_long"]["steps"]}
            if is_done(results, key, config):
                print(f"{key}: in {args.json.name}, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            out = run_row(model_name, row, data, budget, args, results, dense_cache)
            results["rows"][key] = {
                "config": config,
                "accuracy": summarize(out.accuracy),
                "sparsity": summarize(out.sparsity),
                "flops": summarize(out.flops),
                "seconds": out.seconds,
                "wall_seconds": time.perf_counter() - t0,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "load_average": os.getloadavg()[0],
            }
            if out.extra:
                results["rows"][key]["extra"] = out.extra
            save_results(args.json, results)
            ran += 1
            acc = results["rows"][key]["accuracy"]
            print(
                f"{key}: {acc['mean']:.2f} ± {acc['std']:.2f}%  sparsity "
                f"{statistics.fmean(out.sparsity):.3f}  train {out.seconds:.1f}s  "
                f"(row {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    wall = time.perf_counter() - start
    runs = results.setdefault("runs", [])
    if ran:
        runs.append(
            {
                "command": "python benchmarks/results.py " + " ".join(argv or sys.argv[1:]),
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "budget": args.budget,
                "rows_trained": ran,
                "wall_seconds": wall,
                "load_average_end": os.getloadavg(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}",
            }
        )
        save_results(args.json, results)
    import results_report  # noqa: PLC0415  (matplotlib only when writing the report)

    args.plots.mkdir(parents=True, exist_ok=True)
    results_report.write_report(results, args.md, args.plots, all_rows())
    print(f"wrote {args.md}, {args.json} and plots in {args.plots}; wall {wall:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
