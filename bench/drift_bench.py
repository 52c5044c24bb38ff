"""Drift table: do the DNNs hold on the days after a run on a drifting log (new items, popularity drift, long tail)?

    .venv/bin/python bench/drift_bench.py --days 11 --impressions 20000 --users 25000 --items 6000
    add --set key=value for config overrides of the run (e.g. --set model.id_dropout=0.2), --work for the folder

One generated landing (popularity drift, new items, long-tail texts), `mtl run` for D = the landing's last day
minus 2 (reused when its evaluation.json exists), then for D and each day after, AUC per task of the run's MTL
model, its single-task DNN baselines and LightGBM baselines, on feature frames built three ways:

    transform          pipeline.features.build.transform: stored text table (a new text -> row 0), bundled history
    served             serve_features as the pyfunc calls it: new texts embedded, history = the bundled snapshot
    served, fresh      serve_features with history_from = the run's home, after the days after were ingested and
                       validated into its lake (what the nightly DAG does before scoring the next day)

and, per day and path, the rows of items the run never saw (no item_id vocabulary entry) apart from the others.
Every model reads the same frame (text rows past the stored table are the embedded new texts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_tables import add_generator_args, auc, generator_flags, landing_days, mtl


def run_once(landing: Path, home: Path, date: str, sets: list[str]) -> None:
    if (home / "runs" / date / "evaluation.json").is_file():
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    flags = [f for s in sets for f in ("--set", s)]
    mtl("run", "--home", str(home), "--landing", str(landing), "--date", date, *flags, env=env)


def publish(home: Path, landing: Path, day: str, sets: list[str]) -> None:
    """Ingest + validate one landing day into the home's lake, as the nightly DAG does."""
    from pipeline.paths import Layout

    if (Layout.of(home).impressions_dir(day) / "_FINGERPRINT.json").is_file():
        return
    flags = [f for s in sets for f in ("--set", s)]
    for stage in ("ingest", "validate"):
        mtl(stage, "--home", str(home), "--landing", str(landing), "--date", day, "--run-id", f"after-{day}", *flags)


def models(run_dir: Path) -> dict:
    """name -> ("dnn", model, tasks) | ("gbdt", folder, None), for the MTL model and every baseline."""
    from pipeline.training.train import load_trained

    out = {}
    for folder in sorted((run_dir / "models").iterdir()):
        if not (folder / "meta.json").is_file() or folder.name == "mtl_selected":
            continue
        if (folder / "model.txt").is_file():
            out[folder.name] = ("gbdt", folder, None)
        else:
            model, meta = load_trained(folder)
            model.eval()
            out[folder.name] = ("dnn", model, tuple(meta["tasks"]))
    return out


def predict_all(zoo: dict, frame, spec: dict, table) -> dict[str, dict[str, np.ndarray]]:
    """name -> task -> p [N]; `table` float32 [n, dim] = the text rows the frame's indices point at (or None)."""
    import torch

    from pipeline.features.dataset import from_frame
    from pipeline.training.gbdt import predict_gbdt
    from pipeline.training.train import predict

    out = {}
    for name, (kind, obj, tasks) in zoo.items():
        if kind == "gbdt":
            out[name] = predict_gbdt(obj, frame)
            continue
        data = from_frame(frame, spec, tasks, where=name)
        if table is not None and data.text is not None:
            data.text_table = torch.from_numpy(table)
        probs = predict(obj, data)
        out[name] = {t: np.asarray(probs[:, j], np.float64) for j, t in enumerate(tasks)}
    return out


def aucs(frame, preds: dict, rows: np.ndarray) -> dict[str, dict[str, float | None]]:
    """model row name (mtl, dnn, lgbm) -> task -> AUC on `rows` (bool [N]) within the task's sample space."""
    from pipeline.data.schema import TASKS

    table: dict[str, dict[str, float | None]] = {"mtl": {}, "dnn": {}, "lgbm": {}}
    for name, probs in preds.items():
        row = "mtl" if name == "mtl" else "lgbm" if name.startswith("gbdt_") else "dnn"
        for task, p in probs.items():
            spec = TASKS[task]
            m = rows if spec.given is None else rows & (frame[spec.given].to_numpy() == 1)
            table[row][task] = auc(frame[spec.label].to_numpy()[m], p[m])
    return table


