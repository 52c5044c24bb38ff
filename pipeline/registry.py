"""The MLflow layer, the only module that talks to a tracking server or registry (aliases, never stages).

Connect (with retries, naming the URI), look up aliases (scoring with a registered version in a fresh interpreter
is `pipeline.registry_score`), log a run with its pyfunc model version (`log_version`), tag it and point `challenger` at it
(`finish_version`), move `champion` by compare-and-set (`move_champion`), and by hand (`promote`, `rollback`).
The stages that decide whether to move it are `pipeline.release.register` and `promote_champion`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import RegistryError
from pipeline.paths import EVALUATION_FILE, Layout

CHAMPION, CHALLENGER = "champion", "challenger"
FROM_GATE = "champion_from_gate"
# MLflow 3's UI picks the experiment page by this tag: unset, it may open the GenAI traces page.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


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


def _experiment_id(client, cfg: Config) -> str:
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    # A database-backed store (SQLite, PostgreSQL...) would put artifacts in ./mlruns of the cwd at experiment creation;
    # a tracking server chooses its own artifact root.
    if not tracking_uri(cfg).startswith(("http://", "https://", "databricks")):
        location = Layout.of(cfg.home).mlflow_artifacts.as_uri()
    return client.create_experiment(cfg.registry.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)


def earlier_versions(client, name: str, data_date: str) -> list:
    """Versions of model `name` registered for `data_date`, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted((v for v in versions if v.tags.get("data_date") == data_date), key=lambda v: int(v.version))


def set_tags(client, name: str, version: str, tags: dict[str, Any]) -> None:
    """Set every non-None tag on a model version (values cut to MLflow's tag length)."""
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value)[:4900])


def version_tags(client, cfg: Config, version: int | str) -> dict[str, str]:
    """The tags of one version of the configured model."""
    return dict(client.get_model_version(cfg.registry.model_name, str(version)).tags)


def describe(client, cfg: Config, version: int | str, card: str) -> None:
    """Replace a version's description (its model card)."""
    client.update_model_version(cfg.registry.model_name, str(version), description=card)


def finish_version(client, cfg: Config, version: str, card: str, tags: dict[str, Any]) -> None:
    """Describe and tag a new version and point `challenger` at it. `champion` is `move_champion`'s."""
    name = cfg.registry.model_name
    client.update_model_version(name, version, description=card)
    set_tags(client, name, version, tags)
    client.set_registered_model_alias(name, CHALLENGER, version)


def move_champion(client, cfg: Config, version: int | str, expected: int | None) -> int | None:
    """Compare-and-set: point `champion` at `version` only if it is still at `expected` (None = no champion).

    Call it holding `pipeline.lock.registry_lease`; the check catches writers that do not take the lease.
    Tags the version `champion_from_gate` and `previous_champion`; returns the previous version.
    Raises ChampionMovedError when `champion` is elsewhere.
    """
    from pipeline.errors import ChampionMovedError

    name = cfg.registry.model_name
    current = alias_version(client, name, CHAMPION)
    now = None if current is None else int(current.version)
    if now != expected:
        raise ChampionMovedError(f"{name}: champion is version {now}, not {expected} as when version {version} was "
                                 "judged; judge it again against the new champion (a retry does)")
    client.set_model_version_tag(name, str(version), FROM_GATE, "true")
    if now is not None:
        client.set_model_version_tag(name, str(version), "previous_champion", str(now))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return now


def _log_model_run(client, run_id: str, run_dir: Path, report: dict, name: str) -> None:
    """Grouped test metrics and, from models/<name>/meta.json, per-epoch histories (step = epoch)."""
    from mlflow.entities import Metric

    from pipeline import results
    from pipeline.io import read_json

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in results.model_test_metrics(report, name).items()]
    meta = run_dir / "models" / name / "meta.json"
    if meta.is_file():
        metrics += [Metric(k, v, now, step) for k, v, step in results.epoch_history(read_json(meta))]
    for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i:i + 900])


def _note(report: dict, tags: dict) -> str:
    """The run's description (MLflow tag mlflow.note.content): comparison table, gate, where the Data Docs are."""
    from pipeline import results

    head = f"Run `{tags.get('run_id')}`, data date {report.get('date')}, DAG run `{tags.get('dag_run_id') or 'n/a'}`."
    return "\n".join([head, "", "### Test AUC: MTL vs references", "",
                      results.comparison_table(report, markdown=True), "", "### Gate", "",
                      *[f"- {r}" for r in str(tags.get("gate_reasons") or "").splitlines()], "",
                      f"Data Docs (Great Expectations, renders offline): artifact `{DATA_DOCS}`."])


