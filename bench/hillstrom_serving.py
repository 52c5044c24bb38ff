"""Hillstrom through serving: `mtl import` + `mtl run` of the third-to-last day with the importer's suggested
overrides, then `mtl score` of the two days after it; prints one JSON line per scored day with the test AUCs of
the served scores (per task, on each task's sample space).

    .venv/bin/python bench/hillstrom_serving.py [--src /work/shared/data/real/hillstrom-email/hillstrom.csv]
                                                [--set key=value ...]

Everything runs for real in a temporary home (ingest, GX validation, training, evaluation, MLflow registry).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DEFAULT_SRC = "/work/shared/data/real/hillstrom-email/hillstrom.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=DEFAULT_SRC)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    import numpy as np
    import polars as pl

    from pipeline.config import load_config
    from pipeline.data.adapters import import_dataset
    from pipeline.data.schema import TASKS
    from pipeline.evaluation.metrics import auc
    from pipeline.run import run_all
    from pipeline.serving.score import score

    with tempfile.TemporaryDirectory(prefix="hillstrom-bench-") as tmp:
        root = Path(tmp)
        got = import_dataset("hillstrom", args.src, root / "landing")
        suggested = [o for o in got["suggested_overrides"] if not o.startswith("data.train_days=")]
        over = [*suggested, "data.train_days=10", *args.overrides]  # two days left after the run's date
        cfg = load_config(overrides=over, home=root / "home")
        run_date, start = got["dates"][-3], time.monotonic()
        run = run_all(cfg, got["landing"], run_date)
        version = run["register"]["version"]
        report = json.loads((root / "home" / "runs" / run_date / "evaluation.json").read_text())
        print(json.dumps({"run_date": run_date, "version": version, "seconds": round(time.monotonic() - start, 1),
                          "overrides": over,
                          "eval_test_auc": {t: report["models"]["mtl"][t]["overall"]["auc"] for t in report["tasks"]}}))
        for day in got["dates"][-2:]:
            out = root / f"scores-{day}.parquet"
            score(cfg, f"models:/{cfg.registry.model_name}/{version}", got["landing"], day, out)
            imp = pl.read_parquet(sorted((Path(got["landing"]) / "impressions" / f"dt={day}").glob("*.parquet")))
            joined = imp.join(pl.read_parquet(out), on="event_id", how="left")
            aucs = {}
            for t in report["tasks"]:
                task = TASKS[t]
                rows = joined.filter(pl.col(task.given) == 1) if task.given else joined
                aucs[t] = round(auc(rows[task.label].to_numpy().astype(np.float64), rows[f"p_{t}"].to_numpy()), 4)
            print(json.dumps({"scored_day": day, "rows": joined.height, "mtl_score_auc": aucs}))


if __name__ == "__main__":
    main()