def calibration(frame, preds: dict, path: str, day: str) -> list[dict]:
    """Mean predicted probability / mean label per task (in the task's sample space): a day-level shift shows
    here, and it is what drags an AUC pooled over days while each day's own ranking holds."""
    from pipeline.data.schema import TASKS

    out = []
    for row, pick in (("mtl", lambda n: n == "mtl"), ("dnn", lambda n: n.startswith("baseline_")),
                      ("lgbm", lambda n: n.startswith("gbdt_"))):
        vals = {}
        for name, probs in preds.items():
            if not pick(name):
                continue
            for task, p in probs.items():
                spec = TASKS[task]
                m = np.ones(frame.height, bool) if spec.given is None else frame[spec.given].to_numpy() == 1
                vals[task] = float(p[m].mean() / max(frame[spec.label].to_numpy()[m].mean(), 1e-9))
        out.append({"path": path, "day": day, "rows": "mean p / mean label", "n": frame.height, "model": row,
                    **vals})
    return out


def frames(raw, state: Path, cache: Path, home: Path | None, path: str):
    from pipeline.features.build import serve_features, transform

    if path == "transform":
        return transform(raw, state), None
    return serve_features(raw, state, cache, home)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/drift-bench")
    add_generator_args(ap, 11, 20000, 25000, 6000, (0.2, 0.2, 0.5))
    ap.add_argument("--set", action="append", default=[], dest="sets", help="extra config key=value")
    ap.add_argument("--paths", default="transform,served,served fresh", help="comma-separated feature paths")
    args = ap.parse_args()
    from pipeline.features.dataset import read_spec
    from pipeline.serving.score import read_landing_day

    work = Path(args.work)
    landing, home = work / "landing", work / "home"
    sets = ["train.threads=1", "gbdt.n_jobs=1", *args.sets]
    if not landing.is_dir():
        mtl("generate", "--out", str(landing), *generator_flags(args))
    days = landing_days(landing)
    date = days[-3]
    run_once(landing, home, date, sets)
    run_dir = home / "runs" / date
    state, cache, spec = run_dir / "features" / "state", home / "text_cache", read_spec(run_dir)
    report = json.loads((run_dir / "evaluation.json").read_text())
    print(f"run {date}; overrides {args.sets}; test-day AUC in evaluation.json:")
    for name in ("mtl", "baseline_ctr", "gbdt_ctr"):
        m = report["models"].get(name, {})
        print(f"  {name}: " + ", ".join(f"{t} {v['overall']['auc']:.4f}" for t, v in m.items()
                                         if isinstance(v, dict) and "overall" in v))
    zoo = models(run_dir)
    results = []
    for path in args.paths.split(","):
        fresh = path == "served fresh"
        if fresh:
            for day in days[-2:]:
                publish(home, landing, day, sets)
        pooled = []
        for day in days[-3:]:
            raw = read_landing_day(landing, day)
            frame, table = frames(raw, state, cache, home if fresh else None, path)
            preds = predict_all(zoo, frame, spec, table)
            seen = frame["cat__item_id"].to_numpy() > 0
            for split, rows in (("all", np.ones(frame.height, bool)), ("seen item", seen), ("new item", ~seen)):
                for model, vals in aucs(frame, preds, rows).items():
                    results.append({"path": path, "day": day, "rows": split, "n": int(rows.sum()),
                                    "model": model, **vals})
            results += calibration(frame, preds, path, day)
            if day != date:
                pooled.append((frame, preds))
            print(f"done {path} {day}", file=sys.stderr, flush=True)
        frame = pl.concat([f for f, _ in pooled], how="vertical_relaxed")
        preds = {n: {t: np.concatenate([p[n][t] for _, p in pooled]) for t in pooled[0][1][n]} for n in zoo}
        for model, vals in aucs(frame, preds, np.ones(frame.height, bool)).items():
            results.append({"path": path, "day": "both days after, pooled", "rows": "all", "n": frame.height,
                            "model": model, **vals})
    tasks = list(spec["tasks"])
    print(f"\n| path | day | rows | n | model | {' | '.join(tasks)} |\n|---|---|---|---|---|" + "---|" * len(tasks))
    for r in results:
        vals = " | ".join("-" if r.get(t) is None else f"{r[t]:.4f}" for t in tasks)
        print(f"| {r['path']} | {r['day']} | {r['rows']} | {r['n']} | {r['model']} | {vals} |")
    (work / "drift_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
