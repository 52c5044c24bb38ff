"""Memory-mapped training arrays (pipeline.features.arrays): the same values as the Parquet columns, shuffling
by permutation, DDP shards, and training that gives the same weights as the in-memory path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CARDS, RUN_ID, SMALL, write_run

from pipeline import models
from pipeline.config import load_config
from pipeline.errors import FeatureError
from pipeline.features import arrays, dataset
from pipeline.training import fitting, gbdt, trainer

TASKS = ("ctr", "cvr", "ctcvr")
SEQ = [f"seq__item_{k:02d}" for k in range(3)]


def _with_sequence(run_dir, rows_per_group: int = 700) -> None:
    """Add `seq__item_00..02` (item vocabulary, 0 = padding) to every split, written in small row groups."""
    feats = run_dir / "features"
    spec = json.loads((feats / "feature_spec.json").read_text())
    spec["sequence"] = {"length": 3, "columns": SEQ, "vocab": {"item": "item_id"}}
    (feats / "feature_spec.json").write_text(json.dumps(spec))
    for path in feats.glob("*.parquet"):
        df = pl.read_parquet(path)
        rng = np.random.default_rng(len(df))
        df = df.with_columns(*[pl.Series(c, rng.integers(0, CARDS["item_id"], df.height).astype(np.int32))
                               for c in SEQ])
        df.write_parquet(path, row_group_size=rows_per_group)


def _assert_same(a: dataset.TensorData, b: dataset.TensorData) -> None:
    for f in ("cat", "num", "text", "seq", "labels", "mask"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), f


def test_arrays_equal_the_parquet_columns(tmp_path, monkeypatch):
    run = write_run(tmp_path, {"train": 2500, "valid": 300})
    _with_sequence(run)
    assert pq.ParquetFile(run / "features" / "train.parquet").num_row_groups == 4
    monkeypatch.setattr(arrays, "READ_ROWS", 512)  # several batches per row group, and batches across groups
    spec = dataset.read_spec(run)
    frame = pl.read_parquet(run / "features" / "train.parquet")
    mapped = arrays.open_split(run, "train", TASKS, spec, text_rows=40)
    assert isinstance(mapped.cat, np.memmap) and not mapped.cat.flags.writeable
    assert mapped.seq.dtype == np.int32 and mapped.seq.shape == (2500, 3)
    np.testing.assert_array_equal(mapped.cat, frame.select([c["column"] for c in spec["categorical"]]).to_numpy())
    np.testing.assert_array_equal(mapped.seq, frame.select(SEQ).to_numpy())
    old = dataset.load_split(run, "train", TASKS, spec)
    _assert_same(mapped.slice(0, len(mapped)), old)
    index = torch.tensor([3, 4, 511, 512, 700, 2499])
    _assert_same(mapped.take(index), old.take(index))
    mapped.release()  # pages leave this process's mapping, not the data
    _assert_same(mapped.take(index), old.take(index))
    assert [torch.equal(x, y) for x, y in zip(mapped.label_sums(chunk=999), old.label_sums())] == [True, True]
    assert mapped.slice(0, 8).batch()["seq"].shape == (8, 3)
    with pytest.raises(FeatureError, match="text index 39 beyond the text table"):
        arrays.open_split(run, "train", TASKS, spec, text_rows=39)


def test_arrays_are_reused_and_rebuilt_when_the_parquet_changes(tmp_path):
    run = write_run(tmp_path, {"train": 400, "valid": 100})
    folder = arrays.ensure_arrays(run, "train")
    first = (folder / "cat.npy").stat().st_mtime_ns
    assert arrays.ensure_arrays(run, "train") == folder and (folder / "cat.npy").stat().st_mtime_ns == first
    frame = pl.read_parquet(run / "features" / "train.parquet")
    frame.head(150).write_parquet(run / "features" / "train.parquet")
    assert len(arrays.open_split(run, "train", TASKS)) == 150
    assert not list(folder.parent.glob(".train.arrays*"))  # no temporary or aside folder left


@pytest.mark.parametrize(("column", "value", "message"), [
    ("cat__item_id", CARDS["item_id"], "column cat__item_id has 1 index.*outside \\[0, 120\\).*rows \\[250\\]"),
    ("num__price", float("nan"), "non-finite numeric features, e.g. rows \\[250\\]"),
    ("cat__surface", None, "null values in feature column cat__surface .*first at row 250"),
])
def test_bad_rows_are_named_and_leave_no_arrays(tmp_path, monkeypatch, column, value, message):
    run = write_run(tmp_path, {"train": 400, "valid": 100})
    monkeypatch.setattr(arrays, "READ_ROWS", 100)
    path = run / "features" / "train.parquet"
    df = pl.read_parquet(path).with_row_index("i")
    bad = pl.when(pl.col("i") == 250).then(pl.lit(value)).otherwise(pl.col(column)).cast(df.schema[column])
    df.with_columns(bad.alias(column)).drop("i").write_parquet(path)
    with pytest.raises(FeatureError, match=message):
        arrays.open_split(run, "train", TASKS)
    assert not any(p.name.startswith((".train.arrays", "train.arrays")) for p in path.parent.iterdir())


def test_a_permutation_epoch_visits_every_row_once():
    gen = torch.Generator().manual_seed(3)
    order = list(dataset.batch_order(1003, 100, gen))
    assert [len(b) for b in order] == [100] * 10 + [3]
    assert all(torch.equal(b, b.sort().values) for b in order)  # sorted within a batch
    assert torch.equal(torch.cat(order).sort().values, torch.arange(1003))
    again = list(dataset.batch_order(1003, 100, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a, b) for a, b in zip(order, again))
    assert sum(len(b) for b in dataset.batch_order(1003, 100, gen, drop_last=True)) == 1000


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_and_cover_every_row(world):
    seen = []
    for index in dataset.batch_order(1001, 64, torch.Generator().manual_seed(0)):
        parts = [trainer._shard(index, r, world) for r in range(world)]
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
        assert torch.equal(torch.cat(parts), index)  # contiguous parts of the global batch, in rank order
        seen.append(torch.cat(parts))
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(1001))


def _fit(cfg, train, valid):
    torch.manual_seed(cfg.train.seed)
    run = Path(cfg.home) / "runs" / RUN_ID
    model = models.build("mmoe", dataset.input_spec(run, dataset.read_spec(run), 4), cfg.model, ("ctr", "cvr"))
    s = trainer.make_setup(model, train, cfg.train, "uncertainty", torch.device("cpu"))
    fitting.fit(s, train, valid, cfg.train, "t")
    return s


def test_training_on_the_mapped_split_equals_the_in_memory_split(tmp_path):
    run = write_run(tmp_path, {"train": 1500, "valid": 400})
    cfg = load_config(None, [*SMALL, "train.epochs=2", "model.name=mmoe"], home=tmp_path)
    tasks = ("ctr", "cvr", "ctcvr")
    mem = [dataset.load_split(run, s, tasks) for s in ("train", "valid")]
    mapped = [arrays.open_split(run, s, tasks) for s in ("train", "valid")]
    a, b = _fit(cfg, *mem), _fit(cfg, *mapped)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["valid"] for r in a.history] == [r["valid"] for r in b.history]
    la = trainer.predict_logits(a.model, mem[1], torch.device("cpu"), batch_size=97)
    lb = trainer.predict_logits(a.model, mapped[1], torch.device("cpu"), batch_size=97)
    assert all(torch.equal(la[t], lb[t]) for t in la)


def test_gbdt_matrix_from_the_arrays_equals_the_frame(tmp_path):
    run = write_run(tmp_path, {"train": 900, "valid": 100})
    spec = dataset.read_spec(run)
    columns, cats = gbdt.feature_columns(spec, 1000)
    x, y = gbdt._split(run, "train", spec, "cvr", cats, chunk=128)
    frame = pl.read_parquet(run / "features" / "train.parquet").filter(pl.col("clicked") == 1)
    np.testing.assert_array_equal(x, gbdt.matrix(frame, columns, "frame"))
    np.testing.assert_array_equal(y, frame["purchased"].to_numpy().astype(np.float32))
    assert "cat__device_id" not in cats and os.path.isdir(arrays.arrays_dir(run, "train"))
