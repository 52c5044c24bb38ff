"""model.id_dropout: the reserved unknown index 0 of id-like features is trained, so a new id gets a learned row."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.models.layers import ID_MIN_ROWS

RUN_ID = "2026-01-10"  # the run of the feature_run fixture (tests/model/conftest.py)
SMALL = ["train.epochs=2", "train.batch_size=256", "train.threads=1", "model.embedding_dim=4",
         "model.num_experts=3", "model.expert_hidden=[16]", "model.tower_hidden=[8]", "model.bottom_hidden=[16]",
         "text.proj_dim=4", "train.patience=5"]


def _unknown_rows(model) -> dict[str, torch.Tensor]:
    """Embedding row of index 0 for every categorical feature, by name."""
    f = model.features
    out = {}
    for table, cols, offsets in ((f.embedding, f.big_cols, f.big_offsets),
                                 (f.small_embedding, f.small_cols, f.small_offsets)):
        if table is None:
            continue
        for j, off in zip(cols.tolist(), offsets.tolist()):
            out[j] = table.weight[off].detach().clone()
    return out


def _train(feature_run, p: float):
    from pipeline import models
    from pipeline.features import dataset
    from pipeline.training.train import load_trained, train_model

    cfg = load_config(overrides=[*SMALL, f"model.id_dropout={p}"], home=feature_run)
    run_dir = feature_run / "runs" / RUN_ID
    spec = dataset.read_spec(run_dir)
    inputs = dataset.input_spec(run_dir, spec, cfg.text.proj_dim)
    torch.manual_seed(cfg.train.seed)  # the same seed train_model uses: the same initial rows
    initial = _unknown_rows(models.build("mmoe", inputs, cfg.model, cfg.model.tasks))
    train_model(cfg, RUN_ID, "mtl")
    model, _ = load_trained(run_dir / "models" / "mtl")
    return inputs, initial, _unknown_rows(model), model


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_unknown_row_is_trained_only_with_id_dropout(feature_run, p):
    inputs, initial, trained, _ = _train(feature_run, p)
    ids = [j for j, c in enumerate(inputs.cardinalities) if c >= ID_MIN_ROWS]
    others = [j for j in range(len(inputs.cardinalities)) if j not in ids]
    assert ids and others  # user_id, item_id, device_id are id-like; category, surface are not
    for j in ids:
        moved = not torch.allclose(initial[j], trained[j])
        # The fixture never holds index 0, so without id dropout nothing ever reaches that row.
        assert moved == (p > 0), (inputs.cat_names[j], p)
    for j in others:
        assert torch.allclose(initial[j], trained[j]), inputs.cat_names[j]
