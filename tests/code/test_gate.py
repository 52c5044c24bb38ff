"""The gate is a pure function of a comparison and GateConfig: every rule, and compare() on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import GateConfig
from pipeline.evaluation import gate
from pipeline.evaluation.metrics import auc

CFG = GateConfig(min_champion_delta=0.0, max_baseline_regression=0.01, bootstrap=50)


def row(mtl, baseline=None, champion=None):
    return {"mtl": mtl, "baseline": baseline, "champion": champion, "vs_baseline": None, "vs_champion": None}


def comparison(tasks, champion=None, error=None):
    return {"champion": champion, "champion_error": error, "tasks": tasks}


def test_first_version_passes_when_it_holds_against_baselines():
    d = gate.decide(comparison({"ctr": row(0.70, 0.705), "cvr": row(0.65, 0.60)}), CFG)
    assert d.passed
    assert any("first version" in r for r in d.reasons)


def test_first_version_fails_on_a_baseline_regression_beyond_the_threshold():
    d = gate.decide(comparison({"ctr": row(0.70, 0.72), "cvr": row(0.65, 0.60)}), CFG)
    assert not d.passed
    assert any(r.startswith("ctr:") and "FAIL" in r for r in d.reasons)
    assert not any(r.startswith("cvr:") and "FAIL" in r for r in d.reasons)


def test_a_regression_within_the_bootstrap_interval_is_noise_not_a_failure():
    noisy = row(0.70, 0.72)
    noisy["vs_baseline"] = {"diff": -0.02, "lo": -0.05, "hi": 0.01, "resamples": 50}
    d = gate.decide(comparison({"ctr": noisy}), CFG)
    assert d.passed and "within noise" in d.reasons[-1]
    real = dict(noisy, vs_baseline={"diff": -0.02, "lo": -0.03, "hi": -0.011, "resamples": 50})
    assert not gate.decide(comparison({"ctr": real}), CFG).passed
    point_only = GateConfig(max_baseline_regression=0.01, require_significance=False)
    assert not gate.decide(comparison({"ctr": noisy}), point_only).passed


def test_champion_must_be_matched_on_every_task():
    champ = {"version": 3}
    ok = gate.decide(comparison({"ctr": row(0.71, 0.70, 0.70), "cvr": row(0.66, 0.6, 0.65)}, champ), CFG)
    assert ok.passed
    bad = gate.decide(comparison({"ctr": row(0.71, 0.70, 0.70), "cvr": row(0.64, 0.6, 0.65)}, champ), CFG)
    assert not bad.passed and any(r.startswith("cvr:") and "champion" in r and "FAIL" in r for r in bad.reasons)
    strict = GateConfig(min_champion_delta=0.02, max_baseline_regression=0.01)
    assert not gate.decide(comparison({"ctr": row(0.71, 0.70, 0.70)}, champ), strict).passed


def test_undefined_auc_fails_and_missing_pieces_do_not_block():
    assert not gate.decide(comparison({"ctr": row(math.nan, math.nan)}), CFG).passed
    assert not gate.decide(comparison({"ctr": row(None)}), CFG).passed
    # No baseline trained and a champion without this task: nothing to compare, so nothing fails.
    d = gate.decide(comparison({"cart": row(0.6, None, None)}, {"version": 1}), CFG)
    assert d.passed and any("not compared" in r for r in d.reasons)
    assert not gate.decide(comparison({}), CFG).passed


def test_unreachable_champion_fails_the_gate():
    d = gate.decide(comparison({"ctr": row(0.9, 0.5)}, error="RegistryError: down"), CFG)
    assert not d.passed and "could not be re-scored" in d.reasons[0]


def test_seesaw_lists_only_regressions_beyond_the_interval():
    tasks = {"ctr": row(0.7, 0.72), "cvr": row(0.6, 0.61), "cart": row(0.8, 0.7)}
    tasks["ctr"]["vs_baseline"] = {"diff": -0.02, "lo": -0.03, "hi": -0.01}
    tasks["cvr"]["vs_baseline"] = {"diff": -0.01, "lo": -0.03, "hi": 0.01}
    tasks["cart"]["vs_baseline"] = {"diff": 0.1, "lo": 0.05, "hi": 0.15}
    assert [s["task"] for s in gate.seesaw(comparison(tasks))] == ["ctr"]


def test_compare_builds_aucs_and_intervals():
    rng = np.random.default_rng(0)
    n = 600
    req = np.repeat(np.arange(60), 10)
    y = (rng.random(n) < 0.3).astype(float)
    good = y + rng.normal(0, 0.7, n)
    weak = y + rng.normal(0, 2.0, n)
    out = gate.compare({"ctr": y}, {"ctr": req}, {"ctr": good}, {"ctr": weak}, None, None, CFG)
    r = out["tasks"]["ctr"]
    assert r["mtl"] == auc(y, good) and r["baseline"] == auc(y, weak)
    vs = r["vs_baseline"]
    assert vs["diff"] == pytest.approx(r["mtl"] - r["baseline"])
    assert vs["lo"] <= vs["diff"] <= vs["hi"] and vs["lo"] > 0  # a clearly better model
    assert r["champion"] is None and out["champion"] is None
    again = gate.compare({"ctr": y}, {"ctr": req}, {"ctr": good}, {"ctr": weak}, None, None, CFG)
    assert again == out  # fixed seeds: reruns give the same interval
    assert gate.decide(out, CFG).passed
