"""Fixtures of the data tests: a small generated landing folder and a home whose lake already holds two days.

`small_landing` (session, read-only): 3 days 2026-02-01..03, 400 impressions a day.
`landing`: a writable copy of it. `home`: a copy of a home where days 01 and 02 were ingested, validated and
published, so a test of day 03 runs against a non-empty lake. `cfg`: a Config on that home.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

SMALL = {"days": 3, "impressions_per_day": 400, "users": 60, "items": 40, "seed": 3, "start_date": "2026-02-01"}
DAYS = ("2026-02-01", "2026-02-02", "2026-02-03")


@pytest.fixture(scope="session")
def small_landing(tmp_path_factory) -> Path:
    from pipeline.data.generate import generate

    out = tmp_path_factory.mktemp("small") / "landing"
    generate(out, **SMALL)
    return out


@pytest.fixture(scope="session")
def base_home(tmp_path_factory, small_landing) -> Path:
    """A home whose lake holds days 01 and 02 (published through the real ingest + validate)."""
    from pipeline.config import load_config
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate

    home = tmp_path_factory.mktemp("base") / "home"
    cfg = load_config(home=home)
    ingest(cfg, small_landing, DAYS[1])
    validate(cfg, DAYS[1])
    return home


@pytest.fixture
def landing(small_landing, tmp_path) -> Path:
    dst = tmp_path / "landing"
    shutil.copytree(small_landing, dst)
    return dst


@pytest.fixture
def home(base_home, tmp_path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(base_home, dst)
    return dst


@pytest.fixture
def cfg(home):
    from pipeline.config import load_config

    return load_config(home=home)


def tree_bytes(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `root` (empty when it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def lake_bytes():
    """lake_bytes(home) -> {relative path: sha256} of everything in `<home>/lake`."""
    return lambda home: tree_bytes(Path(home) / "lake")


def _rewrite(path: Path, fn) -> None:
    import polars as pl

    df = fn(pl.read_parquet(path))
    path.unlink()
    df.write_parquet(path)


@pytest.fixture
def edit():
    """edit(landing, table, fn): replace a landing table by fn(polars frame).

    `table` is "users", "items" or a day "YYYY-MM-DD" (its part-0.parquet).
    """
    def _edit(landing: Path, table: str, fn) -> None:
        if table in ("users", "items"):
            _rewrite(Path(landing) / f"{table}.parquet", fn)
        else:
            _rewrite(Path(landing) / "impressions" / f"dt={table}" / "part-0.parquet", fn)
    return _edit
