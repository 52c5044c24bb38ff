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


class _Checks:
    """The contract rules, the drift check and the GX suites over the staged days, one day at a time.

    Holds per staged day only its sorted id hashes (twice: for the index and merged with the earlier days, with
    their day: 20 bytes a row) and its stats, never the days' rows: a day
    is read, checked and dropped. The "event_id seen on an earlier day" rule looks each day's ids up in the
    lake's event-id index and in the hashes of the earlier staged days, and confirms every hash hit on the hit
    day's real ids (a 64-bit hash can collide).
    """

    def __init__(self, cfg, layout: Layout, stage: Path, days: list[str], gx):
        from pipeline.data import rules
        from pipeline.data.idindex import EventIdIndex

        self.cfg, self.layout, self.stage, self.gx = cfg, layout, stage, gx
        self.label = f"{days[0]}..{days[-1]}"  # one GX result for all staged days, as before
        staged = [parse_date(d) for d in days]
        self.lake_days = [d for d in layout.ingested_dates() if d < staged[-1] and d not in set(staged)]
        self.index = EventIdIndex(layout.lake)
        _index_catch_up(self.index, layout, self.lake_days)
        since = staged[0] - dt.timedelta(days=cfg.validation.drift_days)
        window = _lake_scan(layout, [d for d in self.lake_days if d >= since], list(rules.LABELS))
        frame = window.collect() if window is not None else None
        self.history = {d: rules.day_stats(g) for (d,), g in frame.group_by("dt")} if frame is not None else {}
        self.hashes: dict[str, object] = {}  # iso day -> uint64 [n] sorted hashes of its ids (for the index)
        self.seen_h = self.seen_d = None  # sorted hashes of the earlier staged days and their day ordinals
        self.first_seen = None  # polars (user_id, first_ts) over the staged days so far
        self.failures, self.drift, self.stats = [], [], {}

    def day(self, day: str, imp, users, items) -> None:
        """All checks of staged day `day` (its polars frame `imp`)."""
        import numpy as np
        import polars as pl

        from pipeline.data import rules
        from pipeline.data.idindex import id_hashes, search

        d = parse_date(day)
        self._gx(day, imp)
        ids = imp["event_id"].drop_nulls()  # a null id is its own rule failure, never a duplicate
        h = id_hashes(ids.to_list())
        order = np.argsort(h, kind="stable")
        h, ids = h[order], ids.gather(order)
        candidates = self._lake_candidates(h, ids, d)
        if self.seen_h is not None:
            pos, ords = search(self.seen_h, self.seen_d, h)
            for i, o in zip(pos.tolist(), ords.tolist()):
                candidates.setdefault(dt.date.fromordinal(o), set()).add(ids[i])
        failures = rules.check_day(imp, d, users, items, self._confirm(candidates))
        self.failures += failures
        self.stats[day] = rules.day_stats(imp)
        since = d - dt.timedelta(days=self.cfg.validation.drift_days)
        trailing = [self.history[x] for x in sorted(self.history) if since <= x < d]
        self.drift += rules.check_drift(d, self.stats[day], trailing, self.cfg.validation)
        self.history[d] = self.stats[day]
        self.hashes[day] = h
        seen_d = np.full(len(h), d.toordinal(), dtype=np.int32)
        if self.seen_h is not None:  # merging two sorted runs: a stable sort is linear on them
            h, seen_d = np.concatenate([self.seen_h, h]), np.concatenate([self.seen_d, seen_d])
            merged = np.argsort(h, kind="stable")
            h, seen_d = h[merged], seen_d[merged]
        self.seen_h, self.seen_d = h, seen_d
        day_first = imp.group_by("user_id").agg(pl.col("ts").min().alias("first_ts"))
        self.first_seen = day_first if self.first_seen is None else (  # one row per user, not per day
            pl.concat([self.first_seen, day_first]).group_by("user_id").agg(pl.col("first_ts").min()))

    def _gx(self, day: str, imp) -> None:
        """GX on the day in chunks of `validation.gx_chunk_rows` rows; a chunked day's uniqueness of event_id
        is checked here on the whole day (GX sees one chunk) under GX's rule name."""
        import polars as pl

        from pipeline.data import rules

        size = self.cfg.validation.gx_chunk_rows
        tagged = imp.with_columns(pl.lit(day).alias("dt"))
        chunked = imp.height > size
        skip = {("impressions", "event_id", "duplicate id")} if chunked else set()
        for start in range(0, max(imp.height, 1), size):
            self.gx.check("impressions", self.label, tagged.slice(start, size).to_arrow(), skip=skip)
        if chunked:
            dup = tagged.filter(pl.col("event_id").is_duplicated() & pl.col("event_id").is_not_null())
            self.gx.add("impressions", self.label, rules.failed_rows(
                "impressions", "event_id", "duplicate id", dup, ["event_id", "dt"]))

    def _lake_candidates(self, h, ids, d: dt.date) -> dict:
        """{lake day before `d`: {event_id}} of the index's hits of the day's sorted hashes `h` (ids: the same
        order)."""
        wanted = {x.toordinal(): x for x in self.lake_days if x < d}
        pos, ordinals = self.index.lookup(h)
        out: dict[dt.date, set] = {}
        for i, o in zip(pos.tolist(), ordinals.tolist()):
            if o in wanted:
                out.setdefault(wanted[o], set()).add(ids[i])
        return out

    def _confirm(self, candidates: dict):
        """event_ids (polars Series) of the candidates really present on their hit day (lake or staging)."""
        import polars as pl

        found = [pl.Series("event_id", [], pl.String)]
        for day, cands in sorted(candidates.items()):
            folder = (self.layout.impressions_dir(day) if day in set(self.lake_days)
                      else self.stage / "impressions" / f"dt={day.isoformat()}")
            col = pl.read_parquet(folder / "*.parquet", columns=["event_id"])["event_id"]
            found.append(col.filter(col.is_in(pl.Series(sorted(cands), dtype=pl.String).implode())))
        return pl.concat(found)

    def snapshots(self, users, items) -> list:
        import polars as pl

        from pipeline.data import rules

        first = self.first_seen if self.first_seen is not None else pl.DataFrame(
            schema={"user_id": pl.String, "first_ts": pl.Datetime("us", "UTC")})
        return rules.check_snapshots(users, items, first)


