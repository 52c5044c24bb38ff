"""Reliability end to end: odd but legal test days, a rejected day, a killed feature writer, two
runs of one date at once. The data-only catalog is tests/data/test_bad_inputs.py; reruns of a date are in
test_end_to_end.py; training SIGKILL + resume is in tests/model/test_resume.py.

One module-scoped home gets a registered champion from a real run of 2026-01-09; each test works on a private
copy of it and runs 2026-01-10 (the test day) from a landing folder broken in one way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from e2e_helpers import copy_landing, tree_bytes

from pipeline.config import load_config
from pipeline.errors import ConcurrentRunError, DataValidationError

pytestmark = pytest.mark.slow
DAY, TEST_DAY = "2026-01-09", "2026-01-10"
NAME = "ecommerce-mtl"
TASKS = ("ctr", "cart", "ctcvr", "cvr")
# The real gate with a known outcome: without baselines, the first version (2026-01-09) has nothing to beat and
# becomes champion whatever a 1-epoch model learns; the gate itself is tested in test_gate.py / test_registry.py.
KNOWN_PASS = ("train.baselines=false", "train.gbdt_baselines=false")
REPO = Path(__file__).resolve().parents[2]


def registry_state(home: Path) -> dict:
    """Versions with their tags, and the aliases: equal dicts mean an unchanged registry."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    versions = {int(v.version): dict(v.tags) for v in client.search_model_versions(f"name='{NAME}'")}
    aliases = {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    return {"versions": versions, "aliases": aliases}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_landing, fast_overrides_session) -> tuple[Path, tuple[str, ...]]:
    """(home with version 1 = champion for 2026-01-09, overrides)."""
    from pipeline.run import run_all

    home = tmp_path_factory.mktemp("reliability") / "home"
    overrides = (*fast_overrides_session, *KNOWN_PASS)
    result = run_all(load_config(overrides=list(overrides), home=home), tiny_landing, DAY)
    assert result["promote"]["champion"] is True
    return home, overrides


@pytest.fixture
def home(base, tmp_path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(base[0], dst)
    return dst


def _edit(path: Path, fn) -> None:
    frame = fn(pl.read_parquet(path))
    path.unlink()
    frame.write_parquet(path)


def _day_file(landing: Path, day: str = TEST_DAY) -> Path:
    return min((landing / "impressions" / f"dt={day}").glob("*.parquet"))


def _run(home: Path, overrides, landing: Path, *extra: str) -> dict:
    from pipeline.run import run_all

    return run_all(load_config(overrides=[*overrides, *extra], home=home), landing, TEST_DAY)


def _check_predictions(run_dir: Path, names=("mtl", "champion")) -> None:
    for name in names:
        pred = pl.read_parquet(run_dir / "predictions" / f"{name}.parquet")
        for task in TASKS:
            col = pred[f"p_{task}"]
            assert col.null_count() == 0 and col.is_finite().all(), (name, task)
            assert 0.0 <= col.min() and col.max() <= 1.0, (name, task)
        if "score" in pred.columns:
            assert pred["score"].is_finite().all(), name


def test_day_without_clicks_reports_undefined_auc_and_keeps_the_champion(base, home, tiny_landing, tmp_path):
    landing = copy_landing(tiny_landing, tmp_path / "landing")
    _edit(
        _day_file(landing),
        lambda df: df.with_columns(pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted", "purchased")),
    )
    before = registry_state(home)
    with pytest.raises(DataValidationError, match="drift"):  # the default drift_action rejects such a day
        _run(home, base[1], landing)
    assert registry_state(home) == before
    result = _run(home, base[1], landing, "validation.drift_action=warn")
    run_dir = home / "runs" / TEST_DAY
    validation = json.loads((run_dir / "validation" / "validation.json").read_text())
    assert any("drift" in w["rule"] and w["column"] == "clicked" for w in validation["warnings"]), validation
    report = json.loads((run_dir / "evaluation.json").read_text())
    for model, tasks in report["models"].items():
        for task, metrics in tasks.items():
            assert metrics["overall"]["auc"] is None, (model, task)  # undefined, not 0.5
            assert metrics["overall"]["positives"] == 0
    assert report["models"]["mtl"]["cvr"]["overall"]["rows"] == 0  # no clicked rows: empty sample space
    assert report["gate"]["passed"] is False and any("undefined" in r for r in report["gate"]["reasons"])
    reg = result["register"]
    assert (reg["version"], reg["eligible"], reg["gate"]) == (2, False, "failed")
    assert result["promote"]["champion"] is False
    after = registry_state(home)
    assert after["aliases"] == {"champion": 1, "challenger": 2}
    assert after["versions"][1] == before["versions"][1]  # the champion's record is untouched
    assert after["versions"][2]["gate"] == "failed"


def _fresh_ids(landing: Path) -> None:
    """Every user and item of the test day is new: fresh ids, also added to the snapshots."""
    for table, key in (("users", "user_id"), ("items", "item_id")):
        _edit(
            landing / f"{table}.parquet",
            lambda df, key=key: pl.concat([df, df.with_columns(("new-" + pl.col(key)).alias(key))]),
        )
    _edit(
        _day_file(landing),
        lambda df: df.with_columns(
            ("new-" + pl.col("user_id")).alias("user_id"), ("new-" + pl.col("item_id")).alias("item_id")
        ),
    )


def test_cold_start_day_uses_the_reserved_index(base, home, tiny_landing, tmp_path):
    landing = copy_landing(tiny_landing, tmp_path / "landing")
    _fresh_ids(landing)
    result = _run(home, base[1], landing)
    run_dir = home / "runs" / TEST_DAY
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    assert test.height == 3000 and test["user_id"].str.starts_with("new-").all()
    assert (test["cat__user_id"] == 0).all() and (test["cat__item_id"] == 0).all()
    train = pl.read_parquet(run_dir / "features" / "train.parquet")
    assert (train["cat__user_id"] > 0).all()  # the new ids did not leak into the train vocabulary
    _check_predictions(run_dir)
    assert result["register"]["version"] == 2


def test_extreme_prices_succeed(base, home, tiny_landing, tmp_path):
    landing = copy_landing(tiny_landing, tmp_path / "landing")
    day_items = pl.read_parquet(_day_file(landing))["item_id"].unique().sort()
    cheap, dear = day_items[0], day_items[1]
    _edit(
        landing / "items.parquet",
        lambda df: df.with_columns(
            pl.when(pl.col("item_id") == cheap)
            .then(1e-6)
            .when(pl.col("item_id") == dear)
            .then(1e9)
            .otherwise(pl.col("price"))
            .alias("price")
        ),
    )
    result = _run(home, base[1], landing)
    run_dir = home / "runs" / TEST_DAY
    for split in ("train", "valid", "test"):
        frame = pl.read_parquet(run_dir / "features" / f"{split}.parquet")
        num = frame.select(pl.col("^num__.*$"))
        assert all(num[c].is_finite().all() for c in num.columns), split
    _check_predictions(run_dir)
    assert result["register"]["version"] == 2


def reuse_published_ids(landing: Path) -> list[str]:
    """Give the first 3 rows of TEST_DAY event ids already used on DAY (published before); returns those ids."""
    old = pl.read_parquet(_day_file(landing, DAY))["event_id"][:3].to_list()
    _edit(
        _day_file(landing),
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) < 3)
            .then(pl.Series(old + [None] * (df.height - 3)))
            .otherwise(pl.col("event_id"))
            .alias("event_id")
        ),
    )
    return old


