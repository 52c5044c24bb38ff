"""The release stages: register a run's version (gate, card, plots, `challenger`), then move `champion` as its own
step. Neither ever uses stages.

    register(cfg, run_id="2026-01-10")             # or register(cfg, run_dir=".mtl/runs/2026-01-10")
      -> {"run_id", "version", "gate": "passed"|"failed", "eligible", "champion": False, "compared_with",
          "reasons", ...}                                        + runs/<id>/registration.json
    promote_champion(cfg, run_id="2026-01-10")
      -> {"run_id", "version", "champion": True, "previous", "reasons"}   or GateRefusedError(reasons)

Everything a version needs is read from the saved run folder (evaluation.json, features, models), so a run
whose registration failed (tracking server down) is registered later from its outputs. Both steps run under the
home's registry lease (`pipeline.lock.registry_lease`), so runs of different dates take turns: each judges
against the champion as it is under the lease (re-scored when it moved since evaluation, named in every gate
line and in the tag `compared_with`), and `promote_champion` judges again if the champion moved since
`register`, then moves it by compare-and-set (`pipeline.registry.move_champion`). A version is eligible when
the gate passes and no earlier version of its data date moved `champion` (a rerun never moves it twice).
Version tags: gate, gate_reasons, compared_with, data_date, run_id, config_hash, git_commit, dag_run_id,
rerun_of; hand moves (`pipeline.registry.promote` / `rollback`) add promoted_by/why or rolled_back_by/why.

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
from pipeline.errors import GateRefusedError, RegistryError
from pipeline.evaluation import card, gate, plots
from pipeline.evaluation.evaluate import refresh_champion
from pipeline.io import read_json, write_json
from pipeline.lock import registry_lease
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


def _judge(cfg: Config, client, run_dir: Path, report: dict, champ, version: int | None = None):
    """Judge the run against `champ` (the champion now, read under the lease): re-score it if it is not the
    one evaluated, decide, apply the rerun rule. -> (report, decision, reasons, eligible)."""
    evaluated = (report["comparison"].get("champion") or {}).get("version")
    if report["comparison"].get("champion_error") or evaluated != (None if champ is None else int(champ.version)):
        report = refresh_champion(cfg, run_dir, report)  # the champion moved since evaluation
    decision = gate.decide(report["comparison"], cfg.gate)
    earlier = registry.earlier_versions(client, cfg.registry.model_name, report["date"])
    blocked = [v for v in earlier if v.tags.get(registry.FROM_GATE) == "true" and int(v.version) != version]
    reasons = list(decision.reasons)
    if blocked:
        reasons.append(f"rerun for data date {report['date']}: version {blocked[0].version} already moved the "
                       "champion for it; not moved again")
    return report, decision, reasons, decision.passed and not blocked


def _compared_with(report: dict) -> int | None:
    return (report["comparison"].get("champion") or {}).get("version")


def register(cfg: Config, run_id: str | None = None, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Log run `run_id` (or the saved folder `run_dir`) to MLflow, register it as `challenger`, record the gate.

    Never moves `champion` (that is `promote_champion`). Holds the registry lease throughout."""
    run_id, run_dir, report = _read_report(cfg, run_id, run_dir)
    client = registry.connect(cfg)
    name = cfg.registry.model_name
    with registry_lease(cfg.home, owner=f"register {run_id}"):
        champ = registry.alias_version(client, name, registry.CHAMPION)
        report, decision, reasons, eligible = _judge(cfg, client, run_dir, report, champ)
        earlier = registry.earlier_versions(client, name, report["date"])
        compared = _compared_with(report)
        tags = {"gate": "passed" if decision.passed else "failed", "gate_reasons": "\n".join(reasons),
                "compared_with": compared or "none", "data_date": report["date"], "run_id": run_id,
                "config_hash": cfg.hash(), "git_commit": card.git_commit(),
                "dag_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
                "rerun_of": int(earlier[0].version) if earlier else None}
        with tempfile.TemporaryDirectory(prefix="mtl-plots-") as tmp:
            plots_dir = plots.make_plots(run_dir, report, Path(tmp) / "plots")
            mlflow_run, version = registry.log_version(cfg, client, run_dir, report, tags,
                                                       card.flat_metrics(report), plots_dir)
        text = card.render(cfg, run_dir, report, decision, version=version, tags=tags, champion_moved=False,
                           eligible=eligible)
        registry.finish_version(client, cfg, version, text, tags)
        result = {"run_id": run_id, "version": int(version), "gate": tags["gate"], "eligible": eligible,
                  "champion": False, "compared_with": compared, "reasons": reasons, "mlflow_run_id": mlflow_run,
                  "model_uri": f"models:/{name}/{version}", "tracking_uri": registry.tracking_uri(cfg),
                  "rerun_of": tags["rerun_of"]}
        write_json(run_dir / REGISTRATION_FILE, result)
    return result


def promote_champion(cfg: Config, run_id: str | None = None,
                     run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Move `champion` to the run's registered version if it is eligible against the champion as it is now.

    Judges again when the champion moved since `register` (re-scoring the new one), updates the version's gate
    tags and card, then moves the alias by compare-and-set. Raises GateRefusedError with the gate lines when
    the version is not eligible (nothing moves), RegistryError when the run was never registered."""
    run_id, run_dir, report = _read_report(cfg, run_id, run_dir)
    reg_path = run_dir / REGISTRATION_FILE
    if not reg_path.is_file():
        raise RegistryError(f"cannot promote run {run_id}: {reg_path} is missing (run register first)")
    reg = read_json(reg_path)
    version = int(reg["version"])
    client = registry.connect(cfg)
    name = cfg.registry.model_name
    with registry_lease(cfg.home, owner=f"promote {run_id}"):
        champ = registry.alias_version(client, name, registry.CHAMPION)
        if champ is not None and int(champ.version) == version:
            return {"run_id": run_id, "version": version, "champion": True, "previous": reg.get("previous_champion"),
                    "reasons": reg["reasons"], "already": True}
        report, decision, reasons, eligible = _judge(cfg, client, run_dir, report, champ, version)
        compared = _compared_with(report)
        tags = {"gate": "passed" if decision.passed else "failed", "gate_reasons": "\n".join(reasons),
                "compared_with": compared or "none"}
        registry.set_tags(client, name, str(version), tags)
        reg.update(gate=tags["gate"], eligible=eligible, compared_with=compared, reasons=reasons)
        if not eligible:
            write_json(reg_path, reg)
            raise GateRefusedError(version, reasons)
        previous = registry.move_champion(client, cfg, version, expected=compared)
        reg.update(champion=True, previous_champion=previous)
        write_json(reg_path, reg)
        all_tags = {**registry.version_tags(client, cfg, version), **tags}
        registry.describe(client, cfg, version, card.render(cfg, run_dir, report, decision, version=str(version),
                                                            tags=all_tags, champion_moved=True, eligible=True))
    return {"run_id": run_id, "version": version, "champion": True, "previous": previous, "reasons": reasons}
