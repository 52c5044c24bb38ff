"""Validation on the real GX suites: a good day publishes; each CONTRACT reject rule, broken alone, fails naming
itself and leaves the lake bytes unchanged; drift against the trailing days fails or warns per config."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import polars as pl
import pytest

from pipeline.data.ingest import ingest
from pipeline.data.validate import validate
from pipeline.errors import DataValidationError, IngestError
from pipeline.paths import Layout

D3 = "2026-02-03"


def _first(cond):
    """Polars expression: True on the first row where `cond` holds, else False."""
    return cond & (cond.cum_sum() == 1)


def _set_first(cond, **values):
    """fn(frame) setting `values` on the first row matching `cond`."""
    def fn(df):
        hit = _first(cond)
        return df.with_columns([pl.when(hit).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()])
    return fn


CLICKED, UNCLICKED = pl.col("clicked") == 1, pl.col("clicked") == 0
RECO, SEARCH = pl.col("surface") == "recommend", pl.col("surface") == "search"

# (id, table edited, edit, table named, column named, rule named)
RULES = [
    ("null event_id", D3, _set_first(pl.lit(True), event_id=None), "impressions", "event_id", "null value"),
    ("duplicate event_id", D3, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(pl.col("event_id").first()).otherwise(pl.col("event_id"))
        .alias("event_id")), "impressions", "event_id", "duplicate id"),
    ("event_id of an earlier day", D3, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("e20260201-5")).otherwise(pl.col("event_id"))
        .alias("event_id")), "impressions", "event_id", "event_id seen on an earlier day"),
    ("unknown user", D3, _set_first(pl.lit(True), user_id="nobody"), "impressions", "user_id", "unknown user"),
    ("unknown item", D3, _set_first(pl.lit(True), item_id="nothing"), "impressions", "item_id", "unknown item"),
    ("carted without clicked", D3, _set_first(UNCLICKED, carted=1), "impressions", "clicked",
     "funnel: carted without clicked"),
    ("purchased without clicked", D3, _set_first(UNCLICKED, purchased=1), "impressions", "clicked",
     "funnel: purchased without clicked"),
    ("clicked outside {0,1}", D3, _set_first(CLICKED, clicked=2), "impressions", "clicked", "label outside {0,1}"),
    ("purchased outside {0,1}", D3, _set_first(CLICKED, purchased=-1), "impressions", "purchased",
     "label outside {0,1}"),
    ("surface outside its set", D3, _set_first(RECO, surface="email"), "impressions", "surface",
     "surface outside its set"),
    ("query missing on search", D3, _set_first(SEARCH, query=None), "impressions", "query",
     "query missing on a search row"),
    ("blank query on search", D3, _set_first(SEARCH, query="   "), "impressions", "query",
     "query missing on a search row"),
    ("query on recommend", D3, _set_first(RECO, query="red shoes"), "impressions", "query",
     "query present on a non-search row"),
    ("negative position", D3, _set_first(pl.lit(True), position=-1), "impressions", "position", "negative position"),
    ("timestamp on the next day", D3, _set_first(pl.lit(True), ts=dt.datetime(2026, 2, 4, 0, 0, 1, tzinfo=dt.UTC)),
     "impressions", "ts", "timestamp outside the partition's day"),
    ("null request_id", D3, _set_first(pl.lit(True), request_id=None), "impressions", "request_id", "null value"),
    ("empty partition", D3, lambda df: df.head(0), "impressions", "*", "empty partition"),
    ("null user_id in users", "users", _set_first(pl.lit(True), user_id=None), "users", "user_id", "null value"),
    ("duplicate user_id", "users", lambda df: pl.concat([df, df.head(1)]), "users", "user_id", "duplicate id"),
    ("city_tier outside 1..5", "users", _set_first(pl.lit(True), city_tier=9), "users", "city_tier",
     "city_tier outside 1..5"),
    ("signup after first impression", "users",
     lambda df: df.with_columns(pl.lit(dt.datetime(2026, 3, 1, tzinfo=dt.UTC)).alias("signup_ts")),
     "users", "signup_ts", "signup after the user's first impression"),
    ("duplicate item_id", "items", lambda df: pl.concat([df, df.head(1)]), "items", "item_id", "duplicate id"),
    ("zero price", "items", _set_first(pl.lit(True), price=0.0), "items", "price", "non-positive price"),
    ("negative price", "items", _set_first(pl.lit(True), price=-3.5), "items", "price", "non-positive price"),
    ("null category", "items", _set_first(pl.lit(True), category=None), "items", "category", "null value"),
    ("empty title", "items", _set_first(pl.lit(True), title=""), "items", "title", "empty title"),
    ("blank title", "items", _set_first(pl.lit(True), title="  "), "items", "title", "blank title"),
    ("missing column", D3, lambda df: df.drop("carted"), "impressions", "carted", "missing column"),
]


def test_good_day_passes_and_publishes(cfg, landing, home, lake_bytes):
    out = ingest(cfg, landing, D3)
    assert out["staged"] == [D3]  # days 01 and 02 are already in the lake
    res = validate(cfg, D3)
    layout = Layout.of(home)
    assert res["published"] == [D3]
    assert layout.ingested_dates() == [dt.date(2026, 2, d) for d in (1, 2, 3)]
    assert layout.snapshot("users", D3).is_file() and layout.snapshot("items", D3).is_file()
    report = json.loads(Path(res["report"]).read_text())
    assert report["success"] and report["failures"] == []
    assert Path(res["data_docs"]).read_text().lstrip().lower().startswith("<!doctype html")
    # Offline: no page loads a stylesheet or script from the network; styles are inlined in every page.
    pages = list(Path(res["data_docs"]).parent.rglob("*.html"))
    assert len(pages) >= 4
    for page in pages:
        text = page.read_text()
        assert not re.search(r"<(link|script)\b[^>]*(href|src)=[\"']https?://", text), page
        assert "<style>" in text and ".card-header" in text, page
    fp = json.loads((layout.impressions_dir(D3) / "_FINGERPRINT.json").read_text())
    assert fp == out["fingerprints"][D3] and fp["rows"] == 400
    staged = pl.read_parquet(landing / "impressions" / f"dt={D3}" / "part-0.parquet")
    assert pl.read_parquet(layout.impressions_dir(D3) / "part-0.parquet").equals(staged)


def test_rerun_is_byte_identical(cfg, landing, home, lake_bytes):
    ingest(cfg, landing, D3)
    validate(cfg, D3)
    first = lake_bytes(home)
    ingest(cfg, landing, D3)
    validate(cfg, D3)
    assert lake_bytes(home) == first


@pytest.mark.parametrize("case", RULES, ids=[r[0] for r in RULES])
def test_reject_rule(case, cfg, landing, home, lake_bytes, edit):
    _, where, fn, table, column, rule = case
    edit(landing, where, fn)
    before = lake_bytes(home)
    with pytest.raises(DataValidationError) as info:
        ingest(cfg, landing, D3)
        validate(cfg, D3)
    hits = [f for f in info.value.failures if (f.table, f.column, f.rule) == (table, column, rule)]
    assert hits, f"expected {table}.{column}: {rule}; got {info.value}"
    assert all(f.count >= 1 or f.rule == "empty partition" for f in hits)
    assert all(len(f.examples) <= 3 for f in info.value.failures)
    assert rule in str(info.value)
    assert lake_bytes(home) == before


def test_purchase_without_click_reports_rows_and_docs(cfg, landing, home, lake_bytes, edit):
    edit(landing, D3, _set_first(UNCLICKED, purchased=1))
    target = pl.read_parquet(landing / "impressions" / f"dt={D3}" / "part-0.parquet").filter(
        (pl.col("purchased") == 1) & (pl.col("clicked") == 0))["event_id"].to_list()
    before = lake_bytes(home)
    ingest(cfg, landing, D3)
    with pytest.raises(DataValidationError) as info:
        validate(cfg, D3)
    (failure,) = info.value.failures
    assert failure.rule == "funnel: purchased without clicked" and failure.count == 1
    assert failure.examples[0]["event_id"] == target[0] and failure.examples[0]["dt"] == D3
    report = json.loads((Layout.of(home).run_dir(D3) / "validation" / "validation.json").read_text())
    assert not report["success"] and report["failures"][0]["rule"] == failure.rule
    (page,) = (Path(info.value.docs).parent / "validations" / "impressions").rglob("*.html")
    assert "purchased" in page.read_text()  # the Data Docs page shows the failed funnel expectation
    assert lake_bytes(home) == before


def test_all_failures_collected_in_one_error(cfg, landing, edit):
    edit(landing, D3, _set_first(UNCLICKED, purchased=1))
    edit(landing, "items", _set_first(pl.lit(True), price=0.0))
    ingest(cfg, landing, D3)
    with pytest.raises(DataValidationError) as info:
        validate(cfg, D3)
    assert {f.rule for f in info.value.failures} == {"funnel: purchased without clicked", "non-positive price"}


def test_validate_without_staging_is_a_named_error(cfg):
    with pytest.raises(IngestError, match="nothing staged"):
        validate(cfg, D3)


@pytest.fixture(scope="module")
def drift_base(tmp_path_factory):
    """A landing of 4 days (03-01..04) and a home whose lake holds the first 3: history for day 4's drift."""
    from pipeline.config import load_config
    from pipeline.data.generate import generate

    root = tmp_path_factory.mktemp("drift")
    generate(root / "landing", days=4, impressions_per_day=600, users=80, items=50, seed=11, start_date="2026-03-01")
    cfg = load_config(home=root / "home")
    ingest(cfg, root / "landing", "2026-03-03")
    validate(cfg, "2026-03-03")
    return root


