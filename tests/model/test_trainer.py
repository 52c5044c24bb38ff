"""One trainer for every architecture and weighting; regularisers; gate diagnostics."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RUN_ID, SMALL

from pipeline.config import MODEL_NAMES, WEIGHTINGS, TrainConfig, load_config
from pipeline.features.dataset import input_spec, load_split, read_spec
from pipeline.models import build
from pipeline.training import trainer
from pipeline.training.diagnostics import gate_diagnostics
from pipeline.training.train import load_trained, predict, train_model

ALL = ("ctr", "cart", "ctcvr", "cvr")


def _setup(run, name="mmoe", tasks=ALL, **train):
    run_dir = run / "runs" / RUN_ID
    # No id dropout here: these tests follow exactly which embedding rows a step reads and moves.
    cfg = load_config(None, [*SMALL, "model.id_dropout=0"], home=run)
    model = build(name, input_spec(run_dir, read_spec(run_dir), 4), cfg.model, tasks)
    data = load_split(run_dir, "train", model.output_tasks)
    tcfg = TrainConfig(**{"batch_size": 256, **train})
    return trainer.make_setup(model, data, tcfg, tcfg.weighting, torch.device("cpu")), data, tcfg


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "single_task"])
def test_every_architecture_trains_through_the_stage(feature_run, name):
    res = train_model(load_config(None, SMALL + [f"model.name={name}", "train.epochs=1"], home=feature_run), RUN_ID)
    model, meta = load_trained(res["model_dir"])
    assert meta["model"] == name and tuple(meta["tasks"]) == ALL
    assert all(0.3 < v < 1.0 for v in res["valid"]["auc"].values())
    valid = load_split(feature_run / "runs" / RUN_ID, "valid", model.output_tasks)
    assert predict(model, valid).shape == (len(valid), 4)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_weighting_trains_and_logs_its_weights(feature_run, weighting):
    over = SMALL + [f"train.weighting={weighting}", "train.epochs=3"]
    res = train_model(load_config(None, over, home=feature_run), RUN_ID)
    meta = json.loads((Path(res["model_dir"]) / "meta.json").read_text())
    weights = [row["weights"] for row in meta["epochs"]]
    assert all(set(w) == set(ALL) and all(math.isfinite(x) and x > 0 for x in w.values()) for w in weights)
    if weighting in ("uncertainty", "gradnorm", "dwa"):
        assert weights[-1] != weights[0]  # adaptive methods move


def test_trainer_has_no_per_architecture_branches():
    src = "".join((Path(trainer.__file__).parent / f).read_text() for f in ("trainer.py", "train.py", "losses.py",
                                                                            "weighting.py"))
    arch = [n for n in MODEL_NAMES if n != "single_task"]
    assert not re.search(r"isinstance\([^)]*(Model|MMoE|ESMM|PLE)", src)
    assert not [n for n in arch if re.search(rf"\b{n}\b", src)]


def test_embedding_penalty_is_the_batch_rows_squared_norm(feature_run):
    s, data, _ = _setup(feature_run)
    batch = data.slice(0, 64)
    s.model(batch.batch())
    brute = 0.0
    f = s.model.features
    for i in range(64):
        for table, cols, offsets in ((f.embedding, f.big_cols, f.big_offsets),
                                     (f.small_embedding, f.small_cols, f.small_offsets)):
            if table is not None:
                for c, off in zip(cols.tolist(), offsets.tolist()):
                    brute += float(table.weight.detach()[batch.cat[i, c] + off].pow(2).sum())
    assert float(s.model.embedding_penalty().detach()) == pytest.approx(brute / 64, rel=1e-5)


def test_weight_decay_spares_embeddings_and_biases(feature_run):
    s, _, _ = _setup(feature_run, weight_decay=0.1)
    names = {id(p): n for n, p in s.model.named_parameters()}
    groups = [(g.get("weight_decay", 0.0), [names.get(id(p), "weighting") for p in g["params"]])
              for opt in s.optimizers for g in opt.param_groups]
    decayed = [n for wd, ns in groups if wd > 0 for n in ns]
    assert decayed and not [n for n in decayed if "embedding" in n or n.endswith("bias")]


def test_fgm_adds_the_adversarial_gradient_and_restores_the_embeddings(feature_run):
    s, data, tcfg = _setup(feature_run, adversarial="fgm", fgm_epsilon=0.5)
    chunk = data.slice(0, 256)
    tables = [t.weight for t in s.model.features.tables()]
    assert [w.grad is None and t.sparse for w, t in zip(tables, s.model.features.tables())] == [True, False]
    before = [w.detach().clone() for w in tables]
    losses, extra = trainer._step_losses(s, chunk, tcfg)
    s.weighting.backward(losses, extra)
    plain = [p.grad.to_dense().clone() for p in s.model.parameters() if p.grad is not None]
    trainer.fgm_step(s, chunk, tcfg)
    after = [p.grad.to_dense() for p in s.model.parameters() if p.grad is not None]
    for w, b in zip(tables, before):
        assert torch.allclose(w, b, atol=1e-6)
    assert any(not torch.allclose(a, 2 * p) and not torch.allclose(a, p) for a, p in zip(after, plain))


def test_gate_diagnostics_report_weights_entropy_and_collapse(feature_run, caplog):
    s, data, _ = _setup(feature_run)
    model = s.model.eval()
    valid = data.slice(0, 500)
    diag = gate_diagnostics(model, valid, torch.device("cpu"), "t")
    assert diag["expert_collapse"] == [] and set(diag["gates"]) == {f"task:{t}" for t in ALL}
    with torch.no_grad():  # brute force: softmax of the gate logits, row by row
        x = model.features(valid.batch())
        w = torch.softmax(model.gates.linear(x), -1)  # [T, B, E]
    g = diag["gates"]["task:cvr"]
    assert list(g["weights"].values()) == pytest.approx(w[3].mean(0).tolist(), rel=1e-5)
    ent = -(w[3] * torch.log(w[3])).sum(-1).mean()
    assert g["entropy"] == pytest.approx(float(ent), rel=1e-4)
    with torch.no_grad():
        model.gates.linear.bias[:, :, 1] += 20.0  # expert e1 takes everything for every task
    with caplog.at_level(logging.WARNING):
        diag = gate_diagnostics(model, valid, torch.device("cpu"), "t")
    assert diag["expert_collapse"] == [{"gates": [f"task:{t}" for t in ALL], "expert": "e1"}]
    assert "expert collapse" in caplog.text


def test_ple_diagnostics_name_each_level_and_meta_has_them(feature_run):
    res = train_model(load_config(None, SMALL + ["model.name=ple", "train.epochs=1"], home=feature_run), RUN_ID)
    meta = json.loads((Path(res["model_dir"]) / "meta.json").read_text())
    gates = meta["diagnostics"]["gates"]
    assert {"L0/task:ctr", "L0/shared", "L1/task:cvr"} <= set(gates) and "L1/shared" not in gates
    assert set(gates["L1/task:ctr"]["weights"]) == {"L1/ctr0", "L1/shared0", "L1/shared1"}
    assert all(np.isclose(sum(g["weights"].values()), 1.0) for g in gates.values())


def test_esmm_with_ctr_and_cvr_only_still_trains_ctcvr_on_all_impressions(feature_run):
    over = SMALL + ["model.name=esmm", "model.tasks=[ctr,cvr]", "train.epochs=1"]
    res = train_model(load_config(None, over, home=feature_run), RUN_ID)
    meta = json.loads((Path(res["model_dir"]) / "meta.json").read_text())
    assert meta["tasks"] == ["ctr", "cvr"] and meta["loss_tasks"] == ["ctr", "ctcvr"]
    assert set(meta["loss_curves"]) == {"ctr", "ctcvr"} and set(res["valid"]["auc"]) == {"ctr", "cvr"}
    model, _ = load_trained(res["model_dir"])
    valid = load_split(feature_run / "runs" / RUN_ID, "valid", ("ctr", "cvr"))
    probs = predict(model, valid)
    assert probs.shape == (len(valid), 2)  # columns ctr, cvr: the cvr column is p(purchase | click), not ctcvr
    logits = model(valid.batch())
    assert np.allclose(probs[:, 1], torch.sigmoid(logits["cvr"]).detach().numpy(), atol=1e-6)


def test_mmoe_experts_stay_distinct_after_training(feature_run):
    res = train_model(load_config(None, SMALL + ["train.epochs=2"], home=feature_run), RUN_ID)
    model, _ = load_trained(res["model_dir"])
    valid = load_split(feature_run / "runs" / RUN_ID, "valid", ALL).slice(0, 300)
    with torch.no_grad():
        out = model.experts(model.features(valid.batch()))  # [E, B, h]
    for i in range(out.shape[0]):
        for j in range(i + 1, out.shape[0]):
            assert not torch.allclose(out[i], out[j], atol=1e-3)


def test_an_empty_valid_split_is_refused(feature_run):
    import polars as pl

    from pipeline.errors import TrainingError

    path = feature_run / "runs" / RUN_ID / "features" / "valid.parquet"
    pl.read_parquet(path).head(0).write_parquet(path)
    with pytest.raises(TrainingError, match="valid split has no rows"):
        train_model(load_config(None, SMALL, home=feature_run), RUN_ID)


def test_a_step_moves_only_the_batch_rows_of_the_large_id_table(feature_run):
    s, data, tcfg = _setup(feature_run, weight_decay=0.1, embedding_l2=0.01)
    big = s.model.features.embedding.weight
    before = big.detach().clone()
    chunk = data.slice(0, 128)
    losses, extra = trainer._step_losses(s, chunk, tcfg)
    s.weighting.backward(losses, extra)
    assert big.grad.is_sparse
    for opt in s.optimizers:
        opt.step()
    f = s.model.features
    touched = set((chunk.cat.index_select(1, f.big_cols) + f.big_offsets).reshape(-1).tolist())
    moved = set(torch.nonzero((big.detach() != before).any(1)).reshape(-1).tolist())
    assert moved == touched


def test_same_seed_same_model_other_seed_other_model_and_progress_is_logged(tmp_path, caplog):
    from conftest import write_run

    results = []
    for i, seed in enumerate((5, 5, 6)):
        home = tmp_path / str(i)
        write_run(home, {"train": 1500, "valid": 500})
        with caplog.at_level(logging.INFO, logger="pipeline.training.trainer"):
            res = train_model(load_config(None, SMALL + [f"train.seed={seed}"], home=home), RUN_ID)
        results.append(torch.load(Path(res["model_dir"]) / "model.pt", weights_only=True))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not all(torch.equal(results[0][k], results[2][k]) for k in results[0])
    assert re.search(r"epoch 2 step 6/6 loss [0-9.]+ [0-9]+ samples/s", caplog.text)


@pytest.mark.parametrize("name,tasks", [("mmoe", ALL), ("esmm", ("ctr", "ctcvr")), ("aitm", ("cart", "ctr"))])
def test_towers_start_at_the_task_base_rates(feature_run, name, tasks):
    s, data, _ = _setup(feature_run, name, tasks)
    rates = trainer.label_rates(data)
    for t in ("ctr", "ctcvr"):
        if t in data.tasks:
            j = data.tasks.index(t)
            assert rates[t] == pytest.approx(float(data.labels[:, j].mean()))
    bias = s.model.towers.out.bias.detach().reshape(-1)
    assert len(s.model.tower_tasks) == len(bias)
    for i, t in enumerate(s.model.tower_tasks):
        assert float(bias[i]) == pytest.approx(math.log(rates[t] / (1 - rates[t])), rel=1e-5), t
    if name == "esmm":
        assert rates["cvr"] == pytest.approx(rates["ctcvr"] / rates["ctr"])


def test_sample_space_weighting_scales_each_task_by_the_sqrt_of_its_row_share(feature_run):
    s, data, _ = _setup(feature_run)
    clicked = data.labels[:, data.tasks.index("ctr")].double()
    share = {"ctr": 1.0, "cart": 1.0, "ctcvr": 1.0, "cvr": float(clicked.mean())}  # cvr's sample space: clicks
    assert 0.0 < share["cvr"] < 1.0
    assert s.weighting.weights() == pytest.approx([math.sqrt(share[t]) for t in s.model.loss_tasks], rel=1e-6)
    plain, _, _ = _setup(feature_run, sample_space_weighting="none", task_weights=(1.0, 2.0, 3.0, 4.0))
    assert plain.weighting.weights() == [1.0, 2.0, 3.0, 4.0]
    both, _, _ = _setup(feature_run, task_weights=(1.0, 2.0, 3.0, 4.0))
    assert both.weighting.weights()[3] == pytest.approx(4.0 * math.sqrt(share["cvr"]), rel=1e-6)


def test_the_id_table_learns_at_lr_times_embedding_lr_scale(feature_run):
    from pipeline.training.optimizers import RowSparseAdam

    s, data, tcfg = _setup(feature_run, embedding_lr_scale=4.0, lr=1e-3)
    big = s.model.features.embedding.weight
    sparse = [o for o in s.optimizers if isinstance(o, RowSparseAdam)]
    assert [g["lr"] for o in sparse for g in o.param_groups] == [pytest.approx(4e-3)]
    dense = [p for n, p in s.model.named_parameters() if n.startswith("towers")]
    before, dense_before = big.detach().clone(), [p.detach().clone() for p in dense]
    losses, extra = trainer._step_losses(s, data.slice(0, 128), tcfg)
    s.weighting.backward(losses, extra)
    for opt in s.optimizers:
        opt.step()
    # Adam's first step moves every element with a gradient well above eps by the learning rate itself.
    assert float((big.detach() - before).abs().max()) == pytest.approx(4e-3, rel=0.01)
    assert max(float((p.detach() - b).abs().max()) for p, b in zip(dense, dense_before)) == pytest.approx(1e-3, rel=0.01)
    # Under DDP the table has dense gradients and Adam: the same rate, in its own group.
    run_dir = feature_run / "runs" / RUN_ID
    model = build("mmoe", input_spec(run_dir, read_spec(run_dir), 4), load_config(None, SMALL, home=feature_run).model,
                  ALL)
    model.dense_embedding_gradients()
    opts = trainer.make_optimizers(model, trainer.make_weighting("fixed", 4, tcfg, [], "cpu"), tcfg)
    table = model.features.embedding.weight
    assert [g["lr"] for o in opts for g in o.param_groups if any(p is table for p in g["params"])] == [
        pytest.approx(4e-3)]
