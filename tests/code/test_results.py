"""What a person sees of a run: grouped metric names, epoch histories, the comparison table (both layouts of
evaluation.json's comparison), and progress bars that appear on a terminal only."""

from __future__ import annotations

import io

from pipeline import progress, results

IV = {"diff": 0.012, "lo": -0.003, "hi": 0.027, "resamples": 20}
OLD = {"tasks": ["ctr"], "comparison": {"champion": {"version": 3}, "order": ["ctr"], "tasks": {"ctr": {
    "mtl": 0.71, "baseline": 0.698, "champion": 0.70, "vs_baseline": IV, "vs_champion": IV}}}}
NEW = {"tasks": ["ctr"], "comparison": {"champion": None, "order": ["ctr"], "tasks": {"ctr": {
    "mtl": 0.71, "champion": None, "vs_champion": None, "baselines": {"baseline_ctr": 0.698, "gbdt_ctr": 0.705},
    "vs_baselines": {"baseline_ctr": IV, "gbdt_ctr": {**IV, "diff": 0.005}}}}}}


def test_comparison_reads_both_layouts():
    old, new = results.comparison_rows(OLD)[0], results.comparison_rows(NEW)[0]
    assert old["baselines"] == {"baseline_ctr": 0.698} and old["vs_baselines"]["baseline_ctr"] == IV
    assert new["baselines"] == {"baseline_ctr": 0.698, "gbdt_ctr": 0.705}
    assert results.compare_metrics(OLD) == {"compare/ctr/vs_baseline_ctr": 0.012, "compare/ctr/vs_champion": 0.012}
    assert results.compare_metrics(NEW) == {"compare/ctr/vs_baseline_ctr": 0.012, "compare/ctr/vs_gbdt_ctr": 0.005}
    table = results.comparison_table(NEW).splitlines()
    assert table[0].split()[:3] == ["task", "MTL", "AUC"] and len(table) == 3
    assert "gbdt_ctr" in table[2] and "+0.0050 [-0.0030, +0.0270]" in table[2]
    old_table = results.comparison_table(OLD, markdown=True)
    assert "| ctr | 0.7100 | champion v3 | 0.7000 | +0.0120 [-0.0030, +0.0270] |" in old_table


def test_metric_names_and_epoch_history():
    report = {"models": {"mtl": {"ctr": {"overall": {"auc": 0.7, "logloss": float("nan")},
                                         "by_surface": {"search": {"auc": 0.6}}}}}}
    assert results.model_test_metrics(report, "mtl") == {"test/ctr/auc": 0.7, "test/ctr/search/auc": 0.6}
    meta = {"epochs": [{"epoch": e, "metric": 0.5 + e / 10, "train_loss": {"ctr": 1.0 / e},
                        "valid": {"auc": {"ctr": 0.6 + e / 100}, "loss": {"ctr": 0.9}}} for e in (1, 2)]}
    hist = results.epoch_history(meta)
    assert ("valid/ctr/auc", 0.62, 2) in hist and ("train/ctr/loss", 1.0, 1) in hist
    assert sorted({s for _, _, s in hist}) == [1, 2] and len(hist) == 8


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("MTL_PROGRESS", raising=False)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)  # not a TTY, like an Airflow task log
    assert list(progress.bar(range(3), total=3, desc="x")) == [0, 1, 2] and err.getvalue() == ""
    monkeypatch.setenv("MTL_PROGRESS", "1")
    assert list(progress.bar(range(3), total=3, desc="epochs")) == [0, 1, 2]
    assert "epochs:" in err.getvalue() and "0/3" in err.getvalue()  # tqdm drew (and then cleared) a bar
