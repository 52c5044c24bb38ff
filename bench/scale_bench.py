"""The nightly run at 1x, 3x and 10x the data: wall time and peak RSS per stage, and a second night.

    .venv/bin/python bench/scale_bench.py --work .mtl/scale [--scales 1,3,10] [--days 14]
        [--impressions 150000] [--users 150000] [--items 20000] [--train-days 7]

Scale s means `impressions * s` a day, `users * s` users and `items * s` items over `days` days (10x of the
defaults: 14 days x 1.5M impressions, 1.5M users, 200k items). For each scale: generate the landing folder once
(days + 1), run the night of the 14th stage by stage through the `mtl` CLI (each stage its own process, so its
peak RSS is its own: `os.wait4`'s ru_maxrss), then the second night (the 15th) on the same lake. Text off, 1
epoch, no baselines: the figures are about the data path and the trainer. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")
SETTINGS = ["text.enabled=false", "train.epochs=1", "train.baselines=false", "gate.bootstrap=50"]


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process; raises on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def _extra_settings() -> list[str]:
    """Settings that exist in this version's config (e.g. no GBDT baselines either)."""
    from pipeline.config import load_config

    flat = load_config().flat()
    return ["train.gbdt_baselines=false"] if "train.gbdt_baselines" in flat else []


def _night(mtl: str, home: Path, landing: Path, day: str, env: dict, train_days: int) -> dict:
    sets = [a for s in [*SETTINGS, f"data.train_days={train_days}", *_extra_settings()] for a in ("--set", s)]
    common = ["--home", str(home), *sets]
    out = {}
    for stage in STAGES:
        cmd = [mtl, stage, "--date", day, *common] + (["--landing", str(landing)] if stage == "ingest" else [])
        out[stage] = _timed(cmd, env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scales", default="1,3,10")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--impressions", type=int, default=150_000)
    ap.add_argument("--users", type=int, default=150_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--train-days", type=int, default=7, help="data.train_days (needs days >= train + 2)")
    args = ap.parse_args()
    mtl = str(Path(sys.executable).parent / "mtl")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = dt.date(2026, 1, 1)
    nights = [(start + dt.timedelta(days=args.days - 1)).isoformat(), (start + dt.timedelta(days=args.days)).isoformat()]
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        root = args.work / f"x{scale}"
        landing = root / "landing"
        if not (landing / "impressions" / f"dt={nights[1]}" / "_SUCCESS").exists():
            gen = [mtl, "generate", "--out", str(landing), "--days", str(args.days + 1), "--start-date",
                   start.isoformat(), "--impressions-per-day", str(args.impressions * scale),
                   "--users", str(args.users * scale), "--items", str(args.items * scale), "--seed", "7"]
            wall, rss = _timed(gen, env)
            rows.append((scale, "-", "generate", wall, rss))
        home = root / "home"
        for n, day in enumerate(nights, 1):
            for stage, (wall, rss) in _night(mtl, home, landing, day, env, args.train_days).items():
                rows.append((scale, n, stage, wall, rss))
    print("| scale | night | stage | wall s | peak RSS MB |\n|---|---|---|---|---|")
    for scale, night, stage, wall, rss in rows:
        print(f"| {scale}x | {night} | {stage} | {wall:.1f} | {rss:.0f} |")
    for scale in sorted({r[0] for r in rows}):
        for night in (1, 2):
            part = [r for r in rows if r[0] == scale and r[1] == night]
            print(f"| {scale}x | {night} | **whole night** | {sum(r[3] for r in part):.1f} | "
                  f"{max(r[4] for r in part):.0f} |")


if __name__ == "__main__":
    main()
