"""Per-day aggregates in the lake: each published day's history count tables, written once.

    lake/_aggregates/dt=D/<kind>.parquet    per KEYS kind: key columns, dt, n, clicked, carted, purchased
                                            (user: + buy_logp), as `pipeline.features.history.build_history`
                                            gives for that one day
    lake/_aggregates/dt=D/_totals.parquet   the day's totals; _first_seen.parquet: item_id, first_dt (= D)
    lake/_aggregates/dt=D/_AGGREGATE.json   {"day", "fingerprint", "items", "items_sha256", "rows"}: what it was
                                            built from

A day's counts join its impressions with one items snapshot (shop, category, price): the earliest snapshot dated
on or after the day (the one of the run that published it), else the newest before it. That choice never changes
once a day is published, so the tables stay valid; a re-published day (new `_FINGERPRINT.json`) or a rewritten
snapshot (new hash) makes `build_day_aggregates` rebuild it. History for a window is the concatenation of its
days' tables (sums never cross days), so training, the stored state and fresh serving history
(`pipeline.features.fresh`) all read the same numbers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.data.schema import LABELS
from pipeline.errors import FeatureError
from pipeline.features.history import KEYS, History, build_history
from pipeline.features.windows import lake_days, split_dates
from pipeline.io import atomic_path, read_json, write_json
from pipeline.paths import Layout, parse_date

AGG_DIR = "_aggregates"
META = "_AGGREGATE.json"
KEY_COLUMNS = sorted({c for cols in KEYS.values() for c in cols})


def day_dir(layout: Layout, day: dt.date) -> Path:
    return layout.lake / AGG_DIR / f"dt={day.isoformat()}"


def items_snapshot_for(layout: Layout, day: dt.date) -> Path:
    """The items snapshot a day's counts use: earliest dated on or after `day`, else the newest before it."""
    folder = layout.lake / "items"
    dates = sorted(parse_date(p.name[3:]) for p in folder.glob("dt=*")) if folder.is_dir() else []
    dates = [d for d in dates if layout.snapshot("items", d).is_file()]
    if not dates:
        raise FeatureError(f"no items snapshot under {folder}: the counts of lake day {day} need one")
    after = [d for d in dates if d >= day]
    return layout.snapshot("items", after[0] if after else dates[-1])


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_key(layout: Layout, day: dt.date) -> dict[str, Any]:
    """What a day's aggregates are built from: the partition's fingerprint and the items snapshot (path, hash)."""
    folder = layout.impressions_dir(day)
    fp = folder / "_FINGERPRINT.json"
    if fp.is_file():
        print_ = fp.read_text()
    else:  # a lake written by hand (no publish step): the files' bytes stand in for the fingerprint
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise FeatureError(f"lake day {day} has no Parquet files in {folder}")
        print_ = "files:" + hashlib.sha256("".join(f.name + _sha256(f) for f in files).encode()).hexdigest()
    items = items_snapshot_for(layout, day)
    return {"day": day.isoformat(), "fingerprint": print_,
            "items": str(items.relative_to(layout.lake)), "items_sha256": _sha256(items)}


