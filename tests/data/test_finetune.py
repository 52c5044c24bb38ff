"""text.finetune=contrastive: click pairs of the train window, MNRL, held-out recall@k, an encoder versioned with
the run's features (and so with the model bundle), reuse for text.finetune_every_days. Real MiniLM on CPU."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import TextConfig, load_config
from pipeline.features.build import build_features, transform
from pipeline.features.finetune import click_pairs, latest_encoder, mnrl_loss, recall_at_k, split_heldout
from pipeline.features.text import embed, encoder_key, load_encoder
from pipeline.paths import Layout

DAYS = ("2026-04-01", "2026-04-02", "2026-04-03", "2026-04-04", "2026-04-05")
TINY = ["data.train_days=2", "features.history=false", "text.finetune=contrastive", "text.finetune_pairs=48",
        "text.finetune_batch_size=8", "text.max_length=16", "text.finetune_lr=5e-5", "text.finetune_heldout=0.25",
        "text.finetune_recall_k=3"]


@pytest.fixture(scope="module")
def tail_landing(tmp_path_factory) -> Path:
    from pipeline.data.generate import generate

    out = tmp_path_factory.mktemp("tail") / "landing"
    generate(out, days=5, impressions_per_day=1800, users=120, items=80, seed=4, start_date=DAYS[0], long_tail=0.5)
    return out


def _lake(landing: Path, home: Path) -> Layout:
    lay = Layout.of(home)
    for day in sorted((landing / "impressions").glob("dt=*")):
        shutil.copytree(day, lay.impressions_dir(day.name[3:]))
    for name in ("users", "items"):
        lay.snapshot(name, DAYS[0]).parent.mkdir(parents=True)
        shutil.copy(landing / f"{name}.parquet", lay.snapshot(name, DAYS[0]))
    return lay


def _joint_run(tail_landing, tmp_path, fast_overrides):
    """(layout, config, train_model's result) of a tiny text.finetune=joint MTL model on one train day."""
    from pipeline.training.train import train_model

    lay = _lake(tail_landing, tmp_path / "home")
    over = [*[o for o in fast_overrides if not o.startswith("text.")], "data.train_days=1", "features.history=false",
            "text.finetune=joint", "text.finetune_layers=1", "text.max_length=12", "text.finetune_lr=1e-3",
            "train.batch_size=1024"]
    cfg = load_config(overrides=over, home=lay.home)
    build_features(cfg, DAYS[2])
    return lay, cfg, train_model(cfg, DAYS[2], "mtl")


def test_click_pairs_match_a_brute_force_reading():
    t0 = dt.datetime(2026, 4, 1, 10)
    rows = pl.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u1"],
        "ts": [t0, t0 + dt.timedelta(minutes=1), t0 + dt.timedelta(minutes=2), t0, t0 + dt.timedelta(minutes=5),
               t0 + dt.timedelta(days=1)],
        "query": ["red mug", None, "red mug", "lamp", None, None],
        "title": ["Ka red mug", "Zo blue mug", "Ka red mug", "Mi lamp", "Mi lamp", "Zo kettle"],
        "clicked": [1, 1, 1, 1, 0, 1],
    })
    pairs = click_pairs(rows, TextConfig(finetune_pairs=100))
    assert sorted(pairs["query"]) == [("lamp", "Mi lamp"), ("red mug", "Ka red mug")]  # deduplicated
    # same user, same day, consecutive clicks on different titles (u1's next-day click is another session)
    assert sorted(pairs["coclick"]) == [("Ka red mug", "Zo blue mug"), ("Zo blue mug", "Ka red mug")]
    assert pairs["negatives"] == {}  # no request_id / position: no hard negatives
    capped = click_pairs(rows, TextConfig(finetune_pairs=2, finetune_coclick_share=0.5))
    assert len(capped["query"]) + len(capped["coclick"]) == 2 and len(capped["coclick"]) == 1
    assert len(click_pairs(rows, TextConfig(finetune_pairs=2))["coclick"]) == 0  # default share 0.25: queries first
    only_co = click_pairs(rows.with_columns(pl.lit(None, pl.String).alias("query")), TextConfig(finetune_pairs=2))
    assert len(only_co["coclick"]) == 2  # no query pairs: co-clicks fill the cap


