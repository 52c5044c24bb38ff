"""A catalog of bad landing inputs. Each case ends in a clean success or a named error that points at the
table/file, column and rows, and an error never changes a byte of the lake."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.ingest import ingest
from pipeline.data.validate import validate
from pipeline.errors import DataValidationError, IngestError
from pipeline.paths import Layout

D3 = "2026-02-03"


def _day(landing: Path) -> Path:
    return landing / "impressions" / f"dt={D3}"


def _part(landing: Path) -> Path:
    return _day(landing) / "part-0.parquet"


def _truncate(landing):
    data = _part(landing).read_bytes()
    _part(landing).write_bytes(data[: len(data) // 2])


def _garbage(landing):
    _part(landing).write_bytes(b"\x00\x01 definitely not parquet " * 40)


def _no_files(landing):
    _part(landing).unlink()


def _zero_rows(landing):
    pq.write_table(pq.read_table(_part(landing)).slice(0, 0), _part(landing))


def _missing_day(landing):
    for p in _day(landing).iterdir():
        p.unlink()
    _day(landing).rmdir()


def _frame(fn, target="day"):
    """Setup that rewrites a landing table through fn(polars frame)."""
    def setup(landing):
        path = _part(landing) if target == "day" else landing / f"{target}.parquet"
        df = fn(pl.read_parquet(path))
        path.unlink()
        df.write_parquet(path)
    return setup


def _csv(text: bytes, name="extra.csv", bom=False):
    """Setup that moves the day to CSV: the day's rows as CSV (after a UTF-8 byte-order mark when `bom`)
    plus `text` appended as raw bytes."""
    def setup(landing):
        df = pl.read_parquet(_part(landing))
        _part(landing).unlink()
        path = _day(landing) / name
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + df.write_csv().encode() + text)
    return setup


def _first_row(**values):
    return lambda df: df.with_columns(
        [pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()])


def _all_new(landing):
    """Every user and item of the day is new: fresh ids, added to the snapshots."""
    for table, key in (("users", "user_id"), ("items", "item_id")):
        snap = pl.read_parquet(landing / f"{table}.parquet")
        fresh = snap.with_columns(("new-" + pl.col(key)).alias(key))
        pl.concat([snap, fresh]).write_parquet(landing / f"{table}.parquet")
    _frame(lambda df: df.with_columns(("new-" + pl.col("user_id")).alias("user_id"),
                                      ("new-" + pl.col("item_id")).alias("item_id")))(landing)


def _bytes_title(raw: bytes):
    """Setup that stores item titles as a binary column whose first value is `raw`."""
    def setup(landing):
        table = pq.read_table(landing / "items.parquet")
        titles = [raw] + [t.encode() for t in table.column("title").to_pylist()[1:]]
        i = table.schema.get_field_index("title")
        pq.write_table(table.set_column(i, "title", pa.array(titles, pa.binary())), landing / "items.parquet")
    return setup


def _check_title(title: str):
    def check(home):
        items = pl.read_parquet(Layout.of(home).snapshot("items", D3))
        assert items["title"][0] == title
    return check


def _check_query(query: str):
    def check(home):
        day = pl.read_parquet(Layout.of(home).impressions_dir(D3) / "part-0.parquet")
        assert query in day["query"].to_list()
    return check


LONG = "very long title " * 625  # 10,000 characters
BIDI = "حقيبة ظهر جلدية 🎒 תיק גב 👜 backpack"
SEARCH = pl.col("surface") == "search"

# (id, setup(landing), expected: None = success | (error class, regex naming what and where), check(home))
CASES = [
    ("truncated parquet", _truncate, (IngestError, r"cannot read .*dt=2026-02-03/part-0\.parquet"), None),
    ("corrupt parquet", _garbage, (IngestError, r"cannot read .*part-0\.parquet"), None),
    ("empty partition (no files)", _no_files, (DataValidationError, r"impressions\.\*: empty partition"), None),
    ("empty partition (zero rows)", _zero_rows, (DataValidationError, r"impressions\.\*: empty partition"), None),
    ("missing day", _missing_day, (IngestError, r"missing day: no landing partition .*dt=2026-02-03"), None),
    ("renamed column", _frame(lambda df: df.rename({"clicked": "click"})),
     (DataValidationError, r"impressions\.clicked: missing column"), None),
    ("text in an int column", _frame(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("top")).otherwise(pl.col("position").cast(pl.String))
        .alias("position"))), (IngestError, r"impressions\.position does not fit int32 .*1 row\(s\) e\.g\. \['top'\]"),
     None),
    ("number in the timestamp column", _frame(lambda df: df.with_columns(pl.col("ts").dt.epoch("us"))),
     (IngestError, r"impressions\.ts does not fit timestamp.*got int64"), None),
    ("fractional label", _frame(lambda df: df.with_columns(pl.col("clicked").cast(pl.Float64) * 0.5)),
     (IngestError, r"impressions\.clicked does not fit int8"), None),
    ("position overflows int32", _frame(lambda df: df.with_columns(pl.col("position").cast(pl.Int64) + 2**40)),
     (IngestError, r"impressions\.position does not fit int32"), None),
    ("text price", _frame(lambda df: df.with_columns(pl.col("price").cast(pl.String).str.replace(r"^", "cheap ")),
                          "items"), (IngestError, r"items\.price does not fit double .*'cheap "), None),
    ("csv with a broken quote", _csv(b'e-x,r-x,"2026-02-03T10:00:00Z,u0000001\n'),
     (IngestError, r"cannot read .*extra\.csv"), None),
    ("csv not utf-8", _csv("e-x,r-x,2026-02-03T10:00:00Z,u1,i1,search,caf\xe9,0,0,0,0\n".encode("latin-1")),
     (IngestError, r"cannot read .*extra\.csv.*UTF"), None),
    ("csv with a short row", _csv(b"e-x,r-x\n"), (IngestError, r"cannot read .*extra\.csv"), None),
    ("csv day passes", _csv(b""), None, None),
    ("csv with a byte-order mark", _csv(b"", bom=True), None, None),
    ("stray non-data file", lambda landing: (_day(landing) / "README.txt").write_text("notes"), None, None),
    ("10,000-character title", _frame(_first_row(title=LONG), "items"), None, _check_title(LONG)),
    ("emoji and right-to-left title", _frame(_first_row(title=BIDI), "items"), None, _check_title(BIDI)),
    ("emoji and right-to-left query", _frame(lambda df: df.with_columns(
        pl.when(SEARCH).then(pl.lit("👜 حقيبة")).otherwise(pl.col("query")).alias("query"))), None,
     _check_query("👜 حقيبة")),
    ("extreme prices", _frame(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(1e-6).when(pl.int_range(pl.len()) == 1).then(1e12)
        .otherwise(pl.col("price")).alias("price")), "items"), None, None),
    ("infinite price", _frame(_first_row(price=float("inf")), "items"),
     (DataValidationError, r"items\.price: non-finite price"), None),
    ("NaN price", _frame(_first_row(price=float("nan")), "items"), (DataValidationError, r"items\.price: "), None),
    ("timestamps in another zone", _frame(lambda df: df.with_columns(
        pl.col("ts").dt.convert_time_zone("Asia/Tokyo"))), None, None),
    ("timestamp before the day", _frame(_first_row(ts=dt.datetime(2026, 2, 2, 23, 59, tzinfo=dt.UTC))),
     (DataValidationError, r"impressions\.ts: timestamp outside the partition's day \(1 rows\)"), None),
    ("surface in another case", _frame(_first_row(surface="Search")),
     (DataValidationError, r"impressions\.surface: surface outside its set"), None),
    ("users snapshot missing", lambda landing: (landing / "users.parquet").unlink(),
     (IngestError, r"no users snapshot"), None),
    ("zero clicks (no drift reference yet)", _frame(lambda df: df.with_columns(pl.lit(0, pl.Int8).alias(c)
                                                      for c in ("clicked", "carted", "purchased"))), None, None),
    ("all users and items new", _all_new, None, None),
    ("titles as UTF-8 bytes", _frame(lambda df: df.with_columns(pl.col("title").cast(pl.Binary)), "items"),
     None, None),
    ("titles as bytes, not UTF-8", _bytes_title(b"caf\xe9 bag"),
     (IngestError, r"items\.title does not fit string \(got binary\): 1 row\(s\) e\.g\. \[b'caf\\xe9 bag'\]"), None),
    ("integer ids", _frame(lambda df: df.with_columns(pl.col("shop_id").str.slice(1).cast(pl.Int64)), "items"),
     None, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, cfg, landing, home, lake_bytes):
    _, setup, expected, check = case
    setup(landing)
    before = lake_bytes(home)
    if expected is None:
        ingest(cfg, landing, D3)
        assert validate(cfg, D3)["published"] == [D3]
        if check:
            check(home)
        return
    error, pattern = expected
    with pytest.raises(error, match=pattern) as info:
        ingest(cfg, landing, D3)
        validate(cfg, D3)
    if isinstance(info.value, DataValidationError):
        assert all(f.table and f.column and f.rule for f in info.value.failures)
        json.dumps([vars(f) for f in info.value.failures])  # examples are plain, reportable values
    assert lake_bytes(home) == before
