"""Seesaw / refit table: the MTL model beside its single-task baselines on one prepared run, per config variant.

    PYTHONPATH=. .venv/bin/python bench/seesaw_bench.py --home H --run-id 2008-03-14 \\
        --models mtl,baseline_ctr,baseline_cart --variant "old=train.epochs=3,train.patience=1,\\
        train.early_stop_metric=mean_auc,train.per_task_best=false" --variant defaults= \\
        --variant refit=train.refit=true --set features.history=false ...

The run must have its feature files (`mtl features`). Each variant trains the listed models (the trainer's own
valid selection) and prints one JSON line: per model and task [valid AUC of the selected epoch, test AUC]
the best epoch and the training's CPU seconds (compare those, not wall time, on a shared machine). Test AUCs are for this report only: every choice inside training is made on valid.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path


def run_variant(home: str, run_id: str, names: list[str], sets: list[str]) -> dict:
    import polars as pl

    from pipeline.config import load_config
    from pipeline.data.schema import TASKS
    from pipeline.evaluation.evaluate import task_mask
    from pipeline.evaluation.metrics import auc
    from pipeline.features.dataset import from_frame, read_spec
    from pipeline.training.gbdt import predict_gbdt
    from pipeline.training.train import load_trained, predict, train_model

    cfg = load_config(None, sets, home=home)
    run_dir = Path(cfg.home) / "runs" / run_id
    test, spec = pl.read_parquet(run_dir / "features" / "test.parquet"), read_spec(run_dir)
    out: dict = {}
    for name in names:
        cpu = time.process_time()  # CPU seconds: wall time on a shared machine says little
        r = train_model(cfg, run_id, name)
        out[f"{name}/cpu_s"] = round(time.process_time() - cpu, 1)
        if name.startswith("gbdt_"):
            probs = predict_gbdt(run_dir / "models" / name, test)
        else:
            model, meta = load_trained(run_dir / "models" / name)
            p = predict(model, from_frame(test, spec, tuple(meta["tasks"])))
            probs = {t: p[:, j] for j, t in enumerate(meta["tasks"])}
        valid = r["valid"].get("auc") if isinstance(r["valid"].get("auc"), dict) else {}
        for t, pt in probs.items():
            m = task_mask(test, t)
            y = test[TASKS[t].label].to_numpy()[m].astype(float)
            out[f"{name}/{t}"] = [None if valid.get(t) is None else round(float(valid[t]), 4),
                                  round(float(auc(y, pt[m].astype(float))), 4)]
        out[f"{name}/epoch"] = r["best_epoch"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--models", default="mtl,baseline_ctr,baseline_cart")
    ap.add_argument("--variant", action="append", default=[], help="name=key=value,key=value (may be empty)")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="key=value for every variant")
    args = ap.parse_args()
    for spec in args.variant or ["defaults="]:
        name, _, rest = spec.partition("=")
        extra = [kv for kv in re.split(r",(?![^\[]*\])", rest) if kv]  # commas inside [..] belong to a list
        row = run_variant(args.home, args.run_id, args.models.split(","), [*args.sets, *extra])
        print(json.dumps({"variant": name, **row}), flush=True)


if __name__ == "__main__":
    main()
