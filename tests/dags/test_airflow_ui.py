"""The real Airflow UI/API: `airflow standalone` on 127.0.0.1, a trigger with params through the v2 REST API
(JWT auth), a three-day backfill, then every process stopped.

Slow by nature (a scheduler, an api-server and LocalExecutor task processes): one standalone serves both checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FAST_CONF = ["train.batch_size=512", "train.threads=1", "model.embedding_dim=8", "model.num_experts=2",
             "model.expert_hidden=[16]", "model.tower_hidden=[8]", "gate.bootstrap=20",
             "train.gbdt_baselines=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base: str):
        self.base, self.token = base, None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for attempt in range(5):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                # 503 = the SQLite metadata DB was locked by the scheduler for a moment: ask again.
                if exc.code != 503 or attempt == 4:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def wait(self, what: str, probe, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = probe()
                if value:
                    return value
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on `port`, from /proc/net/tcp{,6} (no extra tools needed)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, tiny_landing):
    root = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "3",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "mtl-ui-test-" + "s" * 40,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "MTL_HOME": str(root / "home"),
        "MTL_LANDING": str(tiny_landing),
        "MTL_LANDING_WAIT_HOURS": "0",  # as `make airflow-ui` sets for the demo home
    }
    (root / "airflow").mkdir()
    with open(root / "standalone.log", "wb") as log:
        # Its own process group (start_new_session): one signal stops every component (SIGTERM to standalone alone leaves them running).
        proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        api = Api(f"http://127.0.0.1:{port}")
        try:
            api.wait("the api-server", lambda: api.call("GET", "/api/v2/monitor/health"), 240)
            pw_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
            password = api.wait("the admin password", lambda: json.loads(pw_file.read_text())["admin"], 60)
            api.token = api.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
            yield api, root, port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            assert _group_gone(proc.pid), "airflow standalone left processes running"


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (a zombie is dead; PID 1 of a container may never reap it)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    """True once no live process of the group is left (each component exits on its own SIGTERM)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _live_members(pgid):
            return True
        time.sleep(0.5)
    os.killpg(pgid, signal.SIGKILL)
    return False


def _run_state(api: Api, run_id: str) -> str | None:
    state = api.call("GET", f"/api/v2/dags/mtl_retrain/dagRuns/{run_id}")["state"]
    return state if state in ("success", "failed") else None


def test_trigger_with_params_through_the_rest_api(standalone):
    api, root, port = standalone
    assert _listening_addresses(port) == {"0100007F"}, "the api-server must listen on 127.0.0.1 only"
    unauthenticated = Api(api.base)
    with pytest.raises(urllib.error.HTTPError) as denied:
        unauthenticated.call("GET", "/api/v2/dags")
    assert denied.value.code in (401, 403)

    api.call("POST", "/api/v2/pools", {"name": "gpu", "slots": 1})
    api.wait("the DAG to be parsed", lambda: api.call("GET", "/api/v2/dags/mtl_retrain")["dag_id"], 180)
    with pytest.raises(urllib.error.HTTPError) as rejected:  # the form's schema is enforced at trigger time
        api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns",
                 {"logical_date": "2026-01-09T00:00:00Z", "conf": {"train__epochs": 0}})
    assert rejected.value.code == 400
    conf = {"model__name": "ple", "model__tasks": ["ctr", "cvr"], "train__epochs": 1, "text__enabled": False,
            "train__baselines": False, "overrides": FAST_CONF}
    # run_after = the logical date: the catch-up run that unpausing creates (catchup=False still runs the latest missed slot) then queues behind ours.
    run = api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns",
                   {"logical_date": "2026-01-10T00:00:00Z", "run_after": "2026-01-10T00:00:00Z", "conf": conf})
    api.call("PATCH", "/api/v2/dags/mtl_retrain", {"is_paused": False})
    state = api.wait("the triggered run", lambda: _run_state(api, run["dag_run_id"]), 420, every=5)
    assert state == "success", (root / "standalone.log").read_text()[-5000:]

    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'home' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # explicit: MLflow keeps a process-global one
    versions = client.search_model_versions("name='ecommerce-mtl'")
    assert len(versions) == 1
    run_params = client.get_run(versions[0].run_id).data.params
    assert run_params.get("model.name") == "ple", "the form's model.name did not reach the run's config"


