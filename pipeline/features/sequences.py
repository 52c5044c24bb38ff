"""User behaviour sequences (DIN-style inputs): each row's user's last N clicked items before the row's day.

A row on day t sees the clicks of days t-L .. t-1 only (L = `lookback`, the longest history window; never day
t itself, so a click in the same request or later that day cannot leak in), most recent first. The state keeps
one row per (user, day) with that day's clicked items, most recent first, cut to N (the first N of a
concatenation over days newest-first need at most N per day, so the cut loses nothing):

    clicks: user_id (str), dt (date), items (list[str])

A sequence is then a point-in-time join: the window's day lists, newest day first, concatenated and cut to N.
Columns `seq__item_id_00 .. seq__item_id_<N-1>` (int32, 00 = the most recent click) hold indices of the train-only
item_id vocabulary, the one the candidate `cat__item_id` uses, so the model looks both up in one embedding
table. 0 is padding; a clicked item outside the vocabulary has no trained row of its own and is 0 too (the
attention masks it like padding).

At serving (`clicks_for_day`), the window days a home's lake has published are read from the lake (cached by
partition fingerprint, as `pipeline.features.fresh` does for history) and the rest come from the bundled state,
so a model scoring day D+1 sees the clicks of day D even though it was trained on days up to D-2.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.paths import Layout

VOCAB = "item_id"  # the categorical feature whose vocabulary and embedding the sequence shares
FILE = "sequences.parquet"
_SCHEMA = {"user_id": pl.String, "dt": pl.Date, "items": pl.List(pl.String)}
_LOCK = threading.Lock()
_LAKE_DAYS: OrderedDict[tuple, pl.DataFrame] = OrderedDict()  # (partition, fingerprint, N) -> day lists
_MERGED: OrderedDict[tuple, Sequences] = OrderedDict()  # a request day's window, by the days it was built from
_MAX_LAKE_DAYS, _MAX_MERGED = 128, 8


def columns(length: int) -> list[str]:
    """The sequence columns in order: seq__item_id_00 (most recent) .. seq__item_id_<N-1>."""
    return [f"seq__{VOCAB}_{k:02d}" for k in range(length)]


def spec(length: int) -> dict | None:
    """feature_spec.json's "sequence" entry (None when off)."""
    return {"length": length, "columns": columns(length), "vocab": {VOCAB: VOCAB}} if length else None


@dataclass
class Sequences:
    """Per-(user, day) click lists (`clicks`, schema above) and the settings that read them."""

    clicks: pl.DataFrame
    length: int
    lookback: int
    # Serving sets this to a dict: one day's per-user sequences are computed once and reused by later requests.
    day_cache: dict | None = field(default=None, compare=False, repr=False)

    def save(self, folder: Path) -> None:
        self.clicks.write_parquet(folder / FILE)

    @classmethod
    def load(cls, folder: Path, length: int, lookback: int) -> Sequences:
        return cls(pl.read_parquet(folder / FILE), length, lookback)


def day_clicks(rows: pl.DataFrame, length: int) -> pl.DataFrame:
    """Per (user, day) the clicked item_ids, most recent first (ties by event_id, descending), cut to `length`.
    rows: user_id, item_id, ts, clicked, event_id (dt is derived from ts in UTC when absent)."""
    if "dt" not in rows.columns:
        rows = rows.with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt"))
    clicked = (rows.filter(pl.col("clicked") == 1).select("user_id", "dt", "item_id", "ts", "event_id")
               .sort(["ts", "event_id"], descending=True))
    out = clicked.group_by("user_id", "dt", maintain_order=True).agg(pl.col("item_id").head(length).alias("items"))
    return out.select(pl.col("user_id").cast(pl.String), "dt", pl.col("items").cast(pl.List(pl.String))).sort(
        "user_id", "dt")


def build_sequences(rows: pl.DataFrame, length: int, lookback: int) -> Sequences:
    """The state from labelled raw rows of every day the features stage reads."""
    return Sequences(day_clicks(rows, length), length, lookback)


