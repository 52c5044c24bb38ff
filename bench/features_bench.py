"""Feature-building speed and memory , and MiniLM embedding throughput on CPU.

    .venv/bin/python bench/features_bench.py [--work DIR] [--days 14] [--impressions 150000] [--users 200000]
                                             [--items 50000] [--sample 2000] [--threads 2]

1. Generates a landing folder (cached under --work) and copies it into a lake (what ingest + validate publish).
2. Warms the text cache: one untimed build embeds every title and query once.
3. Times `build_features` for the last day in a fresh process with a warm cache (defaults: 7 train days,
   1 valid, 1 test, history windows 1/7/28 over all 14 days, text on) and reports that process's peak RSS
   and CPU seconds (on a shared machine wall time depends on the neighbours; CPU time much less).
4. Embeds --sample distinct titles not in the cache with MiniLM on CPU: titles/s.
Prints one JSON line. Targets: build < 60 s, peak RSS < 4 GB, >= 400 titles/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = "2026-01-01"


def prepare(work: Path, args: argparse.Namespace) -> tuple[Path, str]:
    """Landing + lake under `work`, reused when the sizes match. Returns (home, last date)."""
    import datetime as dt

    from pipeline.data.generate import generate
    from pipeline.paths import Layout

    key = f"d{args.days}-i{args.impressions}-u{args.users}-it{args.items}"
    landing, home = work / key / "landing", work / key / "home"
    last = (dt.date.fromisoformat(START) + dt.timedelta(days=args.days - 1)).isoformat()
    if not (landing / "items.parquet").is_file():
        t = time.perf_counter()
        generate(landing, days=args.days, impressions_per_day=args.impressions, users=args.users,
                 items=args.items, seed=7, start_date=START)
        print(f"bench: generated {key} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    lay = Layout.of(home)
    if not lay.snapshot("items", last).is_file():
        for day in sorted((landing / "impressions").glob("dt=*")):
            shutil.copytree(day, lay.impressions_dir(day.name[3:]), dirs_exist_ok=True)
        for name in ("users", "items"):
            lay.snapshot(name, last).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(landing / f"{name}.parquet", lay.snapshot(name, last))
    return home, last


def build(home: str, date: str, run_id: str, threads: int) -> None:
    """Child process: one build_features; prints wall time and this process's peak RSS as JSON."""
    import torch

    from pipeline.config import load_config
    from pipeline.features.build import build_features

    torch.set_num_threads(threads)
    cfg = load_config(home=home)
    t, cpu = time.perf_counter(), time.process_time()
    result = build_features(cfg, date, run_id=run_id)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "peak_rss_mb": round(peak_mb),
                      "rows": result["rows"]}))


def throughput(sample: int, threads: int) -> tuple[float, float]:
    """(titles/s wall, CPU ms per title) of MiniLM over `sample` distinct generated titles (model load not
    counted). On a shared machine wall time depends on the neighbours; CPU time per title much less so."""
    import numpy as np
    import torch

    from pipeline.config import TextConfig
    from pipeline.data.generate import ADJECTIVES, CATEGORIES, COLORS, MATERIALS
    from pipeline.features.text import embed, load_encoder

    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    titles = sorted({f"{rng.choice(ADJECTIVES)} {rng.choice(COLORS)} {rng.choice(MATERIALS)} "
                     f"{rng.choice(CATEGORIES)} {i}" for i in range(sample)})
    tcfg = TextConfig()
    encoder = load_encoder(tcfg, device="cpu")
    embed(titles[:64], tcfg, encoder, progress=False)  # warm-up
    t, cpu = time.perf_counter(), time.process_time()
    embed(titles, tcfg, encoder, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return len(titles) / wall, 1000 * cpu / len(titles)


def child(home: Path, date: str, run_id: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(home), date, run_id, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mtl-bench-features")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--impressions", type=int, default=150_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("HOME", "DATE", "RUN_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        build(*args.child, threads=args.threads)
        return
    home, last = prepare(args.work.resolve(), args)
    t = time.perf_counter()
    warm = child(home, last, "warm", args.threads)
    print(f"bench: warm-up build (embeds new texts) {time.perf_counter() - t:.0f} s", file=sys.stderr)
    timed = child(home, last, "timed", args.threads)
    titles_per_s, cpu_ms = throughput(args.sample, args.threads)
    report = {"days": args.days, "impressions_per_day": args.impressions, "users": args.users, "items": args.items,
              "features_wall_s": timed["wall_s"], "features_cpu_s": timed["cpu_s"],
              "features_peak_rss_mb": timed["peak_rss_mb"],
              "rows": timed["rows"], "warmup_wall_s": warm["wall_s"],
              "minilm_titles_per_s": round(titles_per_s), "minilm_cpu_ms_per_title": round(cpu_ms, 2),
              "load_avg_1m": round(os.getloadavg()[0], 1),
              "targets": {"features_wall_s": 60, "features_peak_rss_mb": 4096, "minilm_titles_per_s": 400}}
    print(json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
