"""Quality tables: does the default MTL model beat every baseline, on a generated log and on Hillstrom?

    .venv/bin/python bench/quality_bench.py generated --days 12 --impressions 25000 --users 30000 --items 8000
    .venv/bin/python bench/quality_bench.py hillstrom --csv /work/shared/data/real/hillstrom-email/hillstrom.csv
    add --ablate for the ablation table (defaults minus each feature group / model idea)
    generated: --popularity-drift 0.1 --new-items 0.1 --long-tail 0.3 for a drifting catalogue (off by default)

Per data set: `mtl run` for day D (the landing's last day minus 2; MLflow in the work home, the gate as
configured), then `mtl score` of the two days after with the registered champion (the challenger when the gate
kept the champion from moving; the table says which). Printed, per task: the test-day AUC (day D) of MTL, each
single-task DNN baseline, each LightGBM baseline (from evaluation.json) and item popularity; and on the days
after: the scored champion, and the run's baselines through the same `transform` of the run's feature state.
The generator does not write its true probabilities, so there is no oracle column.
Ablation: the same windows, features rebuilt where a feature group is switched off, only the MTL model
trained; test-day AUC per task and the mean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ABLATIONS = {  # name -> overrides on top of the defaults
    "defaults": [],
    "- lexical": ["features.lexical=false"],
    "+ context": ["features.context=true"],
    "- id_dropout": ["model.id_dropout=0"],
    "- history": ["features.history=false"],
    "- text": ["text.enabled=false"],
    "+ cross_layers 2": ["model.cross_layers=2"],
    "+ weighting uncertainty": ["train.weighting=uncertainty"],
    "ple instead of mmoe": ["model.name=ple"],
    "stop on weighted_auc": ["train.early_stop_metric=weighted_auc"],
    "stop on mean_auc": ["train.early_stop_metric=mean_auc"],
    "esmm instead of mmoe": ["model.name=esmm"],
    "+ sequences": ["features.sequence_length=10"],  # DIN target attention over the last 10 clicked items
    "+ sequences (item, category)": ["features.sequence_length=10", "features.sequence_fields=[item_id, category]"],
    # The same pair under another initialisation: how much of a difference is seed noise.
    "defaults, train.seed=1": ["train.seed=1"],
    "+ sequences, train.seed=1": ["features.sequence_length=10", "train.seed=1"],
}
FEATURE_KEYS = ("features.", "text.", "data.")


def mtl(*args: str, env: dict | None = None) -> dict:
    """One `mtl` CLI call; its JSON result."""
    exe = Path(sys.executable).with_name("mtl")
    out = subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"mtl {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def mtl_probs(run_dir: Path, test) -> dict[str, np.ndarray]:
    """The run's MTL model on a feature frame (the columns `transform` gives): task -> float [N]."""
    from pipeline.features.dataset import from_frame, read_spec
    from pipeline.training.train import load_trained, predict

    model, meta = load_trained(run_dir / "models" / "mtl")
    tasks = tuple(meta["tasks"])
    probs = predict(model, from_frame(test, read_spec(run_dir), tasks, where=str(run_dir)))
    return {t: np.asarray(probs[:, j], dtype=np.float64) for j, t in enumerate(tasks)}


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from pipeline.evaluation.metrics import auc as _auc

    value = _auc(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64))
    return None if value is None or np.isnan(value) else float(value)


def landing_days(landing: Path) -> list[str]:
    return sorted(p.name[3:] for p in (landing / "impressions").glob("dt=*"))


def popularity(landing: Path, train: list[str], test: str, task: str, k: float = 20.0) -> float | None:
    """Test-day AUC of the item's smoothed label rate over the train days (bench/popularity_baseline.py)."""
    import polars as pl

    from pipeline.data.schema import TASKS

    spec = TASKS[task]
    imp = pl.read_parquet(f"{landing}/impressions/*/*.parquet", hive_partitioning=True)
    imp = imp.with_columns(pl.col("dt").cast(pl.String))
    tr, te = imp.filter(pl.col("dt").is_in(train)), imp.filter(pl.col("dt") == test)
    if spec.given:
        tr, te = tr.filter(pl.col(spec.given) == 1), te.filter(pl.col(spec.given) == 1)
    prior = tr[spec.label].mean()
    rate = tr.group_by("item_id").agg(((pl.col(spec.label).sum() + k * prior) / (pl.len() + k)).alias("p"))
    te = te.join(rate, on="item_id", how="left").with_columns(pl.col("p").fill_null(prior))
    return auc(te[spec.label].to_numpy(), te["p"].to_numpy())


