"""The table (``RESULTS.md``), the target checks and the plots of ``benchmarks/results.py``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MODEL_TITLES = {"mlp": "LeNet-300-100 (MLP)", "cnn": "LeNet-5-style CNN"}
DESCRIPTIONS = {
    "dense": "dense",
    "gradual": "gradual magnitude",
    "legacy_tf": "pruning_from_config, TF cifar10 recipe",
    "random_pruning": "random_pruning",
    "saliency": "saliency",
    "movement": "movement",
    "magnitude_ste": "magnitude STE",
    "sr_ste": "SR-STE",
    "static": "static",
    "set": "SET",
    "rigl": "RigL",
    "acdc": "AC/DC",
    "oneshot": "one-shot",
}


def _fmt(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _get(rows: dict, budget: str, model: str, name: str) -> dict | None:
    return rows.get(f"{budget}/{model}/{name}")


def _ge(a: dict, b: dict) -> bool:
    """a ≥ b within the seeds' spread: a's mean is not below b's by more than both stds."""
    return a["mean"] >= b["mean"] - (a["std"] + b["std"])


def check_targets(rows: dict, budget: str, models: list[str]) -> tuple[list[str], dict]:
    """The issue's targets: lines for RESULTS.md and ``{row key: [marks]}`` for the table."""
    lines, marks = [], {}

    def mark(key: str, text: str) -> None:
        marks.setdefault(key, []).append(text)

    for model in models:
        dense = _get(rows, budget, model, "dense")
        if dense is None:
            continue
        d = dense["accuracy"]["mean"]
        for scope in ("layer", "global"):
            for s, tol in ((80, 1.0), (90, 2.0)):
                name = f"gm-{scope}-{s}"
                r = _get(rows, budget, model, name)
                if r is None:
                    continue
                gap = d - r["accuracy"]["mean"]
                ok = gap <= tol
                lines.append(
                    f"- {model} `{name}`: {gap:+.2f} points below dense (target ≤ {tol:g}): "
                    + ("met" if ok else "**missed**")
                )
                if not ok:
                    mark(f"{budget}/{model}/{name}", f"✗ > {tol:g} pt below dense")
        for s in (80, 90):
            for dist in ("uniform", "erk"):
                mag = "gm-layer" if dist == "uniform" else "gm-erk"
                chain = [
                    (f"{mag}-{s}", "magnitude"),
                    (f"rigl-{dist}-{s}", "RigL"),
                    (f"set-{dist}-{s}", "SET"),
                    (f"static-{dist}-{s}", "static"),
                ]
                got = [(n, label, _get(rows, budget, model, n)) for n, label in chain]
                got = [g for g in got if g[2] is not None]
                if len(got) < 2:
                    continue
                parts = []
                for (n1, l1, r1), (_, l2, r2) in zip(got, got[1:], strict=False):
                    ok = _ge(r1["accuracy"], r2["accuracy"])
                    parts.append(f"{l1} ≥ {l2} " + ("met" if ok else "**missed**"))
                    if not ok:
                        mark(f"{budget}/{model}/{n1}", f"✗ not ≥ {l2}")
                lines.append(f"- {model}, {s}% {dist}: " + "; ".join(parts))
        mag = _get(rows, budget, model, "oneshot-magnitude-50")
        for crit in ("wanda", "sparsegpt"):
            r = _get(rows, budget, model, f"oneshot-{crit}-50")
            if mag is None or r is None:
                continue
            margin = max(1.0, r["accuracy"]["std"] + mag["accuracy"]["std"])
            gain = r["accuracy"]["mean"] - mag["accuracy"]["mean"]
            ok = gain >= margin
            lines.append(
                f"- {model} one-shot 50% without fine-tune: {crit} {gain:+.2f} points over "
                f"magnitude (target: well above, here ≥ {margin:.2f}): "
                + ("met" if ok else "**missed**")
            )
            if not ok:
                mark(f"{budget}/{model}/oneshot-{crit}-50", "✗ not well above magnitude")
    return lines, marks


