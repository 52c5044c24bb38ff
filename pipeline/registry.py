"""MLflow: log a run, register its model version, apply the gate to the `champion` alias (never stages).

    register(cfg, run_id="2026-01-10")             # or register(cfg, run_dir=".mtl/runs/2026-01-10")
      -> {"run_id", "version", "champion": bool, "gate": "passed"|"failed"}   + runs/<id>/registration.json

Everything a version needs is read from the saved run folder (evaluation.json, features, models), so a run
whose registration failed (tracking server down) is registered later from its outputs. The champion alias is
the last thing written, so a failure part-way never moves it. Version tags: gate, gate_reasons, data_date,
run_id, config_hash, git_commit, dag_run_id, rerun_of; hand moves add promoted_by/why or rolled_back_by/why.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import RegistryError
from pipeline.io import read_json, write_json
from pipeline.paths import EVALUATION_FILE, REGISTRATION_FILE, Layout

CHAMPION, CHALLENGER = "champion", "challenger"
FROM_GATE = "champion_from_gate"


def tracking_uri(cfg: Config) -> str:
    """cfg.registry.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db."""
    uri = cfg.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Layout.of(cfg.home).mlflow_db}"


def _probe(uri: str) -> None:
    """Raise OSError when an HTTP tracking server does not answer its health check."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as resp:
            if resp.status != 200:
                raise OSError(f"health check answered HTTP {resp.status}")


def _set_uri(mlflow, uri: str) -> None:
    """Set MLflow's tracking and registry URI without leaving them in os.environ: MLflow writes
    MLFLOW_TRACKING_URI there, which would then override the next Config's home in this process."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def connect(cfg: Config):
    """Point MLflow at the tracking URI and check it answers; RegistryError naming the URI after the retries."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Layout.of(cfg.home).home.mkdir(parents=True, exist_ok=True)
    wait, last = cfg.registry.retry_wait_s, ""
    for attempt in range(cfg.registry.connect_retries):
        try:
            _probe(uri)
            _set_uri(mlflow, uri)
            client = MlflowClient(uri, uri)
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # noqa: BLE001 - network, DB and MLflow errors all mean "not reachable now"
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if attempt + 1 < cfg.registry.connect_retries:
            time.sleep(wait)
            wait *= 2
    raise RegistryError(f"MLflow tracking server {uri} unreachable after {cfg.registry.connect_retries} "
                        f"attempt(s): {last}")


def alias_version(client, name: str, alias: str):
    """The model version holding `alias`, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_predictions(cfg: Config, raw) -> tuple[dict[str, Any], Any] | None:
    """Re-score raw contract rows (pandas) with the current champion: (info, frame with p_<task>) or None."""
    from pipeline.score import predict_isolated

    client = connect(cfg)
    mv = alias_version(client, cfg.registry.model_name, CHAMPION)
    if mv is None:
        return None
    info = {"version": int(mv.version), "run_id": mv.tags.get("run_id"), "data_date": mv.tags.get("data_date")}
    return info, predict_isolated(cfg, f"models:/{cfg.registry.model_name}/{mv.version}", raw)


def _experiment_id(client, cfg: Config) -> str:
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    # A database-backed store (SQLite, PostgreSQL...) would put artifacts in ./mlruns of the cwd (STACK item 10);
    # a tracking server chooses its own artifact root.
    if not tracking_uri(cfg).startswith(("http://", "https://", "databricks")):
        location = Layout.of(cfg.home).mlflow_artifacts.as_uri()
    return client.create_experiment(cfg.registry.experiment, artifact_location=location)


def _earlier_versions(client, name: str, data_date: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted((v for v in versions if v.tags.get("data_date") == data_date), key=lambda v: int(v.version))


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


def _set_tags(client, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value)[:4900])


def register(cfg: Config, run_id: str | None = None, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Log run `run_id` (or the saved folder `run_dir`) to MLflow, register it, apply the gate."""
    from pipeline import evaluate as ev_mod
    from pipeline import gate, modelcard

    if run_dir is None and run_id is None:
        raise RegistryError("register needs run_id or run_dir")
    run_dir = Path(run_dir) if run_dir is not None else Layout.of(cfg.home).run_dir(run_id)
    run_id = run_id or run_dir.name
    ev_path = run_dir / EVALUATION_FILE
    if not ev_path.is_file():
        raise RegistryError(f"cannot register run {run_id}: {ev_path} is missing (run evaluate first)")
    report = read_json(ev_path)
    _check_inputs(cfg, run_dir, report)
    client = connect(cfg)
    name = cfg.registry.model_name
    champ = alias_version(client, name, CHAMPION)
    evaluated = (report["comparison"].get("champion") or {}).get("version")
    if report["comparison"].get("champion_error") or evaluated != (None if champ is None else int(champ.version)):
        report = ev_mod.refresh_champion(cfg, run_dir, report)  # the champion moved since evaluation
    decision = gate.decide(report["comparison"], cfg.gate)
    earlier = _earlier_versions(client, name, report["date"])
    blocked = [v for v in earlier if v.tags.get(FROM_GATE) == "true"]
    reasons = list(decision.reasons)
    if blocked:
        reasons.append(f"rerun for data date {report['date']}: version {blocked[0].version} already moved the "
                       "champion for it; not moved again")
    tags = {"gate": "passed" if decision.passed else "failed", "gate_reasons": "\n".join(reasons),
            "data_date": report["date"], "run_id": run_id, "config_hash": cfg.hash(),
            "git_commit": modelcard.git_commit(), "dag_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
            "rerun_of": int(earlier[0].version) if earlier else None}
    mlflow_run, version = _log_run(cfg, client, run_dir, report, decision, tags)
    move = decision.passed and not blocked
    card = modelcard.render(cfg, run_dir, report, decision, version=version, tags=tags, champion_moved=move)
    client.update_model_version(name, version, description=card)
    _set_tags(client, name, version, tags)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if move:
        client.set_model_version_tag(name, version, FROM_GATE, "true")
        if champ is not None:
            client.set_model_version_tag(name, version, "previous_champion", champ.version)
        client.set_registered_model_alias(name, CHAMPION, version)
    result = {"run_id": run_id, "version": int(version), "champion": move, "gate": tags["gate"],
              "reasons": reasons, "mlflow_run_id": mlflow_run, "model_uri": f"models:/{name}/{version}",
              "tracking_uri": tracking_uri(cfg), "rerun_of": tags["rerun_of"]}
    write_json(run_dir / REGISTRATION_FILE, result)
    return result


