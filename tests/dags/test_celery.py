"""Past one machine for real: Airflow's CeleryExecutor with a Redis broker and two Celery workers.

Started here as separate processes on 127.0.0.1, as docker/compose.yaml's `celery` profile runs them:
PostgreSQL (metadata DB and Celery result backend), Debian's `redis-server` (the broker), an api-server, a
scheduler, a dag-processor and two `airflow celery worker`s consuming the `default` queue. The whole DAG runs
for one day; the per-task baselines must run on both workers at the same time (the `gpu` pool gets 2 slots
here, as a deployment with two GPUs would set it). Skipped, saying why, only where Redis, PostgreSQL or the
Celery provider cannot be had (.ci/run installs them).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from e2e_helpers import REPO, free_port, postgres_bin, start_postgres
from test_airflow_ui import FAST_CONF, Api, _group_gone, _run_state

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
BIN = Path(sys.executable).parent
WORKERS = ("worker-a", "worker-b")
# The settings docker/compose.yaml's celery profile uses too (checked below).
RESULT_BACKEND_SCHEME = "db+postgresql+psycopg2"
WORKER_COMMAND = ["celery", "worker", "--queues", "default"]
CONCURRENCY = "2"


def _missing() -> str:
    if shutil.which("redis-server") is None:
        return "redis-server not installed (Debian package redis-server; .ci/run installs it)"
    if postgres_bin() is None:
        return "PostgreSQL binaries not installed (Debian package postgresql; .ci/run installs it)"
    for mod, what in (("airflow.providers.celery", "apache-airflow-providers-celery"), ("redis", "redis"),
                      ("psycopg2", "psycopg2-binary")):
        if importlib.util.find_spec(mod) is None:
            return f"{what} not installed (dev extra of setup.cfg)"
    return ""


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # each component in its own process group: one signal stops it all
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> list[int]:
    """SIGTERM every group, wait, SIGKILL what is left; returns the groups that had to be killed."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    killed = []
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if not _group_gone(p.pid, timeout=20):
            killed.append(p.pid)
    return killed


@pytest.fixture(scope="module")
def celery_cluster(tiny_landing):
    missing = _missing()
    if missing:
        pytest.skip(missing)
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="mtl-celery-"))  # outside pytest's 0700 folders: `postgres` enters it
    server, stop_pg = start_postgres(root)
    conn = psycopg2.connect(server.replace("postgresql+psycopg2", "postgresql") + "/postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE airflow")
    conn.close()
    redis_port, api_port = free_port(), free_port()
    (root / "redis").mkdir()
    procs = [_start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir",
                     str(root / "redis")], dict(os.environ), root / "redis.log")]
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "dags"), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{server}/airflow",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{RESULT_BACKEND_SCHEME}://{server.split('://', 1)[1]}/airflow",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": CONCURRENCY,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "mtl-tests-celery-" + "c" * 40,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # Both workers share this host: each reports its own name on the task instances it runs.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "celery_hostname.name",
        "MTL_HOME": str(root / "home"),
        "MTL_LANDING": str(tiny_landing),
    }
    (root / "airflow").mkdir()
    try:
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True,
                       timeout=300)
        for name in ("api-server", "scheduler", "dag-processor"):
            procs.append(_start([str(BIN / "airflow"), name], env, root / f"{name}.log"))
        for worker in WORKERS:
            procs.append(_start([str(BIN / "airflow"), *WORKER_COMMAND, "--celery-hostname", f"{worker}@%h"], {**env, "MTL_TEST_WORKER": worker},
                                root / f"{worker}.log"))
        api = Api(f"http://127.0.0.1:{api_port}")
        api.wait("the api-server", lambda: api.call("GET", "/api/v2/monitor/health"), 240)
        pw_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = api.wait("the admin password", lambda: json.loads(pw_file.read_text())["admin"], 60)
        api.token = api.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
        yield api, root
    finally:
        leftovers = _stop(procs)
        stop_pg()
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"process groups still alive after SIGTERM: {leftovers}"


def _overlap(a: dict, b: dict) -> bool:
    start = max(dt.datetime.fromisoformat(a["start_date"]), dt.datetime.fromisoformat(b["start_date"]))
    end = min(dt.datetime.fromisoformat(a["end_date"]), dt.datetime.fromisoformat(b["end_date"]))
    return start < end


def test_whole_dag_on_two_celery_workers(celery_cluster):
    api, root = celery_cluster
    api.call("POST", "/api/v2/pools", {"name": "gpu", "slots": 2})
    api.wait("the DAG to be parsed", lambda: api.call("GET", "/api/v2/dags/mtl_retrain")["dag_id"], 180)
    api.call("PATCH", "/api/v2/dags/mtl_retrain", {"is_paused": False})
    conf = {"train__epochs": 1, "text__enabled": False, "model__tasks": ["ctr", "cart", "ctcvr"],
            "overrides": FAST_CONF}
    run = api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns",
                   {"logical_date": "2026-01-10T00:00:00Z", "run_after": "2026-01-10T00:00:00Z", "conf": conf})
    try:
        state = api.wait("the run on Celery", lambda: _run_state(api, run["dag_run_id"]), 600, every=5)
    except AssertionError:
        state = "timed out"
    if state != "success":
        tis = api.call("GET", f"/api/v2/dags/mtl_retrain/dagRuns/{run['dag_run_id']}/taskInstances?limit=100")
        states = [(t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tis["task_instances"]]
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(root.glob("*.log")))
        pytest.fail(f"run {state}: {states}\n{logs}")
    tis = api.call("GET", f"/api/v2/dags/mtl_retrain/dagRuns/{run['dag_run_id']}/taskInstances?limit=100")
    tis = tis["task_instances"]
    assert {t["state"] for t in tis} <= {"success", "skipped"}, [(t["task_id"], t["state"]) for t in tis]
    ran = [t for t in tis if t["state"] == "success"]  # a skipped task (e.g. an empty mapping) never ran anywhere
    assert {t["hostname"] for t in ran} == set(WORKERS), "every task ran on a Celery worker, both were used"
    baselines = [t for t in tis if t["task_id"] == "train_baseline"]
    assert len(baselines) == 3
    pairs = [(a, b) for i, a in enumerate(baselines) for b in baselines[i + 1:]
             if a["hostname"] != b["hostname"] and _overlap(a, b)]
    assert pairs, "no two baselines ran at the same time on different workers: " + json.dumps(
        [(t["map_index"], t["hostname"], t["start_date"], t["end_date"]) for t in baselines])
    assert (root / "home" / "runs" / "2026-01-10" / "evaluation.json").is_file()


def test_compose_celery_profile_is_what_this_test_runs():
    """docker/compose.yaml's celery profile runs the workers with the settings the test above exercises."""
    import yaml

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    env = compose["x-airflow-env"]
    worker = compose["services"]["airflow-worker"]
    assert worker["command"].split() == WORKER_COMMAND and "celery" in worker["profiles"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith(RESULT_BACKEND_SCHEME + "://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "${CELERY_CONCURRENCY:-%s}" % CONCURRENCY
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