def after_days(cfg, landing: Path, run_id: str, days: list[str], model_uri: str) -> dict:
    """AUC per model and task on `days`: the registered model through `mtl score`, the run's baselines through
    transform with the run's feature state (history up to D, as at serving)."""
    import polars as pl

    from pipeline.data.schema import TASKS
    from pipeline.evaluation.evaluate import predict_models
    from pipeline.features.build import transform
    from pipeline.features.dataset import read_spec
    from pipeline.paths import Layout
    from pipeline.serving.score import read_landing_day

    run_dir = Layout.of(cfg.home).run_dir(run_id)
    frames, scored, error = [], [], None
    for day in days:
        raw = read_landing_day(landing, day)
        frames.append(transform(raw, run_dir / "features" / "state"))
        out = Path(cfg.home) / f"scores-{day}.parquet"
        try:
            mtl("score", "--home", cfg.home, "--model", model_uri, "--landing", str(landing), "--date", day,
                "--out", str(out))
            scored.append(pl.read_parquet(out))
        except SystemExit as exc:  # reported under the table; the baselines are still scored
            error = str(exc).strip().splitlines()[-1][:300]
    test = pl.concat(frames, how="vertical_relaxed")
    preds = {n: p for n, p in predict_models(run_dir, test, read_spec(run_dir)).items()}
    preds["mtl (this run, via transform)"] = mtl_probs(run_dir, test)
    if not error:
        champ = test.select("event_id").join(pl.concat(scored), on="event_id", how="left", maintain_order="left")
        preds["registered"] = {c[2:]: champ[c].to_numpy() for c in champ.columns if c.startswith("p_")}
    else:
        print(f"mtl score failed, no registered-model row: {error}")
        preds["registered"] = {}
    table = {}
    for name, probs in preds.items():
        for task, p in probs.items():
            spec = TASKS[task]
            m = np.ones(test.height, bool) if spec.given is None else test[spec.given].to_numpy() == 1
            table.setdefault(name, {})[task] = auc(test[spec.label].to_numpy()[m], np.asarray(p)[m])
    return table


def print_table(title: str, rows: dict[str, dict[str, float | None]], tasks: list[str]) -> None:
    print(f"\n{title}")
    print(f"| model | {' | '.join(tasks)} |")
    print("|---|" + "---|" * len(tasks))
    for name, vals in rows.items():
        print(f"| {name} | " + " | ".join("-" if vals.get(t) is None else f"{vals[t]:.4f}" for t in tasks) + " |")


def main_table(report: dict, landing: Path, train_days: list[str]) -> dict:
    tasks = report["tasks"]
    rows = {n: {t: m.get(t, {}).get("overall", {}).get("auc") for t in tasks}
            for n, m in sorted(report["models"].items()) if n != "champion"}
    rows["popularity (item rate)"] = {t: popularity(landing, train_days, report["date"], t) for t in tasks}
    return rows


def ablate(cfg_args: list[str], home: Path, date: str, tasks: list[str], names: list[str]) -> dict:
    """Test-day AUC of the MTL model per ablation (own run id; features rebuilt when a feature key changes)."""
    from pipeline.config import load_config
    from pipeline.features.build import build_features
    from pipeline.paths import Layout
    from pipeline.training.train import train_model

    rows = {}
    for name in names:
        extra = ABLATIONS[name]
        cfg = load_config(overrides=[*cfg_args, *extra, "train.baselines=false", "train.gbdt_baselines=false"],
                          home=home)
        feats = any(o.startswith(FEATURE_KEYS) for o in extra)
        run_id = f"abl-{abs(hash(tuple(extra))) % 10**8}" if feats else "abl-features"
        run_dir = Layout.of(home).run_dir(run_id)
        if not (run_dir / "features" / "feature_spec.json").is_file():
            build_features(cfg, date, run_id)
        valid = train_model(cfg, run_id, "mtl")["valid"]["metric"]  # selection is on valid; test is reported
        import polars as pl

        test = pl.read_parquet(run_dir / "features" / "test.parquet")
        rows[name] = _aucs(test, mtl_probs(run_dir, test))
        rows[name]["mean"] = float(np.mean([v for v in rows[name].values() if v is not None]))
        rows[name]["valid mean"] = float(valid)
        print(f"ablation {name}: {rows[name]}", file=sys.stderr, flush=True)
    return rows


def _aucs(test, probs: dict) -> dict:
    from pipeline.data.schema import TASKS

    out = {}
    for task, p in probs.items():
        spec = TASKS[task]
        m = np.ones(test.height, bool) if spec.given is None else test[spec.given].to_numpy() == 1
        out[task] = auc(test[spec.label].to_numpy()[m], p[m])
    return out


