"""The model card: a Markdown description of one registered version, built from the saved run folder.

Sections: data window (dates, rows, label rates per split), model (architecture, key params, fused score),
test metrics (MTL vs each baseline vs champion, challenger - reference with bootstrap intervals, and per
surface), seesaw, gate decision,
diagnostics (expert collapse), lineage (lake fingerprints, git commit, config hash, DAG run id).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.evaluation.gate import interval_text
from pipeline.io import read_json
from pipeline.paths import (
    FEATURES_DIR,
    MODELS_DIR,
    MTL_MODEL,
    SELECTED_MODEL,
    Layout,
    baseline_name,
    gbdt_name,
)

SUMMARY_KEYS = ("auc", "logloss", "gauc_user", "gauc_request", "ndcg10", "ndcg10_fused", "pred_obs", "ece")


def git_commit() -> str:
    """The commit of the code that runs (`+dirty` with uncommitted changes), or 'unknown' outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=False)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """`<model>.<task>.<metric>` (overall) and `<model>.<task>.<surface>.auc` -> value, defined values only."""
    out: dict[str, float] = {}
    for model, tasks in report["models"].items():
        for task, m in tasks.items():
            for key in SUMMARY_KEYS:
                v = m["overall"].get(key)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[f"{model}.{task}.{key}"] = float(v)
            for surface, sm in m["by_surface"].items():
                if sm.get("auc") is not None and not math.isnan(sm["auc"]):
                    out[f"{model}.{task}.{surface}.auc"] = float(sm["auc"])
    return out


def _data_section(spec: dict[str, Any]) -> list[str]:
    lines = ["## Data", "", "| split | dates | rows | label rates |", "|---|---|---|---|"]
    for split, s in spec.get("splits", {}).items():
        dates = s.get("dates") or []
        window = f"{dates[0]} .. {dates[-1]}" if dates else "n/a"
        rates = ", ".join(f"{k} {_num(v)}" for k, v in (s.get("label_rates") or {}).items())
        lines.append(f"| {split} | {window} | {s.get('rows', 'n/a')} | {rates} |")
    return lines + [""]


def _text_line(cfg: Config, spec: dict[str, Any], meta: dict[str, Any]) -> str:
    """Which encoder the text tower used and, fine-tuned, on which pairs (feature_spec text.encoder, meta inputs)."""
    if not cfg.text.enabled:
        return "- text tower: off"
    text = spec.get("text") or {}
    enc, joint = text.get("encoder"), (meta.get("inputs") or {}).get("text_encoder")
    if enc:
        p, r = enc.get("pairs", {}), enc.get("recall", {})
        return (f"- text tower: `{enc.get('base')}` fine-tuned (contrastive, encoder version `{enc.get('version')}`, "
                f"fitted on {enc.get('trained_on')}) on {p.get('query_click')} (query, clicked title) and "
                f"{p.get('coclick')} co-click title pairs of the train window ({p.get('train')} trained, "
                f"{p.get('heldout')} held out); held-out recall@{r.get('k')} {_num(r.get('frozen'))} frozen -> "
                f"{_num(r.get('tuned'))} tuned")
    if joint:
        return (f"- text tower: `{joint.get('base')}`, top {joint.get('layers')} layer(s) trained jointly with the "
                f"multi-task loss (lr {joint.get('lr')}) on the train split; encoder saved with the model")
    return f"- text tower: on (`{cfg.text.model}`, frozen)"


