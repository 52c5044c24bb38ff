"""Serving the registered champion: batch scoring of a landing day, and a real `mlflow models serve` over HTTP."""

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

import numpy as np
import polars as pl
import pytest
from e2e_helpers import REPO
from test_airflow_ui import _listening_addresses
from test_registry import DATE, config, register_by_hand

pytestmark = pytest.mark.slow
MODEL = "models:/ecommerce-mtl@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_home, fast_overrides_session):
    """A home whose registry holds one champion (the run of DATE); returns (cfg, home)."""
    import shutil

    home = tmp_path_factory.mktemp("serving") / "home"
    shutil.copytree(trained_home, home)
    cfg = config(home, fast_overrides_session)
    assert register_by_hand(cfg, DATE)["version"] == 1
    return cfg, home


def test_score_a_landing_day(served, tiny_landing, tmp_path):
    from pipeline.errors import IngestError, RegistryError
    from pipeline.serving.score import score

    cfg, _ = served
    out = tmp_path / "scores.parquet"
    result = score(cfg, MODEL, tiny_landing, DATE, out)
    frame = pl.read_parquet(out)
    day = pl.read_parquet(sorted((tiny_landing / "impressions" / f"dt={DATE}").glob("*.parquet")))
    assert result == {"out": str(out), "rows": day.height}
    assert frame.columns == ["event_id", "p_ctr", "p_cart", "p_ctcvr", "p_cvr", "score"]
    assert sorted(frame["event_id"].to_list()) == sorted(day["event_id"].to_list())
    probs = frame.select(["p_ctr", "p_cart", "p_ctcvr", "p_cvr"]).to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert np.allclose(frame["score"].to_numpy(), frame["p_ctr"].to_numpy() * frame["p_cvr"].to_numpy())
    with pytest.raises(RegistryError, match="nope"):
        score(cfg, "models:/nope@champion", tiny_landing, DATE, tmp_path / "x.parquet")
    with pytest.raises(IngestError, match="landing day not found"):
        score(cfg, MODEL, tiny_landing, "2030-01-01", tmp_path / "y.parquet")
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "y.parquet").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _models_serve(home: Path, port: int, log: Path, model: str = MODEL, **env: str) -> subprocess.Popen:
    """`mlflow models serve` of `model` from `home`'s registry on 127.0.0.1:`port` (its own process group), with
    the venv's bin on PATH (mlflow starts `uvicorn` by name) and extra environment `env`. Both MLflow URIs are
    set: an earlier test may have left MLFLOW_REGISTRY_URI (another home) in the environment."""
    bin_dir = Path(sys.executable).parent
    uri = f"sqlite:///{home.resolve() / 'mlflow.db'}"
    full = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port), "-w", "1"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_up(proc: subprocess.Popen, url: str, log: Path, limit: float = 180.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server not up after {limit}s:\n{log.read_text()[-3000:]}")


def _records(tiny_landing: Path, n: int) -> list[dict]:
    """Raw impressions of DATE as JSON records (what a caller sends): ts as ISO text, no labels."""
    rows = pl.read_parquet(sorted((tiny_landing / "impressions" / f"dt={DATE}").glob("*.parquet"))).head(n)
    rows = rows.drop(["clicked", "carted", "purchased"]).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    return rows.to_dicts()


def test_mlflow_models_serve_answers_and_rejects_bad_rows(served, tiny_landing, tmp_path):
    _, home = served
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # `make serve` itself, pointed at this venv and home: it must put the venv's bin on PATH (mlflow starts
    # `uvicorn` by name), so the PATH given here holds no venv. No MLFLOW_*_URI from the environment either: an
    # earlier test may have left one (another home) there.
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    log = tmp_path / "serve.log"
    cmd = ["make", "-s", "-C", str(REPO), "serve", f"VENV={venv}", f"MTL_HOME={home.resolve()}",
           f"SERVE_PORT={port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_up(proc, url, log)
        assert _listening_addresses(port) == {"0100007F"}, "make serve must listen on 127.0.0.1 only"
        records = _records(tiny_landing, 20)
        status, body = _post(url + "/invocations", {"dataframe_records": records})
        assert status == 200, body
        preds = json.loads(body)["predictions"]
        assert [p["event_id"] for p in preds] == [r["event_id"] for r in records]
        for p in preds:
            assert set(p) == {"event_id", "p_ctr", "p_cart", "p_ctcvr", "p_cvr", "score"}
            assert all(0.0 <= p[f"p_{t}"] <= 1.0 for t in ("ctr", "cart", "ctcvr", "cvr"))
            assert p["score"] == pytest.approx(p["p_ctr"] * p["p_cvr"], rel=1e-9)

        bad = [dict(r) for r in records[:3]]
        bad[1]["surface"] = "shop"
        status, body = _post(url + "/invocations", {"dataframe_records": bad})
        assert status == 400, body
        assert "surface" in body and "row 1" in body and "Traceback" not in body
        missing = [{k: v for k, v in r.items() if k != "item_id"} for r in records[:2]]
        status, body = _post(url + "/invocations", {"dataframe_records": missing})
        assert status == 400 and "item_id" in body and "Traceback" not in body, body
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (mlflow -> uvicorn -> workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
