"""Data-in speed: generate, ingest (14-day catch-up) and validate at the issue's scale, with peak memory.

    .venv/bin/python bench/data_bench.py [--days 14] [--impressions 150000] [--users 200000] [--items 50000]

Prints one line per stage (seconds, rows/s) and the process's peak RSS. Work happens in a temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--impressions", type=int, default=150_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=50_000)
    args = ap.parse_args()

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate

    rows = args.days * args.impressions
    with tempfile.TemporaryDirectory() as tmp:
        landing, cfg = Path(tmp) / "landing", load_config(home=Path(tmp) / "home")
        t = time.perf_counter()
        out = generate(landing, args.days, args.impressions, args.users, args.items, seed=0,
                       start_date="2026-01-01")
        _report("generate", time.perf_counter() - t, rows)
        last = out["dates"][-1]
        t = time.perf_counter()
        ingest(cfg, landing, last)
        _report("ingest (catch-up)", time.perf_counter() - t, rows)
        t = time.perf_counter()
        validate(cfg, last)
        _report("validate + publish", time.perf_counter() - t, rows)
        t = time.perf_counter()
        ingest(cfg, landing, last, run_id="rerun")
        validate(cfg, last, run_id="rerun")
        _report("rerun of the last day", time.perf_counter() - t, args.impressions)
    print(f"peak RSS {_peak_mb():.0f} MB")


def _report(stage: str, seconds: float, rows: int) -> None:
    print(f"{stage:24s} {seconds:7.2f} s  {rows / seconds:12,.0f} rows/s")


if __name__ == "__main__":
    main()
