"""The train stage on the real upstream stages' output (generate -> ingest -> validate -> features)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.features.dataset import load_split
from pipeline.training.train import load_trained, predict, train_model


@pytest.fixture(scope="module")
def real_run(tiny_landing, tmp_path_factory):
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate
    from pipeline.features.build import build_features

    home = tmp_path_factory.mktemp("stage") / "home"
    cfg = load_config(None, ["text.enabled=false"], home=home)
    date = "2026-01-10"
    ingest(cfg, tiny_landing, date)
    validate(cfg, date)
    build_features(cfg, date)
    return home, date


@pytest.mark.parametrize("over", [["model.name=esmm", "train.weighting=pcgrad", "train.precision=bf16"],
                                  ["model.name=mmoe", "train.weighting=uncertainty", "train.adversarial=fgm",
                                   "train.embedding_l2=1e-4", "train.weight_decay=1e-5"]])
def test_mtl_and_baseline_train_on_real_features(real_run, fast_overrides, over):
    home, date = real_run
    cfg = load_config(None, fast_overrides + ["train.epochs=2", "train.lr=0.005", *over], home=home)
    res = train_model(cfg, date)
    model, _meta = load_trained(res["model_dir"])
    test = load_split(home / "runs" / date, "test", model.output_tasks)
    probs = predict(model, test)
    assert probs.shape == (len(test), 4) and np.isfinite(probs).all()
    assert res["valid"]["auc"]["ctr"] > 0.6  # the generator's click signal is learnable in 2 epochs
    base = train_model(cfg, date, name="baseline_ctcvr")
    assert base["name"] == "baseline_ctcvr" and set(base["valid"]["auc"]) == {"ctcvr"}
