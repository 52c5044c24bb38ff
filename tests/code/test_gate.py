"""The gate is a pure function of a comparison and GateConfig: every rule, and compare() on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import GateConfig, load_config
from pipeline.errors import ConfigError
from pipeline.evaluation import gate
from pipeline.evaluation.metrics import auc

CFG = GateConfig(champion_margin=0.01, max_baseline_regression=0.02, bootstrap=50)
TASKS4 = ["ctr", "cart", "ctcvr", "cvr"]


def iv(diff, lo, hi):
    return {"diff": diff, "lo": lo, "hi": hi, "resamples": 50}


def row(mtl, baselines=None, champion=None, vs_champion=None):
    """baselines: {name: (auc, interval)}."""
    baselines = baselines or {}
    return {"mtl": mtl, "champion": champion, "vs_champion": vs_champion,
            "baselines": {n: a for n, (a, _) in baselines.items()},
            "vs_baselines": {n: v for n, (_, v) in baselines.items()}}


def comparison(tasks, champion=None, error=None, date="2026-01-10"):
    return {"champion": champion, "champion_error": error, "tasks": tasks, "order": list(tasks),
            "challenger": {"data_date": date, "tasks": list(tasks)}}


def champ(version=3, date="2026-01-09", tasks=("ctr",)):
    return {"version": version, "run_id": date, "data_date": date, "tasks": list(tasks)}


def failed(decision, prefix):
    return [r for r in decision.reasons if r.startswith(prefix) and r.endswith("FAIL")]


def test_first_version_passes_when_every_baseline_interval_holds():
    ok = row(0.70, {"baseline_ctr": (0.705, iv(-0.005, -0.015, 0.006)), "gbdt_ctr": (0.69, iv(0.01, 0.0, 0.02))})
    d = gate.decide(comparison({"ctr": ok}), CFG)
    assert d.passed, d.reasons
    assert any("first version" in r for r in d.reasons)
    # One line per baseline, with the sign convention challenger - reference.
    line = next(r for r in d.reasons if r.startswith("ctr vs baseline_ctr"))
    assert "0.7000 - 0.7050 = -0.0050 [-0.0150, +0.0060]" in line and "lower bound >= -0.0200 ok" in line


def test_every_baseline_counts_dnn_and_gbdt():
    bad_gbdt = row(0.70, {"baseline_ctr": (0.69, iv(0.01, 0.0, 0.02)), "gbdt_ctr": (0.74, iv(-0.04, -0.06, -0.02))})
    d = gate.decide(comparison({"ctr": bad_gbdt}), CFG)
    assert not d.passed and [r[:15] for r in failed(d, "ctr vs")] == ["ctr vs gbdt_ctr"]


def test_the_lower_bound_decides_not_the_point_estimate():
    # Point estimate within the threshold, but the interval reaches further down: fails.
    wide = row(0.70, {"baseline_ctr": (0.71, iv(-0.01, -0.05, 0.03))})
    assert not gate.decide(comparison({"ctr": wide}), CFG).passed
    # Without an interval (bootstrap 0) the point estimate is the bound, and the line says so.
    point = row(0.70, {"baseline_ctr": (0.71, iv(-0.01, math.nan, math.nan))})
    d = gate.decide(comparison({"ctr": point}), CFG)
    assert d.passed and "point estimate (no interval" in d.reasons[-1]


def test_non_inferiority_to_the_champion_on_every_task_it_serves():
    info = champ(tasks=("ctr", "cvr"))
    good = {"ctr": row(0.71, champion=0.70, vs_champion=iv(0.01, -0.005, 0.02)),
            "cvr": row(0.66, champion=0.65, vs_champion=iv(0.01, -0.009, 0.03))}
    d = gate.decide(comparison(good, info), CFG)
    assert d.passed, d.reasons
    assert "cvr vs champion v3: AUC 0.6600 - 0.6500 = +0.0100 [-0.0090, +0.0300]" in " ".join(d.reasons)
    worse = dict(good, cvr=row(0.64, champion=0.65, vs_champion=iv(-0.01, -0.03, 0.01)))
    d = gate.decide(comparison(worse, info), CFG)
    assert not d.passed and len(failed(d, "cvr vs champion v3")) == 1
    assert gate.decide(comparison(worse, info), GateConfig(champion_margin=0.05)).passed


def test_require_improvement_needs_one_task_significantly_better():
    info = champ(tasks=("ctr", "cvr"))
    same = {"ctr": row(0.70, champion=0.70, vs_champion=iv(0.0, -0.005, 0.005)),
            "cvr": row(0.65, champion=0.65, vs_champion=iv(0.0, -0.008, 0.008))}
    strict = GateConfig(champion_margin=0.01, require_improvement=True)
    assert gate.decide(comparison(same, info), CFG).passed
    d = gate.decide(comparison(same, info), strict)
    assert not d.passed and failed(d, "improvement")
    better = dict(same, ctr=row(0.73, champion=0.70, vs_champion=iv(0.03, 0.01, 0.05)))
    d = gate.decide(comparison(better, info), strict)
    assert d.passed and any(r.startswith("improvement") and "ctr significantly better" in r for r in d.reasons)


def test_a_challenger_lacking_a_task_the_champion_serves_is_never_champion():
    """The direct check of the issue: a ctr-only challenger at +0.0001 replaced a 4-task champion."""
    ctr_only = {"ctr": row(0.7001, champion=0.70, vs_champion=iv(0.0001, 0.00005, 0.0002))}
    d = gate.decide(comparison(ctr_only, champ(tasks=TASKS4)), CFG)
    assert not d.passed
    (line,) = failed(d, "coverage")
    assert "lacks cart, ctcvr, cvr" in line and "mtl promote" in line


def test_a_backfill_or_a_rerun_of_the_champions_day_never_moves_it():
    better = {"ctr": row(0.80, champion=0.70, vs_champion=iv(0.1, 0.08, 0.12))}
    for date in ("2026-01-08", "2026-01-09"):  # older than the champion's data date, and the same day
        d = gate.decide(comparison(better, champ(date="2026-01-09"), date=date), CFG)
        assert not d.passed and failed(d, f"data date {date} vs champion v3's 2026-01-09"), d.reasons
    assert gate.decide(comparison(better, champ(date="2026-01-09"), date="2026-01-10"), CFG).passed


def test_undefined_auc_fails_and_missing_pieces_do_not_block():
    assert not gate.decide(comparison({"ctr": row(math.nan)}), CFG).passed
    assert not gate.decide(comparison({"ctr": row(None)}), CFG).passed
    # No baseline trained and a champion with no defined AUC on this task: nothing to compare on it.
    d = gate.decide(comparison({"ctr": row(0.6, champion=math.nan, vs_champion=iv(math.nan, math.nan, math.nan))},
                               champ()), CFG)
    assert d.passed and any("not compared" in r for r in d.reasons)
    assert not gate.decide(comparison({}), CFG).passed


def test_unreachable_champion_fails_the_gate():
    d = gate.decide(comparison({"ctr": row(0.9)}, error="RegistryError: down"), CFG)
    assert not d.passed and "could not be re-scored" in d.reasons[0]


def test_seesaw_lists_each_baseline_beyond_the_interval():
    tasks = {"ctr": row(0.7, {"baseline_ctr": (0.72, iv(-0.02, -0.03, -0.01)), "gbdt_ctr": (0.7, iv(0, -0.01, 0.01))}),
             "cvr": row(0.6, {"baseline_cvr": (0.61, iv(-0.01, -0.03, 0.01))})}
    assert [(s["task"], s["baseline"]) for s in gate.seesaw(comparison(tasks))] == [("ctr", "baseline_ctr")]


def test_compare_builds_paired_seeded_intervals():
    rng = np.random.default_rng(0)
    n = 600
    req = np.repeat(np.arange(60), 10)
    y = (rng.random(n) < 0.3).astype(float)
    good = y + rng.normal(0, 0.7, n)
    weak = y + rng.normal(0, 2.0, n)
    args = ({"ctr": y}, {"ctr": req}, {"ctr": good}, {"ctr": {"baseline_ctr": weak, "gbdt_ctr": good}},
            {"ctr": weak}, {"version": 1, "data_date": "2026-01-09", "tasks": ["ctr"]}, CFG)
    out = gate.compare(*args, data_date="2026-01-10")
    r = out["tasks"]["ctr"]
    assert r["mtl"] == auc(y, good) and r["baselines"] == {"baseline_ctr": auc(y, weak), "gbdt_ctr": auc(y, good)}
    vs = r["vs_baselines"]["baseline_ctr"]
    assert vs["diff"] == pytest.approx(r["mtl"] - r["baselines"]["baseline_ctr"])  # challenger - reference
    assert vs["lo"] <= vs["diff"] <= vs["hi"] and vs["lo"] > 0  # a clearly better model
    # Paired: the same request draws for both sides, so a model against itself has a zero-width interval.
    assert r["vs_baselines"]["gbdt_ctr"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "resamples": 50}
    assert r["vs_champion"] == vs  # same seed for every reference of a task
    assert out == gate.compare(*args, data_date="2026-01-10")  # fixed seeds: reruns give the same interval
    assert out["challenger"] == {"data_date": "2026-01-10", "tasks": ["ctr"]}
    assert gate.decide(out, CFG).passed


def test_removed_gate_keys_name_their_replacement():
    with pytest.raises(ConfigError, match=r"gate\.min_champion_delta' was removed: use gate\.champion_margin"):
        load_config(overrides=["gate.min_champion_delta=0.0"])
    with pytest.raises(ConfigError, match=r"gate\.require_significance' was removed: use gate\.require_improvement"):
        load_config(overrides=["gate.require_significance=true"])
    with pytest.raises(ConfigError, match="gate.champion_margin"):
        load_config(overrides=["gate.champion_margin=-0.1"])
