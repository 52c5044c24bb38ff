"""The promotion gate: compare a challenger with its baselines and the champion, then decide.

`compare()` builds a JSON-safe comparison from test-window predictions; `decide()` is a pure function of that
comparison and `GateConfig` (TFX-style thresholds, per task, on test AUC):

- vs baseline (value threshold): baseline_auc - mtl_auc <= max_baseline_regression on every task with a baseline;
  with `require_significance` a larger regression still passes while the bootstrap interval of mtl - baseline
  reaches 0 (one test day of a few hundred purchases moves AUC by +-0.01-0.02: a point estimate alone would
  block a model that is as good as its baselines about half the time);
- vs champion (change threshold): mtl_auc - champion_auc >= min_champion_delta on every task the champion has;
- the first version (no champion) passes if it holds against its baselines;
- a task whose AUC is undefined on the test window (no positives or no negatives) fails: nothing was shown.

Comparison layout:
    {"champion": {"version": int, ...} | None, "champion_error": str | None,
     "order": [task, ...], "tasks": {task: {"mtl": auc, "baseline": auc | None, "champion": auc | None,
                      "vs_baseline": {diff, lo, hi, resamples} | None, "vs_champion": {...} | None}}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import GateConfig
from pipeline.evaluation.metrics import auc, bootstrap_auc_diff


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons)}


def _defined(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def compare(
    labels: Mapping[str, np.ndarray],
    requests: Mapping[str, np.ndarray],
    mtl: Mapping[str, np.ndarray],
    baselines: Mapping[str, np.ndarray],
    champion: Mapping[str, np.ndarray] | None,
    champion_info: dict[str, Any] | None,
    cfg: GateConfig,
    champion_error: str | None = None,
) -> dict[str, Any]:
    """Per task on its sample space: AUCs and bootstrap intervals of MTL - baseline and MTL - champion.

    labels/requests/mtl/baselines/champion: task -> array [N_task] over the same rows of that task's sample
    space (baselines and champion hold only the tasks they predict). Requests are resampled, `cfg.bootstrap`
    times, with a fixed seed per task so reruns give the same interval.
    """
    tasks: dict[str, Any] = {}
    for i, task in enumerate(labels):
        y, req, p = labels[task], requests[task], mtl[task]
        row: dict[str, Any] = {"mtl": auc(y, p), "baseline": None, "champion": None,
                               "vs_baseline": None, "vs_champion": None}
        for key, other in (("baseline", baselines), ("champion", champion or {})):
            if task in other:
                row[key] = auc(y, other[task])
                row[f"vs_{key}"] = bootstrap_auc_diff(y, p, other[task], req, cfg.bootstrap, seed=1000 + i)
        tasks[task] = row
    return {"champion": champion_info, "champion_error": champion_error, "tasks": tasks, "order": list(tasks)}


def _check_task(task: str, row: Mapping[str, Any], has_champion: bool, cfg: GateConfig) -> list[tuple[bool, str]]:
    mtl = row.get("mtl")
    if not _defined(mtl):
        return [(False, f"{task}: test AUC undefined (the test window lacks positives or negatives)")]
    out = []
    base = row.get("baseline")
    if _defined(base):
        reg = base - mtl
        ok = reg <= cfg.max_baseline_regression
        msg = f"{task}: AUC {mtl:.4f} vs baseline {base:.4f} (regression {reg:+.4f}, allowed <= {cfg.max_baseline_regression:g})"
        vs = row.get("vs_baseline") or {}
        if not ok and cfg.require_significance and _defined(vs.get("hi")) and vs["hi"] >= 0:
            ok = True
            msg += f" within noise: 95% interval of the difference [{vs['lo']:+.4f}, {vs['hi']:+.4f}] reaches 0"
        out.append((ok, f"{msg} {'ok' if ok else 'FAIL'}"))
    if has_champion:
        champ = row.get("champion")
        if _defined(champ):
            delta = mtl - champ
            ok = delta >= cfg.min_champion_delta
            out.append((ok, (f"{task}: AUC {mtl:.4f} vs champion {champ:.4f} (change {delta:+.4f}, "
                             f"required >= {cfg.min_champion_delta:g}) {'ok' if ok else 'FAIL'}")))
        else:
            out.append((True, f"{task}: the champion has no defined AUC on this task; not compared"))
    return out


def decide(comparison: Mapping[str, Any], cfg: GateConfig) -> Decision:
    """Pass when every task passes every check that applies to it (see the module docstring)."""
    if comparison.get("champion_error"):
        return Decision(False, (f"the champion could not be re-scored: {comparison['champion_error']}",))
    has_champion = comparison.get("champion") is not None
    checks: list[tuple[bool, str]] = []
    if not has_champion:
        checks.append((True, "first version: no champion to beat, only the baselines"))
    order = comparison.get("order") or list(comparison["tasks"])  # JSON files sort keys; keep the task order
    for task in order:
        checks += _check_task(task, comparison["tasks"][task], has_champion, cfg)
    if not comparison["tasks"]:
        checks.append((False, "no task to compare"))
    return Decision(all(ok for ok, _ in checks), tuple(msg for _, msg in checks))


def seesaw(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tasks where MTL is worse than its single-task baseline beyond the bootstrap interval (hi < 0)."""
    out = []
    for task, row in comparison["tasks"].items():
        vs = row.get("vs_baseline")
        if vs and _defined(vs.get("hi")) and vs["hi"] < 0:
            out.append({"task": task, "diff": vs["diff"], "lo": vs["lo"], "hi": vs["hi"]})
    return out
