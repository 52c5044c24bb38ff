"""User behaviour sequences (DIN-style inputs): each row's user's last N clicked items before the row's day.

A row on day t sees the clicks of days t-L .. t-1 only (L = `lookback`, the longest history window; never day
t itself, so a click in the same request or later that day cannot leak in), most recent first. Each click is
described by `fields`: item_id and optionally other item columns (category, brand, shop_id). The state keeps
one row per (user, day) with that day's clicks, most recent first, cut to N (the first N of a concatenation over
days newest-first need at most N per day, so the cut loses nothing):

    clicks: user_id (str), dt (date), <field> (list[str]) per field, the lists of a row aligned

A sequence is then a point-in-time join: the window's day lists, newest day first, concatenated and cut to N.
Columns `seq__<field>_00 .. seq__<field>_<N-1>` (int32, 00 = the most recent click; fields in order) hold indices
of the field's train-only vocabulary, the one the candidate's `cat__<field>` uses, so the model looks both up in
one embedding table. 0 is padding; a clicked value outside the vocabulary has no trained row of its own and is 0
too (a position is padding where every field is 0).

At serving (`clicks_for_day`), the window days a home's lake has published are read from the lake (cached by
partition fingerprint, as `pipeline.features.fresh` does for history; item fields from the lake's newest items
snapshot, as fresh history does) and the rest come from the bundled state, so a model scoring day D+1 sees the
clicks of day D even though it was trained on days up to D-2.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.features.fresh import newest_snapshot
from pipeline.paths import Layout

FILE = "sequences.parquet"
_LOCK = threading.Lock()
_LAKE_DAYS: OrderedDict[tuple, pl.DataFrame] = OrderedDict()  # (partition, fingerprint, N) -> day lists
_MERGED: OrderedDict[tuple, Sequences] = OrderedDict()  # a request day's window, by the days it was built from
_MAX_LAKE_DAYS, _MAX_MERGED = 128, 8


def columns(length: int, fields: tuple[str, ...] = ("item_id",)) -> list[str]:
    """The sequence columns in order: per field, seq__<field>_00 (most recent) .. seq__<field>_<N-1>."""
    return [f"seq__{f}_{k:02d}" for f in fields for k in range(length)]


def spec(length: int, fields: tuple[str, ...]) -> dict | None:
    """feature_spec.json's "sequence" entry (None when off): each field shares the vocabulary of its namesake."""
    return {"length": length, "columns": columns(length, fields), "vocab": {f: f for f in fields}} if length else None


@dataclass
class Sequences:
    """Per-(user, day) click lists (`clicks`, schema above) and the settings that read them."""

    clicks: pl.DataFrame
    length: int
    lookback: int
    fields: tuple[str, ...] = ("item_id",)
    # Serving sets this to a dict: one day's per-user sequences are computed once and reused by later requests.
    day_cache: dict | None = field(default=None, compare=False, repr=False)

    def save(self, folder: Path) -> None:
        self.clicks.write_parquet(folder / FILE)

    @classmethod
    def load(cls, folder: Path, length: int, lookback: int, fields: tuple[str, ...]) -> Sequences:
        return cls(pl.read_parquet(folder / FILE), length, lookback, tuple(fields))


def day_clicks(rows: pl.DataFrame, length: int, fields: tuple[str, ...]) -> pl.DataFrame:
    """Per (user, day) the clicks' `fields`, most recent first (ties by event_id, descending), cut to `length`.
    rows: user_id, ts, clicked, event_id and the fields (dt is derived from ts in UTC when absent)."""
    if "dt" not in rows.columns:
        rows = rows.with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt"))
    clicked = (rows.filter(pl.col("clicked") == 1).select("user_id", "dt", *fields, "ts", "event_id")
               .sort(["ts", "event_id"], descending=True))
    out = clicked.group_by("user_id", "dt", maintain_order=True).agg(pl.col(f).head(length) for f in fields)
    return out.select(pl.col("user_id").cast(pl.String), "dt",
                      *[pl.col(f).cast(pl.List(pl.String)) for f in fields]).sort("user_id", "dt")


def build_sequences(rows: pl.DataFrame, length: int, lookback: int, fields: tuple[str, ...]) -> Sequences:
    """The state from labelled raw rows of every day the features stage reads."""
    return Sequences(day_clicks(rows, length, tuple(fields)), length, lookback, tuple(fields))