def test_hard_negative_is_the_highest_shown_unclicked_title_of_the_request():
    t0 = dt.datetime(2026, 4, 1, 10)
    rows = pl.DataFrame({
        "request_id": ["r1"] * 4 + ["r2"] * 3 + ["r3"] * 2,
        "position": [0, 1, 2, 3, 0, 1, 2, 0, 1],
        "user_id": ["u1"] * 4 + ["u2"] * 3 + ["u3"] * 2,
        "ts": [t0] * 9,
        "query": ["red mug"] * 4 + ["lamp"] * 3 + [None] * 2,
        "title": ["Ka red mug", "Zo blue mug", "Ka red mug", "Po green mug", "Mi lamp", "Mi lamp", "Zo lamp",
                  "A", "B"],
        "clicked": [0, 0, 1, 0, 1, 0, 0, 0, 1],
    })
    pairs = click_pairs(rows, TextConfig(finetune_pairs=100))
    # Brute force: per clicked search row, its request's unclicked titles by position, its own title left out
    # (r1's "Ka red mug" at 0 is the positive itself, shown twice; r2's "Mi lamp" at 1 likewise).
    want = {}
    for r in rows.filter((pl.col("clicked") == 1) & pl.col("query").is_not_null()).iter_rows(named=True):
        shown = rows.filter((pl.col("request_id") == r["request_id"]) & (pl.col("clicked") == 0)
                            & (pl.col("title") != r["title"])).sort("position")
        if shown.height:
            want[(r["query"], r["title"])] = shown["title"][0]
    assert want == {("red mug", "Ka red mug"): "Zo blue mug", ("lamp", "Mi lamp"): "Zo lamp"}
    assert pairs["negatives"] == want
    assert not click_pairs(rows, TextConfig(finetune_pairs=100, finetune_hard_negatives=False))["negatives"]


def test_heldout_split_keeps_an_anchor_on_one_side():
    pairs = [(f"q{i % 30}", f"t{i}") for i in range(300)]
    fit, held = split_heldout(pairs, 0.2)
    assert len(fit) + len(held) == 300 and 0 < len(held) < 150
    assert not {a for a, _ in fit} & {a for a, _ in held}


def test_recall_at_k_and_mnrl_match_brute_force():
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    for k in (1, 3, 12):
        brute = np.mean([sorted(range(12), key=lambda j: -(a[i] @ b[j])).index(i) < k for i in range(12)])
        assert recall_at_k(a, b, k) == pytest.approx(brute)
    ta, tb = torch.tensor(a), torch.tensor(b)
    manual = np.mean([-np.log(np.exp(20 * a[i] @ b[i]) / np.exp(20 * a[i] @ b.T).sum()) for i in range(12)])
    assert float(mnrl_loss(ta, tb)) == pytest.approx(manual, rel=1e-6)
    # Hard negatives: extra candidate rows after the positives, negatives of every anchor.
    c = np.concatenate([b, -b[:3]])
    manual = np.mean([-np.log(np.exp(20 * a[i] @ c[i]) / np.exp(20 * a[i] @ c.T).sum()) for i in range(12)])
    assert float(mnrl_loss(ta, torch.tensor(c))) == pytest.approx(manual, rel=1e-6)