def _log_run(cfg: Config, client, run_dir: Path, report: dict, decision, tags: dict) -> tuple[str, str]:
    """One MLflow run: params, metrics, report, Data Docs, plots, model card, and the pyfunc model version."""
    import mlflow

    from pipeline import modelcard, plots, serving

    exp_id = _experiment_id(client, cfg)
    with mlflow.start_run(experiment_id=exp_id, run_name=str(tags["run_id"])) as run:
        mlflow.set_tags({k: str(v)[:4900] for k, v in tags.items() if v is not None})
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        mlflow.log_metrics(modelcard.flat_metrics(report))
        mlflow.log_artifact(str(run_dir / EVALUATION_FILE))
        docs = run_dir / "validation"
        if docs.is_dir():
            mlflow.log_artifacts(str(docs), "validation")
        with tempfile.TemporaryDirectory(prefix="mtl-register-") as tmp:
            tmp = Path(tmp)
            mlflow.log_artifacts(str(plots.make_plots(run_dir, report, tmp / "plots")), "plots")
            info = _bundle_info(cfg, report, tags)
            layout = Layout.of(cfg.home)
            bundle = serving.build_bundle(run_dir, tmp / "bundle", layout.snapshot("users", report["date"]),
                                          layout.snapshot("items", report["date"]), info)
            example = serving.input_example(cfg, report)
            model_info = mlflow.pyfunc.log_model(
                name="model", python_model=str(serving.entry_file(tmp / "entry")), artifacts={"bundle": str(bundle)},
                code_paths=[str(serving.code_dir(tmp / "code"))],
                pip_requirements=serving.requirements(cfg), signature=serving.signature(example, report["tasks"]),
                input_example=example, registered_model_name=cfg.registry.model_name)
        return run.info.run_id, str(model_info.registered_model_version)


def _bundle_info(cfg: Config, report: dict, tags: dict) -> dict[str, Any]:
    from pipeline.score import effective_exponents, formula

    exps = effective_exponents(cfg.serving.score_exponents, report["tasks"])
    return {"tasks": report["tasks"], "exponents": exps, "formula": formula(exps),
            "run_id": tags["run_id"], "data_date": report["date"], "config_hash": tags["config_hash"]}


def _move(cfg: Config, version: int | str, who: str | None, why: str, kind: str) -> dict[str, Any]:
    """Point `champion` at `version`, tagging it `<kind>_by`/`<kind>_why` (and, on a promotion, the version
    it replaces as `previous_champion`, which `rollback` returns to)."""
    client = connect(cfg)
    name = cfg.registry.model_name
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}: {exc}") from None
    who = who or os.environ.get("USER") or "unknown"
    previous = alias_version(client, name, CHAMPION)
    client.set_model_version_tag(name, str(version), f"{kind}_by", who)
    client.set_model_version_tag(name, str(version), f"{kind}_why", why or "")
    if previous is not None and kind == "promoted":
        client.set_model_version_tag(name, str(version), "previous_champion", previous.version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"model": name, "version": int(version), "champion": int(version),
            "previous": None if previous is None else int(previous.version), "by": who, "why": why}


def promote(cfg: Config, version: int | str, why: str = "", who: str | None = None) -> dict[str, Any]:
    """Move `champion` to `version` by hand; recorded as tags promoted_by/promoted_why on that version."""
    return _move(cfg, version, who, why, "promoted")


def rollback(cfg: Config, why: str = "", who: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the version it replaced (tag previous_champion, else the newest older version
    that passed the gate); recorded as tags rolled_back_by/rolled_back_why on the version it moves to."""
    client = connect(cfg)
    name = cfg.registry.model_name
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    target = current.tags.get("previous_champion")
    if target is None:
        older = [v for v in client.search_model_versions(f"name='{name}'")
                 if int(v.version) < int(current.version) and v.tags.get(FROM_GATE) == "true"]
        if not older:
            raise RegistryError(f"{name}: champion version {current.version} has no earlier champion to roll back to")
        target = max(older, key=lambda v: int(v.version)).version
    return _move(cfg, target, who, why, "rolled_back")