def _refit_line(meta: dict[str, Any], report: dict[str, Any]) -> str:
    """What `train.refit` did: the epoch count selected on valid, the window retrained on, the selected model's
    test AUC beside the registered (refit) one's."""
    refit = meta.get("refit")
    towers = meta.get("per_task_best") or {}
    own = (f"; towers from their own best valid epoch: {', '.join(f'{t} {e}' for t, e in towers.items())}"
           if towers else "")
    if not refit:
        return f"- refit: off (the model selected on valid is the one registered){own}"
    dates = refit.get("train_dates") or []
    window = f"{dates[0]} .. {dates[-1]}" if dates else "n/a"
    models = report.get("models", {})
    aucs = ", ".join(f"{t} {_num(models.get(MTL_MODEL, {}).get(t, {}).get('overall', {}).get('auc'))} "
                     f"(selected {_num(models.get(SELECTED_MODEL, {}).get(t, {}).get('overall', {}).get('auc'))})"
                     for t in report.get("tasks", []))
    return (f"- refit: {refit.get('epochs')} epoch(s), the count selected on valid "
            f"({', '.join(refit.get('selected_on') or []) or 'n/a'}), retrained from scratch on {window} "
            f"({meta.get('train_rows', 'n/a')} rows){own}; vocabularies and feature stats stay the train window's; "
            f"registered = refit. Test AUC refit (selected on valid): {aucs}")


def _model_section(cfg: Config, meta: dict[str, Any], report: dict[str, Any],
                   spec: dict[str, Any] | None = None) -> list[str]:
    m, t = cfg.model, cfg.train
    return ["## Model", "",
            f"- architecture: `{meta.get('model', m.name)}`, tasks {', '.join(report['tasks'])}",
            (f"- embedding_dim {m.embedding_dim}, experts {m.num_experts} x {list(m.expert_hidden)}, "
             f"towers {list(m.tower_hidden)}, dropout {m.dropout}"),
            (f"- training: {t.epochs} epoch(s) max, best epoch {meta.get('best_epoch', 'n/a')}, "
             f"batch {t.batch_size}, lr {t.lr}, weighting `{t.weighting}`, {meta.get('train_rows', 'n/a')} train rows"),
            _refit_line(meta, report),
            _text_line(cfg, spec or {}, meta),
            f"- serving score: `{report.get('score_formula', 'n/a')}`", ""]


