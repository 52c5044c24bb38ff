"""Latency of the served champion: p50/p99 of 1- and 50-row requests over HTTP, with a warm model.

    python bench/serve_bench.py --home .mtl                 # a home with a champion (after `make demo`)
    python bench/serve_bench.py --home /tmp/sb --build      # builds a small home first (generate, run, register)

Starts the same command as `make serve` (`mlflow models serve ... --env-manager local -w 1` on 127.0.0.1),
sends `--warmup` requests, then `--requests` timed requests per size, each with rows drawn from the last landing
day (raw impressions, no labels, as a caller sends them). Also times `model.predict` in this process, to tell
the model's own time from HTTP/JSON overhead. Prints one JSON line per (path, rows) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "models:/ecommerce-mtl@champion"
FAST = ["text.enabled=false", "train.epochs=1", "train.threads=2", "gate.max_baseline_regression=1.0",
        "gate.bootstrap=20", "train.baselines=false",
        "train.gbdt_baselines=false"]


def build(home: Path, days: int, per_day: int) -> tuple[Path, str]:
    """Generate a landing folder and run every stage for its last day, registering the champion."""
    import datetime as dt

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.run import run_all

    landing = home / "landing"
    start = dt.date(2026, 1, 1)
    last = (start + dt.timedelta(days=days - 1)).isoformat()
    if not landing.is_dir():
        generate(landing, days=days, impressions_per_day=per_day, users=2000, items=600, seed=7,
                 start_date=start.isoformat())
    run_all(load_config(overrides=FAST, home=home), landing, last)
    return landing, last


def records(landing: Path, day: str, n: int, offset: int) -> list[dict]:
    import polars as pl

    rows = pl.read_parquet(sorted((landing / "impressions" / f"dt={day}").glob("*.parquet")))
    rows = rows.slice(offset % max(rows.height - n, 1), n).drop(["clicked", "carted", "purchased"])
    return rows.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")).to_dicts()


def post(url: str, body: bytes) -> float:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
    return (time.perf_counter() - t0) * 1000


def pct(ms: list[float], q: float) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def serve(home: Path, port: int, log: Path) -> subprocess.Popen:
    """`make serve` for this home and venv (its own process group, so one signal stops it all)."""
    venv = Path(sys.executable).parent.parent
    cmd = ["make", "-s", "-C", str(REPO), "serve", f"VENV={venv}", f"MTL_HOME={home}", f"SERVE_PORT={port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server not up after 180 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--landing", type=Path, help="landing folder (default <home>/landing)")
    p.add_argument("--day", help="landing day to draw rows from (default: the last one)")
    p.add_argument("--build", action="store_true", help="generate data and register a champion in --home first")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--impressions-per-day", type=int, default=5000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sizes", default="1,50")
    a = p.parse_args()
    home = a.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MTL_HOME"] = str(home)
    landing, day = (build(home, a.days, a.impressions_per_day) if a.build else (a.landing or home / "landing", a.day))
    landing = Path(landing)
    day = day or max(p.name[3:] for p in (landing / "impressions").glob("dt=*"))
    sizes = [int(s) for s in a.sizes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(home, port, home / "serve_bench.log")
    out = []
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        for n in sizes:
            bodies = [json.dumps({"dataframe_records": records(landing, day, n, i * 37)}).encode()
                      for i in range(a.warmup + a.requests)]
            for body in bodies[:a.warmup]:
                post(url, body)
            ms = [post(url, body) for body in bodies[a.warmup:]]
            out.append({"path": "http", "rows": n, "requests": len(ms), "p50_ms": pct(ms, 0.5),
                        "p99_ms": pct(ms, 0.99), "mean_ms": statistics.fmean(ms)})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    out += in_process(home, landing, day, sizes, a.requests, a.warmup)
    for row in out:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    print(f"\n{'path':<12}{'rows':>6}{'p50 ms':>10}{'p99 ms':>10}   (day {day}, {a.requests} requests each, CPU)")
    for r in out:
        print(f"{r['path']:<12}{r['rows']:>6}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")


def in_process(home: Path, landing: Path, day: str, sizes: list[int], n_req: int, warmup: int) -> list[dict]:
    """The same requests through `model.predict` in this process: the model's share of the HTTP latency."""
    import mlflow
    import pandas as pd

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(MODEL)
    out = []
    for n in sizes:
        frames = [pd.DataFrame(records(landing, day, n, i * 37)) for i in range(warmup + n_req)]
        for f in frames[:warmup]:
            model.predict(f)
        ms = []
        for f in frames[warmup:]:
            t0 = time.perf_counter()
            model.predict(f)
            ms.append((time.perf_counter() - t0) * 1000)
        out.append({"path": "in-process", "rows": n, "requests": len(ms), "p50_ms": pct(ms, 0.5),
                    "p99_ms": pct(ms, 0.99), "mean_ms": statistics.fmean(ms)})
    return out


if __name__ == "__main__":
    main()
