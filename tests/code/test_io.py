"""Atomic writes: readers see the old or the new version, and a writer killed mid-swap is repaired."""

from __future__ import annotations

import os

import pytest

from pipeline.io import _aside, atomic_path, read_json, recover, write_json
from pipeline.paths import Layout


def test_failed_write_leaves_old_file(tmp_path):
    target = write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_folder_swap_replaces_whole_folder(tmp_path):
    target = tmp_path / "dt=2026-01-01"
    for version in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / f"{version}.parquet").write_text(version)
    assert [p.name for p in target.iterdir()] == ["new.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt=2026-01-01"]


def test_kill_between_renames_is_repaired(tmp_path):
    layout = Layout.of(tmp_path)
    day = layout.impressions_dir("2026-01-01")
    day.mkdir(parents=True)
    (day / "part-0.parquet").write_text("old")
    os.replace(day, _aside(day))  # the first rename of a swap happened, then the writer died
    assert not day.exists()
    assert [d.isoformat() for d in layout.ingested_dates()] == ["2026-01-01"]
    assert (day / "part-0.parquet").read_text() == "old"
    assert not _aside(day).exists()


def test_stale_aside_copy_is_removed(tmp_path):
    target = tmp_path / "x"
    target.mkdir()
    _aside(target).mkdir()
    recover(target)
    assert target.is_dir() and not _aside(target).exists()
