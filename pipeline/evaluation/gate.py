"""The promotion gate: compare a challenger with its baselines and the champion, then decide.

`compare()` builds a JSON-safe comparison from test-window predictions; `decide()` is a pure function of that
comparison and `GateConfig`. Every rule reads the paired request-level bootstrap interval of
(challenger - reference) test AUC, one sign convention everywhere (positive = the challenger is better):

- vs every baseline of a task (`baseline_<task>`, `gbdt_<task>`): lower bound >= -max_baseline_regression;
- vs the champion (non-inferiority): lower bound >= -champion_margin on every task the champion serves, and
  with `require_improvement` at least one task with lower bound > 0;
- the challenger covers every task the champion serves (fewer tasks: never champion through the gate);
- its data date is later than the champion's (a backfill or a rerun of the champion's day never moves it);
- the first version (no champion) passes if it holds against its baselines;
- a task whose AUC is undefined on the test window (no positives or no negatives) fails: nothing was shown;
- an interval that could not be drawn (`gate.bootstrap` 0) falls back to the point estimate, and says so.

Comparison layout:
    {"champion": {"version", "run_id", "data_date", "tasks"} | None, "champion_error": str | None,
     "challenger": {"data_date", "tasks"}, "order": [task, ...],
     "tasks": {task: {"mtl": auc, "champion": auc | None, "vs_champion": interval | None,
                      "baselines": {name: auc}, "vs_baselines": {name: interval}}}}
    interval = {"diff", "lo", "hi", "resamples"}, diff = challenger - reference.
"""

from __future__ import annotations

import math
import zlib
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


def task_seed(task: str) -> int:
    """The bootstrap seed of a task: the same resamples for every reference and every run of that task, so two
    challengers (or a challenger and a rerun) are judged on the same draws."""
    return zlib.crc32(task.encode())


def compare(
    labels: Mapping[str, np.ndarray],
    requests: Mapping[str, np.ndarray],
    mtl: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    champion: Mapping[str, np.ndarray] | None,
    champion_info: dict[str, Any] | None,
    cfg: GateConfig,
    champion_error: str | None = None,
    data_date: str | None = None,
) -> dict[str, Any]:
    """Per task on its sample space: AUCs and paired bootstrap intervals of MTL - each baseline and - champion.

    labels/requests/mtl: task -> array [N_task] over the same rows of that task's sample space; baselines:
    task -> {baseline name -> array [N_task]}; champion: task -> array [N_task] for the tasks it predicts (it
    may serve tasks the challenger lacks: `champion_info["tasks"]` lists all it serves). Both sides of an
    interval are reweighted by the same request draws, `cfg.bootstrap` times, seeded per task.
    """
    tasks: dict[str, Any] = {}
    for task in labels:
        y, req, p = labels[task], requests[task], mtl[task]
        seed = task_seed(task)
        row: dict[str, Any] = {"mtl": auc(y, p), "champion": None, "vs_champion": None,
                               "baselines": {}, "vs_baselines": {}}
        for name, other in sorted((baselines.get(task) or {}).items()):
            row["baselines"][name] = auc(y, other)
            row["vs_baselines"][name] = bootstrap_auc_diff(y, p, other, req, cfg.bootstrap, seed=seed)
        if champion and task in champion:
            row["champion"] = auc(y, champion[task])
            row["vs_champion"] = bootstrap_auc_diff(y, p, champion[task], req, cfg.bootstrap, seed=seed)
        tasks[task] = row
    return {"champion": champion_info, "champion_error": champion_error, "tasks": tasks, "order": list(tasks),
            "challenger": {"data_date": data_date, "tasks": list(tasks)}}


def interval_text(vs: Mapping[str, Any] | None) -> str:
    """'+0.0062 [-0.0030, +0.0150]' (challenger - reference, 95% interval), 'n/a' without one."""
    if not vs or not _defined(vs.get("diff")):
        return "n/a"
    if not _defined(vs.get("lo")):
        return f"{vs['diff']:+.4f} [no interval]"
    return f"{vs['diff']:+.4f} [{vs['lo']:+.4f}, {vs['hi']:+.4f}]"


