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
    from pipeline.features.fresh import history_for_day
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
    assert history_for_day(old, None, DAY) is old and history_for_day(old, tmp_path / "no-lake", DAY) is old
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
