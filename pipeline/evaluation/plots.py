"""PNG plots of one evaluated run (matplotlib, Agg backend: no display needed).

    make_plots(run_dir, report, out) -> out/ with roc.png, calibration.png, auc_bars.png, loss_curves.png
                                              and gates.png (when the MTL model has gates)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.schema import TASKS
from pipeline.io import read_json
from pipeline.paths import MODELS_DIR, MTL_MODEL, baseline_name, gbdt_name

ROC_POINTS = 2_000  # thresholds drawn per ROC curve


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1).

    `max_points`: keep about that many thresholds, evenly spaced along the curve, with both ends (a drawn
    curve of millions of points costs memory and time and looks the same)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each tie run
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    fpr, tpr = np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]
    if max_points is not None and len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


def _names(task: str) -> tuple[str, ...]:
    """The models drawn for one task: MTL, its DNN and LightGBM baselines, the champion."""
    return MTL_MODEL, baseline_name(task), gbdt_name(task), "champion"


def _label(name: str) -> str:
    return name.replace("baseline_", "stl ").replace("gbdt_", "lgbm ")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (e.g. a task without positives): no legend
        ax.legend(fontsize=7)


def _grid(n: int, plt) -> tuple[Any, list]:
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat


def _roc(run_dir: Path, report: dict, out: Path, plt) -> None:
    import polars as pl

    tasks = report["tasks"]
    fig, axes = _grid(len(tasks), plt)
    frames = {n: _read_predictions(run_dir / rel, tasks) for n, rel in report["predictions"].items()}
    for ax, task in zip(axes, tasks):
        for name in _names(task):
            f = frames.get(name)
            if f is None or f"p_{task}" not in f.columns:
                continue
            given = TASKS[task].given
            f = f.filter(pl.col(given) == 1) if given else f
            y = f[TASKS[task].label].to_numpy().astype(np.float64)
            if y.size == 0 or y.min() == y.max():
                continue
            fpr, tpr = roc_points(y, f[f"p_{task}"].to_numpy(), max_points=ROC_POINTS)
            ax.plot(fpr, tpr, label=_label(name))
        _diagonal_panel(ax, f"ROC {task}", "FPR", "TPR")
    _save(fig, out / "roc.png", plt)


def _read_predictions(path: Path, tasks: list[str]):
    """A saved predictions file's label, sample-space and probability columns only (not its id strings)."""
    import polars as pl

    want = {*(TASKS[t].label for t in tasks), *(TASKS[t].given for t in tasks if TASKS[t].given),
            *(f"p_{t}" for t in tasks)}
    return pl.read_parquet(path, columns=[c for c in pl.read_parquet_schema(path) if c in want])


def _diagonal_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    """The y = x reference line (chance for ROC, perfect calibration), labels and legend of one panel."""
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _legend(ax)


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _calibration(report: dict, out: Path, plt) -> None:
    tasks = report["tasks"]
    fig, axes = _grid(len(tasks), plt)
    for ax, task in zip(axes, tasks):
        for name in _names(task)[:3]:
            cal = report["models"].get(name, {}).get(task, {}).get("calibration")
            if cal and cal["mean_pred"]:
                ax.plot(cal["mean_pred"], cal["observed"], marker="o", ms=3, label=_label(name))
        _diagonal_panel(ax, f"calibration {task}", "mean predicted", "observed rate")
    _save(fig, out / "calibration.png", plt)


def _bars(report: dict, out: Path, plt) -> None:
    tasks = report["tasks"]
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(2.0 * len(tasks) + 2, 3.2))
    lowest, width = 1.0, 0.2
    for i, key in enumerate(("mtl", "stl", "lgbm", "champion")):
        # Read from the per-model metrics, so the plot does not depend on the comparison's layout.
        vals = np.array([_test_auc(report, _names(t)[i], t) for t in tasks], dtype=float)
        bars = ax.bar(x + (i - 1.5) * width, vals, width=width, label=key)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.3f}" for v in vals], fontsize=5)
        lowest = min(lowest, np.nanmin(vals, initial=1.0))
    ax.set_xticks(x, tasks)
    ax.set(ylabel="test AUC", title="MTL vs baselines (DNN, LightGBM) vs champion",
           ylim=(max(0.0, lowest - 0.05), 1.0))
    ax.legend(fontsize=7)
    _save(fig, out / "auc_bars.png", plt)


def _test_auc(report: dict, name: str, task: str) -> float:
    auc = report["models"].get(name, {}).get(task, {}).get("overall", {}).get("auc")
    return np.nan if auc is None else auc


def _model_plots(meta: dict, out: Path, plt) -> None:
    curves = meta.get("loss_curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for task, vals in curves.items():
            ax.plot(range(1, len(vals) + 1), vals, marker="o", ms=3, label=task)
        ax.set(title="train loss per epoch", xlabel="epoch", ylabel="loss")
        _legend(ax)
        _save(fig, out / "loss_curves.png", plt)
    gates = (meta.get("diagnostics") or {}).get("gates") or {}
    if gates:
        experts = sorted({e for g in gates.values() for e in g["weights"]})
        grid = np.array([[g["weights"].get(e, np.nan) for e in experts] for g in gates.values()])
        fig, ax = plt.subplots(figsize=(3.2 + 0.6 * len(experts), 1.4 + 0.4 * len(gates)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(experts)), experts, rotation=45, fontsize=7)
        ax.set_yticks(range(len(gates)), list(gates), fontsize=7)
        ax.set_title("mean gate weight per expert (valid)", fontsize=8)
        fig.colorbar(im, ax=ax)
        _save(fig, out / "gates.png", plt)


def make_plots(run_dir: str | Path, report: dict[str, Any], out: str | Path) -> Path:
    """Write the PNGs of the module docstring into `out` (created) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _roc(run_dir, report, out, plt)
    _calibration(report, out, plt)
    _bars(report, out, plt)
    meta_path = run_dir / MODELS_DIR / MTL_MODEL / "meta.json"
    if meta_path.is_file():
        _model_plots(read_json(meta_path), out, plt)
    return out