def _bound(vs: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """The lower bound a rule reads, and what it is: the interval's, else the point estimate's."""
    if not vs or not _defined(vs.get("diff")):
        return None, "undefined"
    if _defined(vs.get("lo")):
        return float(vs["lo"]), "lower bound"
    return float(vs["diff"]), "point estimate (no interval: gate.bootstrap=0 or too few defined resamples)"


def _vs_check(task: str, ref: str, mtl: float, ref_auc: Any, vs: Any, allowed: float) -> tuple[bool, str]:
    """One rule line: '<task> vs <ref>: challenger - reference = diff [lo, hi]; lower bound >= -allowed ok'."""
    if not _defined(ref_auc):
        return True, f"{task} vs {ref}: the reference has no defined AUC on this task; not compared"
    bound, what = _bound(vs)
    ok = bound is not None and bound >= -allowed
    return ok, (f"{task} vs {ref}: AUC {mtl:.4f} - {ref_auc:.4f} = {interval_text(vs)} (challenger - reference, "
                f"95% interval); {what} >= {-allowed:+.4f} {'ok' if ok else 'FAIL'}")


def _task_checks(task: str, row: Mapping[str, Any], champ_name: str | None, cfg: GateConfig) -> list[tuple[bool, str]]:
    mtl = row.get("mtl")
    if not _defined(mtl):
        return [(False, f"{task}: test AUC undefined (the test window lacks positives or negatives) FAIL")]
    out = [_vs_check(task, name, mtl, row["baselines"].get(name), vs, cfg.max_baseline_regression)
           for name, vs in sorted((row.get("vs_baselines") or {}).items())]
    if champ_name is not None:
        out.append(_vs_check(task, champ_name, mtl, row.get("champion"), row.get("vs_champion"), cfg.champion_margin))
    return out


def _champion_checks(comparison: Mapping[str, Any], cfg: GateConfig) -> list[tuple[bool, str]]:
    """Coverage, data date and (optionally) improvement against the champion."""
    info, mine = comparison["champion"], comparison.get("challenger") or {}
    name = f"champion v{info.get('version')}"
    served = list(info.get("tasks") or [])
    lacking = [t for t in served if t not in comparison["tasks"]]
    out = [(not lacking, (f"coverage: {name} serves {', '.join(served) or 'no listed task'}; this challenger lacks "
                          f"{', '.join(lacking)}: never champion through the gate (`mtl promote` can move it by hand) "
                          "FAIL") if lacking else f"coverage: every task {name} serves is covered ok")]
    ours, theirs = mine.get("data_date"), info.get("data_date")
    if ours and theirs:
        later = str(ours) > str(theirs)
        out.append((later, f"data date {ours} vs {name}'s {theirs}: "
                    + ("later ok" if later else "not later (a backfill or a rerun of its day): registered, "
                                                "never champion through the gate FAIL")))
    else:
        out.append((False, f"data date unknown (challenger {ours}, {name} {theirs}): cannot order them FAIL"))
    if cfg.require_improvement:
        # Significance needs an interval: a point estimate alone never counts as an improvement.
        better = [t for t, r in comparison["tasks"].items()
                  if _defined((r.get("vs_champion") or {}).get("lo")) and r["vs_champion"]["lo"] > 0]
        out.append((bool(better), "improvement (gate.require_improvement): " + (
            f"{', '.join(better)} significantly better than {name} (lower bound > 0) ok" if better
            else f"no task significantly better than {name} (lower bound > 0) FAIL")))
    return out


def decide(comparison: Mapping[str, Any], cfg: GateConfig) -> Decision:
    """Pass when every check passes (see the module docstring); `reasons` has one line per check."""
    if comparison.get("champion_error"):
        return Decision(False, (f"the champion could not be re-scored: {comparison['champion_error']} FAIL",))
    info = comparison.get("champion")
    checks: list[tuple[bool, str]] = []
    if info is None:
        checks.append((True, "first version: no champion to beat, only the baselines"))
    else:
        checks += _champion_checks(comparison, cfg)
    champ_name = None if info is None else f"champion v{info.get('version')}"
    order = comparison.get("order") or list(comparison["tasks"])  # JSON files sort keys; keep the task order
    for task in order:
        checks += _task_checks(task, comparison["tasks"][task], champ_name, cfg)
    if not comparison["tasks"]:
        checks.append((False, "no task to compare FAIL"))
    return Decision(all(ok for ok, _ in checks), tuple(msg for _, msg in checks))


def seesaw(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    """(task, baseline) pairs where MTL is worse than the baseline beyond the bootstrap interval (hi < 0)."""
    out = []
    for task, row in comparison["tasks"].items():
        for name, vs in sorted((row.get("vs_baselines") or {}).items()):
            if vs and _defined(vs.get("hi")) and vs["hi"] < 0:
                out.append({"task": task, "baseline": name, "diff": vs["diff"], "lo": vs["lo"], "hi": vs["hi"]})
    return out