def user_sequences(seqs: Sequences, day: dt.date) -> pl.DataFrame:
    """user_id -> `seq` (list[str], at most N, newest first) from the clicks of days day-L .. day-1."""
    cache = seqs.day_cache
    if cache is not None and day in cache:
        return cache[day]
    first = day - dt.timedelta(days=seqs.lookback)
    win = seqs.clicks.filter((pl.col("dt") >= first) & (pl.col("dt") < day))
    # Newest day first; explode keeps each day's own order (most recent first), and group_by keeps row order.
    out = (win.sort(["user_id", "dt"], descending=[False, True], maintain_order=True).explode("items")
           .group_by("user_id", maintain_order=True).agg(pl.col("items").head(seqs.length).alias("seq")))
    if cache is not None:
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[day] = out
    return out


def sequence_columns(rows: pl.DataFrame, vocab: pl.DataFrame, length: int,
                     seqs_for: Callable[[dt.date], Sequences]) -> pl.DataFrame:
    """The `columns(length)` int32 frame for rows (columns user_id, dt), in row order. `vocab`: value -> index
    of item_id (0 = not in it); `seqs_for(day)` gives the click lists to read for rows of that day."""
    keys = rows.select(pl.col("user_id").cast(pl.String), "dt").with_row_index("_srow")
    parts = []
    for day in keys["dt"].unique().sort().to_list():
        seqs = seqs_for(day)
        part = keys.filter(pl.col("dt") == day)
        parts.append(part.join(user_sequences(seqs, day), on="user_id", how="left").select("_srow", "seq"))
    joined = (pl.concat(parts, how="vertical") if parts else
              keys.select("_srow", pl.lit(None, pl.List(pl.String)).alias("seq"))).sort("_srow")
    return joined.select(
        pl.col("seq").list.get(k, null_on_oob=True).replace_strict(vocab["value"], vocab["index"], default=0,
                                                                      return_dtype=pl.Int32)
        .fill_null(0).alias(name) for k, name in enumerate(columns(length)))


def for_state(derived: pl.DataFrame, state) -> pl.DataFrame | None:
    """The sequence columns of a feature state's rows (`FeatureState.sequences`; at serving read per day through
    `state.sequence_for`), or None when the state has no sequences."""
    seqs = state.sequences
    if seqs is None:
        return None
    return sequence_columns(derived, state.vocabs[VOCAB], seqs.length, state.sequence_for or (lambda _day: seqs))


def _fingerprint(layout: Layout, day: dt.date) -> str | None:
    path = layout.impressions_dir(day) / "_FINGERPRINT.json"
    return path.read_text() if path.is_file() else None


def lake_day_clicks(layout: Layout, day: dt.date, length: int) -> pl.DataFrame:
    """`day_clicks` of one published lake day."""
    imp = pl.scan_parquet(str(layout.impressions_dir(day) / "*.parquet")).select(
        "user_id", "item_id", "ts", "clicked", "event_id").collect()
    return day_clicks(imp, length)


def _remember(cache: OrderedDict, key: tuple, value, limit: int):
    with _LOCK:
        cache[key] = value
        while len(cache) > limit:
            cache.popitem(last=False)
    return value


def clicks_for_day(bundled: Sequences, home: str | Path | None, day: dt.date) -> Sequences:
    """Sequences to read for rows of `day`: the window days a home's lake has published come from the lake,
    the others from `bundled`. Without a home (or with no window day in the lake), `bundled` itself."""
    if not home:
        return bundled
    layout = Layout.of(home)
    window = [day - dt.timedelta(days=i) for i in range(bundled.lookback, 0, -1)]
    prints = {d: p for d in window if (p := _fingerprint(layout, d)) is not None}
    if not prints:
        return bundled
    merged_key = (id(bundled), str(layout.home), day, tuple(sorted(prints.items())))
    with _LOCK:
        if merged_key in _MERGED:
            return _MERGED[merged_key]
    fresh = []
    for d, fp in prints.items():
        key = (str(layout.impressions_dir(d)), fp, bundled.length)
        with _LOCK:
            got = _LAKE_DAYS.get(key)
        if got is None:
            got = _remember(_LAKE_DAYS, key, lake_day_clicks(layout, d, bundled.length), _MAX_LAKE_DAYS)
        fresh.append(got)
    keep = bundled.clicks.filter(pl.col("dt").is_in(window) & ~pl.col("dt").is_in(list(prints)))
    merged = pl.concat([keep, *fresh], how="vertical_relaxed").sort("user_id", "dt")
    return _remember(_MERGED, merged_key, Sequences(merged, bundled.length, bundled.lookback, day_cache={}),
                     _MAX_MERGED)