def _publish(layout: Layout, stage: Path, hashes: dict, prints: dict, date: dt.date) -> None:
    """Swap each staged day and the dated snapshots into the lake, one atomic rename each, then add the days'
    ids (`hashes`: iso day -> uint64 hashes) to the event-id index (derived data: a crash before that is caught
    up by the next validation)."""
    from pipeline.data.idindex import EventIdIndex
    from pipeline.io import atomic_path

    for day in hashes:
        with atomic_path(layout.impressions_dir(day)) as tmp:
            shutil.copytree(stage / "impressions" / f"dt={day}", tmp)
    for name in ("users", "items"):
        with atomic_path(layout.snapshot(name, date)) as tmp:
            shutil.copyfile(stage / f"{name}.parquet", tmp)
    index = EventIdIndex(layout.lake)
    with index.locked():
        for day, h in hashes.items():
            index.add(parse_date(day), h, prints[day]["sha256"])


def validate(cfg, date: str | dt.date, run_id: str | None = None) -> dict:
    """Check everything staged for `run_id`; raise DataValidationError listing every failed rule, or publish.

    Memory follows one staged day (GX: one chunk of `validation.gx_chunk_rows` rows in pandas), not the run.
    Returns {"run_id", "published": [iso dates], "data_docs": index.html path, "report": report path}.
    """
    import polars as pl

    from pipeline.data.suites import SuiteRunner
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
    with atomic_path(out_dir / "data_docs") as tmp:
        gx = SuiteRunner(tmp)
        checks = _Checks(cfg, layout, stage, days, gx)
        for d in days:  # one day in memory at a time; all days' GX results merge into one report entry
            checks.day(d, _read_staged(stage, d), users, items)
        gx.check("users", day.isoformat(), users.to_arrow())
        gx.check("items", day.isoformat(), items.to_arrow())
        gx_failures, gx_stats = gx.finish()
        localize(tmp)  # GX pages load CSS/JS from CDNs: inline the styles so they render offline
    docs = out_dir / "data_docs" / "index.html"
    failures = gx_failures + checks.failures + checks.snapshots(users, items)
    # A gap is worth a warning, not a rejection: the days that are here are fine, and a backfill can follow.
    warnings = [RuleFailure("impressions", "*", "missing day (no partition in the lake or the landing)", 0,
                            ({"dt": g},)) for g in manifest.get("gaps", [])]
    if cfg.validation.drift_action == "warn":
        warnings += checks.drift
    else:
        failures += checks.drift
    report = write_json(out_dir / REPORT_FILE, {
        "run_id": run_id, "date": day.isoformat(), "days": days, "success": not failures,
        "failures": [vars(f) for f in failures], "warnings": [vars(w) for w in warnings],
        "gx": gx_stats, "day_stats": checks.stats, "fingerprints": manifest["fingerprints"],
        "snapshots": manifest["snapshots"], "data_docs": str(docs)})
    if failures:
        raise DataValidationError(failures, where=f"run {run_id} (days {', '.join(days)})", docs=str(docs))
    _publish(layout, stage, checks.hashes, manifest["fingerprints"], day)
    return {"run_id": run_id, "published": days, "data_docs": str(docs), "report": str(report)}


def read_fingerprint(layout: Layout, day: str | dt.date) -> dict:
    """The `_FINGERPRINT.json` of a lake partition ({"rows", "sha256"})."""
    from pipeline.io import read_json

    return read_json(layout.impressions_dir(day) / FINGERPRINT_FILE)