def _metrics_section(report: dict[str, Any]) -> list[str]:
    models = report["models"]
    comp = report["comparison"]["tasks"]
    lines = ["## Test metrics", "",
             (f"Test window {', '.join(report['test']['dates'])}: {report['test']['rows']} rows. Differences are "
              "challenger (MTL) minus reference, with 95% paired bootstrap intervals over requests."), "",
             ("| task | MTL AUC | baselines: AUC, MTL - baseline | champion AUC | MTL - champion | logloss "
              "| GAUC user | NDCG@10 | pred/obs | ECE |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for task in report["tasks"]:
        o = models[MTL_MODEL][task]["overall"]
        c = comp.get(task, {})
        base = "; ".join(f"{n} {_num(a)}, {interval_text((c.get('vs_baselines') or {}).get(n))}"
                         for n, a in sorted((c.get("baselines") or {}).items())) or "n/a"
        lines.append(f"| {task} | {_num(c.get('mtl'))} | {base} | {_num(c.get('champion'))} "
                     f"| {interval_text(c.get('vs_champion'))} | {_num(o['logloss'])} "
                     f"| {_num(o['gauc_user'])} | {_num(o['ndcg10'])} | {_num(o['pred_obs'], '.3f')} "
                     f"| {_num(o['ece'])} |")
    surfaces = list(next(iter(models[MTL_MODEL].values()))["by_surface"])
    lines += ["", "MTL AUC per surface:", "", "| task | " + " | ".join(surfaces) + " |",
              "|---|" + "---|" * len(surfaces)]
    for task in report["tasks"]:
        bs = models[MTL_MODEL][task]["by_surface"]
        lines.append(f"| {task} | " + " | ".join(_num(bs[s]["auc"]) for s in surfaces) + " |")
    seesaw = report.get("seesaw") or []
    lines += ["", "Seesaw (MTL worse than a baseline beyond the interval): "
              + (", ".join(f"{s['task']} vs {s.get('baseline', 'baseline')} ({_num(s['diff'], '+.4f')})"
                           for s in seesaw) or "none"), ""]
    return lines


def _baselines_section(run_dir: Path, report: dict[str, Any]) -> list[str]:
    """Test AUC of MTL beside every baseline present (DNN `baseline_<task>`, LightGBM `gbdt_<task>`), read from the
    per-model metrics, and the LightGBM baselines' top features by gain."""
    models = report["models"]
    lines = ["## Baselines", "", "| task | MTL | single-task DNN | LightGBM |", "|---|---|---|---|"]
    for task in report["tasks"]:
        aucs = [(models.get(n) or {}).get(task, {}).get("overall", {}).get("auc")
                for n in (MTL_MODEL, baseline_name(task), gbdt_name(task))]
        lines.append(f"| {task} | " + " | ".join(_num(a) for a in aucs) + " |")
    for task in report["tasks"]:
        meta_path = Path(run_dir) / MODELS_DIR / gbdt_name(task) / "meta.json"
        if meta_path.is_file():
            meta = read_json(meta_path)
            top = ", ".join(list(meta.get("importance", {}))[:5])
            lines.append(f"- `{gbdt_name(task)}`: {meta.get('best_epoch')} trees; top features by gain: {top}")
    return lines + [""]


def _lineage(cfg: Config, spec: dict[str, Any], tags: dict[str, Any]) -> list[str]:
    layout = Layout.of(cfg.home)
    lines = ["## Lineage", "", f"- run id `{tags.get('run_id')}`, data date {tags.get('data_date')}",
             f"- git commit `{tags.get('git_commit')}`, config hash `{tags.get('config_hash')}`",
             f"- DAG run id: {tags.get('dag_run_id') or 'n/a (not run by Airflow)'}",
             f"- rerun of version: {tags.get('rerun_of') or 'n/a'}", "- lake partitions (rows, sha256):"]
    dates = sorted({d for s in spec.get("splits", {}).values() for d in s.get("dates") or []})
    for d in dates:
        fp = layout.impressions_dir(d) / "_FINGERPRINT.json"
        info = read_json(fp) if fp.is_file() else {}
        lines.append(f"  - dt={d}: {info.get('rows', 'n/a')} rows, `{str(info.get('sha256', 'n/a'))[:16]}`")
    return lines + [""]


def render(cfg: Config, run_dir: Path, report: dict[str, Any], decision, version: str, tags: dict[str, Any],
           champion_moved: bool, eligible: bool = False) -> str:
    """The model card Markdown for `version` (see the module docstring). `eligible`: the promote step may move
    `champion` here; `champion_moved`: it did."""
    spec_path = Path(run_dir) / FEATURES_DIR / "feature_spec.json"
    spec = read_json(spec_path) if spec_path.is_file() else {}
    meta_path = Path(run_dir) / MODELS_DIR / MTL_MODEL / "meta.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    baselines = sorted({n for row in report["comparison"]["tasks"].values() for n in row.get("baselines") or {}})
    champ = report["comparison"].get("champion")
    lines = [f"# {cfg.registry.model_name} version {version}", "",
             f"Run `{tags.get('run_id')}` for data date {report['date']}. Compared with baselines "
             f"{', '.join(baselines) or '(none trained)'} (single-task DNN `baseline_<task>`, LightGBM "
             "`gbdt_<task>`) and with "
             + (f"champion version {champ['version']}" if champ else "no champion (first version)") + ".", ""]
    lines += _data_section(spec) + _model_section(cfg, meta, report, spec) + _metrics_section(report)
    lines += _baselines_section(run_dir, report)
    status = ("moved to this version." if champion_moved else
              "eligible: the promote step moves it here." if eligible else "not moved.")
    lines += ["## Gate", "", f"**{'passed' if decision.passed else 'failed'}**; champion {status}",
              "Each line: challenger - reference, 95% interval; the rule it must meet.", ""]
    lines += [f"- {r}" for r in tags.get("gate_reasons", "").splitlines()] + [""]
    collapse = (meta.get("diagnostics") or {}).get("expert_collapse") or []
    lines += ["## Diagnostics", "", f"- expert collapse: {collapse or 'none seen'}", ""]
    docs = Path(run_dir) / "validation" / "data_docs" / "index.html"
    lines += ["## Data Docs", "", ("Great Expectations validation of the run's days (renders offline): artifact "
              f"`validation/data_docs/index.html` of this version's MLflow run; on disk `{docs}`."), ""]
    return "\n".join(lines + _lineage(cfg, spec, tags))
