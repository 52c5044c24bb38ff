"""Ingestion: several files per day, Parquet and CSV, casting to the contract types, extra columns, catch-up,
fingerprints, named errors and an atomic staging folder."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.data.ingest import fingerprint, ingest, staging_dir
from pipeline.data.schema import IMPRESSIONS, ITEMS, USERS
from pipeline.data.validate import validate
from pipeline.errors import DataValidationError, IngestError
from pipeline.paths import Layout

D1, D2, D3 = "2026-02-01", "2026-02-02", "2026-02-03"


@pytest.fixture
def fresh(tmp_path):
    from pipeline.config import load_config

    return load_config(home=tmp_path / "fresh")


def _day_file(landing, day):
    return landing / "impressions" / f"dt={day}" / "part-0.parquet"


def _staged(cfg, day, run_id=None):
    return staging_dir(Layout.of(cfg.home), run_id or D3) / "impressions" / f"dt={day}" / "part-0.parquet"


def test_catch_up_stages_every_day_not_in_the_lake(fresh, landing):
    out = ingest(fresh, landing, D3)
    assert out == {"run_id": D3, "staged": [D1, D2, D3], "fingerprints": out["fingerprints"]}
    for day in (D1, D2, D3):
        table = pq.read_table(_staged(fresh, day))
        assert table.schema.remove_metadata() == IMPRESSIONS
        assert out["fingerprints"][day] == fingerprint(table) and out["fingerprints"][day]["rows"] == 400
        assert json.loads((_staged(fresh, day).parent / "_FINGERPRINT.json").read_text()) == out["fingerprints"][day]
    stage = staging_dir(Layout.of(fresh.home), D3)
    assert pq.read_schema(stage / "users.parquet").remove_metadata() == USERS
    assert pq.read_schema(stage / "items.parquet").remove_metadata() == ITEMS
    assert not Layout.of(fresh.home).lake.exists()  # ingest only stages


def test_lake_days_are_not_staged_again(cfg, landing):
    assert ingest(cfg, landing, D3, run_id="r1")["staged"] == [D3]  # base home holds 01 and 02
    assert ingest(cfg, landing, D2, run_id="r2")["staged"] == [D2]  # an explicit rerun of D still stages D


def test_fingerprint_follows_content_only():
    a = pl.DataFrame({"x": [1, 2, 3]}).to_arrow()
    b = pl.DataFrame({"x": [1, 2, 4]}).to_arrow()
    assert fingerprint(a) == fingerprint(pl.DataFrame({"x": [1, 2, 3]}).to_arrow())
    assert fingerprint(a)["sha256"] != fingerprint(b)["sha256"] and fingerprint(a)["rows"] == 3


def test_several_files_parquet_and_csv_with_extra_columns(fresh, landing):
    day = pl.read_parquet(_day_file(landing, D3))
    _day_file(landing, D3).unlink()
    folder = _day_file(landing, D3).parent
    day.head(150).with_columns(pl.lit("web").alias("device")).write_parquet(folder / "a.parquet")
    rest = day.slice(150).with_columns(pl.col("position").cast(pl.Int64), pl.lit(1.5).alias("score"))
    rest.write_csv(folder / "b.csv")
    ingest(fresh, landing, D3)
    staged = pl.read_parquet(_staged(fresh, D3))
    assert staged.columns == [*IMPRESSIONS.names, "device", "score"]
    assert staged.select(IMPRESSIONS.names).equals(day)  # CSV values cast back to exactly the same contract rows
    assert staged["device"].null_count() == 250 and staged["score"].null_count() == 150
    validate(fresh, D3)  # a mixed day is valid
    assert pl.read_parquet(Layout.of(fresh.home).impressions_dir(D3) / "part-0.parquet").height == 400


def test_csv_snapshots_and_naive_timestamps(fresh, landing):
    users = pl.read_parquet(landing / "users.parquet")
    (landing / "users.parquet").unlink()
    users.with_columns(pl.col("signup_ts").dt.replace_time_zone(None)).write_csv(landing / "users.csv")
    ingest(fresh, landing, D3)
    staged = pl.read_parquet(staging_dir(Layout.of(fresh.home), D3) / "users.parquet")
    assert staged.equals(users)  # naive text timestamps are read as UTC


def test_value_that_does_not_fit_names_file_column_and_value(fresh, landing):
    day = pl.read_parquet(_day_file(landing, D3)).with_columns(pl.col("position").cast(pl.Utf8))
    day = day.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("top")).otherwise(pl.col("position"))
                           .alias("position"))
    _day_file(landing, D3).unlink()
    day.write_parquet(_day_file(landing, D3))
    with pytest.raises(IngestError) as info:
        ingest(fresh, landing, D3)
    msg = str(info.value)
    assert "part-0.parquet" in msg and "impressions.position" in msg and "'top'" in msg and "1 row" in msg


def test_label_out_of_int8_range_is_an_ingest_error(fresh, landing):
    day = pl.read_parquet(_day_file(landing, D3)).with_columns(pl.col("clicked").cast(pl.Int64))
    day = day.with_columns(pl.when(pl.int_range(pl.len()) < 2).then(300).otherwise(pl.col("clicked")).alias("clicked"))
    day.write_parquet(_day_file(landing, D3))
    with pytest.raises(IngestError, match=r"impressions\.clicked .*2 row\(s\) e\.g\. \[300\]"):
        ingest(fresh, landing, D3)


def test_missing_column_is_a_validation_error(fresh, landing):
    pl.read_parquet(landing / "items.parquet").drop("shop_id").write_parquet(landing / "items.parquet")
    with pytest.raises(DataValidationError) as info:
        ingest(fresh, landing, D3)
    (f,) = info.value.failures
    assert (f.table, f.column, f.rule) == ("items", "shop_id", "missing column") and "items.parquet" in f.examples[0]


def test_missing_day_and_landing_are_named(fresh, landing, tmp_path):
    with pytest.raises(IngestError, match="missing day: no landing partition .*dt=2026-02-09"):
        ingest(fresh, landing, "2026-02-09")
    with pytest.raises(IngestError, match="landing folder not found"):
        ingest(fresh, tmp_path / "nowhere", D3)


def test_failed_ingest_keeps_the_previous_staging(fresh, landing):
    ingest(fresh, landing, D3)
    stage = staging_dir(Layout.of(fresh.home), D3)
    before = {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    _day_file(landing, D2).write_bytes(b"PAR1 not really parquet")
    with pytest.raises(IngestError, match="cannot read .*dt=2026-02-02/part-0.parquet"):
        ingest(fresh, landing, D3)
    assert {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()} == before
    assert [p.name for p in stage.parent.iterdir()] == [D3]  # no temporary left behind


def test_sigkill_mid_ingest_leaves_nothing_half_written(tmp_path):
    """A real SIGKILL while ingest writes: no staging folder appears (only a hidden temporary), the lake stays
    empty, and the next ingest + validate run cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline.config import load_config
    from pipeline.data.generate import generate

    landing, home = tmp_path / "landing", tmp_path / "home"
    generate(landing, days=12, impressions_per_day=10000, users=2000, items=500, seed=5, start_date="2026-04-01")
    code = ("from pipeline.config import load_config; from pipeline.data.ingest import ingest; "
            f"ingest(load_config(home={str(home)!r}), {str(landing)!r}, '2026-04-12')")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "POLARS_MAX_THREADS": "1"})
    root = home / "staging"
    deadline = time.monotonic() + 60
    while not (root.is_dir() and any(p.name.startswith(".2026-04-12.tmp-") for p in root.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "ingest ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "2026-04-12").exists()
    assert Layout.of(home).ingested_dates() == []
    cfg = load_config(home=home)
    with pytest.raises(IngestError, match="nothing staged"):
        validate(cfg, "2026-04-12")
    assert len(ingest(cfg, landing, "2026-04-12")["staged"]) == 12
    assert len(validate(cfg, "2026-04-12")["published"]) == 12


def test_streamed_fingerprint_is_the_hash_of_the_ipc_stream():
    """The fingerprint is hashed while the IPC stream is written (no buffer of the table): it must equal the
    SHA-256 of the same stream written to memory, so lakes fingerprinted before keep their hashes."""
    import hashlib

    import pyarrow as pa

    from pipeline.data.ingest import fingerprint

    table = pa.table({"event_id": [f"e{i}" for i in range(150_000)], "position": list(range(150_000))})
    buf = pa.BufferOutputStream()
    with pa.ipc.new_stream(buf, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 16)
    want = hashlib.sha256(buf.getvalue().to_pybytes()).hexdigest()
    assert fingerprint(table) == {"rows": 150_000, "sha256": want}
    assert fingerprint(table.slice(1))["sha256"] != want
