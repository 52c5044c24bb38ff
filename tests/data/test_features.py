"""pipeline.features.build on a small lake: time splits, train-only vocabularies and stats, transform == stored."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.errors import FeatureError
from pipeline.features.build import build_features, split_dates, transform
from pipeline.paths import Layout

LAST = "2026-01-10"
NEW_ITEM, NEW_USER = "i_first_seen_in_test", "u_first_seen_in_test"


def make_lake(landing: Path, home: Path, plant_new: bool = True) -> Layout:
    """Copy a landing folder into the lake layout (what ingest + validate publish); optionally add, on the
    last day, rows of an item and a user that exist nowhere before."""
    lay = Layout.of(home)
    for day in sorted((landing / "impressions").glob("dt=*")):
        shutil.copytree(day, lay.impressions_dir(day.name[3:]))
    users, items = pl.read_parquet(landing / "users.parquet"), pl.read_parquet(landing / "items.parquet")
    if plant_new:
        last = pl.read_parquet(lay.impressions_dir(LAST) / "part-0.parquet")
        rows = last.head(5).with_columns(
            pl.format("planted-{}", pl.int_range(pl.len())).alias("event_id"),
            pl.lit(NEW_ITEM).alias("item_id"), pl.lit(NEW_USER).alias("user_id"))
        rows.write_parquet(lay.impressions_dir(LAST) / "part-1.parquet")
        users = pl.concat([users, users.head(1).with_columns(pl.lit(NEW_USER).alias("user_id"))])
        items = pl.concat([items, items.head(1).with_columns(pl.lit(NEW_ITEM).alias("item_id"))])
    for name, df in (("users", users), ("items", items)):
        lay.snapshot(name, LAST).parent.mkdir(parents=True)
        df.write_parquet(lay.snapshot(name, LAST))
    return lay


def raw_rows(lay: Layout, days: list[str]) -> pl.DataFrame:
    """Raw contract rows of `days` joined with the snapshots, as a scoring caller would send them."""
    imp = pl.concat([pl.read_parquet(lay.impressions_dir(d)) for d in days])
    users, items = pl.read_parquet(lay.snapshot("users", LAST)), pl.read_parquet(lay.snapshot("items", LAST))
    return imp.join(users, on="user_id", how="left").join(items, on="item_id", how="left")


@pytest.fixture(scope="module")
def built(tiny_landing, tmp_path_factory):
    home = tmp_path_factory.mktemp("feat") / "home"
    lay = make_lake(tiny_landing, home)
    cfg = load_config(overrides=["text.enabled=false", "features.history_windows=[1,3]"], home=home)
    result = build_features(cfg, LAST)
    return SimpleNamespace(cfg=cfg, lay=lay, result=result, feat=lay.run_dir(LAST) / "features")


def test_split_dates_are_consecutive_windows_ending_at_d():
    cfg = load_config(overrides=["data.train_days=3", "data.valid_days=2", "data.test_days=2"], home="/tmp/x")
    s = split_dates(cfg, "2026-01-10")
    day = dt.date.fromisoformat
    assert s["test"] == [day("2026-01-09"), day("2026-01-10")]
    assert s["valid"] == [day("2026-01-07"), day("2026-01-08")]
    assert s["train"] == [day("2026-01-04"), day("2026-01-05"), day("2026-01-06")]


def test_splits_by_time_and_spec(built):
    result, feat = built.result, built.feat
    spec = pl.read_json(feat / "feature_spec.json").to_dicts()[0]
    for split, (first, last) in {"train": ("2026-01-02", "2026-01-08"), "valid": ("2026-01-09",) * 2,
                                 "test": (LAST, LAST)}.items():
        df = pl.read_parquet(feat / f"{split}.parquet")
        assert df["dt"].min().isoformat() == first and df["dt"].max().isoformat() == last
        assert result["rows"][split] == df.height == spec["splits"][split]["rows"]
    assert result["rows"]["test"] == 3005  # 3000 generated + 5 planted rows


def test_columns_follow_the_contract(built):
    cfg, feat = built.cfg, built.feat
    df = pl.read_parquet(feat / "train.parquet")
    spec = pl.read_json(feat / "feature_spec.json").to_dicts()[0]
    cats = [c["column"] for c in spec["categorical"]]
    assert cats == [f"cat__{n}" for n in (*cfg.features.categorical, "hour")]
    assert all(df.schema[c] == pl.Int32 for c in cats)
    assert all(df.schema[c] == pl.Float32 for c in spec["numeric"])
    assert {"num__position", "num__log_price", "num__hist_item_3d_ctr", "num__item_age"} <= set(spec["numeric"])
    for c in spec["categorical"]:  # cardinality counts index 0; every index fits
        assert 0 <= df[c["column"]].min() and df[c["column"]].max() < c["cardinality"]
    assert not any(c.startswith("text__") for c in df.columns)


def test_vocabularies_fit_on_train_only(built):
    lay, feat = built.lay, built.feat
    train_raw = raw_rows(lay, [f"2026-01-{d:02d}" for d in range(2, 9)])
    test = pl.read_parquet(feat / "test.parquet")
    spec = pl.read_json(feat / "feature_spec.json").to_dicts()[0]
    card = {c["name"]: c["cardinality"] for c in spec["categorical"]}
    for name in ("user_id", "item_id", "brand"):
        assert card[name] == train_raw[name].drop_nulls().n_unique() + 1
    planted = test.filter(pl.col("item_id") == NEW_ITEM)
    assert planted.height == 5 and (planted["cat__item_id"] == 0).all() and (planted["cat__user_id"] == 0).all()
    known = test.filter(pl.col("item_id") != NEW_ITEM)
    assert (known["cat__item_id"] > 0).all()
    # Most frequent train item gets index 1.
    top = train_raw.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])["item_id"][0]
    train = pl.read_parquet(feat / "train.parquet")
    assert set(train.filter(pl.col("item_id") == top)["cat__item_id"].to_list()) == {1}


def test_numeric_stats_fit_on_train(built):
    df = pl.read_parquet(built.feat / "train.parquet")
    for col in ("num__position", "num__log_price", "num__hist_user_3d_ctr"):
        x = df[col].to_numpy().astype(np.float64)
        assert abs(x.mean()) < 1e-3 and abs(x.std(ddof=1) - 1) < 1e-3


def test_transform_reproduces_stored_test_features(built):
    lay, feat = built.lay, built.feat
    stored = pl.read_parquet(feat / "test.parquet")
    again = transform(raw_rows(lay, [LAST]), feat / "state")
    assert again.columns == stored.columns
    assert again.sort("event_id").equals(stored.sort("event_id"))


def test_transform_accepts_naive_timestamps_and_rejects_missing_columns(built):
    lay, feat = built.lay, built.feat
    raw = raw_rows(lay, [LAST])
    naive = raw.with_columns(pl.col("ts").dt.replace_time_zone(None), pl.col("signup_ts").dt.replace_time_zone(None))
    assert transform(naive, feat / "state").equals(transform(raw, feat / "state"))
    with pytest.raises(FeatureError, match=r"lack column\(s\) \['category', 'price'\]: rows must"):
        transform(raw.drop("price", "category"), feat / "state")


def test_missing_lake_day_is_named_and_keeps_previous_output(built):
    cfg, lay, feat = built.cfg, built.lay, built.feat
    before = (feat / "test.parquet").read_bytes()
    hidden = lay.impressions_dir("2026-01-05")
    moved = hidden.with_name("hidden")
    hidden.rename(moved)
    try:
        with pytest.raises(FeatureError, match="missing: 2026-01-05"):
            build_features(cfg, LAST)
    finally:
        moved.rename(hidden)
    assert (feat / "test.parquet").read_bytes() == before


def test_too_few_lake_days_fail(built):
    cfg = load_config(overrides=["text.enabled=false", "data.train_days=20"], home=built.cfg.home)
    with pytest.raises(FeatureError, match="2025-12-2"):
        build_features(cfg, LAST)


def test_price_features_against_direct_computation(built):
    lay, feat = built.lay, built.feat
    test = pl.read_parquet(feat / "test.parquet")
    stats = pl.read_json(feat / "state" / "meta.json").to_dicts()[0]["stats"]
    items = pl.read_parquet(lay.snapshot("items", LAST))
    median = {c: float(np.median(g["price"].to_numpy())) for (c,), g in items.group_by("category")}
    price = dict(zip(items["item_id"], items["price"]))
    cat = dict(zip(items["item_id"], items["category"]))
    for row in test.head(50).iter_rows(named=True):
        p = price[row["item_id"]]
        for name, want in (("log_price", np.log(p)), ("price_vs_category", np.log(p / median[cat[row["item_id"]]]))):
            mean, std = stats[name]
            assert row[f"num__{name}"] == pytest.approx((want - mean) / std, abs=1e-5)


def test_planted_test_day_labels_change_no_feature(tiny_landing, tmp_path):
    """Labels of the last day rewritten to a perfect signal (one item always bought, nothing else clicked):
    every feature of every split must stay the same; only the label columns differ."""
    homes = {}
    for name in ("plain", "planted"):
        lay = make_lake(tiny_landing, tmp_path / name, plant_new=False)
        if name == "planted":
            path = lay.impressions_dir(LAST) / "part-0.parquet"
            day = pl.read_parquet(path)
            hit = (pl.col("item_id") == day["item_id"][0]).cast(pl.Int8)
            day.with_columns(hit.alias("clicked"), hit.alias("carted"), hit.alias("purchased")).write_parquet(path)
        cfg = load_config(overrides=["text.enabled=false", "features.history_windows=[1,7]"], home=lay.home)
        build_features(cfg, LAST)
        homes[name] = lay.run_dir(LAST) / "features"
    labels = ["clicked", "carted", "purchased"]
    for split in ("train", "valid", "test"):
        a, b = (pl.read_parquet(homes[n] / f"{split}.parquet") for n in ("plain", "planted"))
        assert a.drop(labels).equals(b.drop(labels)), split
    a, b = (pl.read_parquet(homes[n] / "test.parquet") for n in ("plain", "planted"))
    assert not a["clicked"].equals(b["clicked"])  # the plant did change the labels


def test_declared_extra_columns_become_features_and_others_do_not(tiny_landing, tmp_path):
    lay = make_lake(tiny_landing, tmp_path / "home", plant_new=False)
    for day in sorted((lay.lake / "impressions").glob("dt=*")):
        path = day / "part-0.parquet"
        df = pl.read_parquet(path)
        df.with_columns(pl.when(pl.col("position") % 2 == 0).then(pl.lit("app")).otherwise(pl.lit("web")).alias("device"),
                        pl.lit("noise").alias("undeclared")).write_parquet(path)
    items_path = lay.snapshot("items", LAST)
    items = pl.read_parquet(items_path)
    items.with_columns((pl.int_range(pl.len()) % 5).cast(pl.Float64).alias("rating")).write_parquet(items_path)
    over = ["text.enabled=false", "features.history=false", "features.numeric=[rating]",
            "features.categorical=[item_id, device]"]
    cfg = load_config(overrides=over, home=lay.home)
    build_features(cfg, LAST)
    test = pl.read_parquet(lay.run_dir(LAST) / "features" / "test.parquet")
    assert {"cat__device", "num__rating", "cat__item_id", "cat__hour"} <= set(test.columns)
    assert not any("undeclared" in c or c == "cat__user_id" for c in test.columns)
    assert set(test["cat__device"].unique().to_list()) == {1, 2}
    missing = load_config(overrides=[*over[:2], "features.numeric=[no_such_column]"], home=lay.home)
    with pytest.raises(FeatureError, match="no_such_column"):
        build_features(missing, LAST)
