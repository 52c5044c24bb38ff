"""Early-stopping metrics: mean_auc, weighted_auc (by sqrt of valid positives), auc:<task>."""

from __future__ import annotations

import math

import pytest

from pipeline.training.trainer import stop_metric

RESULT = {"auc": {"ctr": 0.70, "cvr": 0.60, "cart": float("nan")}, "loss": {"ctr": 0.3, "cvr": 0.5},
          "positives": {"ctr": 400.0, "cvr": 16.0, "cart": 0.0}}


def test_weighted_auc_weights_tasks_by_the_square_root_of_their_positives():
    assert stop_metric(RESULT, "mean_auc") == pytest.approx(0.65)
    assert stop_metric(RESULT, "weighted_auc") == pytest.approx((20 * 0.70 + 4 * 0.60) / 24)
    assert stop_metric(RESULT, "auc:cvr") == pytest.approx(0.60)
    undefined = {"auc": {"ctr": math.nan}, "loss": {"ctr": 0.3, "cvr": 0.5}, "positives": {"ctr": 0.0}}
    assert stop_metric(undefined, "weighted_auc") == pytest.approx(-0.4)  # no AUC: minus the mean loss


def test_the_config_accepts_weighted_auc_and_names_the_key_otherwise():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    assert load_config(overrides=["train.early_stop_metric=weighted_auc"]).train.early_stop_metric == "weighted_auc"
    with pytest.raises(ConfigError, match="train.early_stop_metric"):
        load_config(overrides=["train.early_stop_metric=median_auc"])