DATA_DOCS = "validation/data_docs/index.html"


def log_version(cfg: Config, client, run_dir: Path, report: dict, tags: dict, metrics: dict[str, float],
                plots_dir: Path) -> tuple[str, str]:
    """One MLflow run (params, grouped metrics with per-epoch curves, report, Data Docs, plots) with one child
    run per other model of the report (baselines, the re-scored champion) under the same metric names, and the
    pyfunc model version it registers: -> (MLflow run id, version). Metric names: `pipeline.results`;
    `metrics` (flat names) is no longer logged, the grouped names replace it (kept so callers need not change)."""
    import mlflow

    from pipeline import results
    from pipeline.serving import pyfunc as serving

    exp_id = _experiment_id(client, cfg)
    for key, value in EXPERIMENT_TAGS.items():  # experiments created before the tag existed get it too
        client.set_experiment_tag(exp_id, key, value)
    readable = {"gate_reasons": " | ".join(str(tags.get("gate_reasons") or "").splitlines())}
    with mlflow.start_run(experiment_id=exp_id, run_name=str(tags["run_id"])) as run:
        mlflow.set_tags({k: str(v)[:4900] for k, v in {**tags, **readable}.items() if v is not None})
        mlflow.set_tags({"model": "mtl", "mlflow.note.content": _note(report, tags)[:4900]})
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        _log_model_run(client, run.info.run_id, run_dir, report, "mtl")
        mlflow.log_metrics(results.compare_metrics(report))
        mlflow.log_artifact(str(run_dir / EVALUATION_FILE))
        mlflow.log_text("\n".join(str(tags.get("gate_reasons") or "").splitlines()) + "\n", "gate_reasons.txt")
        docs = run_dir / "validation"
        if docs.is_dir():
            mlflow.log_artifacts(str(docs), "validation")
        for name in sorted(n for n in report["models"] if n != "mtl"):
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{tags['run_id']} {name}", nested=True) as child:
                mlflow.set_tags({"model": name, "run_id": str(tags["run_id"]), "data_date": report["date"]})
                _log_model_run(client, child.info.run_id, run_dir, report, name)
        with tempfile.TemporaryDirectory(prefix="mtl-register-") as tmp:
            tmp = Path(tmp)
            mlflow.log_artifacts(str(plots_dir), "plots")
            info = _bundle_info(cfg, report, tags)
            layout = Layout.of(cfg.home)
            bundle = serving.build_bundle(run_dir, tmp / "bundle", layout.snapshot("users", report["date"]),
                                          layout.snapshot("items", report["date"]), info)
            example = serving.input_example(cfg, report)
            model_info = mlflow.pyfunc.log_model(
                name="model", python_model=str(serving.entry_file(tmp / "entry")), artifacts={"bundle": str(bundle)},
                code_paths=[str(serving.code_dir(tmp / "code"))],
                pip_requirements=serving.requirements(cfg),
                signature=serving.signature(example, report["tasks"], serving.run_extras(run_dir)),
                input_example=example, registered_model_name=cfg.registry.model_name)
        return run.info.run_id, str(model_info.registered_model_version)


def _bundle_info(cfg: Config, report: dict, tags: dict) -> dict[str, Any]:
    from pipeline.serving.pyfunc import serving_info

    return serving_info(cfg, report["tasks"], run_id=tags["run_id"], data_date=report["date"],
                        config_hash=tags["config_hash"])


def _move(cfg: Config, version: int | str, who: str | None, why: str, kind: str) -> dict[str, Any]:
    """Point `champion` at `version`, tagging it `<kind>_by`/`<kind>_why` (and, on a promotion, the version
    it replaces as `previous_champion`, which `rollback` returns to)."""
    from mlflow.exceptions import MlflowException

    from pipeline.lock import registry_lease

    client = connect(cfg)
    name = cfg.registry.model_name
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}: {exc}") from None
    who = who or os.environ.get("USER") or "unknown"
    with registry_lease(cfg.home):  # a hand move takes its turn with the nightly registrations
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
