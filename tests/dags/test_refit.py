"""train.refit on a real tiny run: the epoch count is selected on valid, a fresh model retrains on train + valid
for that many epochs, and that refit model is what is evaluated as served, gated and registered; the evaluation
also reports the model as selected (mtl_selected) on the same test rows, and the card says what was refit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.config import load_config
from pipeline.data.schema import TASKS
from pipeline.evaluation import metrics
from pipeline.evaluation.evaluate import task_mask

DATE = "2026-01-10"  # the last day of tiny_landing
NAME = "ecommerce-mtl"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def refit_home(tmp_path_factory, trained_home, fast_overrides_session):
    """A copy of the trained home whose MTL model of DATE is retrained with train.refit, then evaluated."""
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.train import train_model

    home = tmp_path_factory.mktemp("refit") / "home"
    shutil.copytree(trained_home, home)
    cfg = load_config(overrides=[*fast_overrides_session, "train.refit=true", "train.epochs=2"], home=home)
    result = train_model(cfg, DATE, "mtl")
    report = json.loads(Path(evaluate(cfg, DATE)["report"]).read_text())
    return cfg, home / "runs" / DATE, result, report


def _test_probs(run_dir: Path, name: str) -> np.ndarray:
    from pipeline.features.dataset import from_frame, read_spec
    from pipeline.training.train import load_trained, predict

    model, meta = load_trained(run_dir / "models" / name)
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    return predict(model, from_frame(test, read_spec(run_dir), tuple(meta["tasks"]))), meta


def test_refit_model_is_new_weights_trained_on_train_and_valid_for_the_selected_epochs(refit_home):
    _, run_dir, result, _ = refit_home
    models = run_dir / "models"
    refit = torch.load(models / "mtl" / "model.pt", weights_only=True)
    selected = torch.load(models / "mtl_selected" / "model.pt", weights_only=True)
    assert refit.keys() == selected.keys()
    assert any(not torch.equal(refit[k], selected[k]) for k in refit)
    meta = json.loads((models / "mtl" / "meta.json").read_text())
    spec = json.loads((run_dir / "features" / "feature_spec.json").read_text())
    splits = spec["splits"]
    assert meta["refit"]["epochs"] == result["best_epoch"] == meta["best_epoch"]
    # up to the latest epoch any part of the selected model came from (per-task best towers may be later)
    assert len(meta["refit"]["train_loss"]) == max([result["best_epoch"], *meta["refit"]["towers"].values()])
    assert meta["refit"]["towers"] == meta["per_task_best"]
    assert meta["refit"]["train_dates"] == [*splits["train"]["dates"], *splits["valid"]["dates"]]
    assert DATE not in meta["refit"]["train_dates"]  # the test day is in neither window
    assert meta["train_rows"] == splits["train"]["rows"] + splits["valid"]["rows"]
    sel_meta = json.loads((models / "mtl_selected" / "meta.json").read_text())
    assert sel_meta["train_rows"] == splits["train"]["rows"] and "refit" not in sel_meta
    assert not (run_dir / "checkpoints" / "mtl").exists()  # both phases' checkpoints are gone


def test_evaluation_serves_the_refit_model_and_reports_the_selected_one(refit_home):
    _, run_dir, _, report = refit_home
    refit, meta = _test_probs(run_dir, "mtl")
    selected, _ = _test_probs(run_dir, "mtl_selected")
    served = pl.read_parquet(run_dir / report["predictions"]["mtl"])
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    for j, task in enumerate(meta["tasks"]):
        # what serves (the pyfunc over the run's bundle, from raw rows) is the refit model ...
        assert np.allclose(served[f"p_{task}"].to_numpy(), refit[:, j], atol=1e-5)
        assert not np.allclose(refit[:, j], selected[:, j], atol=1e-4)
        # ... and the selected model's test metrics are reported beside it, on the task's sample space
        m = task_mask(test, task)
        want = metrics.auc(test[TASKS[task].label].to_numpy()[m].astype(float), selected[m, j].astype(float))
        got = report["models"]["mtl_selected"][task]["overall"]["auc"]
        assert got == pytest.approx(want, abs=1e-6)
        # the gate judges the registered (refit) model
        assert report["comparison"]["tasks"][task]["mtl"] == pytest.approx(
            report["models"]["mtl"][task]["overall"]["auc"], abs=1e-9)
    assert "mtl_selected" not in {n for row in report["comparison"]["tasks"].values() for n in row["baselines"]}


def test_registered_version_scores_with_the_refit_weights_and_its_card_says_so(refit_home):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.evaluation.evaluate import raw_test_rows
    from pipeline.registry import promote
    from pipeline.release import register

    cfg, run_dir, result, report = refit_home
    out = register(cfg, run_id=DATE)
    promote(cfg, out["version"], why="test set-up", who="tests")
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    served = pl.read_parquet(run_dir / report["predictions"]["mtl"])
    got = model.predict(raw_test_rows(cfg, [DATE], served).to_pandas())
    refit, meta = _test_probs(run_dir, "mtl")
    for j, task in enumerate(meta["tasks"]):
        assert np.allclose(got[f"p_{task}"].to_numpy(), refit[:, j], atol=1e-5)
    uri = f"sqlite:///{Path(cfg.home).resolve() / 'mlflow.db'}"
    card = MlflowClient(uri, uri).get_model_version(NAME, out["version"]).description
    dates = meta["refit"]["train_dates"]
    assert f"refit: {result['best_epoch']} epoch(s)" in card and f"{dates[0]} .. {dates[-1]}" in card