def test_rejected_day_changes_neither_lake_nor_registry(base, home, tiny_landing, tmp_path):
    """Event ids already published for an earlier day: a cross-day rule, checked against the lake."""
    landing = copy_landing(tiny_landing, tmp_path / "landing")
    old = reuse_published_ids(landing)
    lake, registry = tree_bytes(home / "lake"), registry_state(home)
    with pytest.raises(DataValidationError, match="event_id") as err:
        _run(home, base[1], landing)
    assert any(i in str(err.value) for i in old)
    assert tree_bytes(home / "lake") == lake
    assert registry_state(home) == registry
    assert not (home / "runs" / TEST_DAY / "features").exists()


CHILD = """
import sys, time
from pipeline.features import state as feature_state
from pipeline.config import load_config
from pipeline.features.build import build_features

home, day, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
real_save = feature_state.FeatureState.save

def slow_save(self, path):
    # The split files are written into the temporary folder by now: hold here so the parent kills mid-write.
    print("writing state", flush=True)
    time.sleep(120)
    return real_save(self, path)

feature_state.FeatureState.save = slow_save
build_features(load_config(overrides=overrides, home=home), day)
"""


def _kill_mid_write(home: Path, overrides) -> list[str]:
    """Run build_features in a subprocess, SIGKILL it while it writes; returns what its temporary held."""
    run_dir = home / "runs" / TEST_DAY
    dead = set(run_dir.glob(".features.tmp-*"))  # an earlier killed writer's, left until it is stale
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), TEST_DAY, *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == "writing state", "the child died before writing"
        tmps = list(set(run_dir.glob(".features.tmp-*")) - dead)
        assert len(tmps) == 1, tmps
        held = sorted(p.name for p in tmps[0].iterdir())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return held


def test_killed_feature_writer_leaves_nothing_partial(base, home, tiny_landing):
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate
    from pipeline.features.build import build_features

    cfg = load_config(overrides=list(base[1]), home=home)
    ingest(cfg, tiny_landing, TEST_DAY)
    validate(cfg, TEST_DAY)
    features = home / "runs" / TEST_DAY / "features"
    held = _kill_mid_write(home, base[1])
    assert "test.parquet" in held and "state" not in held  # killed with split files written, no state yet
    assert not features.exists()  # nothing a later stage could take for a finished build
    result = build_features(cfg, TEST_DAY)  # the rerun succeeds
    assert {s: pl.read_parquet(features / f"{s}.parquet").height for s in result["rows"]} == result["rows"]
    first = tree_bytes(features)
    _kill_mid_write(home, base[1])  # a rebuild killed mid-way leaves the previous build as it was
    assert tree_bytes(features) == first
    assert json.loads((features / "feature_spec.json").read_text())["splits"]["test"]["rows"] == 3000


def test_second_run_of_a_locked_date_is_refused_before_any_write(base, home, tiny_landing):
    code = (
        "import sys, time; from pipeline.lock import run_lock\n"
        "with run_lock(sys.argv[1], sys.argv[2], owner='first-trigger'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(home), TEST_DAY], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert child.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ConcurrentRunError, match="first-trigger"):
            _run(home, base[1], tiny_landing)
        assert time.monotonic() - started < 10
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert not (home / "staging" / TEST_DAY).exists() and not (home / "runs" / TEST_DAY).exists()
