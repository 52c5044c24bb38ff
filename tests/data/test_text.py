"""The text tower's feature side with the real offline MiniLM: pooling, cache across runs, features, serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import TextConfig, load_config
from pipeline.errors import FeatureError
from pipeline.features.build import build_features, transform
from pipeline.features.text import TextTable, embed, encoder_key, load_encoder
from pipeline.paths import Layout

TCFG = TextConfig(batch_size=4, max_length=32, max_chars=40)
TEXTS = ["red leather wallet", "wireless headphones with a very long name that goes on", "mug", "blue mug",
         "sneakers", "vintage camera strap", "a", "organic cotton scarf in navy"]
LAST = "2026-02-03"


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.set_num_threads(1)
    return load_encoder(TCFG, device="cpu")


def test_batched_mean_pooling_matches_one_text_at_a_time(encoder):
    """Padding in a batch must not change a vector: compare with each text alone (no padding at all)."""
    import torch

    tok, model = encoder
    got = embed(TEXTS, TCFG, encoder, progress=False)
    for i, text in enumerate(TEXTS):
        enc = tok([text[:TCFG.max_chars]], truncation=True, max_length=TCFG.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]  # [L, H]
        ref = hidden.mean(0)
        ref = (ref / ref.norm()).numpy()
        assert np.abs(got[i] - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert got.shape == (len(TEXTS), model.config.hidden_size)
    # Similar texts are closer than unrelated ones.
    assert got[2] @ got[3] > got[2] @ got[4]


def test_cache_embeds_each_text_once_across_runs(encoder, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = TextTable.empty(384)
    first.add(TEXTS[:5], TCFG, cache, encoder)
    assert "embedded 5/5" in capsys.readouterr().err
    second = TextTable.empty(384)
    second.add(TEXTS, TCFG, cache, encoder)  # a later night: 3 new texts
    assert "embedded 3/3" in capsys.readouterr().err
    third = TextTable.empty(384)
    third.add(TEXTS[::-1], TCFG, cache, encoder)
    assert "embedded" not in capsys.readouterr().err
    assert len(list(cache.glob("shard-*.npz"))) == 2
    rows1, rows3 = first.index(TEXTS[:5], TCFG.max_chars), third.index(TEXTS[:5], TCFG.max_chars)
    assert np.array_equal(first.vecs[rows1], third.vecs[rows3])
    assert not third.vecs[0].any() and third.vecs.shape == (len(TEXTS) + 1, 384)


def test_texts_are_cut_to_max_chars_before_hashing(encoder, tmp_path):
    table = TextTable.empty(384)
    long_a, long_b = "x" * 40 + " one ending", "x" * 40 + " another ending"
    table.add([long_a, long_b], TCFG, None, encoder)
    assert len(table.vecs) == 2
    idx = table.index([long_a, long_b, None, ""], TCFG.max_chars)
    assert idx.tolist() == [1, 1, 0, 0]


def test_encoder_key_depends_on_model_and_length():
    assert encoder_key(TCFG) == encoder_key(TextConfig(max_length=32, batch_size=1))
    assert encoder_key(TCFG) != encoder_key(TextConfig(max_length=64))
    assert encoder_key(TCFG) != encoder_key(TextConfig(model="/models/other", max_length=32))


def test_unloadable_model_is_a_named_error(tmp_path):
    with pytest.raises(FeatureError, match="text.model="):
        load_encoder(TextConfig(model=str(tmp_path)))


def _lake(landing: Path, home: Path) -> Layout:
    lay = Layout.of(home)
    for day in sorted((landing / "impressions").glob("dt=*")):
        shutil.copytree(day, lay.impressions_dir(day.name[3:]))
    for name in ("users", "items"):
        lay.snapshot(name, LAST).parent.mkdir(parents=True)
        shutil.copy(landing / f"{name}.parquet", lay.snapshot(name, LAST))
    return lay


def test_text_features_end_to_end(small_landing, tmp_path, capsys):
    lay = _lake(small_landing, tmp_path / "home")
    over = ["data.train_days=1", "text.finetune=joint", "features.history_windows=[1]"]
    cfg = load_config(overrides=over, home=lay.home)
    build_features(cfg, LAST)
    assert "embedded" in capsys.readouterr().err
    feat = lay.run_dir(LAST) / "features"
    test, table = pl.read_parquet(feat / "test.parquet"), np.load(feat / "state" / "text_table.npy")
    spec = pl.read_json(feat / "feature_spec.json").to_dicts()[0]
    assert spec["text"]["enabled"] and spec["text"]["dim"] == 384 and spec["text"]["n_texts"] == len(table)
    assert (test["text__title"] > 0).all() and test["text__title"].max() < len(table)
    search = test["surface"] == "search"
    assert ((test["text__query"] > 0) == search).all()
    # The cosine feature is the dot product of the two table rows (0 without a query), standardised.
    mean, std = pl.read_json(feat / "state" / "meta.json").to_dicts()[0]["stats"]["query_title_cos"]
    raw_cos = test["num__query_title_cos"].to_numpy().astype(np.float64) * std + mean
    t, q = test["text__title"].to_numpy(), test["text__query"].to_numpy()
    want = np.where(q > 0, np.einsum("ij,ij->i", table[t], table[q]), 0.0)
    assert np.abs(raw_cos - want).max() < 1e-4
    tokens = np.load(feat / "state" / "text_tokens.npy")  # for text.finetune=joint: ids and mask per table row
    assert tokens.shape == (2, len(table), 32) and not tokens[1, 0].any() and tokens[1, 1:, 0].all()

    build_features(cfg, LAST, run_id="second-night")  # warm cache: nothing is embedded again
    assert "embedded" not in capsys.readouterr().err
    assert np.array_equal(np.load(lay.run_dir("second-night") / "features/state/text_table.npy"), table)


def test_serving_embeds_texts_missing_from_the_table(small_landing, tmp_path, encoder, capsys):
    lay = _lake(small_landing, tmp_path / "home")
    cfg = load_config(overrides=["data.train_days=1", "features.history=false"], home=lay.home)
    build_features(cfg, LAST)
    state = lay.run_dir(LAST) / "features" / "state"
    stored = np.load(state / "text_table.npy")
    imp = pl.read_parquet(lay.impressions_dir(LAST)).head(4)
    raw = imp.join(pl.read_parquet(small_landing / "users.parquet"), on="user_id").join(
        pl.read_parquet(small_landing / "items.parquet"), on="item_id")
    raw = raw.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("brand new gadget never seen"))
                           .otherwise(pl.col("title")).alias("title"))
    capsys.readouterr()
    frame = transform(raw, state)
    assert "embedded 1/1" in capsys.readouterr().err  # the new title was embedded for its cosine feature
    # Indices stay inside the stored table (what a trained model holds): the new title gets row 0.
    assert frame["text__title"][0] == 0 and frame["text__title"].max() < len(stored)
    ref = embed(["brand new gadget never seen"], TextConfig(), encoder, progress=False)[0]
    if frame["text__query"][0] > 0:  # a search row: its cosine uses the new title's own vector
        meta = pl.read_json(state / "meta.json").to_dicts()[0]["stats"]["query_title_cos"]
        cos = frame["num__query_title_cos"][0] * meta[1] + meta[0]
        assert abs(cos - float(stored[frame["text__query"][0]] @ ref)) < 1e-4


def test_cache_merges_many_shards_without_losing_entries(tmp_path):
    from pipeline.features.text import TextCache

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 4)).astype(np.float32)
    cache = TextCache.open(tmp_path)
    for i in range(40):  # one shard per text; text 0 written twice
        cache.add([i], vecs[i:i + 1])
    cache.add([0], vecs[0:1])
    merged = TextCache.open(tmp_path)
    assert len(list(tmp_path.glob("shard-*.npz"))) == 1 and len(merged.rows) == 40
    pos, got = TextCache.open(tmp_path).get(list(range(39, -1, -1)))
    assert pos == list(range(40)) and np.array_equal(got, vecs[::-1])
