"""Validation one staged day at a time, GX in chunks of `validation.gx_chunk_rows`: the same report, the same
lake and the same named failures as one GX batch, including duplicates that straddle two chunks and ids of an
earlier staged day (not yet in the lake)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.data.ingest import ingest
from pipeline.data.validate import validate
from pipeline.errors import DataValidationError

D3 = "2026-02-03"
CHUNK = {"validation.gx_chunk_rows": 150}  # the small days have 400 rows: 3 chunks each


def _report(home: Path, run: str = D3) -> dict:
    out = json.loads((home / "runs" / run / "validation" / "validation.json").read_text())
    return {k: out[k] for k in ("success", "failures", "warnings", "gx", "day_stats", "fingerprints")}


def _failures(cfg, landing, date=D3) -> list:
    ingest(cfg, landing, date)
    with pytest.raises(DataValidationError) as info:
        validate(cfg, date)
    return sorted((f.table, f.column, f.rule, f.count) for f in info.value.failures)


def test_chunked_report_and_lake_equal_one_batch(landing, home, tmp_path, lake_bytes):
    other = tmp_path / "other"
    shutil.copytree(home, other)
    for h, over in ((home, {}), (other, CHUNK)):
        cfg = load_config(home=h, overrides=over)
        ingest(cfg, landing, D3)
        validate(cfg, D3)
    assert _report(home) == _report(other)
    assert _report(other)["gx"]["impressions[2026-02-03..2026-02-03]"]["evaluated"] > 0
    assert lake_bytes(home) == lake_bytes(other)
    pages = list((other / "runs" / D3 / "validation" / "data_docs" / "validations" / "impressions").rglob("*.html"))
    assert len(pages) == 3  # one Data Docs page per chunk


def test_duplicate_across_chunks_is_caught_like_one_batch(landing, home, tmp_path, edit, lake_bytes):
    # row 399 repeats row 0's event_id: with 150-row chunks the two rows are in different GX batches
    edit(landing, D3, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 399).then(pl.col("event_id").first()).otherwise(pl.col("event_id"))
        .alias("event_id")))
    other = tmp_path / "other"
    shutil.copytree(home, other)
    before = lake_bytes(other)
    whole = _failures(load_config(home=home), landing)
    chunked = _failures(load_config(home=other, overrides=CHUNK), landing)
    assert chunked == whole == [("impressions", "event_id", "duplicate id", 2)]
    assert _report(other)["gx"] == _report(home)["gx"]
    assert lake_bytes(other) == before


@pytest.mark.parametrize("over", [{}, CHUNK], ids=["one-batch", "chunked"])
def test_id_of_an_earlier_staged_day(small_landing, tmp_path, edit, over):
    """A fresh home stages days 01..03 at once; day 03 repeats an id of day 02 (staged, not in the lake)."""
    landing = tmp_path / "landing"
    shutil.copytree(small_landing, landing)
    day2 = pl.read_parquet(landing / "impressions" / "dt=2026-02-02" / "part-0.parquet")["event_id"][7]
    edit(landing, D3, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(day2)).otherwise(pl.col("event_id")).alias("event_id")))
    cfg = load_config(home=tmp_path / "home", overrides=over)
    assert _failures(cfg, landing) == [("impressions", "event_id", "event_id seen on an earlier day", 1)]
    assert not (tmp_path / "home" / "lake" / "impressions").exists() or not any(
        (tmp_path / "home" / "lake" / "impressions").iterdir())
