"""Quality tables: does the default MTL model beat every baseline, on a generated log and on Hillstrom?

    .venv/bin/python bench/quality_bench.py generated --days 12 --impressions 25000 --users 30000 --items 8000
    .venv/bin/python bench/quality_bench.py hillstrom --csv /work/shared/data/real/hillstrom-email/hillstrom.csv
    add --ablate for the ablation table (defaults minus each feature group / model idea), --ablation-seeds 3
    to repeat each ablation row over train.seed 0, 1, 2 (mean ± sd: tells an effect from seed noise)
    generated: --popularity-drift 0.1 --new-items 0.1 --long-tail 0.3 for a drifting catalogue (off by default)

Per data set: `mtl run` for day D (the landing's last day minus 2; MLflow in the work home, the gate as
configured), then `mtl score` of the two days after with the registered champion (the challenger when the gate
kept the champion from moving; the table says which). Printed, per task: the test-day AUC (day D) of MTL, each
single-task DNN baseline, each LightGBM baseline (from evaluation.json) and item popularity; and on each day
after (one table per day: a pooled AUC would mix the models' day-to-day calibration into the ranking): the scored
champion, and the run's baselines through the same `transform` of the run's feature state.
On a generated log both tables also have an oracle row: the probabilities the generator drew the labels from
(`mtl generate --oracle-out`, written to <work>/<name>/oracle beside the landing; for a landing generated
without one it is made once by generating again with the same arguments into a temporary folder, and the bench
stops if those impressions differ from the landing's). Hillstrom has no oracle, so no such row.
Ablation: the same windows, features rebuilt where a feature group is switched off, only the MTL model
trained; test-day AUC per task and the mean (one run per row, or mean ± sd over --ablation-seeds N seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from quality_tables import (
    ORACLE_ROW,
    add_generator_args,
    aucs,
    ensure_oracle,
    generator_flags,
    landing_days,
    mean_spread,
    mtl,
    oracle_probs,
    popularity,
    print_table,
)

ABLATIONS = {  # name -> overrides on top of the defaults
    "defaults": [],
    "- lexical": ["features.lexical=false"],
    "+ context": ["features.context=true"],
    "- id_dropout": ["model.id_dropout=0"],
    "- history": ["features.history=false"],
    "- text": ["text.enabled=false"],
    "- cross_layers": ["model.cross_layers=0"],
    "- tower_skip": ["model.tower_skip=false"],
    "- per_task_best": ["train.per_task_best=false"],
    "- sample_space_weighting": ["train.sample_space_weighting=none"],
    "- embedding_lr_scale": ["train.embedding_lr_scale=1"],
    "- both (the old recipe)": ["train.sample_space_weighting=none", "train.embedding_lr_scale=1"],
    "+ weighting uncertainty": ["train.weighting=uncertainty"],
    "ple instead of mmoe": ["model.name=ple"],
    "stop on mean_auc": ["train.early_stop_metric=mean_auc"],
    "esmm instead of mmoe": ["model.name=esmm"],
    "+ sequences": ["features.sequence_length=10"],  # DIN target attention over the last 10 clicked items
    "+ sequences (item, category)": ["features.sequence_length=10", "features.sequence_fields=[item_id, category]"],
}  # seed noise: --ablation-seeds N repeats every row over train.seed 0..N-1
FEATURE_KEYS = ("features.", "text.", "data.")


def mtl_probs(run_dir: Path, test) -> dict[str, np.ndarray]:
    """The run's MTL model on a feature frame (the columns `transform` gives): task -> float [N]."""
    from pipeline.features.dataset import from_frame, read_spec
    from pipeline.training.train import load_trained, predict

    model, meta = load_trained(run_dir / "models" / "mtl")
    tasks = tuple(meta["tasks"])
    probs = predict(model, from_frame(test, read_spec(run_dir), tasks, where=str(run_dir)))
    return {t: np.asarray(probs[:, j], dtype=np.float64) for j, t in enumerate(tasks)}


def after_days(cfg, landing: Path, run_id: str, days: list[str], model_uri: str, oracle: Path | None) -> dict:
    """Per day after the run: AUC per model and task, the registered model through `mtl score`, the run's
    baselines through transform with the run's feature state (history up to D, as at serving); the oracle when
    there is one. One table per day: pooling days would mix each model's day-to-day calibration into the AUC."""
    return {day: _after_day(cfg, landing, run_id, day, model_uri, oracle) for day in days}


