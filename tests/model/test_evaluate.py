"""evaluate() on a real tiny run (ingest -> validate -> features -> train MTL + baselines): the report agrees
with the saved predictions, each task uses its sample space, undefined metrics are null."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.data.schema import SURFACES, TASKS
from pipeline.evaluation import metrics

DATE = "2026-01-10"  # the last day of tiny_landing



@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_home, fast_overrides_session):
    home = tmp_path_factory.mktemp("evaluate") / "home"
    shutil.copytree(trained_home, home)
    cfg = load_config(overrides=list(fast_overrides_session), home=home)
    from pipeline.evaluation.evaluate import evaluate

    out = evaluate(cfg, DATE)
    return cfg, home / "runs" / DATE, json.loads(Path(out["report"]).read_text())


def test_report_covers_mtl_and_each_baseline(evaluated):
    report = evaluated[2]
    assert report["tasks"] == ["ctr", "cart", "ctcvr", "cvr"]
    assert set(report["models"]) == ({"mtl"} | {f"baseline_{t}" for t in report["tasks"]}
                                     | {f"gbdt_{t}" for t in report["tasks"]})
    for t in report["tasks"]:
        assert list(report["models"][f"baseline_{t}"]) == [t]
        assert list(report["models"][f"gbdt_{t}"]) == [t]
        assert set(report["models"]["mtl"][t]["by_surface"]) == set(SURFACES)
    assert report["comparison"]["champion"] is None  # nothing registered in this home
    assert set(report["gate"]) == {"passed", "reasons"}
    assert report["test"]["dates"] == [DATE]


def test_report_matches_saved_predictions_on_each_sample_space(evaluated):
    _, run_dir, report = evaluated
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    preds = pl.read_parquet(run_dir / report["predictions"]["mtl"])
    assert preds["event_id"].to_list() == test["event_id"].to_list()
    for task in report["tasks"]:
        spec = TASKS[task]
        rows = preds.filter(pl.col(spec.given) == 1) if spec.given else preds
        overall = report["models"]["mtl"][task]["overall"]
        assert overall["rows"] == rows.height
        assert overall["positives"] == int(rows[spec.label].sum())
        p = rows[f"p_{task}"].to_numpy()
        assert ((p >= 0) & (p <= 1)).all()
        ref = metrics.auc(rows[spec.label].to_numpy(), p)
        assert overall["auc"] == pytest.approx(ref, abs=1e-12)
        assert report["comparison"]["tasks"][task]["mtl"] == pytest.approx(ref, abs=1e-12)
        base = pl.read_parquet(run_dir / report["predictions"][f"baseline_{task}"])
        base = base.filter(pl.col(spec.given) == 1) if spec.given else base
        ref_b = metrics.auc(base[spec.label].to_numpy(), base[f"p_{task}"].to_numpy())
        assert report["comparison"]["tasks"][task]["baselines"][f"baseline_{task}"] == pytest.approx(ref_b, abs=1e-12)
    cvr_rows = report["models"]["mtl"]["cvr"]["overall"]["rows"]
    assert cvr_rows == int(test["clicked"].sum()) < test.height


def test_fused_score_follows_the_exponents(evaluated):
    _, run_dir, report = evaluated
    preds = pl.read_parquet(run_dir / report["predictions"]["mtl"])
    expected = preds["p_ctr"].to_numpy() * preds["p_cvr"].to_numpy()  # default: ctr^1 * cvr^1 * price^0
    assert np.allclose(preds["score"].to_numpy(), expected, rtol=1e-9)
    assert report["score_formula"] == "p_ctr^1 * p_cvr^1"


def test_a_test_day_without_clicks_reports_null_not_half(evaluated):
    """Zero clicks: every task's AUC is undefined; the report says null and the gate fails, no crash."""
    cfg, run_dir, _ = evaluated
    zero = run_dir.parent / "no-clicks"
    shutil.copytree(run_dir, zero)
    test = pl.read_parquet(zero / "features" / "test.parquet")
    test.with_columns([pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted", "purchased")]).write_parquet(
        zero / "features" / "test.parquet")
    from pipeline.evaluation.evaluate import evaluate

    report = json.loads(Path(evaluate(cfg, "no-clicks")["report"]).read_text())
    for task in report["tasks"]:
        overall = report["models"]["mtl"][task]["overall"]
        assert overall["auc"] is None and overall["gauc_user"] is None and overall["ndcg10"] is None
        assert report["comparison"]["tasks"][task]["mtl"] is None
    assert report["models"]["mtl"]["cvr"]["overall"]["rows"] == 0
    assert report["models"]["mtl"]["ctr"]["overall"]["logloss"] is not None  # defined on all-negative rows
    assert report["gate"]["passed"] is False
    assert any("undefined" in r for r in report["gate"]["reasons"])


def test_missing_model_is_a_named_error(evaluated, tmp_path):
    cfg, run_dir, _ = evaluated
    from pipeline.errors import MTLError
    from pipeline.evaluation.evaluate import evaluate

    broken = run_dir.parent / "no-model"
    shutil.copytree(run_dir, broken)
    shutil.rmtree(broken / "models" / "mtl")
    before = (broken / "evaluation.json").read_bytes()
    with pytest.raises(MTLError, match="no trained MTL model"):
        evaluate(cfg, "no-model")
    assert (broken / "evaluation.json").read_bytes() == before  # the earlier report is kept whole


def test_gbdt_baseline_goes_through_evaluation_and_plots(evaluated, tmp_path):
    """The LightGBM baselines are scored on the same rows and sample spaces, saved, and drawn."""
    from pipeline.evaluation.plots import make_plots
    from pipeline.training.gbdt import predict_gbdt

    _, run_dir, report = evaluated
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    for task in report["tasks"]:
        name = f"gbdt_{task}"
        saved = pl.read_parquet(run_dir / report["predictions"][name])
        assert saved["event_id"].to_list() == test["event_id"].to_list() and f"p_{task}" in saved.columns
        p = predict_gbdt(run_dir / "models" / name, test)[task]
        np.testing.assert_allclose(saved[f"p_{task}"].to_numpy(), p)
        given = TASKS[task].given
        m = np.ones(test.height, bool) if given is None else test[given].to_numpy() == 1
        ref = metrics.auc(test[TASKS[task].label].to_numpy()[m], p[m])
        assert report["models"][name][task]["overall"]["auc"] == pytest.approx(ref, abs=1e-12)
    out = make_plots(run_dir, report, tmp_path / "plots")
    assert {"roc.png", "calibration.png", "auc_bars.png"} <= {p.name for p in out.iterdir()}


def test_served_scoring_in_request_chunks_equals_one_call(evaluated):
    """Chunks of whole requests (here ~40 rows each) give every row the probabilities of one call over all."""
    from pipeline.evaluation.evaluate import group_codes, raw_test_rows, request_chunks, served_mtl

    cfg, run_dir, report = evaluated
    test = pl.read_parquet(run_dir / "features" / "test.parquet")
    raw = raw_test_rows(cfg, report["test"]["dates"], test)
    chunks = request_chunks(group_codes(raw, "request_id"), 40)
    assert len(chunks) > 3 and sorted(np.concatenate(chunks).tolist()) == list(range(raw.height))
    req = raw["request_id"].to_numpy()
    assert all(len(set(req[a]) & set(req[b])) == 0 for i, a in enumerate(chunks) for b in chunks[i + 1:])
    whole = served_mtl(cfg, run_dir, raw, DATE, chunk_rows=raw.height)
    chunked = served_mtl(cfg, run_dir, raw, DATE, chunk_rows=40)
    saved = pl.read_parquet(run_dir / report["predictions"]["mtl"])
    for task, p in whole.items():
        np.testing.assert_allclose(chunked[task], p, rtol=0, atol=1e-6)
        np.testing.assert_allclose(saved[f"p_{task}"].to_numpy(), p, rtol=0, atol=1e-6)
