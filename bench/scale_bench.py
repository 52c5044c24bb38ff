"""The nightly run at 1x, 3x and 10x the data: wall time and peak RSS per stage, and a second night.

    .venv/bin/python bench/scale_bench.py --work .mtl/scale [--scales 1,3,10] [--days 14]
        [--impressions 150000] [--users 150000] [--items 20000] [--train-days 7] [--landings DIR]

Scale s means `impressions * s` a day, `users * s` users and `items * s` items over `days` days (10x of the
defaults: 14 days x 1.5M impressions, 1.5M users, 200k items). For each scale: generate the landing folder once
(days + 1), run the night of the 14th stage by stage through the `mtl` CLI (each stage its own process, so its
peak RSS is its own: `os.wait4`'s ru_maxrss), then the second night (the 15th) on the same lake. Text off, 1
epoch, no baselines: the figures are about the data path and the trainer. The per-day aggregate stage
(`mtl aggregate --date D`) runs after validate when this version's CLI has it. `--landings DIR` reads the
landing folders DIR/x<s>/landing made earlier (never writes there); homes stay under --work.

Prints one Markdown table (wall s, CPU s = user + system of the stage's process, peak RSS MB; on a shared
machine CPU s is the figure to compare, wall s includes waiting for the cores) and the target check lines
(10x peak RSS <= 8 GB, 10x night <= 10 x the 1x night, second night <= first), as pass/fail, not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("ingest", "validate", "aggregate", "features", "train", "evaluate", "register")
RSS_LIMIT_MB = 8 * 1024
SETTINGS = ["text.enabled=false", "train.epochs=1", "train.baselines=false", "gate.bootstrap=50"]


def _timed(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process; raises on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")  # drain first: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _has_stage(mtl: str, stage: str, env: dict) -> bool:
    """Whether this version's CLI has `stage` (the aggregate stage is newer than the bench)."""
    return subprocess.run([mtl, stage, "--help"], check=False, env=env, capture_output=True).returncode == 0


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
        if stage == "aggregate" and not _has_stage(mtl, stage, env):
            continue
        cmd = [mtl, stage, "--date", day, *common] + (["--landing", str(landing)] if stage == "ingest" else [])
        out[stage] = _timed(cmd, env)
    return out


def _totals(rows: list) -> dict:
    """(scale, night) -> (wall s, CPU s, peak RSS MB) of the whole night."""
    out = {}
    for scale, night in sorted({(r[0], r[1]) for r in rows if r[1] != "-"}):
        part = [r for r in rows if r[0] == scale and r[1] == night]
        out[scale, night] = (sum(r[3] for r in part), sum(r[4] for r in part), max(r[5] for r in part))
    return out


def checks(totals: dict) -> list[str]:
    """The targets as pass/fail lines (n/a where a needed scale or night was not run)."""
    def verdict(ok):
        return "n/a" if ok is None else ("pass" if ok else "FAIL")
    x10 = [totals[k] for k in totals if k[0] == 10]
    peak = max((t[2] for t in x10), default=None)
    lines = [f"check 10x peak RSS <= 8 GB: {verdict(None if peak is None else peak <= RSS_LIMIT_MB)}"
             + ("" if peak is None else f" ({peak:.0f} MB)")]
    for i, what in ((0, "wall"), (1, "CPU")):
        one, ten = totals.get((1, 1)), totals.get((10, 1))
        ok = None if one is None or ten is None else ten[i] <= 10 * one[i]
        lines.append(f"check 10x night {what} <= 10 x 1x night {what}: {verdict(ok)}"
                     + ("" if ok is None else f" ({ten[i]:.0f} s vs 10 x {one[i]:.0f} s)"))
    for scale in sorted({k[0] for k in totals}):
        n1, n2 = totals.get((scale, 1)), totals.get((scale, 2))
        for i, what in ((0, "wall"), (1, "CPU")):
            ok = None if n1 is None or n2 is None else n2[i] <= n1[i]
            lines.append(f"check {scale}x night 2 {what} <= night 1 {what}: {verdict(ok)}"
                         + ("" if ok is None else f" ({n2[i]:.0f} s vs {n1[i]:.0f} s)"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scales", default="1,3,10")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--impressions", type=int, default=150_000)
    ap.add_argument("--users", type=int, default=150_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--train-days", type=int, default=7, help="data.train_days (needs days >= train + 2)")
    ap.add_argument("--landings", type=Path, help="read DIR/x<scale>/landing instead of generating it")
    args = ap.parse_args()
    mtl = str(Path(sys.executable).parent / "mtl")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = dt.date(2026, 1, 1)
    nights = [(start + dt.timedelta(days=args.days - 1)).isoformat(), (start + dt.timedelta(days=args.days)).isoformat()]
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        root = args.work / f"x{scale}"
        landing = (args.landings / f"x{scale}" if args.landings else root) / "landing"
        if not (landing / "impressions" / f"dt={nights[1]}" / "_SUCCESS").exists():
            if args.landings:
                raise SystemExit(f"{landing} lacks day {nights[1]} (its _SUCCESS marker)")
            gen = [mtl, "generate", "--out", str(landing), "--days", str(args.days + 1), "--start-date",
                   start.isoformat(), "--impressions-per-day", str(args.impressions * scale),
                   "--users", str(args.users * scale), "--items", str(args.items * scale), "--seed", "7"]
            rows.append((scale, "-", "generate", *_timed(gen, env)))
        home = root / "home"
        for n, day in enumerate(nights, 1):
            for stage, figures in _night(mtl, home, landing, day, env, args.train_days).items():
                rows.append((scale, n, stage, *figures))
    print("| scale | night | stage | wall s | CPU s | peak RSS MB |\n|---|---|---|---|---|---|")
    for scale, night, stage, wall, cpu, rss in rows:
        print(f"| {scale}x | {night} | {stage} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
    totals = _totals(rows)
    for (scale, night), (wall, cpu, rss) in totals.items():
        print(f"| {scale}x | {night} | **whole night** | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
    print("\n".join(checks(totals)))


if __name__ == "__main__":
    main()
