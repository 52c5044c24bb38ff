"""Fresh history at serving: the history tables of a request day from the newest published days of a home's lake.

A served model carries the history snapshot of its training run (`state/history/`), which ages with it. With
`serving.history_from` = a home folder, the window days before a request day are read from that home's lake
wherever it has published them, and from the bundled snapshot otherwise:

    history_for_day(bundled, home, day) -> History   # days day-w .. day-1 (w = the longest window)
    snapshot_from(bundled, home, "items", since)     # users/items rows: the lake's newest snapshot

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
_SHIFTED: OrderedDict[tuple, tuple[History, History]] = OrderedDict()  # (history, its stand_in), by shift
_SNAPSHOTS: OrderedDict[tuple, pl.DataFrame] = OrderedDict()  # a lake users/items snapshot, by file version
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


def snapshot_from(bundled: pl.DataFrame, home: str | Path | None, table: str, since: str | None) -> pl.DataFrame:
    """The `table` (users / items) rows a request is joined with: the newest dated snapshot of `home`'s lake
    when there is one at least as new as the bundle's data date `since`, else `bundled`. So an item listed
    after the model's data date gets its category, brand, price and title as the feature build would join
    them (it reads the snapshot of its date); with the bundled snapshot alone it would be all nulls. Each
    snapshot file version is read once."""
    if not home:
        return bundled
    path = newest_snapshot(Layout.of(home), table)
    if path is None or (since and parse_date(path.parent.name[3:]) < parse_date(since)):
        return bundled
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        got = _SNAPSHOTS.get(key)
    if got is None:
        got = pl.read_parquet(path)
        with _LOCK:
            _remember(_SNAPSHOTS, key, got, 4)
    return got


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
    Without a home, or when the lake holds none of the window days, the bundled history itself. Either way,
    when its newest day is before day-1, the `stand_in` of it."""
    if not home:
        return stand_in(bundled, day)
    layout = Layout.of(home)
    longest = max(bundled.windows)
    window = [day - dt.timedelta(days=i) for i in range(longest, 0, -1)]
    prints = {d: p for d in window if (p := _fingerprint(layout, d)) is not None}
    if not prints or newest_snapshot(layout, "items") is None:
        return stand_in(bundled, day)
    ids = {d: _day_id(layout, d, fp) for d, fp in prints.items()}
    key = (id(bundled), str(layout.home), day, tuple(sorted(ids.items())))
    with _LOCK:
        if key in _MERGED:
            return stand_in(_MERGED[key], day)
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
        _remember(_MERGED, key, merged, _MAX_MERGED)
    return stand_in(merged, day)


def stand_in(hist: History, day: dt.date) -> History:
    """`hist` for rows of `day` when its newest day is before day-1 (a bundled snapshot that ends at the
    model's data date D, scored on D+2 or later; a lake that has not published the days since): the same
    counts with their days moved forward so that the newest is day-1. Why: training rows always see whole
    windows ending the day before; left as it is, the 1-day window of D+2 is empty (zero counts, the rate
    prior 0) and the 7-day one short, inputs no training row had (measured, bench/drift_bench.py: it is
    what makes the day-2 scores drift). Item ages stay measured from the real first days. Cached per
    (history, shift)."""
    if hist.totals.height == 0:
        return hist
    lag = day - dt.timedelta(days=1) - hist.totals["dt"].max()
    if lag.days <= 0:
        return hist
    key = (id(hist), lag.days)
    with _LOCK:
        got = _SHIFTED.get(key)
    if got is not None and got[0] is hist:
        return got[1]

    def move(table: pl.DataFrame) -> pl.DataFrame:
        return table.with_columns(pl.col("dt") + lag)

    moved = History({k: move(t) for k, t in hist.tables.items()}, move(hist.totals), hist.first_seen,
                    hist.windows, hist.smoothing, day_cache={})
    with _LOCK:
        _remember(_SHIFTED, key, (hist, moved), _MAX_MERGED)
    return moved


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
