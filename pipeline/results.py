"""How a run's results look to a person: grouped MLflow metric names, per-epoch histories, comparison tables.

Pure functions of a run's saved files (evaluation.json, models/<name>/meta.json); no MLflow, no Airflow.

Metric names are grouped by split, then task, so MLflow's UI folds them into sections and lines up the same
name across runs (the MTL parent run and each baseline child run use the same names):

    test/<task>/<metric>            test-window summary (auc, logloss, gauc_user, ...), overall
    test/<task>/<surface>/auc       per surface
    train/<task>/loss, valid/<task>/loss, valid/<task>/auc    per epoch, step = epoch (curves)
    valid/metric                    the early-stopping metric per epoch
    compare/<task>/vs_<name>        MTL minus <name> (a baseline or `champion`) test AUC (parent run only)

The comparison is read in both layouts of evaluation.json: per task `baselines`/`vs_baselines` (one entry per
baseline name) or the older single `baseline`/`vs_baseline` (read as `baseline_<task>`).
"""

from __future__ import annotations

import math
from typing import Any

SUMMARY_KEYS = ("auc", "logloss", "gauc_user", "gauc_request", "ndcg10", "ndcg10_fused", "pred_obs", "ece")


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(float(x))


def model_test_metrics(report: dict[str, Any], model: str) -> dict[str, float]:
    """`test/<task>/<metric>` and `test/<task>/<surface>/auc` of one model in evaluation.json (defined values)."""
    out: dict[str, float] = {}
    for task, m in (report.get("models", {}).get(model) or {}).items():
        for key in SUMMARY_KEYS:
            if _ok(m.get("overall", {}).get(key)):
                out[f"test/{task}/{key}"] = float(m["overall"][key])
        for surface, sm in (m.get("by_surface") or {}).items():
            if _ok(sm.get("auc")):
                out[f"test/{task}/{surface}/auc"] = float(sm["auc"])
    return out


def epoch_history(meta: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step=epoch) per epoch row of a model's meta.json `epochs` (empty when it has none)."""
    out: list[tuple[str, float, int]] = []
    for row in meta.get("epochs") or []:
        if not isinstance(row, dict) or "epoch" not in row:
            continue
        step = int(row["epoch"])
        for task, v in (row.get("train_loss") or {}).items():
            out.append((f"train/{task}/loss", v, step))
        valid = row.get("valid") or {}
        for kind in ("loss", "auc"):
            for task, v in (valid.get(kind) or {}).items():
                out.append((f"valid/{task}/{kind}", v, step))
        out.append(("valid/metric", row.get("metric"), step))
    return [(n, float(v), s) for n, v, s in out if _ok(v)]


def comparison_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: {"task", "mtl", "champion", "vs_champion", "baselines": {name: auc},
    "vs_baselines": {name: interval}}, whichever layout evaluation.json has."""
    comp = report.get("comparison") or {}
    tasks = comp.get("tasks", {})
    rows = []
    for task in comp.get("order") or report.get("tasks") or list(tasks):
        row = tasks.get(task) or {}
        bases, vs = dict(row.get("baselines") or {}), dict(row.get("vs_baselines") or {})
        if "baseline" in row and not bases and row["baseline"] is not None:
            bases[f"baseline_{task}"] = row["baseline"]
            if row.get("vs_baseline"):
                vs[f"baseline_{task}"] = row["vs_baseline"]
        rows.append({"task": task, "mtl": row.get("mtl"), "champion": row.get("champion"),
                     "vs_champion": row.get("vs_champion"), "baselines": bases, "vs_baselines": vs})
    return rows


def compare_metrics(report: dict[str, Any]) -> dict[str, float]:
    """`compare/<task>/vs_<name>`: MTL minus <name> test AUC (the interval's diff), defined values only."""
    out: dict[str, float] = {}
    for row in comparison_rows(report):
        pairs = [*row["vs_baselines"].items(), ("champion", row["vs_champion"])]
        for name, interval in pairs:
            if interval and _ok(interval.get("diff")):
                out[f"compare/{row['task']}/vs_{name}"] = float(interval["diff"])
    return out


def _num(x: Any, fmt: str = ".4f") -> str:
    return format(float(x), fmt) if _ok(x) else "n/a"


def _interval(iv: dict[str, Any] | None) -> str:
    if not iv:
        return "n/a"
    return f"{_num(iv.get('diff'), '+.4f')} [{_num(iv.get('lo'), '+.4f')}, {_num(iv.get('hi'), '+.4f')}]"


def comparison_table(report: dict[str, Any], markdown: bool = False) -> str:
    """The test-AUC comparison as a table: one line per task and reference (each baseline, the champion), with
    MTL's AUC, the reference's and the 95% interval of MTL minus reference. Plain text for logs, or Markdown."""
    head = ("task", "MTL AUC", "reference", "ref AUC", "MTL - ref [95% interval]")
    body = []
    for row in comparison_rows(report):
        refs = [(n, row["baselines"].get(n), row["vs_baselines"].get(n)) for n in sorted(row["baselines"])]
        champ = (report.get("comparison") or {}).get("champion")
        if row["champion"] is not None or champ:
            label = f"champion v{champ['version']}" if champ and "version" in champ else "champion"
            refs.append((label, row["champion"], row["vs_champion"]))
        for name, value, iv in refs or [("(none)", None, None)]:
            body.append((row["task"], _num(row["mtl"]), name, _num(value), _interval(iv)))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body])


def gate_lines(report: dict[str, Any]) -> list[str]:
    """The gate's decision and reasons from evaluation.json, one line each."""
    gate = report.get("gate") or {}
    if not gate:
        return []
    return [f"gate: {'passed' if gate.get('passed') else 'failed'}", *[f"  - {r}" for r in gate.get("reasons", [])]]


def report_summary(report_path: str) -> str:
    """What the evaluate task logs: test rows, the comparison table, the gate's decision (from evaluation.json)."""
    import json

    with open(report_path) as fh:
        report = json.load(fh)
    test = report.get("test") or {}
    head = f"test window {', '.join(test.get('dates') or [])}: {test.get('rows', 'n/a')} rows; report {report_path}"
    lines = [head, comparison_table(report), *gate_lines(report)]
    return "\n".join(lines)


def registration_links(result: dict[str, Any], mlflow_ui: str = "") -> str:
    """Where to look after register: the MLflow run, the model version and the Data Docs, as URLs of the MLflow
    UI (`mlflow_ui`, else the tracking URI when it is a server, else http://127.0.0.1:5000 of `make mlflow-ui`)."""
    uri = str(result.get("tracking_uri") or "")
    base = (mlflow_ui or (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")).rstrip("/")
    run, model_uri = result.get("mlflow_run_id"), str(result.get("model_uri") or "")
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    return "\n".join([
        f"MLflow run:     {base}/#/runs/{run}",
        (f"model version:  {base}/#/models/{name}/versions/{version}  (gate {result.get('gate')}, "
         f"champion moved: {result.get('champion')})"),
        "Data Docs:      the MLflow run's artifact validation/data_docs/index.html (renders offline)",
        *[f"  - {r}" for r in result.get("reasons") or []]])
