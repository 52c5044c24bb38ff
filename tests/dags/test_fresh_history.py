"""Fresh history at serving: a model's history for a request day comes from the newest published lake days of
`serving.history_from`, equal to the history a run built from that lake (the reference), cached per day."""

from __future__ import annotations

import datetime as dt
import shutil

import polars as pl
import pytest

pytestmark = pytest.mark.slow
OLD, NEW = "2026-01-09", "2026-01-10"  # the two runs of trained_home; the lake holds days up to NEW
DAY = dt.date(2026, 1, 11)  # a request day after both


def _rows(home) -> pl.DataFrame:
    """Lake rows of NEW moved to DAY, with the columns add_history reads."""
    from pipeline.paths import Layout

    lay = Layout.of(home)
    imp = pl.read_parquet(sorted(lay.impressions_dir(NEW).glob("*.parquet")))
    rows = (imp.join(pl.read_parquet(lay.snapshot("items", NEW)), on="item_id", how="left", maintain_order="left")
            .join(pl.read_parquet(lay.snapshot("users", NEW)), on="user_id", how="left", maintain_order="left"))
    rows = rows.with_columns(pl.col("ts").dt.convert_time_zone("UTC") + dt.timedelta(days=1))
    return rows.with_columns(pl.col("ts").dt.date().alias("dt"), pl.col("price").cast(pl.Float64))


def test_history_from_a_home_reads_its_newest_days(trained_home, tmp_path):
    from pipeline.features.fresh import history_for_day, stand_in
    from pipeline.features.history import add_history, feature_names
    from pipeline.features.state import FeatureState

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    old = FeatureState.load(home / "runs" / OLD / "features" / "state").history  # ends at OLD: a day stale
    new = FeatureState.load(home / "runs" / NEW / "features" / "state").history  # built from the lake up to NEW
    rows = _rows(home)
    names = feature_names(old.windows)
    reference = add_history(rows, new).select(names)
    stale = add_history(rows, old).select(names)
    fresh_hist = history_for_day(old, home, DAY)
    fresh = add_history(rows, fresh_hist).select(names)
    assert fresh.equals(reference)  # exact: integer counts, same snapshot
    assert not stale.equals(reference)
    assert history_for_day(old, home, DAY) is fresh_hist  # cached per day
    # Without a lake: the bundled history, here (two days stale) its stand-in (the next test).
    assert history_for_day(old, None, DAY) is stand_in(old, DAY) is history_for_day(old, tmp_path / "no-lake", DAY)
    assert stand_in(old, DAY) is not old
    # A republished day (new fingerprint) is read again.
    fp = home / "lake" / "impressions" / f"dt={NEW}" / "_FINGERPRINT.json"
    fp.write_text(fp.read_text().replace('"rows"', '"rows" ', 1))
    assert history_for_day(old, home, DAY) is not fresh_hist


def test_served_model_uses_fresh_history(trained_home, tmp_path):
    """Through serve_features (the served path): the old run's state with history_from = the home gives the
    new run's history features for the request day; without it, the stale bundled ones."""
    from pipeline.features.build import serve_features
    from pipeline.features.history import feature_names

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    state = home / "runs" / OLD / "features" / "state"
    rows = _rows(home).head(200)
    stale, _ = serve_features(rows, state)
    fresh, _ = serve_features(rows, state, history_from=home)
    again, _ = serve_features(rows, state, history_from=home)
    hist = [f"num__{n}" for n in feature_names((1, 7, 28)) if f"num__{n}" in fresh.columns]
    assert hist and not stale.select(hist).equals(fresh.select(hist))
    assert again.equals(fresh)


def test_a_stale_history_stands_in_for_the_missing_days(trained_home):
    """A history that ends two days before the request day (the bundle of OLD, scored on DAY = OLD + 2) is read
    as if it ended the day before: the counts of DAY's rows equal those the same rows get on OLD + 1, where the
    windows are whole; left as it was, the 1-day window would be empty for every row."""
    from pipeline.features.fresh import history_for_day, stand_in
    from pipeline.features.history import add_history, feature_names
    from pipeline.features.state import FeatureState

    old = FeatureState.load(trained_home / "runs" / OLD / "features" / "state").history
    new = FeatureState.load(trained_home / "runs" / NEW / "features" / "state").history
    rows = _rows(trained_home)
    eve = rows.with_columns(pl.col("ts") - dt.timedelta(days=1), pl.col("dt") - dt.timedelta(days=1))
    counts = [n for n in feature_names(old.windows) if n not in ("item_age", "user_tenure")]
    moved = history_for_day(old, None, DAY)
    assert moved is not old and moved is history_for_day(old, None, DAY)  # cached
    assert add_history(rows, moved).select(counts).equals(add_history(eve, old).select(counts))
    day1 = [n for n in counts if n.startswith("hist_item_1d_")]
    assert add_history(rows, old).select(day1).sum().row(0) == (0.0,) * len(day1)  # what it replaces
    assert add_history(rows, moved).select(day1).sum().row(0) != (0.0,) * len(day1)
    assert stand_in(new, DAY) is new and stand_in(old, DAY - dt.timedelta(days=1)) is old  # whole windows


def test_an_item_listed_after_the_bundle_gets_its_columns_from_the_lake(trained_home, tmp_path):
    """The served model joins a request's missing item columns from the newest lake snapshot of history_from
    (when at least as new as the bundle's data date): an item absent from the bundled snapshot scores as it
    does when the request sends its columns; with the bundled snapshot alone it is an unknown item."""
    from types import SimpleNamespace

    from pipeline.config import load_config
    from pipeline.paths import Layout
    from pipeline.serving.pyfunc import ITEM_COLS, MTLModel, build_bundle, serving_info

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    lay = Layout.of(home)
    items = pl.read_parquet(lay.snapshot("items", NEW))
    rows = _rows(home).head(300).drop("clicked", "carted", "purchased", "dt")
    late = rows["item_id"].unique().sort().head(5)  # listed after the bundle's date: not in its snapshot
    old_items = tmp_path / "items-old.parquet"
    items.filter(~pl.col("item_id").is_in(late.implode())).write_parquet(old_items)
    cfg = load_config(overrides=["text.enabled=false"], home=home)
    info = serving_info(cfg, ["ctr", "cart", "ctcvr", "cvr"], data_date=OLD)
    bundle = build_bundle(lay.run_dir(OLD), tmp_path / "bundle", lay.snapshot("users", OLD), old_items, info)

    def served(history_from: str, request: pl.DataFrame):
        model = MTLModel(history_from=history_from, text_cache="")
        model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
        return model.score_frame(request)

    full = served(str(home), rows)  # the request carries every item column
    bare = rows.drop([c for c in ITEM_COLS if c in rows.columns])
    mask = rows["item_id"].is_in(late.implode()).to_numpy()
    assert mask.any() and not mask.all()
    fresh, stale = served(str(home), bare), served("", bare)
    assert fresh.drop(columns="event_id").equals(full.drop(columns="event_id"))
    p = [c for c in full.columns if c.startswith("p_")]
    assert (stale[p].to_numpy()[mask] != full[p].to_numpy()[mask]).any(axis=1).all()
