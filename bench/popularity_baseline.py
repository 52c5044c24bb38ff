"""Test-day AUC of an item-popularity baseline, to set beside a run's evaluation.json.

    .venv/bin/python bench/popularity_baseline.py LANDING --train FIRST..LAST --test DAY

Scores each test row by its item's smoothed label rate over the train days (the prior for unseen items), per
task in its sample space (cvr: clicked rows). A learned model must clearly beat these numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC, ties counted half; NaN when a class is absent."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main() -> None:
    import polars as pl

    from pipeline.data.schema import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("landing")
    ap.add_argument("--train", required=True, help="FIRST..LAST dates")
    ap.add_argument("--test", required=True)
    ap.add_argument("--smoothing", type=float, default=20.0)
    args = ap.parse_args()
    first, last = (dt.date.fromisoformat(x) for x in args.train.split(".."))
    test_day = dt.date.fromisoformat(args.test)
    imp = pl.read_parquet(f"{args.landing}/impressions/*/*.parquet", hive_partitioning=True)
    train = imp.filter(pl.col("dt").is_between(first, last))
    test = imp.filter(pl.col("dt") == test_day)
    for name, task in TASKS.items():
        tr = train.filter(pl.col(task.given) == 1) if task.given else train
        te = test.filter(pl.col(task.given) == 1) if task.given else test
        prior, k = tr[task.label].mean(), args.smoothing
        smoothed = (pl.col(task.label).sum() + k * prior) / (pl.len() + k)
        rate = tr.group_by("item_id").agg(smoothed.alias("p"))
        te = te.join(rate, on="item_id", how="left").with_columns(pl.col("p").fill_null(prior))
        value = auc(te[task.label].to_numpy(), te["p"].to_numpy())
        print(f"{name:6s} popularity AUC {value:.4f}  ({te.height} rows)")


if __name__ == "__main__":
    main()