def test_contrastive_encoder_is_fitted_versioned_stored_and_reused(tail_landing, tmp_path, capsys):
    import torch

    torch.set_num_threads(2)
    lay = _lake(tail_landing, tmp_path / "home")
    cfg = load_config(overrides=TINY, home=lay.home)
    build_features(cfg, DAYS[3])
    assert "fine-tune step" in capsys.readouterr().err
    state = lay.run_dir(DAYS[3]) / "features" / "state"
    info = json.loads((state / "encoder" / "encoder.json").read_text())
    assert (state / "encoder" / "model.safetensors").is_file() and (state / "encoder" / "tokenizer.json").is_file()
    assert info["base"] == "all-MiniLM-L6-v2" and info["trained_on"] == DAYS[3]
    assert info["pairs"]["train"] + info["pairs"]["heldout"] == 48 and info["pairs"]["heldout"] > 0
    assert 0 <= info["recall"]["frozen"] <= 1 and info["recall"]["gain"] == pytest.approx(
        info["recall"]["tuned"] - info["recall"]["frozen"])
    spec = json.loads((lay.run_dir(DAYS[3]) / "features" / "feature_spec.json").read_text())
    assert spec["text"]["finetune"] == "contrastive" and spec["text"]["encoder"]["version"] == info["version"]
    tuned_cfg = TextConfig(model=str(state / "encoder"), max_length=16)
    # Its vectors live in their own cache folder, never mixed with the frozen encoder's.
    meta = json.loads((state / "meta.json").read_text())["text"]
    assert meta["encoder_key"] == encoder_key(tuned_cfg) != encoder_key(TextConfig(max_length=16))
    assert (lay.text_cache / meta["encoder_key"]).is_dir()
    table = np.load(state / "text_table.npy")
    frozen = embed(["x"], TextConfig(max_length=16), load_encoder(TextConfig(max_length=16), device="cpu"), False)
    tuned = embed(["x"], tuned_cfg, load_encoder(tuned_cfg, device="cpu"), False)
    assert not np.allclose(frozen, tuned, atol=1e-4)  # the weights moved

    # The state folder alone (as copied into a model bundle) embeds an unseen text with the tuned encoder.
    bundle = tmp_path / "bundle_state"
    shutil.copytree(state, bundle)
    shutil.rmtree(lay.text_encoders)  # nothing outside the bundle is needed
    imp = pl.read_parquet(lay.impressions_dir(DAYS[4])).filter(pl.col("surface") == "search").head(3)
    raw = imp.join(pl.read_parquet(tail_landing / "users.parquet"), on="user_id").join(
        pl.read_parquet(tail_landing / "items.parquet"), on="item_id").with_columns(
        pl.lit("zzkettle brandnew frobnicator").alias("title"))
    frame = transform(raw, bundle)
    enc = load_encoder(TextConfig(model=str(bundle / "encoder"), max_length=16), device="cpu")
    t = embed(["zzkettle brandnew frobnicator"], tuned_cfg, enc, False)[0]
    q = embed(raw["query"].to_list(), tuned_cfg, enc, False)
    mean, std = json.loads((bundle / "meta.json").read_text())["stats"]["query_title_cos"]
    got = frame["num__query_title_cos"].to_numpy() * std + mean
    assert np.abs(got - q @ t).max() < 1e-4
    assert len(table) > 1


def test_encoder_is_reused_while_young_and_refitted_when_old(tail_landing, tmp_path, capsys):
    lay = _lake(tail_landing, tmp_path / "home")
    cfg = load_config(overrides=[*TINY, "text.finetune_every_days=1"], home=lay.home)
    build_features(cfg, DAYS[3])
    first = latest_encoder(lay.text_encoders, cfg.text, dt.date.fromisoformat(DAYS[3]))
    capsys.readouterr()
    build_features(cfg, DAYS[4])  # one day later: young enough
    assert "fine-tune step" not in capsys.readouterr().err
    assert latest_encoder(lay.text_encoders, cfg.text, dt.date.fromisoformat(DAYS[4])) == first
    # An encoder fitted on a later day is never used for an earlier run (no look-ahead).
    assert latest_encoder(lay.text_encoders, cfg.text, dt.date.fromisoformat(DAYS[2])) is None
    old = load_config(overrides=[*TINY, "text.finetune_every_days=0"], home=lay.home)
    build_features(old, DAYS[4], run_id="refit")
    assert "fine-tune step" in capsys.readouterr().err