def compute_day(layout: Layout, day: dt.date, key: dict[str, Any] | None = None) -> History:
    """The day's count tables from its raw rows (build_history; windows/smoothing are not used by the tables)."""
    key = key or source_key(layout, day)
    files = sorted(layout.impressions_dir(day).glob("*.parquet"))
    if not files:
        raise FeatureError(f"lake day {day} has no Parquet files in {layout.impressions_dir(day)}")
    keys = [c for c in KEY_COLUMNS if c not in ("shop_id", "category")]
    imp = pl.scan_parquet([str(f) for f in files]).select("ts", *keys, *LABELS)
    snap = pl.scan_parquet(str(layout.lake / key["items"])).select("item_id", "shop_id", "category", "price")
    rows = (imp.join(snap, on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt"))
            .select("dt", *KEY_COLUMNS, *LABELS, "price").collect())
    return build_history(rows, (1,), 0.0)


def _current(layout: Layout, day: dt.date, key: dict[str, Any]) -> bool:
    meta = day_dir(layout, day) / META
    if not meta.is_file():
        return False
    got = read_json(meta)
    return all(got.get(k) == v for k, v in key.items())


def build_day_aggregates(cfg: Config, day: dt.date | str) -> dict[str, Any]:
    """Write lake/_aggregates/dt=D/ for a published lake day (atomically); a no-op when it is current.
    Returns {"day", "built": bool, "path"}."""
    return _ensure(Layout.of(cfg.home), parse_date(day))


def _ensure(layout: Layout, day: dt.date) -> dict[str, Any]:
    key = source_key(layout, day)
    folder = day_dir(layout, day)
    if _current(layout, day, key):
        return {"day": day.isoformat(), "built": False, "path": str(folder)}
    hist = compute_day(layout, day, key)
    with atomic_path(folder) as tmp:
        hist.save(tmp)
        write_json(tmp / META, {**key, "rows": int(hist.totals["n"].sum() or 0)})
    return {"day": day.isoformat(), "built": True, "path": str(folder)}


def ensure_days(layout: Layout, days: list[dt.date]) -> list[str]:
    """Build the aggregates of `days` that are missing or stale; the days built."""
    return [r["day"] for d in days if (r := _ensure(layout, d))["built"]]


def read_day(layout: Layout, day: dt.date) -> History:
    """A published day's count tables: the stored aggregates when current, else computed now (nothing written:
    readers such as a serving process may not own the lake)."""
    key = source_key(layout, day)
    if _current(layout, day, key):
        return History.load(day_dir(layout, day), (1,), 0.0)
    return compute_day(layout, day, key)


def _scan(layout: Layout, days: list[dt.date], name: str) -> pl.LazyFrame:
    return pl.scan_parquet([str(day_dir(layout, d) / f"{name}.parquet") for d in days])


def window_history(layout: Layout, days: list[dt.date], rows: pl.DataFrame, first_seen: pl.DataFrame,
                   windows: tuple[int, ...], smoothing: float) -> History:
    """History over `days` (aggregates built) restricted to the keys of `rows` (a frame with dt, the
    KEY_COLUMNS, the labels and price): only those keys' window sums are ever looked up, so only their rows are
    read. `first_seen` is passed in (it spans every day before the rows, not just the window)."""
    if not days:  # the first day of the lake: empty tables of the right types
        empty = build_history(rows.select("dt", *KEY_COLUMNS, *LABELS, "price").head(0), windows, smoothing)
        return History(empty.tables, empty.totals, first_seen, tuple(windows), float(smoothing))
    tables = {}
    for kind, cols in KEYS.items():
        wanted = rows.select(list(cols)).unique().lazy()
        tables[kind] = (_scan(layout, days, kind).join(wanted, on=list(cols), how="semi")
                        .collect(engine="streaming"))
    totals = _scan(layout, days, "_totals").collect()
    return History(tables, totals, first_seen, tuple(windows), float(smoothing))


def first_seen_of(layout: Layout, days: list[dt.date]) -> pl.DataFrame:
    """item_id -> first day with an impression among `days` (item_id order)."""
    if not days:
        return pl.DataFrame(schema={"item_id": pl.String, "first_dt": pl.Date})
    return (_scan(layout, days, "_first_seen").group_by("item_id").agg(pl.col("first_dt").min())
            .sort("item_id").collect())


def write_history(layout: Layout, days: list[dt.date], folder: Path) -> None:
    """A state's history folder (History.save layout) for `days`: the days' tables concatenated, streamed."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in KEYS:
        _scan(layout, days, kind).sink_parquet(folder / f"{kind}.parquet")
    _scan(layout, days, "_totals").sort("dt").collect().write_parquet(folder / "_totals.parquet")
    first_seen_of(layout, days).write_parquet(folder / "_first_seen.parquet")


def aggregate_days(cfg: Config, date: dt.date | str) -> list[str]:
    """The lake days whose aggregates the features stage of `date` reads (ISO dates, oldest first). With history
    off: the split days alone, so the list is never empty (the DAG maps over it, and an empty mapped task would
    be skipped, and with it everything after; their aggregates also serve the fresh history at scoring)."""
    back = max(cfg.features.history_windows) if cfg.features.history else 0
    days = lake_days(Layout.of(cfg.home), split_dates(cfg, date), back)
    return [d.isoformat() for d in days]
