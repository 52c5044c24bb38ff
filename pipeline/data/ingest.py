"""Stage landing data for one logical date: read, cast to the contract types, fingerprint. Never touches the
lake.

    <landing>/impressions/dt=D/*.parquet|*.csv, <landing>/users.*, <landing>/items.*
      -> <home>/staging/<run_id>/impressions/dt=D/part-0.parquet + _FINGERPRINT.json
         <home>/staging/<run_id>/{users,items}.parquet, <home>/staging/<run_id>/_STAGED.json

Day D and every earlier landing day not yet in the lake are staged together (catch-up). The whole staging
folder of a run is written to a temporary sibling and renamed into place, so a crash leaves either the
previous staging or the new one. `pipeline.data.validate` checks it and publishes it into the lake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from pipeline.data.schema import TABLES, bad_values, cast_array
from pipeline.errors import DataValidationError, IngestError, RuleFailure
from pipeline.paths import Layout, parse_date

DATA_SUFFIXES = (".parquet", ".csv")
STAGED_FILE = "_STAGED.json"
FINGERPRINT_FILE = "_FINGERPRINT.json"


def staging_dir(layout: Layout, run_id: str) -> Path:
    return layout.home / "staging" / run_id


def _data_files(folder: Path) -> list[Path]:
    """Data files of a landing folder in name order; markers (`_SUCCESS`) and hidden files are ignored."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith((".", "_")))


def read_file(path: Path):
    """One landing file as a pyarrow Table; CSV columns are read as text and cast later like any other.

    Raises IngestError naming the file when it cannot be read (truncated, not Parquet, broken CSV, not UTF-8).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".csv":
            with pacsv.open_csv(path) as reader:  # reads only the first block, for the column names
                names = reader.schema.names
            # Everything as text (cast later like Parquet columns); only an empty unquoted field is null, so
            # a title "NA" or a query "null" stays text.
            opts = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[""],
                                        strings_can_be_null=True, quoted_strings_can_be_null=False)
            return pacsv.read_csv(path, convert_options=opts)
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise IngestError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def conform(table, name: str, where: str):
    """Cast a raw table to contract table `name`: contract columns first (in order), extra columns after.

    Raises DataValidationError (rule "missing column") or IngestError naming file, column and a bad value.
    """
    import pyarrow as pa

    schema = TABLES[name]
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        failures = [RuleFailure(name, c, "missing column", table.num_rows, (where,)) for c in missing]
        raise DataValidationError(failures, where=where)
    if len(set(table.column_names)) != len(table.column_names):
        raise IngestError(f"{where}: duplicate column names in {table.column_names}")
    cols, fields = [], []
    for f in schema:
        column = table.column(f.name)
        arr = column.combine_chunks() if table.num_rows else pa.array([], column.type)
        try:
            cols.append(cast_array(arr, f.type))
        except (pa.ArrowException, ValueError) as exc:
            n, bad = bad_values(arr, f.type)
            detail = f"{n} row(s) e.g. {bad!r}" if bad else str(exc).splitlines()[0]
            msg = f"{where}: {name}.{f.name} does not fit {f.type} (got {arr.type}): {detail}"
            raise IngestError(msg) from None
        fields.append(f)
    extra = [c for c in table.column_names if c not in schema.names]
    for c in extra:
        cols.append(table.column(c))
        fields.append(table.schema.field(c))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def read_day(folder: Path, day: dt.date):
    """All files of a landing day, conformed and concatenated (extra columns unified across files)."""
    import pyarrow as pa

    from pipeline.data.schema import IMPRESSIONS

    files = _data_files(folder)
    if not files:
        return IMPRESSIONS.empty_table()
    parts = [conform(read_file(p), "impressions", str(p)) for p in files]
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as exc:
        raise IngestError(f"{folder}: files of {day} disagree on extra column types: {exc}") from None


def snapshot_file(landing: Path, name: str) -> Path:
    for suffix in DATA_SUFFIXES:
        p = landing / f"{name}{suffix}"
        if p.is_file():
            return p
    raise IngestError(f"no {name} snapshot in {landing} (expected {name}.parquet or {name}.csv)")


class _HashSink:
    """A write-only file that feeds SHA-256 instead of memory: the IPC stream is hashed as it is written."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def fingerprint(table) -> dict:
    """Row count + SHA-256 of the table's Arrow IPC stream (same rows, order and types -> same hash), hashed
    while it streams out in 64k-row batches: no second copy of the table is held in memory."""
    import pyarrow as pa

    sink = _HashSink()
    with pa.PythonFile(sink, mode="w") as out, pa.ipc.new_stream(out, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 16)
    return {"rows": table.num_rows, "sha256": sink.sha.hexdigest()}


