"""Behaviour sequences are point-in-time: only clicks of days before the row's, most recent first, against a
brute-force loop; the features stage writes them and serving (fresh lake days included) computes the same."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from pipeline.features.sequences import Sequences, build_sequences, clicks_for_day, columns, sequence_columns

T = dt.date(2026, 3, 10)
N, LOOKBACK = 4, 3


def _at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def _rows(events: list[tuple]) -> pl.DataFrame:
    """(user, item, ts, clicked) -> raw rows with the columns the sequence builder reads."""
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(len(events))], "user_id": [e[0] for e in events],
                         "item_id": [e[1] for e in events], "ts": [e[2] for e in events],
                         "clicked": [e[3] for e in events]}).with_columns(pl.col("ts").dt.date().alias("dt"))


VOCAB = pl.DataFrame({"value": ["A", "B", "C", "D", "E", "F"], "index": pl.Series([1, 2, 3, 4, 5, 6], dtype=pl.Int32)})


def _seq(rows: pl.DataFrame, events: pl.DataFrame, vocab=VOCAB) -> list[list[int]]:
    seqs = build_sequences(events, N, LOOKBACK, ("item_id",))
    return sequence_columns(rows, {"item_id": vocab}, N, ("item_id",), lambda _d: seqs).rows()


def test_same_day_click_never_enters_and_yesterdays_come_first():
    y = T - dt.timedelta(days=1)
    events = _rows([
        ("u1", "C", _at(T - dt.timedelta(days=2), 9), 1),
        ("u1", "A", _at(y, 10), 1),
        ("u1", "B", _at(y, 12), 1),  # the most recent click before T
        ("u1", "F", _at(y, 13), 0),  # shown, not clicked
        ("u1", "E", _at(T - dt.timedelta(days=LOOKBACK + 1), 9), 1),  # before the lookback
        ("u1", "D", _at(T, 1), 1),  # planted: clicked on the row's own day, before the row
        ("u2", "A", _at(y, 8), 1),
    ])
    rows = _rows([("u1", "A", _at(T, 23), 0), ("u3", "A", _at(T, 23), 0), ("u2", "B", _at(T, 5), 0)])
    got = _seq(rows, events)
    assert got[0] == (2, 1, 3, 0)  # B, A (yesterday, newest first), C (two days ago), padding; never D nor E
    assert got[1] == (0, 0, 0, 0)  # a user without clicks: all padding
    assert got[2] == (1, 0, 0, 0)
    # The same user's row on the next day sees the planted click first.
    nxt = _seq(_rows([("u1", "A", _at(T + dt.timedelta(days=1), 0), 0)]), events)
    assert nxt[0] == (4, 2, 1, 3)
    # An item outside the train vocabulary has no row of its own: 0, like padding.
    assert _seq(rows, events, VOCAB.filter(pl.col("value") != "A"))[0] == (2, 0, 3, 0)


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 500
    ts = [_at(T - dt.timedelta(days=int(d)), int(h)) for d, h in zip(rng.integers(0, 6, n), rng.integers(0, 24, n))]
    events = _rows([(f"u{u}", "ABCDEF"[i], t, int(c)) for u, i, t, c in
                    zip(rng.integers(0, 5, n), rng.integers(0, 6, n), ts, rng.random(n) < 0.4)])
    got = _seq(events, events)
    index = dict(zip(VOCAB["value"], VOCAB["index"]))
    recs = events.rows(named=True)
    for row, seq in zip(recs, got):
        past = [r for r in recs if r["user_id"] == row["user_id"] and r["clicked"]
                and row["dt"] - dt.timedelta(days=LOOKBACK) <= r["dt"] < row["dt"]]
        past.sort(key=lambda r: (r["ts"], r["event_id"]), reverse=True)
        want = [index[r["item_id"]] for r in past[:N]]
        assert list(seq) == want + [0] * (N - len(want))


@pytest.fixture(scope="module")
def built(tiny_landing, tmp_path_factory):
    from pipeline.config import load_config
    from pipeline.features.build import build_features
    from test_features import LAST, make_lake

    home = tmp_path_factory.mktemp("seq") / "home"
    lay = make_lake(tiny_landing, home, plant_new=False)
    for day in lay.ingested_dates():  # what validate writes beside a published day (fresh reads key on it)
        (lay.impressions_dir(day) / "_FINGERPRINT.json").write_text(f'{{"rows": 0, "sha256": "{day}"}}')
    cfg = load_config(overrides=["text.enabled=false", "features.history_windows=[1,3]",
                                 "features.sequence_length=5", "features.sequence_fields=[item_id, category]"],
                      home=home)
    build_features(cfg, LAST)
    return SimpleNamespace(cfg=cfg, lay=lay, home=home, feat=lay.run_dir(LAST) / "features")


def test_features_stage_writes_the_sequence_and_serving_computes_the_same(built):
    from pipeline.features.build import serve_features, transform
    from pipeline.features.dataset import read_spec
    from test_features import LAST

    spec = read_spec(built.feat.parent)
    cols = columns(5, ("item_id", "category"))
    assert cols[0] == "seq__item_id_00" and cols[5] == "seq__category_00"
    assert spec["sequence"] == {"length": 5, "columns": cols, "vocab": {"item_id": "item_id", "category": "category"}}
    test = pl.read_parquet(built.feat / "test.parquet")
    assert all(test.schema[c] == pl.Int32 for c in cols)
    assert test["seq__item_id_00"].gt(0).mean() > 0.5  # most users clicked before the test day
    lay = built.lay
    raw = (pl.read_parquet(lay.impressions_dir(LAST) / "*.parquet")
           .join(pl.read_parquet(lay.snapshot("users", LAST)), on="user_id", how="left")
           .join(pl.read_parquet(lay.snapshot("items", LAST)), on="item_id", how="left"))
    assert transform(raw, built.feat / "state").select(cols).equals(test.select(cols))
    served, _ = serve_features(raw, built.feat / "state", history_from=built.home)
    assert served.select(cols).equals(test.select(cols))


def test_serving_reads_fresh_lake_days(built):
    """A state whose clicks end a day early (a model trained before the newest day) gets that day's clicks
    from the lake with history_from, so it computes what a state built on the whole lake does."""
    from pipeline.features.state import FeatureState
    from test_features import LAST

    state = FeatureState.load(built.feat / "state")
    last = dt.date.fromisoformat(LAST)
    full = state.sequences
    fields = full.fields
    stale = Sequences(full.clicks.filter(pl.col("dt") < last), full.length, full.lookback, fields)
    rows = pl.read_parquet(built.feat / "test.parquet").select("user_id").with_columns(
        pl.lit(last + dt.timedelta(days=1)).alias("dt"))
    reference = sequence_columns(rows, state.vocabs, 5, fields, lambda _d: full)
    assert not sequence_columns(rows, state.vocabs, 5, fields, lambda _d: stale).equals(reference)
    fresh = sequence_columns(rows, state.vocabs, 5, fields, lambda d: clicks_for_day(stale, built.home, d))
    assert fresh.equals(reference)
    day = last + dt.timedelta(days=1)
    assert clicks_for_day(stale, built.home, day) is clicks_for_day(stale, built.home, day)  # cached
    assert clicks_for_day(stale, None, day) is stale
