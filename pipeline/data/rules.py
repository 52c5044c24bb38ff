"""Contract rules that span rows, tables or days (GX suites cover the single-column ones), and drift checks.

Every check takes polars frames already cast to the contract types and returns a list of RuleFailure
(empty = passed), each naming table, column, rule, the number of offending rows and up to 3 example rows.
"""

from __future__ import annotations

import datetime as dt
import math

from pipeline.data.schema import LABELS
from pipeline.errors import RuleFailure

EXAMPLES = 3


def _fail(table: str, column: str, rule: str, bad, cols: list[str]) -> list[RuleFailure]:
    """A RuleFailure from the offending rows `bad` (a polars frame), or nothing when it is empty."""
    if bad.height == 0:
        return []
    rows = tuple(_jsonable(r) for r in bad.select(cols).head(EXAMPLES).to_dicts())
    return [RuleFailure(table, column, rule, bad.height, rows)]


def failed_rows(table: str, column: str, rule: str, bad, cols: list[str]) -> list[RuleFailure]:
    """`_fail` for callers outside this module (validate's whole-day checks of a chunked GX day)."""
    return _fail(table, column, rule, bad, cols)


def _jsonable(row: dict) -> dict:
    """Example rows for reports: dates as ISO text, inf/NaN as text (JSON has neither)."""
    def plain(v):
        if isinstance(v, (dt.datetime, dt.date)):
            return v.isoformat()
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v
    return {k: plain(v) for k, v in row.items()}


def check_day(imp, day: dt.date, users, items, earlier_ids) -> list[RuleFailure]:
    """Rules of one impressions partition `day` against the users/items snapshots.

    `earlier_ids`: a polars Series of event_ids already seen on earlier days (lake + earlier staged days).
    """
    import polars as pl

    if imp.height == 0:
        return [RuleFailure("impressions", "*", "empty partition", 0, ({"dt": day.isoformat()},))]
    tag = pl.lit(day.isoformat()).alias("dt")
    imp = imp.with_columns(tag)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    out: list[RuleFailure] = []
    out += _fail("impressions", "ts", "timestamp outside the partition's day",
                 imp.filter((pl.col("ts") < start) | (pl.col("ts") >= start + dt.timedelta(days=1))),
                 ["dt", "event_id", "ts"])
    out += _fail("impressions", "user_id", "unknown user",
                 imp.join(users.select("user_id"), on="user_id", how="anti").drop_nulls("user_id"),
                 ["dt", "event_id", "user_id"])
    out += _fail("impressions", "item_id", "unknown item",
                 imp.join(items.select("item_id"), on="item_id", how="anti").drop_nulls("item_id"),
                 ["dt", "event_id", "item_id"])
    out += _fail("impressions", "event_id", "event_id seen on an earlier day",
                 imp.filter(pl.col("event_id").is_in(earlier_ids.implode())), ["dt", "event_id"])
    blank = pl.col("query").is_null() | (pl.col("query").str.strip_chars() == "")
    out += _fail("impressions", "query", "query missing on a search row",
                 imp.filter((pl.col("surface") == "search") & blank), ["dt", "event_id", "surface", "query"])
    out += _fail("impressions", "query", "query present on a non-search row",
                 imp.filter((pl.col("surface") != "search") & ~blank), ["dt", "event_id", "surface", "query"])
    return out


def check_snapshots(users, items, first_seen) -> list[RuleFailure]:
    """Rules on the snapshots the single-column GX suites cannot express.

    `first_seen`: polars frame (user_id, first_ts) of each user's first staged impression.
    """
    import polars as pl

    out = _fail("items", "title", "blank title",
                items.filter(pl.col("title").is_not_null() & (pl.col("title").str.strip_chars() == "")),
                ["item_id", "title"])
    out += _fail("items", "price", "non-finite price",
                 items.filter(pl.col("price").is_infinite()), ["item_id", "price"])
    late = users.join(first_seen, on="user_id", how="inner").filter(pl.col("signup_ts") > pl.col("first_ts"))
    out += _fail("users", "signup_ts", "signup after the user's first impression", late,
                 ["user_id", "signup_ts", "first_ts"])
    return out


def day_stats(imp) -> dict:
    """{"rows": n, "<label>": rate} of one partition (rates None when there are no rows)."""
    n = imp.height
    rates = {c: (float(imp[c].cast(float).mean()) if n else None) for c in LABELS}
    return {"rows": n, **rates}


def check_drift(day: dt.date, stats: dict, history: list[dict], cfg) -> list[RuleFailure]:
    """Row count and each label rate of `day` vs the mean of `history` (the trailing days' stats).

    A ratio outside `cfg.row_count_band` / `cfg.label_rate_band` fails. Fewer than min(3, drift_days)
    trailing days: no reference yet, nothing to compare. A label rate is skipped when the trailing rate
    predicts fewer than `cfg.drift_min_positives` positives on the day (too few to tell drift from noise).
    """
    if len(history) < min(3, cfg.drift_days) or stats["rows"] == 0:
        return []
    out = []
    checks = [("*", "rows", cfg.row_count_band)] + [(c, c, cfg.label_rate_band) for c in LABELS]
    for column, key, (lo, hi) in checks:
        ref = [h[key] for h in history if h.get(key) is not None]
        mean = sum(ref) / len(ref) if ref else 0.0
        if mean <= 0 or (key != "rows" and mean * stats["rows"] < cfg.drift_min_positives):
            continue
        ratio = stats[key] / mean
        if not lo <= ratio <= hi:
            what = "row count" if key == "rows" else f"{key} rate"
            rule = f"drift: {what} outside band [{lo}, {hi}] x trailing mean"
            out.append(RuleFailure("impressions", column, rule,
                                   stats["rows"], ({"dt": day.isoformat(), "value": stats[key],
                                                    "trailing_mean": round(mean, 6), "ratio": round(ratio, 4),
                                                    "days": len(ref)},)))
    return out
