"""The time windows of a features run: which days are train / valid / test, and which lake days they read."""

from __future__ import annotations

import datetime as dt

from pipeline.config import Config
from pipeline.errors import FeatureError
from pipeline.paths import Layout, parse_date

SPLITS = ("train", "valid", "test")


def split_dates(cfg: Config, date: dt.date | str) -> dict[str, list[dt.date]]:
    """Windows ending at D: test = last data.test_days days, valid the data.valid_days before, train before."""
    d, days = parse_date(date), cfg.data
    lengths = {"test": days.test_days, "valid": days.valid_days, "train": days.train_days}
    out, end = {}, d
    for split in ("test", "valid", "train"):
        out[split] = [end - dt.timedelta(days=i) for i in range(lengths[split] - 1, -1, -1)]
        end = out[split][0] - dt.timedelta(days=1)
    return {s: out[s] for s in SPLITS}


def lake_days(layout: Layout, splits: dict[str, list[dt.date]], max_window: int) -> list[dt.date]:
    """Split days (all required) plus the available history days before the train window."""
    need = [d for s in SPLITS for d in splits[s]]
    have = set(layout.ingested_dates())
    missing = [d.isoformat() for d in need if d not in have]
    if missing:
        raise FeatureError(f"features for {need[-1]} need lake days {need[0]}..{need[-1]} under {layout.lake}; "
                           f"missing: {', '.join(missing)}")
    first = need[0] - dt.timedelta(days=max_window)
    return sorted(d for d in have if first <= d <= need[-1])
