"""Target attention over the behaviour sequence: padding gets weight 0 and cannot change the output, the weights
match a brute-force softmax, every architecture takes the sequence through the shared input, and a run with
sequences trains, evaluates through the served path and scores end to end."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import MODEL_NAMES, ModelConfig
from pipeline.features.dataset import InputSpec
from pipeline.models import build
from pipeline.models.layers import TargetAttention

MCFG = ModelConfig(embedding_dim=4, num_experts=3, expert_hidden=(8,), tower_hidden=(4,), bottom_hidden=(8,),
                   ple_levels=2, shared_experts=2, task_experts=1, dropout=0.0, id_dropout=0.0)
SEQ = ("seq__item_id_00", "seq__item_id_01", "seq__item_id_02")


def test_padding_gets_zero_weight_and_cannot_change_the_output():
    torch.manual_seed(0)
    att = TargetAttention(4)
    seq, cand = torch.randn(3, 5, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = att(seq, cand, mask)
    w = att.last_weights
    assert out.shape == (3, 4)
    assert (w[~mask] == 0).all() and torch.allclose(w[:2].sum(1), torch.ones(2))
    assert (out[2] == 0).all()  # no click at all: the pooled vector is zero
    other = seq.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    assert torch.equal(att(other, cand, mask), out)


def test_weights_match_a_brute_force_softmax():
    torch.manual_seed(1)
    att = TargetAttention(3, hidden=5)
    seq, cand = torch.randn(2, 4, 3), torch.randn(2, 3)
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = att(seq, cand, mask)
    for b in range(2):
        with torch.no_grad():
            scores = {s: float(att.mlp(torch.cat([seq[b, s], cand[b], seq[b, s] - cand[b], seq[b, s] * cand[b]])))
                      for s in range(4) if mask[b, s]}
        z = sum(math.exp(v) for v in scores.values())
        pooled = sum(math.exp(v) / z * seq[b, s] for s, v in scores.items())
        assert torch.allclose(out[b], pooled, atol=1e-5)


def _spec(items: int, fields: tuple[str, ...]) -> InputSpec:
    cols = tuple(f"seq__{f}_{k:02d}" for f in fields for k in range(3))
    return InputSpec(("user_id", "item_id", "category"), (50, items, 6), ("num__x",), seq_columns=cols,
                     seq_vocabs=fields)


def _batch(items: int, fields: tuple[str, ...], n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, 50, (n,), generator=g), torch.randint(1, items, (n,), generator=g),
                       torch.randint(1, 6, (n,), generator=g)], 1)
    blocks = [torch.randint(1, items if f == "item_id" else 6, (n, 3), generator=g) for f in fields]
    seq = torch.cat(blocks, 1)
    seq[:, [2, 5][:len(fields)]] = 0  # the last position is padding in every field
    seq[0] = 0  # a user without clicks
    return {"cat": cat, "num": torch.randn(n, 1, generator=g), "seq": seq}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("items", [30, 5000])  # the item table dense (small) or sparse (large)
@pytest.mark.parametrize("fields", [("item_id",), ("item_id", "category")])
def test_every_architecture_pools_the_sequence(name, items, fields):
    torch.manual_seed(0)
    tasks = ("cvr",) if name == "single_task" else ("ctr", "cvr")
    model = build(name, _spec(items, fields), MCFG, tasks).eval()
    batch = _batch(items, fields)
    d = 4 * len(fields)
    assert model.features.out_dim == 3 * 4 + 1 + d
    out = model(batch)
    assert all(out[t].shape == (8,) and torch.isfinite(out[t]).all() for t in tasks)
    changed = dict(batch, seq=batch["seq"].clone())
    changed["seq"][1:, 0] = (changed["seq"][1:, 0] % (items - 1)) + 1  # other clicked items
    pooled = slice(model.features.out_dim - d, None)  # the shared input's last G*D columns
    before, after = model.features(batch)[:, pooled], model.features(changed)[:, pooled]
    assert (before[1:] != after[1:]).any(1).all() and (before[0] == 0).all()
    assert (model.features.attention.last_weights[:, 2] == 0).all()  # the padded position
    # The clicked items are looked up in the candidate's own table: their rows get gradients there.
    model.train()
    sum(v.sum() for v in model(batch).values()).backward()
    table = model.features.embedding if items >= 4096 else model.features.small_embedding
    grad = table.weight.grad.to_dense() if table.weight.grad.is_sparse else table.weight.grad
    offset = model.features.seq_fields[0][2]
    clicked = int(batch["seq"][1, 1]) + offset
    assert grad[clicked].abs().sum() > 0


def test_a_click_with_an_unknown_item_but_a_known_category_is_not_padding():
    torch.manual_seed(0)
    fields = ("item_id", "category")
    model = build("mmoe", _spec(30, fields), MCFG, ("ctr",)).eval()
    batch = _batch(30, fields)
    batch["seq"][1, 0] = 0  # item unknown at position 0, its category (column 3) still known
    model(batch)
    assert model.features.attention.last_weights[1, 0] > 0


@pytest.mark.slow
def test_a_run_with_sequences_trains_evaluates_and_scores(tiny_landing, tmp_path, fast_overrides):
    """run_all (dry run: no registry) with features.sequence_length: the model carries the sequence input, the
    evaluation scores it through the served path (fresh lake days), and that equals the model on the stored
    test features (the training path's sequence columns)."""
    import json

    import numpy as np
    import polars as pl

    from pipeline.config import load_config
    from pipeline.features.dataset import from_frame, read_spec
    from pipeline.run import run_all
    from pipeline.training.train import load_trained, predict

    home = tmp_path / "home"
    cfg = load_config(overrides=[*fast_overrides, "dry_run=true", "features.sequence_length=4",
                                 "features.sequence_fields=[item_id, category]", "train.baselines=false", "train.gbdt_baselines=false"], home=home)
    day = "2026-01-10"
    run_all(cfg, tiny_landing, day)
    run = home / "runs" / day
    meta = json.loads((run / "models" / "mtl" / "meta.json").read_text())
    assert meta["inputs"]["seq_columns"] == [f"seq__{f}_{k:02d}" for f in ("item_id", "category") for k in range(4)]
    report = json.loads((run / "evaluation.json").read_text())
    assert 0.5 < report["models"]["mtl"]["ctr"]["overall"]["auc"] <= 1.0
    served = pl.read_parquet(run / "predictions" / "mtl.parquet")
    test = pl.read_parquet(run / "features" / "test.parquet")
    assert test["seq__item_id_00"].gt(0).any()
    model, meta = load_trained(run / "models" / "mtl")
    data = from_frame(test, read_spec(run), tuple(meta["tasks"]))
    assert data.seq is not None and data.seq.shape == (test.height, 8)
    stored = predict(model, data)[:, meta["tasks"].index("ctr")]
    assert served["event_id"].equals(test["event_id"])
    np.testing.assert_allclose(served["p_ctr"].to_numpy(), stored, atol=1e-5)
