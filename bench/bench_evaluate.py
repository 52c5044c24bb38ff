"""Wall time of evaluate, register (first version and a second day against the champion) and batch scoring.

    .venv/bin/python bench/bench_evaluate.py [--impressions-per-day N] [--out DIR]

Generates a landing folder, trains quickly (1 epoch, text off) for the last two days, then times the stages
this bench is about. Targets on 2 CPU cores at 20,000 impressions a day: evaluate < 15 s, register < 20 s
(the second one re-scores the champion in a subprocess), score < 15 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

FAST = ["text.enabled=false", "train.epochs=1", "train.threads=2", "model.embedding_dim=8",
        "model.expert_hidden=[32]", "model.tower_hidden=[16]", "gate.max_baseline_regression=1.0"]


def _timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:<34} {time.perf_counter() - start:7.1f} s")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impressions-per-day", type=int, default=20_000)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.release import register
    from pipeline.run import run_all
    from pipeline.serving.score import score

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-evaluate-"))
    landing = root / "landing"
    generate(landing, days=10, impressions_per_day=args.impressions_per_day, users=2000, items=500, seed=1,
             start_date="2026-03-01")
    cfg = load_config(overrides=[*FAST, "dry_run=true"], home=root / "home")
    live = load_config(overrides=FAST, home=root / "home")
    for day in ("2026-03-09", "2026-03-10"):
        _timed(f"train run {day} (not benched)", run_all, cfg, landing, day)
    _timed("evaluate (no champion)", evaluate, live, "2026-03-09")
    _timed("register first version", register, live, run_id="2026-03-09")
    _timed("evaluate (champion re-scored)", evaluate, live, "2026-03-10")
    _timed("register second version", register, live, run_id="2026-03-10")
    out = _timed("score one landing day", score, live, "models:/ecommerce-mtl@champion", landing, "2026-03-10",
                 root / "scores.parquet")
    print(f"scored {out['rows']} rows; work folder {root}")


if __name__ == "__main__":
    main()
