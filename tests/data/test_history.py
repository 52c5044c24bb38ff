"""Point-in-time history features against a brute-force loop, and proof that same-day labels never leak."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from pipeline.features.history import EVENTS, KEYS, add_history, build_history, feature_names

WINDOWS = (1, 3)
S = 5.0
START = dt.date(2026, 3, 1)


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    """8 days of impressions over 6 users, 5 items (2 shops, 3 categories), funnel-consistent labels."""
    rng = np.random.default_rng(0)
    n = 600
    day = rng.integers(0, 8, n)
    item = rng.integers(0, 5, n)
    clicked = (rng.random(n) < 0.3).astype(np.int8)
    carted = (clicked & (rng.random(n) < 0.5)).astype(np.int8)
    purchased = (clicked & (rng.random(n) < 0.4)).astype(np.int8)
    ts = [dt.datetime.combine(START + dt.timedelta(days=int(d)), dt.time(int(h)), tzinfo=dt.UTC)
          for d, h in zip(day, rng.integers(0, 24, n))]
    return pl.DataFrame({
        "ts": ts,
        "user_id": [f"u{u}" for u in rng.integers(0, 6, n)],
        "item_id": [f"i{i}" for i in item],
        "shop_id": [f"s{i % 2}" for i in item],
        "category": [f"c{i % 3}" for i in item],
        "price": (item + 1) * 10.0,
        "clicked": clicked, "carted": carted, "purchased": purchased,
        "signup_ts": [dt.datetime(2026, 2, 1, tzinfo=dt.UTC)] * n,
    }).with_columns(pl.col("ts").dt.date().alias("dt"))


def brute_force(rows: list[dict], row: dict) -> dict[str, float]:
    """The history features of one row by looping over every other row."""
    t, out = row["dt"], {}
    for w in WINDOWS:
        past = [r for r in rows if t - dt.timedelta(days=w) <= r["dt"] < t]
        n_all = len(past)
        prior = {e: sum(r[e] for r in past) / n_all if n_all else 0.0 for e in EVENTS}
        for kind, cols in KEYS.items():
            mine = [r for r in past if all(r[c] == row[c] for c in cols)]
            p = f"hist_{kind}_{w}d_"
            out[p + "n"] = math.log1p(len(mine))
            for e, count_name in (("clicked", "clicks"), ("carted", "carts"), ("purchased", "purchases")):
                k = sum(r[e] for r in mine)
                out[p + count_name] = math.log1p(k)
                out[p + EVENTS[e]] = (k + S * prior[e]) / (len(mine) + S)
    longest = [r for r in rows if t - dt.timedelta(days=max(WINDOWS)) <= r["dt"] < t
               and r["user_id"] == row["user_id"] and r["purchased"]]
    out["price_vs_user"] = (math.log(row["price"]) - sum(math.log(r["price"]) for r in longest) / len(longest)
                            if longest else 0.0)
    first = min((r["dt"] for r in rows if r["item_id"] == row["item_id"]), default=None)
    out["item_age"] = math.log1p((t - first).days) if first is not None and first < t else 0.0
    out["user_tenure"] = math.log1p((row["ts"] - row["signup_ts"]).total_seconds() / 86400)
    return out


def test_matches_brute_force(rows):
    got = add_history(rows, build_history(rows, WINDOWS, S))
    assert got.height == rows.height and got["ts"].equals(rows["ts"])  # order kept
    assert got.columns[-len(feature_names(WINDOWS)):] == feature_names(WINDOWS)
    dicts = rows.to_dicts()
    for i in [0, 1, 7, 50, 123, 333, 599] + [int(j) for j in np.flatnonzero(rows["dt"] == START)[:2]]:
        want = brute_force(dicts, dicts[i])
        have = got.row(i, named=True)
        for name, value in want.items():
            assert have[name] == pytest.approx(value, rel=1e-6, abs=1e-6), (i, name)


def test_first_day_has_no_history(rows):
    got = add_history(rows, build_history(rows, WINDOWS, S)).filter(pl.col("dt") == START)
    assert (got["hist_user_3d_n"] == 0).all() and (got["item_age"] == 0).all()
    assert (got["hist_item_1d_ctr"] == 0).all()  # no prior either: nothing before the first day


def test_same_day_labels_do_not_reach_the_features(rows):
    """Plant a perfect label signal on the last day (item i0 always bought, others never). The features of
    that day must be identical to those computed with the day's labels wiped."""
    last = rows["dt"].max()
    on_last, is_i0 = pl.col("dt") == last, pl.col("item_id") == "i0"
    planted = rows.with_columns(
        *[pl.when(on_last).then(is_i0.cast(pl.Int8)).otherwise(pl.col(c)).alias(c) for c in EVENTS])
    wiped = rows.with_columns(*[pl.when(on_last).then(pl.lit(0, pl.Int8)).otherwise(pl.col(c)).alias(c)
                                for c in EVENTS])
    names = feature_names(WINDOWS)
    a = add_history(planted, build_history(planted, WINDOWS, S)).filter(on_last).select(names)
    b = add_history(wiped, build_history(wiped, WINDOWS, S)).filter(on_last).select(names)
    assert a.equals(b)
    # The signal does exist: it reaches the next day's features.
    nxt = planted.filter(on_last).with_columns((pl.col("ts") + pl.duration(days=1)), pl.col("dt") + pl.duration(days=1))
    hist = build_history(planted, WINDOWS, S)
    after = add_history(nxt, hist)
    rate = after.group_by("item_id").agg(pl.col("hist_item_1d_buy_rate").first())
    assert rate.filter(pl.col("item_id") == "i0")["hist_item_1d_buy_rate"][0] > 0.5
    assert rate.filter(pl.col("item_id") != "i0")["hist_item_1d_buy_rate"].max() < 0.2