def run_dataset(label: str, landing: Path, home: Path, sets: list[str], args) -> None:
    from pipeline.config import load_config

    days = landing_days(landing)
    date = days[-3]
    flags = [f for s in sets for f in ("--set", s)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    report_path = home / "runs" / date / "evaluation.json"
    if args.reuse and report_path.is_file():  # a finished run of this date: do not register it again
        reg = home / "runs" / date / "registration.json"
        result = {"register": json.loads(reg.read_text()) if reg.is_file() else {}}
    else:
        result = mtl("run", "--home", str(home), "--landing", str(landing), "--date", date, *flags, env=env)
    report = json.loads(report_path.read_text())
    cfg = load_config(overrides=sets, home=home)
    spec = json.loads((home / "runs" / date / "features" / "feature_spec.json").read_text())
    tasks = report["tasks"]
    print(f"\n## {label}: run {date}, train {spec['splits']['train']['dates'][0]}..{spec['splits']['train']['dates'][-1]}"
          f" ({spec['splits']['train']['rows']} rows), test {date} ({report['test']['rows']} rows); gate "
          f"{'passed' if report['gate']['passed'] else 'failed'}: {report['gate']['reasons']}")
    print_table(f"test day {date} AUC", main_table(report, landing, spec["splits"]["train"]["dates"]), tasks)
    reg = result.get("register") or {}
    alias = "champion" if reg.get("champion") else "challenger"
    uri = f"models:/{cfg.registry.model_name}@{alias}"
    after = after_days(cfg, landing, date, days[-2:], uri)
    after[f"registered ({alias}, via mtl score)"] = after.pop("registered", {})
    print_table(f"days after the run {days[-2]}..{days[-1]} AUC", after, tasks)
    if args.ablate:
        names = args.ablations.split("|") if args.ablations else list(ABLATIONS)
        print_table(f"ablation, test day {date} AUC (MTL only)", ablate(sets, home, date, tasks, names),
                    [*tasks, "mean", "valid mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=("generated", "hillstrom"))
    ap.add_argument("--work", default="/tmp/quality-bench")
    ap.add_argument("--days", type=int, default=12)
    ap.add_argument("--impressions", type=int, default=25000)
    ap.add_argument("--users", type=int, default=30000)
    ap.add_argument("--items", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--popularity-drift", type=float, default=0.0, help="generator: daily log-popularity step")
    ap.add_argument("--new-items", type=float, default=0.0, help="generator: share of items appearing later")
    ap.add_argument("--long-tail", type=float, default=0.0, help="generator: share of reworded titles/queries")
    ap.add_argument("--csv", default="/work/shared/data/real/hillstrom-email/hillstrom.csv")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="extra config key=value")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished run of the date (no second mtl run)")
    ap.add_argument("--ablations", default="", help=f"'|'-separated subset of {list(ABLATIONS)}")
    args = ap.parse_args()
    drift = (args.popularity_drift, args.new_items, args.long_tail)
    # A landing folder per generator setting: one written with other settings is never reused by mistake.
    name = args.dataset + ("-drift-{}-{}-{}".format(*drift) if args.dataset == "generated" and any(drift) else "")
    work = Path(args.work) / name
    landing, home = work / "landing", work / "home"
    sets = ["train.threads=1", "gbdt.n_jobs=1", *args.sets]  # one core each: the machine is shared
    if args.dataset == "generated":
        if not landing.is_dir():
            start = (dt.date(2026, 3, 1)).isoformat()
            mtl("generate", "--out", str(landing), "--days", str(args.days), "--impressions-per-day",
                str(args.impressions), "--users", str(args.users), "--items", str(args.items), "--seed",
                str(args.seed), "--start-date", start, "--popularity-drift", str(args.popularity_drift),
                "--new-items", str(args.new_items), "--long-tail", str(args.long_tail))
        label = (f"generated {args.days} days x {args.impressions} impressions, {args.users} users, {args.items} "
                 f"items, popularity drift {drift[0]}, new items {drift[1]}, long tail {drift[2]}")
    else:
        if not landing.is_dir():
            out = mtl("import", "hillstrom", args.csv, "--out", str(landing))
            # 10 train days (not the adapter's 12), so day D leaves two days after it to score.
            sets = [*out.get("suggested_overrides", []), "data.train_days=10", *sets]
            (work / "overrides.json").write_text(json.dumps(sets))
        else:
            sets = json.loads((work / "overrides.json").read_text())
        label = "Hillstrom (real, 64k customers)"
    run_dataset(label, landing, home, sets, args)


if __name__ == "__main__":
    main()