def landing_days(landing: Path) -> list[dt.date]:
    root = landing / "impressions"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("dt="):
            try:
                out.append(dt.date.fromisoformat(p.name[3:]))
            except ValueError:  # a stray folder name is not a day; it is skipped, not fatal
                pass
    return sorted(out)


def days_to_stage(layout: Layout, landing: Path, date: dt.date) -> list[dt.date]:
    """D plus every landing day before D that the lake does not hold yet."""
    if not (landing / "impressions" / f"dt={date.isoformat()}").is_dir():
        folder = landing / "impressions" / f"dt={date.isoformat()}"
        raise IngestError(f"missing day: no landing partition {folder}")
    done = set(layout.ingested_dates())
    return [d for d in landing_days(landing) if d < date and d not in done] + [date]


def gaps(layout: Layout, landing: Path, date: dt.date) -> list[dt.date]:
    """Days between the first known day (lake or landing) and D held by neither the lake nor the landing."""
    known = set(layout.ingested_dates()) | {d for d in landing_days(landing) if d <= date}
    first = min(known, default=date)
    between = (first + dt.timedelta(days=i) for i in range((date - first).days))
    return [d for d in between if d not in known]


def ingest(cfg, landing: str | os.PathLike, date: str | dt.date, run_id: str | None = None) -> dict:
    """Stage day `date` (+ catch-up days) and the users/items snapshots; see the module docstring.

    Returns {"run_id", "staged": [iso dates], "fingerprints": {iso date: {"rows", "sha256"}}}.
    """
    import pyarrow.parquet as pq

    from pipeline.io import atomic_path, write_json

    landing, day = Path(landing), parse_date(date)
    run_id = run_id or day.isoformat()
    layout = Layout.of(cfg.home)
    if not landing.is_dir():
        raise IngestError(f"landing folder not found: {landing}")
    days = days_to_stage(layout, landing, day)
    snapshots = {n: conform(read_file(snapshot_file(landing, n)), n, str(snapshot_file(landing, n)))
                 for n in ("users", "items")}
    prints: dict[str, dict] = {}
    with atomic_path(staging_dir(layout, run_id)) as tmp:
        for d in days:
            table = read_day(landing / "impressions" / f"dt={d.isoformat()}", d)
            part = tmp / "impressions" / f"dt={d.isoformat()}"
            part.mkdir(parents=True)
            pq.write_table(table, part / "part-0.parquet")
            prints[d.isoformat()] = fingerprint(table)
            write_json(part / FINGERPRINT_FILE, prints[d.isoformat()])
        for name, table in snapshots.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        write_json(tmp / STAGED_FILE, {"date": day.isoformat(), "landing": str(landing.resolve()),
                                       "days": [d.isoformat() for d in days], "fingerprints": prints,
                                       "gaps": [d.isoformat() for d in gaps(layout, landing, day)],
                                       "snapshots": {n: fingerprint(t) for n, t in snapshots.items()}})
    return {"run_id": run_id, "staged": [d.isoformat() for d in days], "fingerprints": prints}
