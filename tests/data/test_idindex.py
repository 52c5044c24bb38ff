"""The lake's event-id index: lookups find every published id with its day, compaction keeps every entry,
republished days replace their entries, and validation confirms hits on real ids (hashes can collide)."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import polars as pl
import pytest

from pipeline.data.idindex import FANOUT, EventIdIndex, id_hashes
from pipeline.data.ingest import ingest
from pipeline.data.validate import validate
from pipeline.errors import DataValidationError
from pipeline.paths import Layout

D0 = dt.date(2026, 3, 1)


def _ids(day: int, n: int = 50) -> list[str]:
    return [f"d{day}-e{i}" for i in range(n)]


def test_lookup_finds_every_id_with_its_day_after_compaction(tmp_path):
    index = EventIdIndex(tmp_path)
    days = FANOUT * FANOUT + 3  # two levels of merges
    with index.locked():
        for k in range(days):
            index.add(D0 + dt.timedelta(days=k), id_hashes(_ids(k)), f"sha{k}")
    runs = index.manifest()["runs"]
    assert len(runs) <= 2 * FANOUT and {r["level"] for r in runs} >= {2}
    assert sum(r["rows"] for r in runs) == 50 * days
    probe = _ids(5)[:3] + _ids(days - 1)[-2:] + ["never-seen"]
    pos, ordinals = index.lookup(id_hashes(probe))
    found = {probe[p]: dt.date.fromordinal(o) for p, o in zip(pos.tolist(), ordinals.tolist())}
    assert found == {**dict.fromkeys(_ids(5)[:3], D0 + dt.timedelta(days=5)),
                     **dict.fromkeys(_ids(days - 1)[-2:], D0 + dt.timedelta(days=days - 1))}
    assert len(list(tmp_path.joinpath("_event_ids").glob("*.npy"))) == 2 * len(runs)  # no orphan runs


def test_republished_day_replaces_its_entries_and_same_bytes_change_nothing(tmp_path):
    index = EventIdIndex(tmp_path)
    with index.locked():
        index.add(D0, id_hashes(["a", "b"]), "one")
        index.add(D0 + dt.timedelta(days=1), id_hashes(["c"]), "two")
        before = index.manifest()
        index.add(D0, id_hashes(["a", "b"]), "one")
        assert index.manifest() == before
        index.add(D0, id_hashes(["b", "z"]), "changed")
    pos, ordinals = index.lookup(id_hashes(["a", "b", "z", "c"]))
    assert sorted(pos.tolist()) == [1, 2, 3]  # "a" left with the old content of D0
    assert index.manifest()["days"][D0.isoformat()] == "changed"


def test_a_hash_hit_is_confirmed_on_the_real_ids(cfg, landing, home):
    """Plant an index entry that claims day 01 holds one of day 03's ids (as a 64-bit collision would):
    validation reads day 01's ids, finds no such id and publishes; a real duplicate is still refused."""
    lay = Layout.of(home)
    d1 = dt.date(2026, 2, 1)
    staged = pl.read_parquet(landing / "impressions" / "dt=2026-02-03" / "part-0.parquet")["event_id"][0]
    index = EventIdIndex(lay.lake)
    sha = index.manifest()["days"][d1.isoformat()]
    with index.locked():
        index.add(d1, np.concatenate([id_hashes([staged]), id_hashes(pl.read_parquet(
            lay.impressions_dir(d1) / "*.parquet")["event_id"].to_list())]), sha + "-planted")
        man = index.manifest()
        man["days"][d1.isoformat()] = sha  # the lake's own fingerprint: no catch-up will repair the entry
        index._commit(man)
    ingest(cfg, landing, "2026-02-03")
    assert validate(cfg, "2026-02-03")["published"] == ["2026-02-03"]


def test_a_lake_without_an_index_is_caught_up_and_duplicates_still_refused(cfg, landing, home):
    lay = Layout.of(home)
    shutil.rmtree(lay.lake / "_event_ids")  # a lake published by an older version
    old = pl.read_parquet(lay.impressions_dir("2026-02-02") / "*.parquet")["event_id"][7]
    path = landing / "impressions" / "dt=2026-02-03" / "part-0.parquet"
    day3 = pl.read_parquet(path)
    day3.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(old)).otherwise(pl.col("event_id"))
                      .alias("event_id")).write_parquet(path)
    ingest(cfg, landing, "2026-02-03")
    with pytest.raises(DataValidationError, match="event_id seen on an earlier day"):
        validate(cfg, "2026-02-03")
    assert set(EventIdIndex(lay.lake).manifest()["days"]) == {"2026-02-01", "2026-02-02"}