def _drift_case(drift_base, tmp_path, edit, fn, *overrides):
    import shutil

    from pipeline.config import load_config

    shutil.copytree(drift_base, tmp_path / "d")
    edit(tmp_path / "d" / "landing", "2026-03-04", fn)
    cfg = load_config(home=tmp_path / "d" / "home", overrides=list(overrides))
    ingest(cfg, tmp_path / "d" / "landing", "2026-03-04")
    return cfg


DRIFTS = [
    ("row count", lambda df: df.head(60), "*", "drift: row count outside band [0.2, 5.0] x trailing mean"),
    ("click rate", lambda df: df.with_columns(pl.lit(1, pl.Int8).alias("clicked")), "clicked",
     "drift: clicked rate outside band [0.2, 5.0] x trailing mean"),
    ("click rate collapse", lambda df: df.with_columns(pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted",
     "purchased")), "clicked", "drift: clicked rate outside band [0.2, 5.0] x trailing mean"),
]


@pytest.mark.parametrize("case", DRIFTS, ids=[d[0] for d in DRIFTS])
def test_drift_fails_against_trailing_days(case, drift_base, tmp_path, edit, lake_bytes):
    _, fn, column, rule = case
    cfg = _drift_case(drift_base, tmp_path, edit, fn)
    before = lake_bytes(cfg.home)
    with pytest.raises(DataValidationError) as info:
        validate(cfg, "2026-03-04")
    (hit,) = [f for f in info.value.failures if f.rule == rule]
    assert hit.column == column and hit.examples[0]["days"] == 3 and hit.examples[0]["dt"] == "2026-03-04"
    assert lake_bytes(cfg.home) == before


