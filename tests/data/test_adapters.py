"""Real-data adapters: converted landing folders hold the source's funnel exactly and pass validation."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.data.adapters import import_dataset
from pipeline.data.ingest import ingest
from pipeline.data.validate import validate
from pipeline.errors import ConfigError, IngestError

# Vendored samples of the real data sets (tests/fixtures/README.md): the tests need nothing outside the repo.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HILLSTROM = FIXTURES / "hillstrom" / "hillstrom.csv"
ALI = FIXTURES / "ali-ccp"


def _impressions(landing: Path) -> pl.DataFrame:
    return pl.read_parquet(landing / "impressions" / "*" / "*.parquet", hive_partitioning=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_hillstrom_keeps_the_funnel_and_validates(tmp_path):
    out = import_dataset("hillstrom", HILLSTROM.parent, tmp_path / "hl")
    assert out["dates"][0] == "2008-03-01" and len(out["dates"]) == 14
    src = pl.read_csv(HILLSTROM, infer_schema_length=None)
    imp, users = _impressions(tmp_path / "hl"), pl.read_parquet(tmp_path / "hl" / "users.parquet")
    assert imp.height == users.height == src.height == 7000
    assert imp["clicked"].sum() == src["visit"].sum() and imp["purchased"].sum() == src["conversion"].sum()
    assert (imp["carted"] == imp["purchased"]).all() and "spend" not in imp.columns + users.columns
    per_day = imp.group_by("dt").len()["len"]
    assert per_day.max() - per_day.min() <= 1  # balanced spread
    assert imp["request_id"].n_unique() == 7000 and (imp["position"] == 0).all()
    joined = imp.join(users, on="user_id")
    assert set(joined.group_by("item_id").agg(pl.col("surface").first()).rows()) == {
        ("campaign-mens", "ad"), ("campaign-womens", "ad"), ("no-email", "recommend")}
    assert {"recency", "history", "channel", "newbie"} <= set(users.columns)
    cfg = load_config(home=tmp_path / "home", overrides=out["suggested_overrides"])
    assert {"recency", "history"} <= set(cfg.features.numeric) and not cfg.features.history
    assert ingest(cfg, out["landing"], out["dates"][-1])["staged"] == out["dates"]
    assert validate(cfg, out["dates"][-1])["published"] == out["dates"]


def test_hillstrom_is_deterministic(tmp_path):
    import_dataset("hillstrom", HILLSTROM, tmp_path / "a", days=3)
    import_dataset("hillstrom", HILLSTROM, tmp_path / "b", days=3)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_ali_ccp_splits_by_time_and_validates(tmp_path):
    out = import_dataset("ali-ccp", ALI, tmp_path / "ali")
    imp = _impressions(tmp_path / "ali")
    days = imp.group_by("dt").len().sort("dt")["len"].to_list()
    assert len(days) == 9 and sum(days[:7]) == 100 and days[7:] == [50, 50]  # train / val / test files
    src = pl.concat([pl.read_csv(p) for p in sorted(ALI.glob("*.csv"))])
    assert imp["clicked"].sum() == src["click"].sum() and imp["purchased"].sum() == src["purchase"].sum()
    assert imp.group_by("request_id").len()["len"].max() <= 20
    assert {"f508", "fD853", "f301"} <= set(imp.columns)
    items = pl.read_parquet(tmp_path / "ali" / "items.parquet")
    assert (items["title"].str.len_chars() > 0).all() and items["item_id"].n_unique() == items.height
    cfg = load_config(home=tmp_path / "home", overrides=out["suggested_overrides"])
    declared = set(cfg.features.categorical) | set(cfg.features.numeric)
    users = pl.read_parquet(tmp_path / "ali" / "users.parquet")
    assert declared <= set(imp.columns) | set(users.columns) | set(items.columns)  # every suggestion exists
    ingest(cfg, out["landing"], out["dates"][-1])
    assert validate(cfg, out["dates"][-1])["published"] == out["dates"]


def test_ali_ccp_single_file(tmp_path):
    out = import_dataset("ali-ccp", ALI / "ali_ccp_train_sample.csv", tmp_path / "one", days=4)
    assert _impressions(tmp_path / "one").height == 100 and len(out["dates"]) == 4


def test_bad_sources_are_named_and_keep_the_old_folder(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'criteo'"):
        import_dataset("criteo", tmp_path, tmp_path / "x")
    with pytest.raises(IngestError, match="source not found"):
        import_dataset("hillstrom", tmp_path / "none.csv", tmp_path / "x")
    bad = tmp_path / "bad.csv"
    bad.write_text("recency,segment\n1,Mens E-Mail\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(IngestError, match=r"missing column\(s\) \['visit', 'conversion'"):
        import_dataset("hillstrom", bad, out)
    assert _tree(out) == {"keep.txt": b"old"}
