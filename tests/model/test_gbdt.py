"""The LightGBM baseline (pipeline.training.gbdt) on the small feature run: real LightGBM, its own text model
format, categoricals as categoricals, each task on its sample space, named errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError, FeatureError, TrainingError
from pipeline.evaluation import metrics

RUN_ID = "2026-01-10"  # the run of the feature_run fixture (tests/model/conftest.py)
FAST_GBDT = ["gbdt.max_rounds=60", "gbdt.early_stopping_rounds=10", "gbdt.n_jobs=1", "gbdt.num_leaves=15",
             "gbdt.min_data_in_leaf=20"]


@pytest.fixture
def cfg(feature_run):
    return load_config(overrides=FAST_GBDT, home=feature_run)


def _splits(run_dir):
    return {s: pl.read_parquet(run_dir / "features" / f"{s}.parquet") for s in ("train", "valid", "test")}


def test_gbdt_learns_and_saves_lightgbm_text_with_categoricals(cfg, feature_run):
    import lightgbm as lgb

    from pipeline.training.gbdt import predict_gbdt
    from pipeline.training.train import train_model

    out = train_model(cfg, RUN_ID, name="gbdt_ctr")  # the same entry point as every other model
    model_dir = feature_run / "runs" / RUN_ID / "models" / "gbdt_ctr"
    assert out["model_dir"] == str(model_dir) and 1 <= out["best_epoch"] <= 60
    assert sorted(p.name for p in model_dir.iterdir()) == ["meta.json", "model.txt"]  # no pickle
    assert (model_dir / "model.txt").read_text().startswith("tree")
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["tasks"] == ["ctr"] and meta["params"]["num_threads"] == 1
    assert meta["categorical"] == [f"cat__{k}" for k in ("user_id", "item_id", "category", "surface")]
    assert "cat__device_id" not in meta["features"]  # 5000 ids > gbdt.max_cardinality: left to history
    assert "text__title" not in meta["features"]  # a row index into the text table, not a quantity
    few = load_config(overrides=[*FAST_GBDT, "gbdt.max_cardinality=200"], home=feature_run)
    from pipeline.training.gbdt import feature_columns

    spec = json.loads((feature_run / "runs" / RUN_ID / "features" / "feature_spec.json").read_text())
    cols, cats = feature_columns(spec, few.gbdt.max_cardinality)
    assert cats == ["cat__item_id", "cat__category", "cat__surface"] and "cat__user_id" not in cols
    # The ids are split as categories (decision "=="), not as ordered numbers.
    booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
    decisions = set()

    def walk(node):
        if "decision_type" in node:
            decisions.add((meta["features"][node["split_feature"]], node["decision_type"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    assert ("cat__user_id", "==") in decisions or ("cat__item_id", "==") in decisions, decisions
    assert not {d for f, d in decisions if f.startswith("cat__") and d != "=="}
    test = _splits(feature_run / "runs" / RUN_ID)["test"]
    p = predict_gbdt(model_dir, test)["ctr"]
    assert p.shape == (test.height,) and ((p > 0) & (p < 1)).all()
    assert metrics.auc(test["clicked"].to_numpy(), p) > 0.65  # the labels follow user x item affinity


def test_cvr_trains_on_clicked_rows_only(cfg, feature_run):
    from pipeline.training.gbdt import train_gbdt

    train_gbdt(cfg, RUN_ID, "cvr")
    meta = json.loads((feature_run / "runs" / RUN_ID / "models" / "gbdt_cvr" / "meta.json").read_text())
    train = _splits(feature_run / "runs" / RUN_ID)["train"]
    assert meta["train_rows"] == int(train["clicked"].sum()) < train.height


def test_early_stopping_keeps_the_best_valid_iteration(feature_run):
    import lightgbm as lgb

    from pipeline.training.gbdt import MODEL_FILE, matrix, train_gbdt

    cfg = load_config(overrides=[*FAST_GBDT, "gbdt.max_rounds=400", "gbdt.learning_rate=0.3"], home=feature_run)
    out = train_gbdt(cfg, RUN_ID, "ctr")
    model_dir = feature_run / "runs" / RUN_ID / "models" / "gbdt_ctr"
    meta = json.loads((model_dir / "meta.json").read_text())
    assert out["best_epoch"] < 400  # a high rate overfits 4000 rows fast: stopped early
    booster = lgb.Booster(model_file=str(model_dir / MODEL_FILE))
    assert booster.num_trees() == out["best_epoch"]  # saved cut at the best iteration
    valid = _splits(feature_run / "runs" / RUN_ID)["valid"]
    got = metrics.auc(valid["clicked"].to_numpy(), booster.predict(matrix(valid, meta["features"], "v")))
    assert got == pytest.approx(out["valid"]["auc"]["ctr"], abs=1e-6)


def test_bad_inputs_are_named_errors(cfg, feature_run):
    from pipeline.training.gbdt import predict_gbdt, train_gbdt

    run_dir = feature_run / "runs" / RUN_ID
    train_gbdt(cfg, RUN_ID, "ctr")
    test = _splits(run_dir)["test"].drop("cat__item_id")
    with pytest.raises(FeatureError, match="cat__item_id"):
        predict_gbdt(run_dir / "models" / "gbdt_ctr", test)
    with pytest.raises(TrainingError, match="no trained LightGBM model"):
        predict_gbdt(run_dir / "models" / "gbdt_cart", test)
    valid = _splits(run_dir)["valid"].with_columns(pl.lit(0, pl.Int8).alias("clicked"))
    valid.write_parquet(run_dir / "features" / "valid.parquet")
    with pytest.raises(TrainingError, match="valid split .* 0 positives"):
        train_gbdt(cfg, RUN_ID, "ctr")
    assert (run_dir / "models" / "gbdt_ctr" / "model.txt").is_file()  # the earlier model is not lost


@pytest.mark.parametrize("override, key", [("gbdt.n_jobs=0", "gbdt.n_jobs"),
                                           ("gbdt.learning_rate=0", "gbdt.learning_rate"),
                                           ("gbdt.feature_fraction=1.5", "gbdt.feature_fraction")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])


def test_run_trains_gbdt_per_task_unless_switched_off():
    from pipeline.run import model_names

    names = model_names(load_config())
    assert [n for n in names if n.startswith("gbdt_")] == ["gbdt_ctr", "gbdt_cart", "gbdt_ctcvr", "gbdt_cvr"]
    assert not any(n.startswith("gbdt_") for n in model_names(load_config(overrides=["train.gbdt_baselines=false"])))


def test_probabilities_match_lightgbm_on_the_same_rows(cfg, feature_run):
    """The evaluation's matrix is the training matrix: a raw LightGBM predict on numpy columns agrees."""
    import lightgbm as lgb

    from pipeline.training.gbdt import predict_gbdt, train_gbdt

    train_gbdt(cfg, RUN_ID, "cart")
    model_dir = feature_run / "runs" / RUN_ID / "models" / "gbdt_cart"
    meta = json.loads((model_dir / "meta.json").read_text())
    test = _splits(feature_run / "runs" / RUN_ID)["test"]
    x = np.column_stack([test[c].to_numpy().astype(np.float64) for c in meta["features"]])
    ref = lgb.Booster(model_file=str(model_dir / "model.txt")).predict(x)
    np.testing.assert_allclose(predict_gbdt(model_dir, test)["cart"], ref, rtol=1e-6)