def test_drift_warns_when_configured(drift_base, tmp_path, edit):
    cfg = _drift_case(drift_base, tmp_path, edit, lambda df: df.head(60), "validation.drift_action=warn")
    res = validate(cfg, "2026-03-04")
    report = json.loads(Path(res["report"]).read_text())
    assert res["published"] == ["2026-03-04"] and report["success"]
    assert [w["rule"] for w in report["warnings"]] == [DRIFTS[0][3]]


def test_unchanged_day_shows_no_drift_and_small_counts_are_not_judged(drift_base, tmp_path, edit):
    cfg = _drift_case(drift_base, tmp_path, edit, lambda df: df)
    report = json.loads(Path(validate(cfg, "2026-03-04")["report"]).read_text())
    assert report["warnings"] == [] and report["day_stats"]["2026-03-04"]["rows"] == 600
    # purchases: about 0.02 x 600 = 12 expected < drift_min_positives, so even none at all is not drift
    cfg = _drift_case(drift_base, tmp_path / "b", edit, lambda df: df.with_columns(
        pl.lit(0, pl.Int8).alias("purchased")))
    validate(cfg, "2026-03-04")


def test_gap_in_the_days_is_a_warning(cfg, landing):
    import shutil

    shutil.rmtree(landing / "impressions" / "dt=2026-02-03")
    shutil.copytree(landing / "impressions" / "dt=2026-02-02", landing / "impressions" / "dt=2026-02-04")
    new = pl.read_parquet(landing / "impressions" / "dt=2026-02-04" / "part-0.parquet").with_columns(
        ("x" + pl.col("event_id")).alias("event_id"), pl.col("ts") + dt.timedelta(days=2))
    new.write_parquet(landing / "impressions" / "dt=2026-02-04" / "part-0.parquet")
    ingest(cfg, landing, "2026-02-04")
    report = json.loads(Path(validate(cfg, "2026-02-04")["report"]).read_text())
    assert [(w["rule"], w["examples"]) for w in report["warnings"]] == [
        ("missing day (no partition in the lake or the landing)", [{"dt": D3}])]


def test_drift_ratio_matches_hand_computation():
    from pipeline.config import ValidationConfig
    from pipeline.data.rules import check_drift

    history = [{"rows": r, "clicked": c, "carted": 0.02, "purchased": 0.01} for r, c in
               [(1000, 0.10), (1200, 0.08), (800, 0.12)]]
    band = ValidationConfig(row_count_band=(0.5, 2.0), label_rate_band=(0.5, 2.0), drift_min_positives=20)
    day = dt.date(2026, 1, 4)
    ok = {"rows": 2000, "clicked": 0.199, "carted": 0.02, "purchased": 0.01}
    assert check_drift(day, ok, history, band) == []  # 2000 / 1000 and 0.199 / 0.1 are inside [0.5, 2.0]
    (rows,) = check_drift(day, {**ok, "rows": 2001}, history, band)
    assert rows.column == "*" and rows.examples[0]["ratio"] == pytest.approx(2.001)
    (clicks,) = check_drift(day, {**ok, "clicked": 0.0499}, history, band)
    assert clicks.column == "clicked" and clicks.examples[0]["trailing_mean"] == pytest.approx(0.1)
    # purchases: 0.01 x 2000 = 20 expected positives is enough to judge; 0.01 x 1000 = 10 is not
    assert [f.column for f in check_drift(day, {**ok, "purchased": 0.0}, history, band)] == ["purchased"]
    assert check_drift(day, {**ok, "rows": 1000, "purchased": 0.0}, history, band) == []
    assert check_drift(day, {**ok, "rows": 10}, history[:2], band) == []  # fewer than 3 trailing days
