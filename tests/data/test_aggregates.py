"""Per-day aggregates and the streaming feature build against today's whole-window build (kept in
legacy_features.py): same history tables, same feature files, same state, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from legacy_features import legacy_build_features
from test_features import LAST, make_lake

from pipeline.config import load_config
from pipeline.features.aggregates import aggregate_days, build_day_aggregates, day_dir, read_day, source_key
from pipeline.features.build import build_features
from pipeline.features.history import KEYS, History, build_history
from pipeline.paths import Layout

OVERRIDES = ["text.enabled=false", "features.history_windows=[1,3]", "data.train_days=4", "features.sequence_length=3"]


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


@pytest.fixture(scope="module")
def lakes(tiny_landing, tmp_path_factory):
    """Two copies of one lake: `new` built by the streaming build_features, `old` by today's build."""
    out = {}
    for name, build in (("new", build_features), ("old", legacy_build_features)):
        home = tmp_path_factory.mktemp(f"agg-{name}") / "home"
        make_lake(tiny_landing, home)
        cfg = load_config(overrides=OVERRIDES, home=home)
        out[name] = (cfg, build(cfg, LAST))
    return out


def _feat(cfg) -> Path:
    return Layout.of(cfg.home).run_dir(LAST) / "features"


def test_streaming_build_equals_whole_window_build(lakes):
    (new_cfg, new), (old_cfg, old) = lakes["new"], lakes["old"]
    assert new["rows"] == old["rows"] and new["rows"]["train"] > 0
    for split in ("train", "valid", "test"):
        a = pl.read_parquet(_feat(new_cfg) / f"{split}.parquet")
        b = pl.read_parquet(_feat(old_cfg) / f"{split}.parquet")
        assert a.columns == b.columns and a.schema == b.schema
        assert a.equals(b), split  # same rows, same order, same values to the last bit
    spec_a = json.loads((_feat(new_cfg) / "feature_spec.json").read_text())
    spec_b = json.loads((_feat(old_cfg) / "feature_spec.json").read_text())
    assert spec_a == spec_b
    meta_a = json.loads((_feat(new_cfg) / "state" / "meta.json").read_text())
    assert meta_a == json.loads((_feat(old_cfg) / "state" / "meta.json").read_text())
    assert pl.read_parquet(_feat(new_cfg) / "state" / "vocabs.parquet").equals(
        pl.read_parquet(_feat(old_cfg) / "state" / "vocabs.parquet"))


def test_stored_history_equals_the_raw_build(lakes):
    """state/history (the concatenated daily aggregates) == build_history over the window's raw rows."""
    (new_cfg, _), (old_cfg, _) = lakes["new"], lakes["old"]
    a = History.load(_feat(new_cfg) / "state" / "history", (1, 3), 20.0)
    b = History.load(_feat(old_cfg) / "state" / "history", (1, 3), 20.0)
    for kind in KEYS:
        assert a.tables[kind].schema == b.tables[kind].schema
        assert _sorted(a.tables[kind]).equals(_sorted(b.tables[kind])), kind
    assert a.totals.equals(b.totals) and a.first_seen.equals(b.first_seen)
    days = sorted(p.name[3:] for p in (Layout.of(new_cfg.home).lake / "_aggregates").glob("dt=*"))
    assert days == aggregate_days(new_cfg, LAST) and days[0] == "2026-01-02"  # day 01 is outside every window


def test_a_day_aggregate_equals_build_history_of_its_rows(lakes):
    cfg, _ = lakes["new"]
    lay = Layout.of(cfg.home)
    day = lay.ingested_dates()[-1]
    imp = pl.read_parquet(sorted(lay.impressions_dir(day).glob("*.parquet")))
    items = pl.read_parquet(lay.snapshot("items", LAST))
    rows = (imp.join(items, on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt")))
    ref = build_history(rows.select("dt", "user_id", "item_id", "shop_id", "category", "clicked", "carted",
                                    "purchased", "price"), (1,), 0.0)
    got = read_day(lay, day)
    for kind in KEYS:
        assert _sorted(got.tables[kind]).equals(_sorted(ref.tables[kind])), kind
    assert got.totals.equals(ref.totals) and got.first_seen.equals(ref.first_seen)


def test_rerun_is_a_noop_and_a_changed_day_is_rebuilt(tiny_landing, tmp_path):
    home = tmp_path / "home"
    lay = make_lake(tiny_landing, home)
    cfg = load_config(overrides=OVERRIDES, home=home)
    day = lay.ingested_dates()[3]
    first = build_day_aggregates(cfg, day)
    assert first["built"] is True
    stamp = {p.name: p.stat().st_mtime_ns for p in day_dir(lay, day).iterdir()}
    again = build_day_aggregates(cfg, day)
    assert again["built"] is False
    assert {p.name: p.stat().st_mtime_ns for p in day_dir(lay, day).iterdir()} == stamp
    # Re-published with other rows (a new fingerprint): rebuilt, and the counts follow the new rows.
    part = lay.impressions_dir(day) / "part-0.parquet"
    rows = pl.read_parquet(part)
    rows.head(rows.height // 2).write_parquet(part)
    (lay.impressions_dir(day) / "_FINGERPRINT.json").write_text('{"rows": 1, "sha256": "changed"}')
    assert build_day_aggregates(cfg, day)["built"] is True
    assert History.load(day_dir(lay, day), (1,), 0.0).totals["n"].item() == rows.height // 2
    assert json.loads((day_dir(lay, day) / "_AGGREGATE.json").read_text())["fingerprint"] == source_key(
        lay, day)["fingerprint"]
    # A rewritten items snapshot changes the day's shop/category/price keys: rebuilt too.
    snap = lay.snapshot("items", LAST)
    items = pl.read_parquet(snap)
    items.with_columns(pl.lit("other").alias("category")).write_parquet(snap)
    assert build_day_aggregates(cfg, day)["built"] is True
    assert History.load(day_dir(lay, day), (1,), 0.0).tables["category"]["category"].unique().to_list() == ["other"]


def test_aggregate_of_a_day_not_in_the_lake_is_named(tiny_landing, tmp_path):
    from pipeline.errors import FeatureError

    home = tmp_path / "home"
    make_lake(tiny_landing, home)
    cfg = load_config(overrides=OVERRIDES, home=home)
    with pytest.raises(FeatureError, match="2025-12-01"):
        build_day_aggregates(cfg, "2025-12-01")
    assert not (Layout.of(home).lake / "_aggregates").exists()