def test_joint_step_trains_the_top_layers_at_their_own_rate_and_versions_the_encoder(tail_landing, tmp_path,
                                                                                   fast_overrides):
    """A tiny text.finetune=joint training on CPU: the top layer moves, lower ones do not, the encoder is saved
    with the model (safetensors + tokenizer) and the saved model predicts as the trained one did."""
    import torch
    from safetensors.torch import load_file

    from pipeline.features import dataset
    from pipeline.training import trainer
    from pipeline.training.train import load_trained, predict
    from pipeline.training.weighting import make_weighting

    lay, cfg, out = _joint_run(tail_landing, tmp_path, fast_overrides)
    model, meta = load_trained(out["model_dir"])
    enc = model.features.text_encoder
    assert enc is not None and meta["inputs"]["text_encoder"]["layers"] == 1
    _, base = load_encoder(TextConfig(), device="cpu")
    tuned, frozen = dict(enc.model.named_parameters()), dict(base.named_parameters())
    top = [n for n in tuned if n.startswith("encoder.layer.5.")]
    low = [n for n in tuned if n.startswith(("encoder.layer.0.", "embeddings."))]
    assert top and low
    assert any(not torch.equal(tuned[n], frozen[n]) for n in top)
    assert all(torch.equal(tuned[n], frozen[n]) for n in low)
    saved = Path(out["model_dir"]) / "encoder"
    weights = load_file(str(saved / "model.safetensors"))
    assert torch.equal(weights["encoder.layer.5.output.dense.weight"], tuned["encoder.layer.5.output.dense.weight"])
    assert (saved / "tokenizer.json").is_file() and json.loads((saved / "encoder.json").read_text())["joint"]
    # The encoder's own learning rate is its own optimiser group (set through model.param_groups()).
    groups = trainer.make_optimizers(model, make_weighting("fixed", 4, cfg.train, [], "cpu"),
                                     cfg.train)[-1].param_groups
    assert [g["lr"] for g in groups if g["params"][0] is tuned[top[0]]] == [1e-3]
    assert all(tuned[top[0]] is not p for g in groups if g["lr"] != 1e-3 for p in g["params"])
    # The saved model (model.pt: the token ids; encoder/: the transformer, its one copy) predicts as the trained one.
    valid = dataset.load_split(lay.run_dir(DAYS[2]), "valid", tuple(meta["tasks"]))
    p1 = predict(model, valid.slice(0, 300))
    p2 = predict(load_trained(out["model_dir"])[0], valid.slice(0, 300))
    assert np.allclose(p1, p2, atol=1e-6)


def test_joint_encoder_without_training_matches_the_frozen_table(tail_landing, tmp_path):
    import torch

    from pipeline.features import dataset
    from pipeline.features.finetune import joint_inputs
    from pipeline.models.text_tower import JointTextEncoder

    lay = _lake(tail_landing, tmp_path / "home")
    cfg = load_config(overrides=["data.train_days=1", "features.history=false", "text.finetune=joint",
                                 "text.max_length=12"], home=lay.home)
    build_features(cfg, DAYS[2])
    run = lay.run_dir(DAYS[2])
    inputs = joint_inputs(dataset.input_spec(run, dataset.read_spec(run), 16), run, cfg.text)
    enc = JointTextEncoder(inputs).eval()
    idx = torch.tensor([[0, 1], [2, 1], [len(inputs.text_table) - 1, 0]])
    with torch.no_grad():
        got = enc(idx).numpy()
    assert np.abs(got - inputs.text_table[idx.numpy()]).max() < 1e-4  # row 0 stays the zero vector


