"""The train stage on a small feature run: learning, sample spaces, model files, selection on valid only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RUN_ID, SMALL

from pipeline.config import load_config
from pipeline.errors import ConfigError, FeatureError, TrainingError
from pipeline.evaluation.metrics import auc
from pipeline.features.dataset import load_split, read_spec
from pipeline.training.losses import masked_bce
from pipeline.training.train import load_trained, predict, train_model


def cfg_of(home, *extra):
    return load_config(None, SMALL + list(extra), home=home)


def test_mtl_learns_and_writes_a_loadable_model(feature_run):
    (feature_run / "runs" / RUN_ID / "features" / "test.parquet").unlink()  # the stage must never read test
    res = train_model(cfg_of(feature_run, "train.epochs=4", "train.lr=0.01"), RUN_ID)
    model_dir = feature_run / "runs" / RUN_ID / "models" / "mtl"
    assert res["model_dir"] == str(model_dir) and sorted(p.name for p in model_dir.iterdir()) == ["meta.json",
                                                                                                  "model.pt"]
    meta = json.loads((model_dir / "meta.json").read_text())
    curve = meta["loss_curves"]["ctr"]
    assert len(curve) == 4 and curve[-1] < curve[0]
    metrics = [row["metric"] for row in meta["epochs"]]
    assert meta["best_epoch"] == res["best_epoch"] == int(np.argmax(metrics)) + 1
    assert res["valid"]["auc"]["ctr"] > 0.65  # the fixture's click model is learnable from user and item ids
    model, meta2 = load_trained(model_dir)
    valid = load_split(feature_run / "runs" / RUN_ID, "valid", tuple(meta2["tasks"]))
    probs = predict(model, valid)
    assert probs.shape == (len(valid), 4) and ((probs >= 0) & (probs <= 1)).all()
    assert auc(valid.labels[:, 0].numpy(), probs[:, 0]) == pytest.approx(res["valid"]["auc"]["ctr"], abs=1e-5)


def test_baseline_trains_single_task_on_the_same_features(feature_run):
    res = train_model(cfg_of(feature_run, "train.epochs=1"), RUN_ID, name="baseline_cvr")
    _model, meta = load_trained(res["model_dir"])
    assert meta["model"] == "single_task" and meta["tasks"] == ["cvr"] and meta["inputs"]["text_columns"]
    with pytest.raises(ConfigError, match="baseline_<task>"):
        train_model(cfg_of(feature_run), RUN_ID, name="baseline_nope")


def test_cvr_loss_ignores_labels_of_unclicked_rows(feature_run):
    run_dir = feature_run / "runs" / RUN_ID
    data = load_split(run_dir, "train", ("ctr", "cvr")).slice(0, 512)
    assert torch.equal(data.mask[:, 1], data.labels[:, 0])  # cvr sample space = clicked rows
    from pipeline.features.dataset import input_spec
    from pipeline.models import build

    model = build("mmoe", input_spec(run_dir, read_spec(run_dir), 4), cfg_of(feature_run).model, ("ctr", "cvr"))

    def cvr_grad(labels):
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks in both passes
        loss = masked_bce(model(data.batch()), labels, data.mask, ("cvr",), data.tasks)
        loss.sum().backward()
        return [p.grad.to_dense().clone() for p in model.parameters() if p.grad is not None]

    flipped = data.labels.clone()
    unclicked = data.mask[:, 1] == 0
    flipped[unclicked, 1] = 1 - flipped[unclicked, 1]
    assert unclicked.sum() > 100
    for a, b in zip(cvr_grad(data.labels), cvr_grad(flipped)):
        assert torch.equal(a, b)
    clicked = ~unclicked
    flipped[clicked, 1] = 1 - flipped[clicked, 1]  # control: labels of clicked rows do move it
    assert any(not torch.equal(a, b) for a, b in zip(cvr_grad(data.labels), cvr_grad(flipped)))


def test_bad_feature_index_is_a_named_error_and_nothing_is_written(feature_run):
    import polars as pl

    path = feature_run / "runs" / RUN_ID / "features" / "train.parquet"
    df = pl.read_parquet(path)
    df.with_columns(pl.when(pl.int_range(df.height) == 3).then(999).otherwise(pl.col("cat__category"))
                    .cast(pl.Int32).alias("cat__category")).write_parquet(path)
    with pytest.raises(FeatureError, match=r"cat__category .*outside \[0, 9\).*rows \[3\]"):
        train_model(cfg_of(feature_run), RUN_ID)
    assert not (feature_run / "runs" / RUN_ID / "models").exists()


def test_a_task_without_rows_in_its_sample_space_is_refused(feature_run):
    import polars as pl

    path = feature_run / "runs" / RUN_ID / "features" / "train.parquet"
    pl.read_parquet(path).with_columns(pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted", "purchased")) \
        .write_parquet(path)
    with pytest.raises(TrainingError, match="no rows for task"):
        train_model(cfg_of(feature_run, "model.tasks=[cvr]", "model.name=mmoe"), RUN_ID)


def test_checkpoint_and_model_load_refuse_pickled_objects(feature_run, tmp_path):
    res = train_model(cfg_of(feature_run, "train.epochs=1"), RUN_ID)
    model_file = tmp_path / "m"
    import shutil

    shutil.copytree(res["model_dir"], model_file)
    torch.save({"x": np.dtype("float64"), "payload": FeatureError("pickled")}, model_file / "model.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_trained(model_file)