def _after_day(cfg, landing: Path, run_id: str, day: str, model_uri: str, oracle: Path | None) -> dict:
    import polars as pl

    from pipeline.evaluation.evaluate import predict_models
    from pipeline.features.build import transform
    from pipeline.features.dataset import read_spec
    from pipeline.paths import Layout
    from pipeline.serving.score import read_landing_day

    run_dir = Layout.of(cfg.home).run_dir(run_id)
    test = transform(read_landing_day(landing, day), run_dir / "features" / "state")
    preds = {n: p for n, p in predict_models(run_dir, test, read_spec(run_dir)).items()}
    preds["mtl (this run, via transform)"] = mtl_probs(run_dir, test)
    out = Path(cfg.home) / f"scores-{day}.parquet"
    try:
        mtl("score", "--home", cfg.home, "--model", model_uri, "--landing", str(landing), "--date", day,
            "--out", str(out))
        champ = test.select("event_id").join(pl.read_parquet(out), on="event_id", how="left", maintain_order="left")
        preds["registered"] = {c[2:]: champ[c].to_numpy() for c in champ.columns if c.startswith("p_")}
    except SystemExit as exc:  # reported under the table; the baselines are still scored
        print(f"mtl score failed, no registered-model row: {str(exc).strip().splitlines()[-1][:300]}")
        preds["registered"] = {}
    if oracle is not None:
        preds[ORACLE_ROW] = oracle_probs(test, oracle)
    return {name: aucs(test, probs) for name, probs in preds.items()}


def main_table(report: dict, landing: Path, train_days: list[str], run_dir: Path, oracle: Path | None) -> dict:
    """Test-day AUC per model (evaluation.json), item popularity and, when there is one, the oracle on the
    run's test rows."""
    import polars as pl

    from pipeline.data.schema import LABELS

    tasks = report["tasks"]
    rows = {n: {t: m.get(t, {}).get("overall", {}).get("auc") for t in tasks}
            for n, m in sorted(report["models"].items()) if n != "champion"}
    rows["popularity (item rate)"] = {t: popularity(landing, train_days, report["date"], t) for t in tasks}
    if oracle is not None:
        test = pl.read_parquet(run_dir / "features" / "test.parquet", columns=["event_id", *LABELS])
        rows[ORACLE_ROW] = aucs(test, oracle_probs(test, oracle))
    return rows


def ablate_once(cfg_args: list[str], home: Path, date: str, extra: list[str], seed: int | None) -> dict:
    """Test-day AUC per task of one MTL training with the overrides `extra` (and train.seed=`seed` unless None),
    their mean and the valid metric training selected on. Features are rebuilt (own run id) only when `extra`
    changes a feature key; every seed of a row shares them."""
    import hashlib

    import polars as pl

    from pipeline.config import load_config
    from pipeline.features.build import build_features
    from pipeline.paths import Layout
    from pipeline.training.train import train_model

    seeds = [] if seed is None else [f"train.seed={seed}"]
    cfg = load_config(overrides=[*cfg_args, *extra, *seeds, "train.baselines=false", "train.gbdt_baselines=false"],
                      home=home)
    feats = any(o.startswith(FEATURE_KEYS) for o in extra)
    run_id = f"abl-{hashlib.sha256('|'.join(extra).encode()).hexdigest()[:8]}" if feats else "abl-features"
    run_dir = Layout.of(home).run_dir(run_id)
    if not (run_dir / "features" / "feature_spec.json").is_file():
        build_features(cfg, date, run_id)
    valid = train_model(cfg, run_id, "mtl")["valid"]["metric"]  # selection is on valid; test is reported
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    row = aucs(test, mtl_probs(run_dir, test))
    row["mean"] = float(np.mean([v for v in row.values() if v is not None]))
    row["valid mean"] = float(valid)
    return row


def ablate(cfg_args: list[str], home: Path, date: str, names: list[str], seeds: int) -> dict:
    """Ablation rows: one run each (the configured train.seed) when `seeds` is 1, else "mean ± sd" per column
    over train.seed 0..seeds-1."""
    rows = {}
    for name in names:
        runs = []
        for seed in [None] if seeds == 1 else range(seeds):
            runs.append(ablate_once(cfg_args, home, date, ABLATIONS[name], seed))
            print(f"ablation {name} (train.seed {'as configured' if seed is None else seed}): {runs[-1]}", file=sys.stderr,
                  flush=True)
        rows[name] = runs[0] if seeds == 1 else mean_spread(runs)
    return rows


