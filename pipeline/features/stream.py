"""Streaming pieces of the features stage: one lake day at a time, so memory follows one day, not the window.

- `scan_day`: a lake day's impressions joined with the run's snapshots, lazily (what one day of `transform`'s
  raw input is);
- `day_history`: the History one day's rows need, read from the lake's per-day aggregates
  (`pipeline.features.aggregates`) for the window before it and only for the keys on that day;
- `distinct_texts`: the sorted distinct titles and queries of some days, without collecting their rows;
- `SplitWriter`: a split's Parquet file written one row group per day (pyarrow), with its row count and label
  rates summed as it goes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.data.schema import IMPRESSIONS, ITEMS, LABELS, TASKS, USERS
from pipeline.errors import FeatureError
from pipeline.features.aggregates import KEY_COLUMNS, first_seen_of, window_history
from pipeline.features.history import History
from pipeline.paths import Layout


def scan_day(layout: Layout, day: dt.date, users: pl.DataFrame, items: pl.DataFrame,
             extra: set[str]) -> pl.LazyFrame:
    """Impressions of `day` joined with the snapshots; contract columns plus declared extras only; `dt` = the
    UTC date of `ts`."""
    folder = layout.impressions_dir(day)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FeatureError(f"lake day {day} has no Parquet files in {folder}")
    lf = pl.scan_parquet([str(f) for f in files])
    names = lf.collect_schema().names()
    keep = [c for c in IMPRESSIONS.names if c in names] + sorted(extra & set(names) - set(IMPRESSIONS.names))
    u_keep = [c for c in users.columns if c in USERS.names or c in extra]
    i_keep = [c for c in items.columns if c in ITEMS.names or c in extra]
    return (lf.select(keep)
            .join(users.lazy().select(u_keep), on="user_id", how="left", maintain_order="left")
            .join(items.lazy().select(i_keep), on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt")))


def day_history(layout: Layout, lake_days: list[dt.date], day: dt.date, rows: pl.DataFrame,
                windows: tuple[int, ...], smoothing: float) -> History:
    """What `add_history` needs for `rows` of `day`: the window days before it (among `lake_days`) and
    first impressions over every lake day before it (as the whole-window tables gave)."""
    before = [d for d in lake_days if d < day]
    window = [d for d in before if d >= day - dt.timedelta(days=max(windows))]
    slim = rows.select("dt", *KEY_COLUMNS, *LABELS, pl.col("price").cast(pl.Float64))
    return window_history(layout, window, slim, first_seen_of(layout, before), windows, smoothing)


def placeholder_history(windows: tuple[int, ...], smoothing: float) -> History:
    """A History that only carries the settings (the build sets `history_for` per day)."""
    return History({}, pl.DataFrame(), pl.DataFrame(), tuple(windows), float(smoothing))


def distinct_texts(layout: Layout, days: list[dt.date], items: pl.DataFrame) -> list[str]:
    """Sorted distinct non-null titles (of the items shown) and queries of `days`, from lazy scans."""
    imp = pl.concat([pl.scan_parquet(str(layout.impressions_dir(d) / "*.parquet")).select("item_id", "query")
                     for d in days])
    queries = imp.select(pl.col("query").alias("text")).unique()
    shown = imp.select("item_id").unique()
    titles = (shown.join(items.lazy().select("item_id", "title"), on="item_id", how="left")
              .select(pl.col("title").alias("text")))
    out = pl.concat([queries, titles]).drop_nulls().unique().sort("text").collect(engine="streaming")
    return out["text"].to_list()


class SplitWriter:
    """One split's Parquet file, a row group per `write`; counts rows and label sums for the spec."""

    def __init__(self, path: Path):
        self.path, self._writer, self.rows = path, None, 0
        self._sums: dict[str, list[int]] = {name: [0, 0] for name in TASKS}

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table.cast(self._writer.schema))
        self.rows += frame.height
        for name, task in TASKS.items():
            rows = frame.filter(pl.col(task.given) == 1) if task.given else frame
            label = rows[task.label]
            self._sums[name][0] += int(label.sum() or 0)
            self._sums[name][1] += label.count()

    def close(self) -> None:
        if self._writer is None:
            raise FeatureError(f"{self.path}: a split without any day to write")
        self._writer.close()

    def label_rates(self) -> dict[str, Any]:
        return {name: s / n if n else None for name, (s, n) in self._sums.items()}