def user_sequences(seqs: Sequences, day: dt.date) -> pl.DataFrame:
    """user_id -> one list[str] per field (at most N, newest first) from the clicks of days day-L .. day-1."""
    cache = seqs.day_cache
    if cache is not None and day in cache:
        return cache[day]
    first = day - dt.timedelta(days=seqs.lookback)
    win = seqs.clicks.filter((pl.col("dt") >= first) & (pl.col("dt") < day))
    # Newest day first; explode keeps each day's own order (most recent first), and group_by keeps row order.
    fields = list(seqs.fields)
    out = (win.sort(["user_id", "dt"], descending=[False, True], maintain_order=True).explode(fields)
           .group_by("user_id", maintain_order=True).agg(pl.col(f).head(seqs.length) for f in fields))
    if cache is not None:
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[day] = out
    return out


def sequence_columns(rows: pl.DataFrame, vocabs: dict[str, pl.DataFrame], length: int, fields: tuple[str, ...],
                     seqs_for: Callable[[dt.date], Sequences]) -> pl.DataFrame:
    """The `columns(length, fields)` int32 frame for rows (columns user_id, dt), in row order. `vocabs`: per
    field value -> index (0 = not in it); `seqs_for(day)` gives the click lists to read for rows of that day."""
    keys = rows.select(pl.col("user_id").cast(pl.String), "dt").with_row_index("_srow")
    parts = []
    for day in keys["dt"].unique().sort().to_list():
        part = keys.filter(pl.col("dt") == day)
        parts.append(part.join(user_sequences(seqs_for(day), day), on="user_id", how="left")
                     .select("_srow", *fields))
    empty = keys.select("_srow", *[pl.lit(None, pl.List(pl.String)).alias(f) for f in fields])
    joined = (pl.concat(parts, how="vertical") if parts else empty).sort("_srow")
    out = []
    for f in fields:
        v = vocabs[f]
        out += [pl.col(f).list.get(k, null_on_oob=True).replace_strict(v["value"], v["index"], default=0,
                                                                        return_dtype=pl.Int32)
                .fill_null(0).alias(f"seq__{f}_{k:02d}") for k in range(length)]
    return joined.select(out)


def for_state(derived: pl.DataFrame, state) -> pl.DataFrame | None:
    """The sequence columns of a feature state's rows (`FeatureState.sequences`; at serving read per day through
    `state.sequence_for`), or None when the state has no sequences."""
    seqs = state.sequences
    if seqs is None:
        return None
    return sequence_columns(derived, state.vocabs, seqs.length, seqs.fields,
                            state.sequence_for or (lambda _day: seqs))


def _fingerprint(layout: Layout, day: dt.date) -> str | None:
    path = layout.impressions_dir(day) / "_FINGERPRINT.json"
    return path.read_text() if path.is_file() else None


def lake_day_clicks(layout: Layout, day: dt.date, length: int, fields: tuple[str, ...],
                    items: Path | None) -> pl.DataFrame:
    """`day_clicks` of one published lake day; item fields other than item_id from the `items` snapshot."""
    imp = pl.scan_parquet(str(layout.impressions_dir(day) / "*.parquet")).select(
        "user_id", "item_id", "ts", "clicked", "event_id").collect()
    extra = [f for f in fields if f != "item_id"]
    if extra:
        snap = pl.read_parquet(items, columns=["item_id", *extra]) if items else pl.DataFrame(
            schema={"item_id": pl.String, **{f: pl.String for f in extra}})
        imp = imp.join(snap, on="item_id", how="left", maintain_order="left")
    return day_clicks(imp, length, fields)


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
    items = newest_snapshot(layout, "items") if len(bundled.fields) > 1 else None
    items_id = (str(items), items.stat().st_mtime_ns) if items else None
    merged_key = (id(bundled), str(layout.home), day, items_id, tuple(sorted(prints.items())))
    with _LOCK:
        if merged_key in _MERGED:
            return _MERGED[merged_key]
    fresh = []
    for d, fp in prints.items():
        key = (str(layout.impressions_dir(d)), fp, bundled.length, bundled.fields, items_id)
        with _LOCK:
            got = _LAKE_DAYS.get(key)
        if got is None:
            got = _remember(_LAKE_DAYS, key, lake_day_clicks(layout, d, bundled.length, bundled.fields, items),
                            _MAX_LAKE_DAYS)
        fresh.append(got)
    keep = bundled.clicks.filter(pl.col("dt").is_in(window) & ~pl.col("dt").is_in(list(prints)))
    merged = pl.concat([keep, *fresh], how="vertical_relaxed").sort("user_id", "dt")
    seqs = Sequences(merged, bundled.length, bundled.lookback, bundled.fields, day_cache={})
    return _remember(_MERGED, merged_key, seqs, _MAX_MERGED)
