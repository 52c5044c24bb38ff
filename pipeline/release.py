"""The register stage: gate a run's evaluation, then log it to MLflow as a model version (never stages).

    register(cfg, run_id="2026-01-10")             # or register(cfg, run_dir=".mtl/runs/2026-01-10")
      -> {"run_id", "version", "champion": bool, "gate": "passed"|"failed"}   + runs/<id>/registration.json

Everything a version needs is read from the saved run folder (evaluation.json, features, models), so a run
whose registration failed (tracking server down) is registered later from its outputs. The champion alias is
the last thing written, so a failure part-way never moves it. Version tags: gate, gate_reasons, data_date,
run_id, config_hash, git_commit, dag_run_id, rerun_of; hand moves (`pipeline.registry.promote` / `rollback`)
add promoted_by/why or rolled_back_by/why.

This module composes evaluation (gate, card, plots) and the MLflow layer (`pipeline.registry`); neither of those
imports it, which keeps the import graph a tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline import registry
from pipeline.config import Config
from pipeline.errors import RegistryError
from pipeline.evaluation import card, gate, plots
from pipeline.evaluation.evaluate import refresh_champion
from pipeline.io import read_json, write_json
from pipeline.paths import EVALUATION_FILE, REGISTRATION_FILE, Layout


def _check_inputs(cfg: Config, run_dir: Path, report: dict[str, Any]) -> None:
    """Everything the model bundle needs, checked before anything is written to MLflow."""
    layout = Layout.of(cfg.home)
    need = [run_dir / "models" / "mtl" / "meta.json", run_dir / "features" / "feature_spec.json",
            run_dir / "features" / "state", layout.snapshot("users", report["date"]),
            layout.snapshot("items", report["date"]), layout.impressions_dir(report["date"])]
    need += [run_dir / rel for rel in report["predictions"].values()]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise RegistryError(f"cannot register run {run_dir.name}: missing {missing} (the run folder and the lake of "
                            f"home {layout.home} must hold the run's outputs and its data date {report['date']})")


def _read_report(cfg: Config, run_id: str | None, run_dir: str | os.PathLike | None) -> tuple[str, Path, dict]:
    if run_dir is None and run_id is None:
        raise RegistryError("register needs run_id or run_dir")
    run_dir = Path(run_dir) if run_dir is not None else Layout.of(cfg.home).run_dir(run_id)
    run_id = run_id or run_dir.name
    ev_path = run_dir / EVALUATION_FILE
    if not ev_path.is_file():
        raise RegistryError(f"cannot register run {run_id}: {ev_path} is missing (run evaluate first)")
    report = read_json(ev_path)
    _check_inputs(cfg, run_dir, report)
    return run_id, run_dir, report


def register(cfg: Config, run_id: str | None = None, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Log run `run_id` (or the saved folder `run_dir`) to MLflow, register it, apply the gate."""
    run_id, run_dir, report = _read_report(cfg, run_id, run_dir)
    client = registry.connect(cfg)
    name = cfg.registry.model_name
    champ = registry.alias_version(client, name, registry.CHAMPION)
    evaluated = (report["comparison"].get("champion") or {}).get("version")
    if report["comparison"].get("champion_error") or evaluated != (None if champ is None else int(champ.version)):
        report = refresh_champion(cfg, run_dir, report)  # the champion moved since evaluation
    decision = gate.decide(report["comparison"], cfg.gate)
    earlier = registry.earlier_versions(client, name, report["date"])
    blocked = [v for v in earlier if v.tags.get(registry.FROM_GATE) == "true"]
    reasons = list(decision.reasons)
    if blocked:
        reasons.append(f"rerun for data date {report['date']}: version {blocked[0].version} already moved the "
                       "champion for it; not moved again")
    tags = {"gate": "passed" if decision.passed else "failed", "gate_reasons": "\n".join(reasons),
            "data_date": report["date"], "run_id": run_id, "config_hash": cfg.hash(),
            "git_commit": card.git_commit(), "dag_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
            "rerun_of": int(earlier[0].version) if earlier else None}
    with tempfile.TemporaryDirectory(prefix="mtl-plots-") as tmp:
        plots_dir = plots.make_plots(run_dir, report, Path(tmp) / "plots")
        mlflow_run, version = registry.log_version(cfg, client, run_dir, report, tags, card.flat_metrics(report),
                                                   plots_dir)
    move = decision.passed and not blocked
    text = card.render(cfg, run_dir, report, decision, version=version, tags=tags, champion_moved=move)
    registry.finish_version(client, cfg, version, text, tags, move, champ)
    result = {"run_id": run_id, "version": int(version), "champion": move, "gate": tags["gate"],
              "reasons": reasons, "mlflow_run_id": mlflow_run, "model_uri": f"models:/{name}/{version}",
              "tracking_uri": registry.tracking_uri(cfg), "rerun_of": tags["rerun_of"]}
    write_json(run_dir / REGISTRATION_FILE, result)
    return result
