"""Fresh history at serving: the history tables of a request day from the newest published days of a home's lake.

A served model carries the history snapshot of its training run (`state/history/`), which ages with it. With
`serving.history_from` = a home folder, the window days before a request day are read from that home's lake
wherever it has published them, and from the bundled snapshot otherwise:

    history_for_day(bundled, home, day) -> History   # days day-w .. day-1 (w = the longest window)

Each lake day's counts are the lake's per-day aggregates (`lake_day_counts` ->
`pipeline.features.aggregates.read_day`: the stored tables when current, else computed the same way), the very
tables training concatenates, so for days the bundle also holds the counts are the same, to the last bit
(integer sums). They are cached in memory by the partition's fingerprint and the day's items snapshot; the
merged History of a request day is cached too, keyed by what it was built from: a republished day
invalidates it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.features.aggregates import items_snapshot_for, read_day
from pipeline.features.history import KEYS, History
from pipeline.paths import Layout, parse_date

_LOCK = threading.Lock()
_DAYS: OrderedDict[tuple, History] = OrderedDict()  # one lake day's counts, by `_day_id`
_MERGED: OrderedDict[tuple, History] = OrderedDict()  # a request day's window, by the days it was built from
_MAX_DAYS, _MAX_MERGED = 128, 8


def _remember(cache: OrderedDict, key: tuple, value: Any, limit: int) -> Any:
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def newest_snapshot(layout: Layout, table: str) -> Path | None:
    """The newest dated `table` snapshot of the lake, or None."""
    folder = layout.lake / table
    if not folder.is_dir():
        return None
    dates = sorted((parse_date(p.name[3:]) for p in folder.glob("dt=*")), reverse=True)
    return next((layout.snapshot(table, d) for d in dates if layout.snapshot(table, d).is_file()), None)


def _fingerprint(layout: Layout, day: dt.date) -> str | None:
    path = layout.impressions_dir(day) / "_FINGERPRINT.json"
    return path.read_text() if path.is_file() else None


def lake_day_counts(layout: Layout, day: dt.date) -> History:
    """The per-day count tables of one published lake day: its aggregates (pipeline.features.aggregates)."""
    return read_day(layout, day)


def _day_id(layout: Layout, day: dt.date, fingerprint: str) -> tuple:
    """What a day's counts depend on, cheaply: the partition's fingerprint and its items snapshot file."""
    items = items_snapshot_for(layout, day)
    st = items.stat()
    return (str(layout.impressions_dir(day)), fingerprint, str(items), st.st_mtime_ns, st.st_size)


def history_for_day(bundled: History, home: str | Path | None, day: dt.date) -> History:
    """History for rows of `day`: window days from the lake of `home` where published, else from `bundled`.
    Without a home, or when the lake holds none of the window days, the bundled history itself."""
    if not home:
        return bundled
    layout = Layout.of(home)
    longest = max(bundled.windows)
    window = [day - dt.timedelta(days=i) for i in range(longest, 0, -1)]
    prints = {d: p for d in window if (p := _fingerprint(layout, d)) is not None}
    if not prints or newest_snapshot(layout, "items") is None:
        return bundled
    ids = {d: _day_id(layout, d, fp) for d, fp in prints.items()}
    key = (id(bundled), str(layout.home), day, tuple(sorted(ids.items())))
    with _LOCK:
        if key in _MERGED:
            return _MERGED[key]
    fresh = {}
    for d, day_key in ids.items():
        with _LOCK:
            got = _DAYS.get(day_key)
        if got is None:
            got = lake_day_counts(layout, d)
            with _LOCK:
                _remember(_DAYS, day_key, got, _MAX_DAYS)
        fresh[d] = got
    merged = _merge(bundled, fresh, window)
    with _LOCK:
        return _remember(_MERGED, key, merged, _MAX_MERGED)


def _merge(bundled: History, fresh: dict[dt.date, History], window: list[dt.date]) -> History:
    """Bundled rows of the window days the lake does not hold, plus the lake's days."""
    keep = pl.col("dt").is_in(window) & ~pl.col("dt").is_in(list(fresh))

    def stack(base: pl.DataFrame, parts: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat([base.filter(keep), *[p.select(base.columns) for p in parts]], how="vertical_relaxed")

    tables = {k: stack(bundled.tables[k], [h.tables[k] for h in fresh.values()]) for k in KEYS}
    totals = stack(bundled.totals, [h.totals for h in fresh.values()]).sort("dt")
    first = pl.concat([bundled.first_seen, *[h.first_seen.select(bundled.first_seen.columns) for h in fresh.values()]],
                      how="vertical_relaxed")
    first = first.group_by("item_id").agg(pl.col("first_dt").min()).sort("item_id")
    return History(tables, totals, first, bundled.windows, bundled.smoothing, day_cache={})
