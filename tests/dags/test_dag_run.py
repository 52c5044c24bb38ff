"""Whole DAG runs through `dag.test()` on the real Airflow, real stages and a real MLflow SQLite registry."""

from __future__ import annotations

import json
import logging

import pytest
from e2e_helpers import LAST_DATE, LOGICAL, REPO, break_funnel, copy_landing, tree_bytes

pytestmark = pytest.mark.slow


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["mtl_retrain"]


def _states(dr) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
                for ti in dr.get_task_instances(session=session)}


def _asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.name == name).order_by(AssetEvent.timestamp)
        return [dict(e.extra or {}) for e in session.scalars(query)]


def _conf(landing, fast_overrides, **extra) -> dict:
    # The real gate at its defaults. Its known outcome here: this 1-epoch model trails its single-task baselines
    # on every task of 2026-01-10 (cvr by about -0.14, interval wholly below -0.02), so the gate refuses it.
    return {"landing": str(landing), "text__enabled": False, "train__epochs": 1, "overrides": fast_overrides,
            **extra}


def test_dag_run_registers_a_challenger_and_skips_promote_on_a_refused_gate(airflow_db, tiny_landing, tmp_home,
                                                                            fast_overrides, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    dr = _dag().test(logical_date=LOGICAL, run_conf=_conf(tiny_landing, fast_overrides))
    states = _states(dr)
    assert str(dr.state) == "success", states
    assert states.pop("promote") == "skipped", states  # not green: champion did not move
    assert {s for s in states.values()} == {"success"}, states
    assert sum(k.startswith("train_baseline[") for k in states) == 4
    assert sum(k.startswith("train_gbdt[") for k in states) == 4
    # One mapped aggregate task per lake day the features read; each wrote its day's tables into the lake.
    aggregated = sorted(p.name[3:] for p in (tmp_home / "lake" / "_aggregates").glob("dt=*"))
    assert sum(k.startswith("aggregate[") for k in states) == len(aggregated) > 1 and LAST_DATE in aggregated
    assert not list((tmp_home / "locks").glob("*.lock")), "the run lock was not released"
    events = _asset_events("mtl_lake_impressions")
    assert events and LAST_DATE in events[-1]["published"], events
    registration = json.loads((tmp_home / "runs" / LAST_DATE / "registration.json").read_text())
    assert (registration["gate"], registration["eligible"], registration["champion"]) == ("failed", False, False)
    failing = [r for r in registration["reasons"] if r.endswith("FAIL")]
    # refused on the baselines (DNN and LightGBM), the only references a first version has
    assert failing and all(" vs baseline_" in r or " vs gbdt_" in r for r in failing), registration["reasons"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "gate refused version 1; champion not moved" in logged and failing[0] in logged

    import mlflow
    import polars as pl

    from pipeline.serving.score import read_landing_day

    uri = f"sqlite:///{tmp_home / 'mlflow.db'}"
    # mlflow.set_*_uri write MLFLOW_*_URI into os.environ: let monkeypatch take them out again after the test,
    # or later subprocesses (`mlflow models serve` in test_serving.py) resolve models in this test's registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models:/ URIs resolve against the registry URI, process-global in MLflow
    assert _aliases(tmp_home) == {"challenger": 1}
    model = mlflow.pyfunc.load_model("models:/ecommerce-mtl@challenger")
    raw = read_landing_day(tiny_landing, LAST_DATE)
    out = pl.from_pandas(model.predict(raw.to_pandas()))
    assert out.height == raw.height and out["event_id"].to_list() == raw["event_id"].to_list()
    for task in ("ctr", "cart", "ctcvr", "cvr"):
        col = out[f"p_{task}"]
        assert col.null_count() == 0 and col.min() >= 0.0 and col.max() <= 1.0


def test_bad_day_fails_fast_without_retries_and_changes_nothing(airflow_db, tiny_landing, tmp_home, tmp_path,
                                                                fast_overrides):
    landing = copy_landing(tiny_landing, tmp_path / "landing")
    bad_ids = break_funnel(landing, LAST_DATE)
    dr = _dag().test(logical_date=LOGICAL, run_conf=_conf(landing, fast_overrides))
    states = _states(dr)
    assert str(dr.state) == "failed"
    assert states["validate"] == "failed" and states["features"] == "upstream_failed", states
    assert states["register"] == "upstream_failed" and states["release_lock"] == "success", states
    summary = json.loads((tmp_home / "runs" / LAST_DATE / "run_summary.json").read_text())
    assert summary["failed_task"] == "validate" and summary["try_number"] == 1
    assert "purchased" in summary["error"] and "DataValidationError" in summary["error"]
    assert any(i in summary["error"] for i in bad_ids), summary["error"]
    assert tree_bytes(tmp_home / "lake") == {}
    assert not (tmp_home / "mlflow.db").exists() or _versions(tmp_home) == []
    assert not list((tmp_home / "locks").glob("*.lock"))


def _aliases(home) -> dict[str, int]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {k: int(v) for k, v in client.get_registered_model("ecommerce-mtl").aliases.items()}


def _versions(home) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # explicit: MLflow keeps a process-global one
    return [v.version for v in client.search_model_versions("name='ecommerce-mtl'")]


def test_bad_params_fail_before_any_work(airflow_db, tiny_landing, tmp_home, fast_overrides):
    dr = _dag().test(logical_date=LOGICAL, run_conf=_conf(tiny_landing, fast_overrides,
                                                          model__tasks=["ctr", "views"]))
    states = _states(dr)
    assert str(dr.state) == "failed" and states["check_config"] == "failed", states
    assert states["ingest"] == "upstream_failed"
    assert not (tmp_home / "lake").exists() and not (tmp_home / "locks").exists()
