"""Validate a run's staged days (GX suites + contract rules + drift) and, only when all pass, publish them.

    <home>/staging/<run_id>/ --checks--> <home>/runs/<run_id>/validation/{validation.json, data_docs/}
                             --publish (all rules passed)--> <home>/lake/impressions/dt=D/, lake/{users,items}

All failures of all staged days are gathered into one DataValidationError. On failure the lake is untouched;
on success each day's partition and the dated snapshots are swapped in atomically (a rerun of D rewrites the
same bytes). Drift failures are warnings instead when `validation.drift_action` is "warn".
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from pipeline.data.docs_offline import localize
from pipeline.data.ingest import FINGERPRINT_FILE, STAGED_FILE, staging_dir
from pipeline.errors import DataValidationError, IngestError, RuleFailure
from pipeline.paths import VALIDATION_DIR, Layout, parse_date

REPORT_FILE = "validation.json"


def _read_staged(stage: Path, day: str):
    import polars as pl

    return pl.read_parquet(stage / "impressions" / f"dt={day}" / "part-0.parquet")


def _lake_scan(layout: Layout, days: list[dt.date], columns: list[str]):
    """Lazy frame over lake partitions `days`: `columns` plus a `dt` date column (None when no days)."""
    import polars as pl

    frames = [pl.scan_parquet(layout.impressions_dir(d) / "*.parquet").select(columns)
              .with_columns(pl.lit(d).alias("dt")) for d in days]
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def _index_catch_up(index, layout: Layout, days: list[dt.date]) -> None:
    """Index the lake days the event-id index lacks (an older lake, or a crash after a publish)."""
    import polars as pl

    from pipeline.data.idindex import id_hashes

    known = index.manifest()["days"]
    missing = [d for d in days if known.get(d.isoformat()) != read_fingerprint(layout, d)["sha256"]]
    if not missing:
        return
    with index.locked():
        for d in missing:
            ids = pl.read_parquet(layout.impressions_dir(d) / "*.parquet", columns=["event_id"])["event_id"]
            index.add(d, id_hashes(ids.to_list()), read_fingerprint(layout, d)["sha256"])


def _earlier_hits(layout: Layout, lake_days: list[dt.date], staged_ids):
    """(event_id, dt) of staged ids already on one of `lake_days`, through the event-id index: only the days a
    hash hit points at are read, and only to confirm the hit (a 64-bit hash can collide)."""
    import polars as pl

    from pipeline.data.idindex import EventIdIndex, id_hashes

    index = EventIdIndex(layout.lake)
    _index_catch_up(index, layout, lake_days)
    ids = staged_ids.drop_nulls().to_list()  # a null id is its own rule failure, never a duplicate
    pos, ordinals = index.lookup(id_hashes(ids))
    wanted = {d.toordinal(): d for d in lake_days}
    by_day: dict[dt.date, set[str]] = {}
    for i, o in zip(pos.tolist(), ordinals.tolist()):
        if o in wanted:
            by_day.setdefault(wanted[o], set()).add(ids[i])
    hits = [pl.read_parquet(layout.impressions_dir(d) / "*.parquet", columns=["event_id"])
            .filter(pl.col("event_id").is_in(sorted(cands))).with_columns(pl.lit(d).alias("dt"))
            for d, cands in sorted(by_day.items())]
    empty = pl.DataFrame(schema={"event_id": pl.String, "dt": pl.Date})
    return pl.concat([empty, *hits], how="vertical_relaxed")


def _lake_context(cfg, layout: Layout, staged: list[dt.date], staged_ids):
    """(event_ids of earlier lake days that collide with staged ones, per-day stats of the drift window).

    The collision check goes through the lake's event-id index (pipeline.data.idindex), so its cost follows
    the staged days, not the length of the lake; only the drift window's label columns are read.
    """
    from pipeline.data import rules

    lake_days = [d for d in layout.ingested_dates() if d < staged[-1] and d not in set(staged)]
    hits = _earlier_hits(layout, lake_days, staged_ids)
    since = staged[0] - dt.timedelta(days=cfg.validation.drift_days)
    window = _lake_scan(layout, [d for d in lake_days if d >= since], list(rules.LABELS))
    frame = window.collect() if window is not None else None
    history = {d: rules.day_stats(g) for (d,), g in frame.group_by("dt")} if frame is not None else {}
    return hits, history


def _contract_checks(cfg, layout: Layout, frames: dict, users, items):
    """Plain rule and drift checks over the staged days ({iso day: frame}) -> (failures, drift, day_stats)."""
    import polars as pl

    from pipeline.data import rules

    days = list(frames)
    staged = [parse_date(d) for d in days]
    hits, history = _lake_context(cfg, layout, staged, pl.concat([f["event_id"] for f in frames.values()]))
    failures, drift, stats, seen = [], [], {}, []
    for day, d in zip(days, staged):
        imp = frames[day]
        earlier = pl.concat([hits.filter(pl.col("dt") < d)["event_id"], *seen])
        failures += rules.check_day(imp, d, users, items, earlier)
        stats[day] = rules.day_stats(imp)
        since = d - dt.timedelta(days=cfg.validation.drift_days)
        trailing = [history[h] for h in sorted(history) if since <= h < d]
        drift += rules.check_drift(d, stats[day], trailing, cfg.validation)
        history[d] = stats[day]
        seen.append(imp["event_id"])
    imps = pl.concat([f.select("user_id", "ts") for f in frames.values()])
    first_seen = imps.group_by("user_id").agg(pl.col("ts").min().alias("first_ts"))
    failures += rules.check_snapshots(users, items, first_seen)
    return failures, drift, stats


def _publish(layout: Layout, stage: Path, frames: dict, prints: dict, date: dt.date) -> None:
    """Swap each staged day and the dated snapshots into the lake, one atomic rename each, then add the days'
    ids to the event-id index (derived data: a crash before that is caught up by the next validation)."""
    from pipeline.data.idindex import EventIdIndex, id_hashes
    from pipeline.io import atomic_path

    for day in frames:
        with atomic_path(layout.impressions_dir(day)) as tmp:
            shutil.copytree(stage / "impressions" / f"dt={day}", tmp)
    for name in ("users", "items"):
        with atomic_path(layout.snapshot(name, date)) as tmp:
            shutil.copyfile(stage / f"{name}.parquet", tmp)
    index = EventIdIndex(layout.lake)
    with index.locked():
        for day, frame in frames.items():
            index.add(parse_date(day), id_hashes(frame["event_id"].to_list()), prints[day]["sha256"])


def validate(cfg, date: str | dt.date, run_id: str | None = None) -> dict:
    """Check everything staged for `run_id`; raise DataValidationError listing every failed rule, or publish.

    Returns {"run_id", "published": [iso dates], "data_docs": index.html path, "report": report path}.
    """
    import polars as pl

    from pipeline.data.suites import run_suites
    from pipeline.io import atomic_path, read_json, write_json

    day = parse_date(date)
    run_id = run_id or day.isoformat()
    layout = Layout.of(cfg.home)
    stage = staging_dir(layout, run_id)
    if not (stage / STAGED_FILE).is_file():
        raise IngestError(f"nothing staged for run {run_id} in {stage}: run ingest for {day} first")
    manifest = read_json(stage / STAGED_FILE)
    if manifest["date"] != day.isoformat():
        raise IngestError(f"staging of run {run_id} holds date {manifest['date']}, not {day}")
    days = manifest["days"]
    users, items = pl.read_parquet(stage / "users.parquet"), pl.read_parquet(stage / "items.parquet")
    out_dir = layout.run_dir(run_id) / VALIDATION_DIR
    # All staged days in one GX batch (a `dt` column tells them apart): uniqueness spans the days too.
    frames = {d: _read_staged(stage, d) for d in days}
    staged = pl.concat([f.with_columns(pl.lit(d).alias("dt")) for d, f in frames.items()],
                       how="diagonal_relaxed")
    batches = [("impressions", f"{days[0]}..{days[-1]}", staged.to_arrow()),
               ("users", day.isoformat(), users.to_arrow()), ("items", day.isoformat(), items.to_arrow())]
    with atomic_path(out_dir / "data_docs") as tmp:
        gx_failures, gx_stats = run_suites(batches, tmp)
        localize(tmp)  # GX pages load CSS/JS from CDNs: inline the styles so they render offline
    docs = out_dir / "data_docs" / "index.html"
    failures, drift, stats = _contract_checks(cfg, layout, frames, users, items)
    failures = gx_failures + failures
    # A gap is worth a warning, not a rejection: the days that are here are fine, and a backfill can follow.
    warnings = [RuleFailure("impressions", "*", "missing day (no partition in the lake or the landing)", 0,
                            ({"dt": g},)) for g in manifest.get("gaps", [])]
    if cfg.validation.drift_action == "warn":
        warnings += drift
    else:
        failures += drift
    report = write_json(out_dir / REPORT_FILE, {
        "run_id": run_id, "date": day.isoformat(), "days": days, "success": not failures,
        "failures": [vars(f) for f in failures], "warnings": [vars(w) for w in warnings],
        "gx": gx_stats, "day_stats": stats, "fingerprints": manifest["fingerprints"],
        "snapshots": manifest["snapshots"], "data_docs": str(docs)})
    if failures:
        raise DataValidationError(failures, where=f"run {run_id} (days {', '.join(days)})", docs=str(docs))
    _publish(layout, stage, frames, manifest["fingerprints"], day)
    return {"run_id": run_id, "published": days, "data_docs": str(docs), "report": str(report)}


def read_fingerprint(layout: Layout, day: str | dt.date) -> dict:
    """The `_FINGERPRINT.json` of a lake partition ({"rows", "sha256"})."""
    from pipeline.io import read_json

    return read_json(layout.impressions_dir(day) / FINGERPRINT_FILE)
