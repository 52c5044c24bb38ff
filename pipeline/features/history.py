"""Point-in-time history features from per-day per-key count tables.

A row on day t sees only days strictly before t. The state keeps, for each key kind, one row per
(key, day) with the day's impressions and label counts; a window of w days for day t is the sum over
days t-w .. t-1 of that table. The same tables serve training (every day of every split) and scoring
(day D+1 reads days up to D), so both compute identical values.

Features per key kind and window w (names `hist_<kind>_<w>d_<stat>`):
  n, clicks, carts, purchases   log1p of the window counts
  ctr, cart_rate, buy_rate       (events + s * prior) / (n + s), prior = global rate of the same window
Plus `item_age` (log1p days since the item's first impression before t, among the days the tables hold),
`user_tenure` (log1p days since signup at the row's timestamp) and `price_vs_user` (log price minus the mean
log price of the user's purchases in the longest window; 0 without past purchases).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

KEYS: dict[str, tuple[str, ...]] = {
    "user": ("user_id",),
    "item": ("item_id",),
    "shop": ("shop_id",),
    "category": ("category",),
    "user_category": ("user_id", "category"),
}
EVENTS: dict[str, str] = {"clicked": "ctr", "carted": "cart_rate", "purchased": "buy_rate"}
COUNT_NAMES: dict[str, str] = {"n": "n", "clicked": "clicks", "carted": "carts", "purchased": "purchases"}
_SUMS = ("n", *EVENTS)
_MICRO = 1e6  # log prices of purchases are summed as integers in these units


@dataclass
class History:
    """Per-day count tables. `tables[kind]`: key columns + `dt` + n, clicked, carted, purchased (the user
    table also `buy_logp`: sum of log price over purchases, in integer millionths). `totals`: the same per
    day over all keys. `first_seen`: item_id -> first day with an impression."""

    tables: dict[str, pl.DataFrame]
    totals: pl.DataFrame
    first_seen: pl.DataFrame
    windows: tuple[int, ...]
    smoothing: float
    # Serving sets this to a dict: the per-key window aggregates of a day are then computed once per day and
    # reused by later requests (training aggregates each day once anyway, so it leaves it off).
    day_cache: dict | None = field(default=None, compare=False, repr=False)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for kind, table in self.tables.items():
            table.write_parquet(folder / f"{kind}.parquet")
        self.totals.write_parquet(folder / "_totals.parquet")
        self.first_seen.write_parquet(folder / "_first_seen.parquet")

    @classmethod
    def load(cls, folder: Path, windows: tuple[int, ...], smoothing: float) -> History:
        tables = {kind: pl.read_parquet(folder / f"{kind}.parquet") for kind in KEYS}
        return cls(tables, pl.read_parquet(folder / "_totals.parquet"),
                   pl.read_parquet(folder / "_first_seen.parquet"), windows, smoothing)


def feature_names(windows: tuple[int, ...]) -> list[str]:
    """The numeric columns `add_history` appends, in order."""
    names = []
    for kind in KEYS:
        for w in windows:
            names += [f"hist_{kind}_{w}d_{COUNT_NAMES[s]}" for s in _SUMS]
            names += [f"hist_{kind}_{w}d_{rate}" for rate in EVENTS.values()]
    return names + ["item_age", "user_tenure", "price_vs_user"]


def build_history(rows: pl.DataFrame, windows: tuple[int, ...], smoothing: float) -> History:
    """Count tables from labelled rows (columns: dt, the KEYS columns, the labels, price)."""
    sums = [pl.len().alias("n")] + [pl.col(e).cast(pl.Int64).sum().alias(e) for e in EVENTS]
    # Integer micro-units: sums are exact in any order, so training and scoring agree to the last bit.
    micro = (pl.col("price").log() * _MICRO).round().cast(pl.Int64)
    buy_logp = (micro * pl.col("purchased").cast(pl.Int64)).sum().alias("buy_logp")
    tables = {}
    for kind, cols in KEYS.items():
        extra = [buy_logp] if kind == "user" else []
        tables[kind] = rows.group_by([*cols, "dt"]).agg(*sums, *extra)  # row order is irrelevant: only sums
    totals = rows.group_by("dt").agg(*sums).sort("dt")
    first_seen = rows.group_by("item_id").agg(pl.col("dt").min().alias("first_dt")).sort("item_id")
    return History(tables, totals, first_seen, tuple(windows), float(smoothing))


def _window(table: pl.DataFrame, day: dt.date, w: int) -> pl.DataFrame:
    """Rows of `table` on days day-w .. day-1 (never `day` itself or later)."""
    return table.filter((pl.col("dt") >= day - dt.timedelta(days=w)) & (pl.col("dt") < day))


def _priors(hist: History, day: dt.date, w: int) -> dict[str, float]:
    """Global event rates over days day-w .. day-1 (0 without any impression)."""
    tot = _window(hist.totals, day, w).select(pl.col(c).sum() for c in _SUMS).row(0)
    n_all = tot[0] or 0
    return {e: (tot[i + 1] or 0) / n_all if n_all else 0.0 for i, e in enumerate(EVENTS)}


def _kind_features(hist: History, kind: str, day: dt.date, priors: dict[int, dict[str, float]]) -> pl.DataFrame:
    """One row per key seen in the longest window before `day`: every window's features of that key kind
    (one group-by for all windows). The user kind also carries `_buys`, `_buy_logp` (longest window)."""
    cols, s, longest = list(KEYS[kind]), hist.smoothing, max(hist.windows)
    sums = []
    for w in hist.windows:
        recent = pl.col("dt") >= day - dt.timedelta(days=w)
        sums += [pl.col(c).filter(recent).sum().cast(pl.Float64).alias(f"{w}:{c}") for c in _SUMS]
    if kind == "user":
        sums += [pl.col("purchased").sum().alias("_buys"), pl.col("buy_logp").sum().alias("_buy_logp")]
    agg = _window(hist.tables[kind], day, longest).group_by(cols).agg(sums)
    feats = []
    for w in hist.windows:
        p, n = f"hist_{kind}_{w}d_", pl.col(f"{w}:n")
        feats += [pl.col(f"{w}:{c}").log1p().alias(p + COUNT_NAMES[c]) for c in _SUMS]
        for e, rate in EVENTS.items():
            prior = priors[w][e]
            smoothed = (pl.col(f"{w}:{e}") + s * prior) / (n + s) if s > 0 else pl.col(f"{w}:{e}") / n
            feats.append(pl.when(n + s > 0).then(smoothed).otherwise(prior).alias(p + rate))
    extra = ["_buys", "_buy_logp"] if kind == "user" else []
    return agg.select(*cols, *feats, *extra)


def _day_tables(hist: History, day: dt.date) -> tuple[dict, dict[str, pl.DataFrame]]:
    """(priors per window, per-key feature table per kind) of `day`, from `hist.day_cache` when it holds them."""
    cache = hist.day_cache
    if cache is not None and day in cache:
        return cache[day]
    priors = {w: _priors(hist, day, w) for w in hist.windows}
    out = priors, {kind: _kind_features(hist, kind, day, priors) for kind in KEYS}
    if cache is not None:
        if len(cache) >= 8:  # a few request days at a time; the oldest goes first
            cache.pop(next(iter(cache)))
        cache[day] = out
    return out


def _day_features(part: pl.DataFrame, hist: History, day: dt.date) -> pl.DataFrame:
    """History columns (float32) for the rows of one scoring day; keys absent from the window get zero
    counts and the prior as rate."""
    priors, kinds = _day_tables(hist, day)
    fills = {}
    for kind, cols in KEYS.items():
        part = part.join(kinds[kind], on=list(cols), how="left")
        for w in hist.windows:
            p = f"hist_{kind}_{w}d_"
            fills.update({p + COUNT_NAMES[c]: 0.0 for c in _SUMS})
            fills.update({p + r: priors[w][e] for e, r in EVENTS.items()})
    buy = pl.col("price").log() - pl.col("_buy_logp") / _MICRO / pl.col("_buys")
    return part.select(
        "_row",
        *[pl.col(c).fill_null(v).cast(pl.Float32) for c, v in fills.items()],
        pl.when(pl.col("_buys") > 0).then(buy).otherwise(0.0).fill_null(0.0).cast(pl.Float32).alias("price_vs_user"),
    )


def add_history(rows: pl.DataFrame, hist: History) -> pl.DataFrame:
    """Append `feature_names(hist.windows)` (float32) to rows (columns dt, ts, KEYS columns, price, signup_ts),
    keeping the row order. Each row's values come from days strictly before its `dt`."""
    keys = sorted({c for cols in KEYS.values() for c in cols})
    slim = rows.select("dt", *keys, "price").with_row_index("_row")
    parts = [_day_features(slim.filter(pl.col("dt") == day), hist, day)
             for day in slim["dt"].unique().sort().to_list()]
    if not parts:
        return rows.with_columns(pl.lit(None, pl.Float32).alias(c) for c in feature_names(hist.windows))
    feats = pl.concat(parts, how="vertical").sort("_row").drop("_row")
    first = rows.select("item_id").join(hist.first_seen, on="item_id", how="left", maintain_order="left")["first_dt"]
    age = (pl.col("dt") - first).dt.total_days().cast(pl.Float64)
    tenure = (pl.col("ts") - pl.col("signup_ts")).dt.total_seconds().cast(pl.Float64) / 86400.0
    ages = rows.select(
        pl.when(first < pl.col("dt")).then(age).otherwise(0.0).log1p().cast(pl.Float32).alias("item_age"),
        tenure.clip(lower_bound=0.0).fill_null(0.0).log1p().cast(pl.Float32).alias("user_tenure"),
    )
    out = pl.concat([rows, feats, ages], how="horizontal")
    return out.select(*rows.columns, *feature_names(hist.windows))
