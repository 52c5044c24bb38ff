"""`run_all`: every stage for one logical date, in order, in this process (the CLI's `mtl run`).

It calls exactly the stage functions the DAG calls (docs/architecture.md), so a CLI run and an Airflow run
compute the same thing. It holds the date's run lock (pipeline.lock) so it cannot interleave with another
run of the same date, from the CLI or from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from pipeline.config import Config
from pipeline.io import read_json
from pipeline.lock import run_lock
from pipeline.paths import (
    EVALUATION_FILE,
    MTL_MODEL,
    REGISTRATION_FILE,
    Layout,
    baseline_name,
    gbdt_name,
    parse_date,
)

log = logging.getLogger(__name__)


def model_names(cfg: Config) -> list[str]:
    """The models one run trains: the MTL model, then one single-task DNN baseline per task and one LightGBM
    baseline per task (each if enabled)."""
    names = [MTL_MODEL]
    if cfg.train.baselines:
        names += [baseline_name(t) for t in cfg.model.tasks]
    if cfg.train.gbdt_baselines:
        names += [gbdt_name(t) for t in cfg.model.tasks]
    return names


def run_all(
    cfg: Config, landing: str | os.PathLike, date: str | dt.date, run_id: str | None = None
) -> dict[str, Any]:
    """ingest -> validate -> features -> train (mtl + baselines) -> evaluate -> register -> promote.

    Returns `{stage: that stage's result}` (train: `{name: result}`; promote: `promote_champion`'s, or
    `{"run_id", "version", "champion": False, "reasons"}` when the gate refuses). With `cfg.dry_run` it stops
    after evaluation and registers nothing. Raises the stage's MTLError on failure; earlier stages' outputs stay.
    """
    day = parse_date(date)
    run_id = run_id or day.isoformat()
    out: dict[str, Any] = {"run_id": run_id, "date": day.isoformat()}
    with run_lock(cfg.home, day):  # taken before the heavy imports: a locked date fails at once
        from pipeline.data.ingest import ingest
        from pipeline.data.validate import validate
        from pipeline.evaluation.evaluate import evaluate
        from pipeline.features.build import build_features
        from pipeline.training.launch import launch

        out["ingest"] = ingest(cfg, landing, day, run_id)
        out["validate"] = validate(cfg, day, run_id)
        out["features"] = build_features(cfg, day, run_id)
        out["train"] = {}
        for name in model_names(cfg):
            log.info("training %s for run %s", name, run_id)
            out["train"][name] = launch(cfg, run_id, name=name)
        out["evaluate"] = evaluate(cfg, run_id)
        if cfg.dry_run:
            log.info("dry run: nothing registered for run %s", run_id)
            return out
        from pipeline.errors import GateRefusedError
        from pipeline.release import promote_champion, register

        out["register"] = register(cfg, run_id=run_id)
        try:
            out["promote"] = promote_champion(cfg, run_id=run_id)
        except GateRefusedError as exc:  # a refusal is an outcome of the run, not a failure
            log.info("%s", exc)
            out["promote"] = {"run_id": run_id, "version": exc.version, "champion": False, "reasons": exc.reasons}
    return out


def run_summary(cfg: Config, run_id: str) -> dict[str, Any]:
    """What a finished (or failed) run left behind: report paths, registration result, failure summary."""
    run_dir = Layout.of(cfg.home).run_dir(run_id)
    out: dict[str, Any] = {"run_id": run_id, "run_dir": str(run_dir)}
    for key, name in (("evaluation", EVALUATION_FILE), ("registration", REGISTRATION_FILE),
                      ("failure", "run_summary.json")):
        path = run_dir / name
        if path.is_file():
            out[key] = {"path": str(path), "content": read_json(path)}
    if "registration" in out:
        from pipeline import registry

        client = registry.connect(cfg)
        name = cfg.registry.model_name
        aliases = {a: registry.alias_version(client, name, a) for a in ("champion", "challenger")}
        out["aliases"] = {a: (int(mv.version) if mv else None) for a, mv in aliases.items()}
    return out


def brief(summary: dict[str, Any]) -> str:
    """`run_summary` as a few human lines: report path, test AUC per model and task, version and aliases."""
    lines = [f"run {summary['run_id']}: {summary['run_dir']}"]
    if "failure" in summary:
        fail = summary["failure"]["content"]
        lines.append(f"FAILED in {fail.get('failed_task')}: {fail.get('error')}")
    if "evaluation" in summary:
        report = summary["evaluation"]["content"]
        lines.append(f"evaluation report: {summary['evaluation']['path']}")
        tasks = report.get("tasks", [])
        lines.append("test AUC        " + "".join(f"{t:>9}" for t in tasks))
        for model, metrics in sorted(report.get("models", {}).items()):
            aucs = [(metrics.get(t) or {}).get("overall", {}).get("auc") for t in tasks]
            lines.append(f"{model:<16}" + "".join(f"{a:9.4f}" if a is not None else f"{'-':>9}" for a in aucs))
    if "registration" in summary:
        reg = summary["registration"]["content"]
        lines.append(f"registered: {reg.get('model_uri')} (gate {reg.get('gate')}, champion now: "
                     f"{reg.get('champion')})")
        lines += [f"  {r}" for r in reg.get("reasons", [])]
        lines.append(f"aliases: {summary.get('aliases')}")
    return "\n".join(lines)
