"""The LightGBM baseline of one task: `train_gbdt(cfg, run_id, task)` -> runs/<run_id>/models/gbdt_<task>/.

Trained on the same feature files as the neural models: each `cat__*` column with at most `gbdt.max_cardinality`
ids as a LightGBM categorical (index 0 = unknown stays a category of its own), every `num__*` column as a number.
Larger id columns (users, items on a real log) are left to their point-in-time history features: trees split
them into noise (measured on a 12-day x 25k log: ctr test AUC 0.7326 with them, 0.7370 without). Text indices (`text__*`) are row
numbers into the text table, not quantities, so trees do not see them; the text signal reaches them through
`num__query_title_cos`. Rows outside the task's sample space (cvr: unclicked rows) are left out. Early stopping
on the valid window's AUC; the test split is never read here.

The folder holds `model.txt` (LightGBM's own text format: no pickle) cut at the best iteration and `meta.json`
(`name`, `model`="lightgbm", `tasks`=[task], `features`, `categorical`, `best_epoch` = best iteration, `valid`,
`importance`: top features by total gain).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import Config
from pipeline.errors import FeatureError, TrainingError
from pipeline.io import atomic_path, read_json, write_json
from pipeline.paths import FEATURES_DIR, MODELS_DIR, Layout, gbdt_name

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)
MODEL_FILE, META_FILE = "model.txt", "meta.json"
TOP_FEATURES = 20


def feature_columns(spec: dict[str, Any], max_cardinality: int) -> tuple[list[str], list[str]]:
    """(every input column in a fixed order, the categorical ones) from a feature spec."""
    cats = [c["column"] for c in spec["categorical"] if c["cardinality"] <= max_cardinality]
    return cats + list(spec["numeric"]), cats


def matrix(frame: pl.DataFrame, columns: list[str], where: str) -> np.ndarray:
    """The input matrix float32 [N, len(columns)]; ids are small ints, exact in float32 below 2^24."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FeatureError(f"{where}: feature column(s) {missing} missing from the frame")
    return frame.select(columns).to_numpy().astype(np.float32, copy=False)


def _split(run_dir: Path, split: str, spec: dict[str, Any], task: str, cats: list[str],
           chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [M, len(cats) + F], y float32 [M]) of the rows in the task's sample space, columns `cats`
    then the spec's numerics (`feature_columns` order), filled chunk by chunk from the split's memory-mapped
    arrays (pipeline.features.arrays): only X itself is ever whole in memory."""
    from pipeline.features.arrays import open_split

    data = open_split(run_dir, split, (task,), spec)
    where = [c["column"] for c in spec["categorical"]]
    pick = [where.index(c) for c in cats]
    rows = int(data.label_sums(chunk)[1][0])
    x = np.empty((rows, len(pick) + data.num.shape[1]), dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    at = 0
    for start in range(0, len(data), chunk):
        part = data.slice(start, min(start + chunk, len(data)))
        keep = part.mask[:, 0] > 0
        m = int(keep.sum())
        x[at:at + m, :len(pick)] = part.cat[keep][:, pick].numpy()
        x[at:at + m, len(pick):] = part.num[keep].numpy()
        y[at:at + m] = part.labels[keep, 0].numpy()
        at += m
    return x, y


def params(cfg: Config) -> dict[str, Any]:
    g = cfg.gbdt
    return {"objective": "binary", "metric": "auc", "num_leaves": g.num_leaves, "learning_rate": g.learning_rate,
            "min_data_in_leaf": g.min_data_in_leaf, "feature_fraction": g.feature_fraction,
            "lambda_l2": g.lambda_l2, "cat_smooth": g.cat_smoothing, "num_threads": g.n_jobs, "seed": g.seed,
            "deterministic": True, "force_row_wise": True, "verbosity": -1}


def train_gbdt(cfg: Config, run_id: str, task: str) -> dict[str, Any]:
    """Train gbdt_<task> -> {"run_id", "name", "model_dir", "best_epoch", "valid": {"auc": {task: auc}}}."""
    import lightgbm as lgb

    from pipeline.features.dataset import read_spec

    name = gbdt_name(task)
    if task not in cfg.model.tasks:
        raise TrainingError(f"{name}: task '{task}' is not in model.tasks {cfg.model.tasks}")
    run_dir = Layout.of(cfg.home).run_dir(run_id)
    spec = read_spec(run_dir)
    columns, cats = feature_columns(spec, cfg.gbdt.max_cardinality)
    data = {}
    for split in ("train", "valid"):
        path = run_dir / FEATURES_DIR / f"{split}.parquet"
        if not path.is_file():
            raise FeatureError(f"{name}: feature file not found: {path} (run the features stage first)")
        data[split] = _split(run_dir, split, spec, task, cats)
    for split, (_, y) in data.items():
        if y.size == 0 or y.min() == y.max():
            raise TrainingError(f"{name}: the {split} split has {y.size} rows in the task's sample space and "
                                f"{int(y.sum())} positives; a classifier needs both classes")
    train = lgb.Dataset(data["train"][0], data["train"][1], feature_name=columns, categorical_feature=cats,
                        free_raw_data=True)
    valid = lgb.Dataset(data["valid"][0], data["valid"][1], reference=train)
    booster = lgb.train(params(cfg), train, num_boost_round=cfg.gbdt.max_rounds, valid_sets=[valid],
                        valid_names=["valid"],
                        callbacks=[lgb.early_stopping(cfg.gbdt.early_stopping_rounds, verbose=False)])
    best = int(booster.best_iteration or booster.current_iteration())
    auc = float(booster.best_score["valid"]["auc"])
    log.info("%s/%s: best iteration %d, valid AUC %.4f", run_id, name, best, auc)
    gains = booster.feature_importance("gain", iteration=best)
    top = sorted(zip(columns, gains.tolist()), key=lambda kv: -kv[1])[:TOP_FEATURES]
    meta = {"run_id": run_id, "name": name, "model": "lightgbm", "tasks": [task], "features": columns,
            "categorical": cats, "best_epoch": best, "params": params(cfg), "config_hash": cfg.hash(),
            "train_rows": int(data["train"][1].size), "valid": {"auc": {task: auc}},
            "importance": {k: v for k, v in top}}
    model_dir = run_dir / MODELS_DIR / name
    with atomic_path(model_dir) as tmp:
        tmp.mkdir(parents=True)
        booster.save_model(str(tmp / MODEL_FILE), num_iteration=best)
        write_json(tmp / META_FILE, meta)
    return {"run_id": run_id, "name": name, "model_dir": str(model_dir), "best_epoch": best,
            "valid": {"auc": {task: auc}, "metric": auc}}


def predict_gbdt(model_dir: str | Path, frame: pl.DataFrame, n_jobs: int = 1) -> dict[str, np.ndarray]:
    """task -> probabilities float64 [N] for every row of `frame` (a feature frame of the same run)."""
    import lightgbm as lgb

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / META_FILE).is_file():
        raise TrainingError(f"no trained LightGBM model in {model_dir} (expected {MODEL_FILE} and {META_FILE})")
    meta = read_json(model_dir / META_FILE)
    booster = lgb.Booster(model_file=str(model_dir / MODEL_FILE))
    p = booster.predict(matrix(frame, meta["features"], str(model_dir)), num_threads=n_jobs)
    return {meta["tasks"][0]: np.asarray(p, dtype=np.float64)}
