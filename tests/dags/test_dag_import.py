"""The DAG folder parses cleanly, without DB, network or heavy imports, into the schedule we promise."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap

from e2e_helpers import REPO

PARSE_PROBE = textwrap.dedent(
    """
    import socket, sqlite3, sys
    def refuse(*a, **k):
        raise RuntimeError("parse-time I/O: " + repr(a[:2]))
    socket.socket.connect = refuse
    socket.create_connection = refuse
    sqlite3.connect = refuse
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    assert not bag.import_errors, bag.import_errors
    assert list(bag.dags) == ["mtl_retrain"], list(bag.dags)
    heavy = [m for m in ("torch", "mlflow", "great_expectations", "polars", "transformers") if m in sys.modules]
    assert not heavy, heavy
    print("ok")
    """
)


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["mtl_retrain"]


def test_dag_folder_parses_without_db_network_or_heavy_imports(tmp_path):
    env_db = f"sqlite:///{tmp_path}/never-created/airflow.db"
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env_db}
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(REPO / "dags")], check=False, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    assert not (tmp_path / "never-created").exists()


def test_schedule_retries_and_structure():
    dag = _dag()
    assert dag.timetable.expression == "0 2 * * *" and dag.catchup is False
    # A scheduled slot waiting for its landing day does not hold manual runs (same-date runs: the per-date lock).
    assert 1 < dag.max_active_runs <= 3
    assert "02:00 UTC" in dag.doc_md
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) >= {"check_config", "take_lock", "wait_for_landing", "ingest", "validate", "features",
                          "train_mtl", "train_baseline", "train_gbdt", "evaluate", "register", "promote",
                          "release_lock"}
    assert "register" in tasks["promote"].upstream_task_ids  # champion moves as its own step, after register
    assert "release_lock" in tasks["promote"].downstream_task_ids
    for t in tasks.values():
        assert t.doc_md, f"{t.task_id} has no doc_md"
    # Data and config errors are not retried; transient stages back off exponentially.
    assert tasks["validate"].retries == 0 and tasks["check_config"].retries == 0
    for name in ("ingest", "features", "train_mtl", "register", "promote"):
        assert tasks[name].retries >= 2 and tasks[name].retry_exponential_backoff > 1, name
        assert tasks[name].on_failure_callback
    assert tasks["train_mtl"].pool == "gpu" and tasks["train_baseline"].pool == "gpu"
    assert tasks["train_gbdt"].pool != "gpu"  # LightGBM runs on the CPU: it must not queue behind the GPU models
    assert tasks["wait_for_landing"].mode == "reschedule"
    assert dt.timedelta(seconds=tasks["wait_for_landing"].timeout) <= dt.timedelta(hours=12)
    assert [o.name for o in tasks["validate"].outlets] == ["mtl_lake_impressions"]
    assert tasks["release_lock"].is_teardown
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(tasks["train_gbdt"], MappedOperator)
    # The per-day history aggregates: one mapped task per day the features read, between validate and features.
    assert isinstance(tasks["aggregate"], MappedOperator)
    assert tasks["aggregate"].upstream_task_ids >= {"aggregate_days"}
    assert "validate" in tasks["aggregate_days"].upstream_task_ids
    assert {"aggregate", "validate"} <= tasks["features"].upstream_task_ids
    assert isinstance(tasks["train_baseline"], MappedOperator) and not isinstance(tasks["train_mtl"], MappedOperator)


def test_trigger_form_is_the_config():
    from pipeline import params as form

    dag = _dag()
    names = set(dag.params.keys())
    assert names == {form.param_name(f.key) for f in form.FIELDS} | {form.LANDING, form.OVERRIDES,
                                                                       form.DATE, form.WAIT}
    dumped = dag.params.dump()
    assert dumped["model__name"] == "mmoe" and dumped["dry_run"] is False
    # Optional fields allow null: the form shows them as not required.
    for name in (form.DATE, form.LANDING, form.OVERRIDES):
        assert "null" in dag.params.get_param(name).schema["type"], name
    assert dag.params.get_param(form.DATE).schema["format"] == "date" and dumped[form.DATE] is None


def test_later_tasks_read_the_config_check_config_wrote(tmp_path, monkeypatch):
    """Every task after check_config builds its config from runs/<D>/config.json, not from $MTL_CONFIG or the
    form again; a file changed under a running run is refused (ConfigError: not retried)."""
    import importlib.util

    import pytest

    from pipeline.config import load_config, save_config
    from pipeline.errors import ConfigError

    spec = importlib.util.spec_from_file_location("mtl_retrain_probe", REPO / "dags" / "mtl_retrain.py")
    dag_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_mod)
    cfg = load_config(overrides=["model.name=ple"], home=tmp_path)
    path = tmp_path / "runs" / "2026-01-10" / "config.json"
    info = {"home": str(tmp_path), "config": str(path), "config_hash": save_config(cfg, path)}
    edited = tmp_path / "edited.yaml"
    edited.write_text("model:\n  name: esmm\n")
    monkeypatch.setenv("MTL_CONFIG", str(edited))  # someone edits the shared config file mid-run
    assert dag_mod._cfg(info) == cfg
    path.write_text(path.read_text().replace('"ple"', '"omoe"'))
    with pytest.raises(ConfigError, match="changed since check_config"):
        dag_mod._cfg(info)