def test_backfill_three_days(standalone):
    """`POST /api/v2/backfills` (what `airflow backfill create` calls): one run per day, in date order.

    Logical dates are the 02:00 UTC slots between from_date and to_date: 01-07, 01-08 and 01-09 here."""
    api, root, _ = standalone
    # Windows short enough for the first backfilled day (2026-01-07) to have its train days in the landing.
    conf = {"dry_run": True, "train__baselines": False, "model__tasks": ["ctr"], "train__epochs": 1,
            "text__enabled": False, "data__train_days": 4, "overrides": FAST_CONF}
    api.call("POST", "/api/v2/backfills", {
        "dag_id": "mtl_retrain", "from_date": "2026-01-07T00:00:00Z", "to_date": "2026-01-10T00:00:00Z",
        "dag_run_conf": conf, "max_active_runs": 1, "reprocess_behavior": "none"})

    def finished():
        runs = api.call("GET", "/api/v2/dags/mtl_retrain/dagRuns?limit=50")["dag_runs"]
        runs = [r for r in runs if r["run_type"] == "backfill"]
        done = len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs)
        return runs if done else None

    runs = api.wait("three backfill runs", finished, 480, every=5)
    assert sorted(r["logical_date"][:10] for r in runs) == ["2026-01-07", "2026-01-08", "2026-01-09"]
    assert {r["state"] for r in runs} == {"success"}, runs
    for day in ("2026-01-07", "2026-01-08", "2026-01-09"):
        assert (root / "home" / "runs" / day / "evaluation.json").is_file(), day
        assert not (root / "home" / "runs" / day / "registration.json").exists(), "dry run registered"


def _task_states(api: Api, run_id: str) -> dict[str, str]:
    tis = api.call("GET", f"/api/v2/dags/mtl_retrain/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {t["task_id"]: t["state"] for t in tis if t["map_index"] < 0}


def test_rerun_a_finished_day_and_no_silent_waits(standalone):
    """Last in this file: with this test before the backfill, the scheduler died twice in three tries on SQLite
    (ObjectDeletedError on a DagRun after `POST /backfills` answered 503 and was retried).

    A finished day (2026-01-10, from the first test) re-runs through the REST API with the form's `date`
    and no logical date (the same logical date again answers 409); a manual run of a day that never landed
    fails at once in wait_for_landing; the scheduled slot that unpausing started was skipped, not left waiting."""
    api, root, _ = standalone
    conf = {"model__name": "ple", "model__tasks": ["ctr", "cvr"], "train__epochs": 1, "text__enabled": False,
            "train__baselines": False, "overrides": FAST_CONF}
    with pytest.raises(urllib.error.HTTPError) as again:
        api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns", {"logical_date": "2026-01-10T00:00:00Z", "conf": conf})
    assert again.value.code == 409
    rerun = api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns",
                     {"logical_date": None, "conf": {**conf, "date": "2026-01-10"}})
    missing = api.call("POST", "/api/v2/dags/mtl_retrain/dagRuns",
                       {"logical_date": None, "conf": {**conf, "date": "2026-03-01"}})
    assert api.wait("the re-run", lambda: _run_state(api, rerun["dag_run_id"]), 420, every=5) == "success", \
        (root / "standalone.log").read_text()[-5000:]
    assert api.wait("the run of a missing day", lambda: _run_state(api, missing["dag_run_id"]), 120) == "failed"
    states = _task_states(api, missing["dag_run_id"])
    assert states["wait_for_landing"] == "failed" and states["release_lock"] == "success", states

    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'home' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(client.search_model_versions("name='ecommerce-mtl'"), key=lambda v: int(v.version))
    assert [v.tags["data_date"] for v in versions] == ["2026-01-10", "2026-01-10"]
    assert versions[1].tags["rerun_of"] == str(versions[0].version)
    assert versions[1].tags["dag_run_id"] == rerun["dag_run_id"]

    runs = api.call("GET", "/api/v2/dags/mtl_retrain/dagRuns?limit=50")["dag_runs"]
    scheduled = [r for r in runs if r["run_type"] == "scheduled"]
    assert scheduled, "unpausing started no catch-up run"
    for r in scheduled:
        assert api.wait("the scheduled run", lambda r=r: _run_state(api, r["dag_run_id"]), 120) == "success"
        assert _task_states(api, r["dag_run_id"])["wait_for_landing"] == "skipped"
