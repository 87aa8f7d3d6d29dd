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
    "fisher": "Fisher pruning",
    "dense_long": "dense, as many steps as the longest Fisher row",
    "compact": "structural compaction",
}
FISHER_LABELS = {
    "b0": "Fisher, β = 0",
    "ratio": "Fisher, FLOP-aware (signal ÷ FLOPs)",
    "beta": "Fisher, signal − β·FLOPs (β: signal per FLOP at the first turn)",
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
        for layers, what in (("", ""), ("-all", ", all kernels")):
            mag = _get(rows, budget, model, f"oneshot-magnitude{layers}-50")
            for crit in ("wanda", "sparsegpt"):
                r = _get(rows, budget, model, f"oneshot-{crit}{layers}-50")
                if mag is None or r is None:
                    continue
                margin = max(1.0, r["accuracy"]["std"] + mag["accuracy"]["std"])
                gain = r["accuracy"]["mean"] - mag["accuracy"]["mean"]
                ok = gain >= margin
                lines.append(
                    f"- {model} one-shot 50%{what} without fine-tune: {crit} {gain:+.2f} points "
                    f"over magnitude (target: well above, here ≥ {margin:.2f}): "
                    + ("met" if ok else "**missed**")
                )
                if not ok:
                    mark(
                        f"{budget}/{model}/oneshot-{crit}{layers}-50", "✗ not well above magnitude"
                    )
        for key, r in rows.items():
            if key.startswith(f"{budget}/{model}/fisher-"):
                if None in r.get("extra", {}).get("reached_at_step", []):
                    mark(key, "✗ FLOPs level not reached by every seed")
    return lines, marks


def _row_label(row: dict) -> str:
    label = DESCRIPTIONS[row["method"]]
    if row["method"] == "fisher":
        return FISHER_LABELS[row["rule"]]
    if row["method"] == "compact":
        return f"compacted, {row['criterion'].upper()} group scores, + fine-tune"
    if row["method"] == "oneshot":
        label = f"{row['criterion']} {row['pattern'].replace('50', '50%')}"
        if row.get("layers") == "all":
            label += ", conv + dense kernels"
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
        if row["method"] == "fisher":
            target = f"{100 * row['flops_kept']:g}% FLOPs"
        elif row["method"] == "compact":
            target = f"{100 * row['sparsity']:g}% channels"
        elif row["method"] == "dense_long":
            target = f"{r['config']['dense_long']['steps']} steps"
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
        if r is None or row["method"] in ("dense", "dense_long", "fisher", "compact"):  # FLOPs plot
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


def structural_tables(rows: dict, budget: str, model: str, order: list[dict]) -> list[str]:
    """Fisher rows' channels kept per layer; compaction rows' parameters and latency."""
    out = []
    fisher = [(row, _get(rows, budget, model, row["name"])) for row in order]
    fisher = [(row, r) for row, r in fisher if r and row["method"] == "fisher" and "extra" in r]
    if fisher:
        out += [
            "Fisher pruning: channels kept per hidden layer (mean over seeds), the FLOPs of the "
            "masked model when it was recorded (`count_flops` with the channel masks, % of "
            "dense) and the pruning step at which the last seed reached the level:",
            "",
            "| row | kept channels per layer | channel FLOPs % | reached at step |",
            "| --- | --- | --- | --- |",
        ]
        for row, r in fisher:
            e = r["extra"]
            kept = [sum(k) / len(k) for k in zip(*e["kept_channels"], strict=True)]
            steps = e["reached_at_step"]
            reached = "not reached" if None in steps else str(max(steps))
            flops = 100 * sum(e["channel_flops"]) / len(e["channel_flops"])
            out.append(
                f"| `{row['name']}` | {' / '.join(f'{k:.1f}' for k in kept)} | {flops:.1f} "
                f"| {reached} |"
            )
        out.append("")
        betas = [e for row, r in fisher if "beta" in (e := r["extra"])]
        if betas:
            values = ", ".join(f"{b:.3g}" for b in betas[0]["beta"])
            out += [
                f"β of the `fisher-beta-*` rows, per seed (set at the first pruning turn, the "
                f"network's signal per FLOP): {values}.",
                "",
            ]
        control = _get(rows, budget, model, "dense-long")
        dense = _get(rows, budget, model, "dense")
        if control and dense:
            c = control["config"]["dense_long"]
            above = [
                f"`{row['name']}` ({r['accuracy']['mean'] - control['accuracy']['mean']:+.2f})"
                for row, r in fisher
            ]
            out += [
                f"The control for the Fisher rows' extra steps: `dense-long` trains the dense "
                f"model from the same initialisations for {c['steps']} steps, as many as the "
                f"longest Fisher row's model saw (`{c['longest_fisher_row']}`: "
                f"{control['config']['steps']} dense + {c['pruning_steps']} pruning + "
                f"{c['finetune_steps']} fine-tune steps), and reaches "
                f"{_fmt(control['accuracy'])}% (`dense`: {_fmt(dense['accuracy'])}%). Read "
                "each Fisher row against `dense-long`, not `dense`: a Fisher row above `dense` "
                "but not above `dense-long` owes its accuracy to the extra training, not to "
                "pruning. A row that reached its level earlier saw fewer steps (dense + its "
                "step above + fine-tune): for it `dense` and `dense-long` bracket a dense model "
                "of equal steps. Fisher rows minus `dense-long`, points: " + ", ".join(above) + ".",
                "",
            ]
    for row in order:
        r = _get(rows, budget, model, row["name"])
        if not r or row["method"] != "compact" or "extra" not in r:
            continue
        e, lat = r["extra"], r["extra"]["latency"]
        out += [
            f"Compaction (`{row['name']}`): the compacted model against the dense one; "
            f"latency of one jitted forward pass of {lat['batch']} test images, median of "
            f"{lat['repeats']} timings interleaved with the dense model's (ratio: median of "
            "the per-pair ratios), seed 0's model:",
            "",
            "| | dense | compacted | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| parameters | {e['params_dense']:,} | {e['params_compact']:,} "
            f"| {e['params_compact'] / e['params_dense']:.3f} |",
            f"| forward FLOPs (one image) | {e['flops_dense']:,.0f} | "
            f"{r['flops']['mean']:,.0f} | {r['flops']['mean'] / e['flops_dense']:.3f} |",
            f"| latency, ms | {lat['dense_ms']:.3f} | {lat['compact_ms']:.3f} "
            f"| {lat['ratio']:.3f} |",
            "",
            "Compacted shapes: "
            + ", ".join(f"`{k}` {tuple(v)}" for k, v in e["shapes"].items() if len(v) >= 2)
            + ".",
            "",
        ]
    return out


def flops_plot(rows: dict, budget: str, model: str, order: list[dict], path: Path) -> bool:
    """Accuracy against the FLOPs kept: Fisher pruning (every rule), compaction, the dense
    rows (``dense``, and ``dense-long``, the control of the Fisher rows' extra steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = _get(rows, budget, model, "dense")
    series: dict[str, list] = {}
    for row in order:
        r = _get(rows, budget, model, row["name"])
        if r is None or row["method"] not in ("fisher", "compact") or "extra" not in r:
            continue
        series.setdefault(_row_label(row), []).append(
            (
                100 * r["flops"]["mean"] / r["extra"]["flops_dense"],
                r["accuracy"]["mean"],
                r["accuracy"]["std"],
            )
        )
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    if dense:
        d = dense["accuracy"]
        ax.errorbar([100], [d["mean"]], yerr=[d["std"]], marker="*", color="black", capsize=2)
        ax.axhline(d["mean"], color="black", linestyle=":", label="dense")
    control = _get(rows, budget, model, "dense-long")
    if control:
        d = control["accuracy"]
        ax.errorbar([100], [d["mean"]], yerr=[d["std"]], marker="P", color="gray", capsize=2)
        ax.axhline(
            d["mean"],
            color="gray",
            linestyle="--",
            label=f"dense-long ({control['config']['dense_long']['steps']} steps)",
        )
    markers = "osD^v"
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort()
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            marker=markers[i % len(markers)],
            linestyle="-" if len(pts) > 1 else "none",
            markersize=7,
            capsize=2,
            label=label,
        )
    ax.set_xlabel("forward FLOPs of one image (% of dense), jp.count_flops")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"Fisher pruning and compaction, {MODEL_TITLES[model]}, budget '{budget}'")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
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
            extra = structural_tables(rows, budget, model, order)
            if extra:
                lines += extra
            png = plots / f"results_flops_{model}.png"
            if budget == budgets[0] and flops_plot(rows, budget, model, order, png):
                name = f"results_flops_{model}.png"
                lines += [f"![accuracy against FLOPs kept, {model}]({name})", ""]
    _atomic_write(md, "\n".join(lines) + "\n")


METHOD_NOTES = [
    "Every row trains from the same initialisations (one per seed), on the same batches in "
    "the same order, for the same number of steps, with Adam at the same learning rate; no "
    "method is tuned. Schedules: pruning methods that follow a schedule (gradual magnitude, "
    "random_pruning, saliency, movement, magnitude STE, SR-STE) use the same cubic polynomial "
    "decay from 0% over the middle half of training (dense for the first quarter, about 100 "
    "mask updates, fine-tuning at the target for the last quarter). static, SET and RigL are "
    "sparse from the first step (SET and RigL: drop fraction 0.3, a mask update every 1% of "
    "the steps but never more often than every 25 steps, until 75% of the steps; the same "
    "rule for every budget, so that the connections an update grows train before the next "
    "update judges them: 25 steps in the quick budget, 3 mask updates for the CNN and 14 for "
    "the MLP). AC/DC: a 10% dense warm-up, three compressed/decompressed cycles "
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
    "`jp.prune_oneshot`, calibrated on 4 training batches; only the dense layers are pruned "
    "(`layers=`), so the CNN's two small conv kernels stay dense. The CNN's "
    "`oneshot-*-all-50` rows prune every kernel, both convolutions included: `prune_oneshot` "
    "recognises a convolution by its `lax.conv_general_dilated` (PatchConv's shifted-slices "
    "`einsum` reads the kernel through a reshape, which it does not follow), so these rows "
    "prune the same CNN written with `lax` convolutions (the same params and function; a "
    "convolution's inputs are the kh·kw·cin = 25 and 150 entries of its patches). 2:4 does "
    "not apply to these convolutions: N:M groups run along a kernel's flattened inputs, and "
    "4 divides neither 25 nor 150 (nor the 1 and 6 input channels), so `prune_oneshot` "
    "refuses them (`ValueError` naming the layer); the 2:4 rows prune the dense kernels only, "
    "and there is no all-kernel 2:4 row. *+ fine-tune* rows then "
    "train for 10% of the training steps with the masks fixed: gradients of pruned weights "
    "still reach Adam but a last link in the chain sets every pruned weight back to exactly "
    "0 after each update, so no mask changes. Their time is calibration + pruning "
    "(+ fine-tune) ÷ the dense training time.",
    "",
    "Columns: sparsity = zeros among all kernels of the weights the forward pass uses "
    "(`jp.masked_params` for the straight-through and movement algorithms); FLOPs = "
    "`jp.count_flops` of one image's forward pass with the masks of those zeros "
    "(`weight_masks=`); time ÷ dense = training time of the row (compilation excluded, all "
    "seeds together) ÷ the dense row's, on a 2-core machine that other jobs may share "
    "(ratios are noisy). "
    "Marks (✗) flag where the targets below are missed: gradual magnitude within 1 point of "
    "dense at 80% and within 2 at 90%; magnitude ≥ RigL ≥ SET ≥ static at the same sparsity "
    "(a ≥ b when a's mean is not below b's by more than the sum of their standard "
    "deviations); one-shot at 50% without fine-tune: Wanda and SparseGPT at least 1 point "
    "(and more than the summed standard deviations) above magnitude.",
    "",
    "Fisher rows (Theis et al. 2018) prune whole channels of each seed's trained dense model "
    "(the `dense` row's) while fine-tuning it: a `ChannelMask` after every hidden layer's "
    "ReLU (both conv layers and both hidden dense layers of the CNN, both hidden layers of "
    "the MLP; never the classifier), Adam then `jp.fisher_pruning` in one chain, the "
    "per-example mask gradients from the same backward pass as the parameter gradients. "
    "After a burn-in of 50 steps (2 / (1 − decay), decay 0.96) one channel is removed every "
    "2 steps, until `jp.count_flops` of the masked model (one image) is at most 30% of "
    "dense. One run per rule gives the four rows of that rule: each seed's model is "
    "recorded on the step its FLOPs first reach 90%, 70%, 50% and 30% of dense, its removed "
    "channels are folded into zeros of the weights that produce and read them "
    "(`group_weight_masks` of the dependency groups), and it is fine-tuned for 10% of the "
    "training steps with those zeros fixed, as the one-shot *+ fine-tune* rows. Three rules "
    "rank the channels: β = 0 (`fisher-b0-*`), the Fisher signal alone; the FLOP-aware "
    "ratio (`fisher-ratio-*`), docs/fisher.md's hyperparameter-free rule, the one "
    'examples/fisher_digits.py runs: signal ÷ FLOPs saved (`criterion="ratio"`); and the '
    "paper's penalised rule (`fisher-beta-*`), signal − β · FLOPs saved with β > 0. Its β "
    "is set for each seed at its first pruning turn (after the burn-in) to the network's "
    "signal per FLOP: the sum of the averaged signals that turn ranks ÷ the sum of the "
    "channels' marginal FLOPs (one image; `jax.grad` of `count_flops` at the dense masks), "
    "then kept for the run. With it the two terms are on one scale (summed over the "
    "channels, they are equal), and a channel scores below zero exactly when its own signal "
    "per FLOP saved is below the network's; the rule reads training batches only, is the "
    "same for both models and every budget, and needs no β searched per model (none was "
    "tuned, on the test set or elsewhere). The seeds run vmapped, each with its own β (a "
    "traced `beta` of `jp.fisher_pruning`), listed under each model's table. A row's time "
    "is the pruning run up to the step the last seed reached its level, plus its fine-tune, "
    "÷ the dense training time. Removing one channel at a time takes hundreds of steps (the "
    "table under each model gives the step at which the last seed reached each level), all "
    "of them training steps on top of the dense row's: with the quick budget's short dense "
    "training (the CNN's quarter epoch especially) that extra training alone can lift a "
    "model above the dense row. `dense-long` is the control: the dense model trained from "
    "the same initialisations, on the dense row's batch order continued into the next epochs, "
    "for as many steps as the longest "
    "Fisher row's model saw (dense + pruning, up to the step the last seed reached the "
    "level, + fine-tune steps), read from the Fisher rows in results.json. **Compare each "
    "Fisher row with `dense-long`, not with `dense`** (the differences are under each "
    "model's table), and the rules with each other at equal FLOPs.",
    "",
    "Compaction rows: for each seed's trained dense model, `jp.dependency_groups` (the MLP's "
    "two hidden layers; the CNN's two conv layers, the second's channels also indexing the "
    "flattened input of the first dense layer, and its two hidden dense layers), channels "
    "scored by the "
    "L2 norm of all their weights across the group (`jp.group_scores`, the same criterion for "
    "both models), 50% kept in every group (`jp.group_masks`), `jp.compact`, then 10% of the "
    "training steps of fine-tuning of the small model itself (the seeds vmapped). Sparsity is "
    "the share of the dense kernels' weights removed; FLOPs are `jp.count_flops` of the "
    "compacted model; parameters and latency are in the table under each model's. The "
    "CNN's latency falls much less than its FLOPs (0.78× against 0.33×) because about half "
    "of its time does no FLOPs: `benchmarks/compaction_latency.py` (batch 128, 2-core CPU) "
    "times the first convolution's unfolding of the padded 1-channel image into 25 shifted "
    "copies at 7.9 of the dense model's 17.0 ms, the same in the compacted model (the input "
    "channel cannot be pruned), while the stages that hold the FLOPs shrink with them "
    "(second convolution 0.52×, dense layers 0.29×); the fixed cost of a call, 0.3 ms, is "
    "2% of it. The MLP follows its FLOPs there (0.51–0.54× from batch 32 on; its row: "
    "0.56×). Details in benchmarks/README.md.",
    "",
    "Runs:",
    "",
]
