"""Fixtures of the model tests: a small feature run written in the features stage's format
(docs/architecture.md), with labels that depend on the features so a model can learn them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

CARDS = {"user_id": 300, "item_id": 120, "category": 9, "surface": 4, "device_id": 5000}  # device_id: sparse table
TEXT_ROWS, TEXT_DIM = 40, 6
RUN_ID = "2026-01-10"


def feature_frame(n: int, seed: int) -> pl.DataFrame:
    """Funnel labels from a fixed latent model: click from user x item affinity, purchase mostly given click."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(0)
    user_taste = latent.normal(size=CARDS["user_id"])
    item_appeal = latent.normal(size=CARDS["item_id"])
    cols = {f"cat__{k}": rng.integers(1, v, n).astype(np.int32) for k, v in CARDS.items()}
    price = rng.normal(size=n).astype(np.float32)
    z = user_taste[cols["cat__user_id"]] + item_appeal[cols["cat__item_id"]] - 1.0
    clicked = rng.random(n) < 1 / (1 + np.exp(-z))
    buy = 1 / (1 + np.exp(-(item_appeal[cols["cat__item_id"]] - price - 0.5)))
    purchased = clicked & (rng.random(n) < buy)
    carted = clicked & ((rng.random(n) < 0.3) | purchased)
    return pl.DataFrame({
        "event_id": [f"e{seed}-{i}" for i in range(n)], **cols, "num__price": price,
        "text__title": rng.integers(0, TEXT_ROWS, n).astype(np.int32),
        "clicked": clicked.astype(np.int8), "carted": carted.astype(np.int8), "purchased": purchased.astype(np.int8),
    })


def write_run(home: Path, rows: dict[str, int], text: bool = True, seed: int = 0) -> Path:
    run_dir = home / "runs" / RUN_ID
    feats = run_dir / "features"
    (feats / "state").mkdir(parents=True)
    for i, (split, n) in enumerate(rows.items()):
        feature_frame(n, seed * 10 + i).write_parquet(feats / f"{split}.parquet")
    table = np.random.default_rng(1).normal(size=(TEXT_ROWS, TEXT_DIM)).astype(np.float32)
    table[0] = 0
    np.save(feats / "state" / "text_table.npy", table)
    spec = {
        "categorical": [{"name": k, "column": f"cat__{k}", "cardinality": v} for k, v in CARDS.items()],
        "numeric": ["num__price"],
        "text": {"enabled": text, "dim": TEXT_DIM, "columns": ["text__title"], "model": "test"},
        "tasks": ["ctr", "cart", "ctcvr", "cvr"], "splits": {s: {"rows": n} for s, n in rows.items()},
    }
    (feats / "feature_spec.json").write_text(json.dumps(spec))
    return run_dir


@pytest.fixture
def feature_run(tmp_path) -> Path:
    """home with runs/2026-01-10/features/{train,valid,test}.parquet (4000/1500/1500 rows) and the text table."""
    write_run(tmp_path, {"train": 4000, "valid": 1500, "test": 1500})
    return tmp_path


SMALL = ["train.epochs=2", "train.batch_size=256", "train.threads=1", "model.embedding_dim=4",
         "model.num_experts=3", "model.expert_hidden=[16]", "model.tower_hidden=[8]", "model.bottom_hidden=[16]",
         "text.proj_dim=4", "train.patience=5"]