def _row_label(row: dict) -> str:
    label = DESCRIPTIONS[row["method"]]
    if row["method"] == "oneshot":
        label = f"{row['criterion']} {row['pattern'].replace('50', '50%')}"
        return label + (" + fine-tune" if row["finetune"] else "")
    if row.get("structure"):
        label += {"block4x1": ", block 4×1", "nm24": ", 2:4", "unit": ", unit"}[row["structure"]]
    elif row.get("scope") and row["method"] in ("gradual", "saliency"):
        label += f", {row['scope']}"
    if row.get("distribution"):
        label += f", {row['distribution'].upper() if row['distribution'] == 'erk' else 'uniform'}"
    return label


def table(rows: dict, budget: str, model: str, order: list[dict], marks: dict) -> list[str]:
    dense = _get(rows, budget, model, "dense")
    out = [
        "| row | method | target | test accuracy % | sparsity % | forward MFLOPs (% dense) "
        "| time ÷ dense | targets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in order:
        key = f"{budget}/{model}/{row['name']}"
        r = rows.get(key)
        if r is None:
            continue
        flops = r["flops"]["mean"]
        rel = f" ({100 * flops / dense['flops']['mean']:.1f}%)" if dense else ""
        ratio = f"{r['seconds'] / dense['seconds']:.2f}" if dense and dense["seconds"] else "n/a"
        target = f"{100 * row['sparsity']:g}%" if row.get("sparsity") else "—"
        if row.get("pattern") == "2:4" or row.get("structure") == "nm24":
            target = "2:4"
        out.append(
            f"| `{row['name']}` | {_row_label(row)} | {target} | {_fmt(r['accuracy'])} "
            f"| {_fmt(r['sparsity'], 100, 1)} | {flops / 1e6:.3f}{rel} | {ratio} "
            f"| {'; '.join(marks.get(key, [])) or ''} |"
        )
    return out


def plot(rows: dict, budget: str, model: str, order: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list] = {}
    for row in order:
        r = _get(rows, budget, model, row["name"])
        if r is None or row["method"] == "dense":
            continue
        label = _row_label(row)
        if row["method"] == "gradual" and not row.get("structure") and not row.get("distribution"):
            label = f"gradual magnitude, {row['scope']}"
        series.setdefault(label, []).append(
            (100 * r["sparsity"]["mean"], r["accuracy"]["mean"], r["accuracy"]["std"])
        )
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
    dense = _get(rows, budget, model, "dense")
    if dense:
        ax.axhline(dense["accuracy"]["mean"], color="black", linestyle=":", label="dense")
    markers = "os^vD<>pPXh*"
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort()
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            marker=markers[i % len(markers)],
            linestyle="-" if len(pts) > 1 else "none",
            capsize=2,
            label=label,
            color=plt.cm.tab20(i % 20),
        )
    ax.set_xlabel("sparsity of the forward-pass kernels (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"Fashion-MNIST, {MODEL_TITLES[model]}, budget '{budget}'")
    ax.grid(alpha=0.3)
    lows = [y - e for pts in series.values() for _, y, e in pts]
    if dense:
        ax.set_ylim(max(min(lows) - 1, dense["accuracy"]["mean"] - 15), None)
    ax.legend(fontsize="x-small", ncol=2, loc="lower left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(results: dict, md: Path, plots: Path, order: list[dict]) -> None:
    rows = results["rows"]
    budgets = sorted({k.split("/")[0] for k in rows}, key=lambda b: (b != "full", b))
    lines = [
        "# Results on Fashion-MNIST",
        "",
        "Generated by `benchmarks/results.py` from `benchmarks/results.json` (every number, "
        "per seed). Do not edit by hand: rerun the script.",
        "",
    ]
    lines += METHOD_NOTES
    for run in results.get("runs", []):
        lines.append(
            f"- `{run['command'].strip()}` — {run['date']}, budget `{run['budget']}`, "
            f"{run['rows_trained']} rows trained in {run['wall_seconds'] / 60:.1f} min wall "
            f"time; load average at the end {run['load_average_end'][0]:.1f} "
            f"({run['machine']})"
        )
    lines.append("")
    for budget in budgets:
        models = [m for m in ("mlp", "cnn") if any(k.startswith(f"{budget}/{m}/") for k in rows)]
        lines += [f"## Budget `{budget}`", ""]
        for model in models:
            some = next(v for k, v in rows.items() if k.startswith(f"{budget}/{model}/"))
            b = some["config"]["budget"]
            steps = some["config"].get("steps", "?")
            lines.append(
                f"- {MODEL_TITLES[model]}: {b['epochs']:g} epochs ({steps} steps), batch "
                f"{b['batch_size']}, Adam {b['learning_rate']:g}, seeds {b['seeds']} "
                f"({len(b['seeds'])} per row, vmapped)."
            )
        lines.append("")
        checks, marks = check_targets(rows, budget, models)
        if checks:
            lines += ["Targets:", ""] + checks + [""]
        for model in models:
            lines += [f"### {MODEL_TITLES[model]}", ""]
            lines += table(rows, budget, model, order, marks)
            png = plots / f"results_{model}.png"
            if budget == budgets[0] and plot(rows, budget, model, order, png):
                lines += ["", f"![accuracy against sparsity, {model}](results_{model}.png)"]
            lines.append("")
    _atomic_write(md, "\n".join(lines) + "\n")


METHOD_NOTES = [
    "Every row trains from the same initialisations (one per seed), on the same batches in "
    "the same order, for the same number of steps, with Adam at the same learning rate; no "
    "method is tuned. Schedules: pruning methods that follow a schedule (gradual magnitude, "
    "random_pruning, saliency, movement, magnitude STE, SR-STE) use the same cubic polynomial "
    "decay from 0% over the middle half of training (dense for the first quarter, about 100 "
    "mask updates, fine-tuning at the target for the last quarter). static, SET and RigL are "
    "sparse from the first step (SET and RigL: drop fraction 0.3, a mask update every 1% of "
    "the steps, until 75%). AC/DC: a 10% dense warm-up, three compressed/decompressed cycles "
    "of 10% phases, a final 30% compressed. SR-STE: λ = 2e-4. ERK rows exist only for the "
    "methods that take per-leaf targets (the STE, saliency and movement algorithms take one "
    "schedule for every leaf).",
    "",
    "Structured rows: block 4×1 applies to the dense kernels (conv kernels are not rank 2; "
    "they are pruned unstructured); unit structure leaves the classifier out (pruning its "
    "output units would remove classes); 2:4 runs along each kernel's input axis.",
    "",
    "The legacy row parses TensorFlow's cifar10 recipe (`begin_pruning_step=10000`, "
    "`end_pruning_step=100000`, `target_sparsity=0.9`, the same sparsity-function window) "
    "with every `*_step` value multiplied by (this run's steps ÷ 120,000), the run length "
    "that `examples/tf_hparams.py` uses the recipe at; `pruning_frequency` keeps its default.",
    "",
    "One-shot rows prune each seed's trained dense model (the `dense` row's) with "
    "`jp.prune_oneshot`, calibrated on 4 training batches; `prune_oneshot` prunes the linear "
    "layers only, so the CNN's two small conv kernels stay dense. *+ fine-tune* rows then "
    "train for 10% of the training steps with the masks fixed: gradients of pruned weights "
    "still reach Adam but a last link in the chain sets every pruned weight back to exactly "
    "0 after each update, so no mask changes. Their time is calibration + pruning "
    "(+ fine-tune) ÷ the dense training time.",
    "",
    "Columns: sparsity = zeros among all kernels of the weights the forward pass uses "
    "(`jp.masked_params` for the straight-through and movement algorithms); FLOPs = "
    "`jp.count_flops` of one image's forward pass with the masks of those zeros "
    "(`weight_masks=`); time ÷ dense = training time of the row (compilation excluded, all "
    "seeds together) ÷ the dense row's, on a shared, loaded machine (ratios are noisy). "
    "Marks (✗) flag where the targets below are missed: gradual magnitude within 1 point of "
    "dense at 80% and within 2 at 90%; magnitude ≥ RigL ≥ SET ≥ static at the same sparsity "
    "(a ≥ b when a's mean is not below b's by more than the sum of their standard "
    "deviations); one-shot at 50% without fine-tune: Wanda and SparseGPT at least 1 point "
    "(and more than the summed standard deviations) above magnitude.",
    "",
    "Fisher pruning and structural compaction are not in this table yet: they will be added "
    "as their own rows.",
    "",
    "Runs:",
    "",
]