def test_card_says_which_encoder_and_on_which_pairs():
    from pipeline.evaluation.card import _text_line

    enc = {"base": "all-MiniLM-L6-v2", "version": "abc123", "trained_on": "2026-04-04",
           "pairs": {"query_click": 30, "coclick": 18, "train": 40, "heldout": 8},
           "recall": {"k": 3, "frozen": 0.5, "tuned": 0.75}}
    line = _text_line(load_config(overrides=["text.finetune=contrastive"]), {"text": {"encoder": enc}}, {})
    assert all(s in line for s in ("abc123", "2026-04-04", "30 (query, clicked title)", "18 co-click", "recall@3"))
    joint = {"inputs": {"text_encoder": {"base": "all-MiniLM-L6-v2", "layers": 2, "lr": 2e-5}}}
    assert "top 2 layer(s) trained jointly" in _text_line(load_config(overrides=["text.finetune=joint"]), {}, joint)
    assert "frozen" in _text_line(load_config(), {}, {})
    assert _text_line(load_config(overrides=["text.enabled=false"]), {}, {}) == "- text tower: off"


def test_joint_model_serves_new_texts_with_its_own_encoder_stored_once(tail_landing, tmp_path, fast_overrides):
    """A served row whose title the model never saw is scored with that title encoded by the model's own jointly
    trained encoder (reference: the saved encoder folder embedding the request's texts into a plain table, the
    frozen path), not with the zero row; the encoder's weights are stored once, in encoder/."""
    from types import SimpleNamespace

    import torch

    from pipeline.features.build import serve_features
    from pipeline.features.dataset import from_frame
    from pipeline.serving.pyfunc import MTLModel, build_bundle, serving_info
    from pipeline.serving.request import join_snapshots
    from pipeline.training.train import predict

    lay, cfg, out = _joint_run(tail_landing, tmp_path, fast_overrides)
    stored = torch.load(Path(out["model_dir"]) / "model.pt", weights_only=True)
    assert not [k for k in stored if ".text_encoder.model." in k] and "features.text_encoder.tokens" in stored
    bundle = build_bundle(lay.run_dir(DAYS[2]), tmp_path / "bundle", lay.snapshot("users", DAYS[0]),
                          lay.snapshot("items", DAYS[0]), serving_info(cfg, list(cfg.model.tasks)))
    served = MTLModel(history_from="", text_cache="")
    served.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))

    raw = pl.read_parquet(next(lay.impressions_dir(DAYS[3]).glob("*.parquet"))).head(40).drop(
        "clicked", "carted", "purchased")
    rows = join_snapshots(raw, served.users, served.items)
    new_title = pl.Series(["zqx hoverlamp"] * 3 + rows["title"].to_list()[3:])
    rows = rows.with_columns(new_title.alias("title"))
    got = served.predict(None, rows.to_pandas())
    # Reference: the same rows through the frozen-table path, the table embedded by the saved encoder folder.
    feats, table = serve_features(rows, bundle / "features" / "state", None, None)
    assert int(feats["text__title"][0]) >= served.joint.encoder.tokens.shape[1]  # a row past the stored ones
    tcfg = dataclasses.replace(served.joint.tcfg)
    encoder = load_encoder(tcfg, device="cpu", path=bundle / "models" / "mtl" / "encoder")
    ref_table = np.zeros_like(table)
    for col in ("title", "query"):
        for i, t in zip(feats[f"text__{col}"].to_list(), rows[col].to_list()):
            if i:
                ref_table[i] = embed([t], tcfg, encoder, progress=False)[0]
    data = from_frame(feats.with_columns(*[pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted", "purchased")]),
                      served.spec, tuple(served.meta["tasks"]))
    data.text_table = torch.from_numpy(ref_table)
    model = served.model
    joint, model.features.text_encoder = model.features.text_encoder, None
    try:
        want = predict(model, data)
        data.text_table = torch.from_numpy(np.where(np.arange(len(ref_table))[:, None] < joint.tokens.shape[1],
                                                    ref_table, 0.0).astype(np.float32))
        zero_row = predict(model, data)  # what serving gave before: the zero row for the new title
    finally:
        model.features.text_encoder = joint
    ctr = served.meta["tasks"].index("ctr")
    assert np.allclose(got["p_ctr"].to_numpy(), want[:, ctr], atol=1e-5)
    assert np.abs(got["p_ctr"].to_numpy()[:3] - zero_row[:3, ctr]).max() > 1e-4