def run_dataset(label: str, landing: Path, home: Path, sets: list[str], args, oracle: Path | None) -> None:
    """Run day D, print the test-day and days-after tables (with the oracle row when `oracle` is a folder) and
    the ablation table when asked."""
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
    rows = main_table(report, landing, spec["splits"]["train"]["dates"], home / "runs" / date, oracle)
    print_table(f"test day {date} AUC", rows, tasks)
    reg = result.get("promote") or result.get("register") or {}  # promote says whether the champion moved
    alias = "champion" if reg.get("champion") else "challenger"
    uri = f"models:/{cfg.registry.model_name}@{alias}"
    for day, after in after_days(cfg, landing, date, days[-2:], uri, oracle).items():
        after[f"registered ({alias}, via mtl score)"] = after.pop("registered", {})
        if oracle is not None:  # last, as in the test-day table
            after[ORACLE_ROW] = after.pop(ORACLE_ROW)
        print_table(f"day after the run {day} AUC", after, tasks)
    if args.ablate:
        names = args.ablations.split("|") if args.ablations else list(ABLATIONS)
        seeds = f"mean ± sd over train.seed 0..{args.ablation_seeds - 1}" if args.ablation_seeds > 1 else "one seed"
        print_table(f"ablation, test day {date} AUC (MTL only, {seeds})",
                    ablate(sets, home, date, names, args.ablation_seeds), [*tasks, "mean", "valid mean"])


def generated(args, work: Path) -> tuple[Path, Path, str]:
    """The generated landing and its oracle folder (made when missing) and the table label."""
    landing, oracle = work / "landing", work / "oracle"
    gen = generator_flags(args)
    if not landing.is_dir():
        mtl("generate", "--out", str(landing), "--oracle-out", str(oracle), *gen)
    ensure_oracle(landing, oracle, gen)
    label = (f"generated {args.days} days x {args.impressions} impressions, {args.users} users, {args.items} "
             f"items, popularity drift {args.popularity_drift}, new items {args.new_items}, long tail "
             f"{args.long_tail}")
    return landing, oracle, label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=("generated", "hillstrom"))
    ap.add_argument("--work", default="/tmp/quality-bench")
    add_generator_args(ap, 12, 25000, 30000, 8000, (0.0, 0.0, 0.0))
    ap.add_argument("--csv", default="/work/shared/data/real/hillstrom-email/hillstrom.csv")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="extra config key=value")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished run of the date (no second mtl run)")
    ap.add_argument("--ablations", default="", help=f"'|'-separated subset of {list(ABLATIONS)}")
    ap.add_argument("--ablation-seeds", type=int, default=1, metavar="N",
                    help="repeat each ablation row over train.seed 0..N-1 and print mean ± sd (1: one run, the "
                         "configured seed)")
    args = ap.parse_args()
    if args.ablation_seeds < 1:
        ap.error("--ablation-seeds must be >= 1")
    drift = (args.popularity_drift, args.new_items, args.long_tail)
    # A landing folder per generator setting: one written with other settings is never reused by mistake.
    name = args.dataset + ("-drift-{}-{}-{}".format(*drift) if args.dataset == "generated" and any(drift) else "")
    work = Path(args.work) / name
    landing, home, oracle = work / "landing", work / "home", None
    sets = ["train.threads=1", "gbdt.n_jobs=1", *args.sets]  # one core each: the machine is shared
    if args.dataset == "generated":
        landing, oracle, label = generated(args, work)
    else:
        if not landing.is_dir():
            out = mtl("import", "hillstrom", args.csv, "--out", str(landing))
            # 10 train days (not the adapter's 12), so day D leaves two days after it to score.
            sets = [*out.get("suggested_overrides", []), "data.train_days=10", *sets]
            (work / "overrides.json").write_text(json.dumps(sets))
        else:
            sets = json.loads((work / "overrides.json").read_text())
        label = "Hillstrom (real, 64k customers)"
    run_dataset(label, landing, home, sets, args, oracle)


if __name__ == "__main__":
    main()
