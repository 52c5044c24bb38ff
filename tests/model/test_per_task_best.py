"""train.per_task_best (pipeline.training.fitting): each task's tower is restored from its own best valid epoch
onto the shared layers of the stop metric's best epoch, an epoch that improves any one task resets the patience,
and the composite is kept only when the valid stop metric does not drop. Real training on the small feature run;
the valid AUCs are scripted so that each task peaks at a known epoch."""

from __future__ import annotations

import math

import torch

from pipeline.config import load_config

RUN_ID = "2026-01-10"
TASKS = ("ctr", "cart", "ctcvr", "cvr")
# valid AUC per epoch: ctr peaks at 3, cart at 1, ctcvr and cvr at 2 (the mean's best epoch)
SCRIPT = {1: (0.60, 0.70, 0.60, 0.60), 2: (0.61, 0.65, 0.70, 0.70), 3: (0.66, 0.60, 0.61, 0.61),
          4: (0.55, 0.55, 0.55, 0.55)}  # no improvement at 4: it stops there, and the 5th call is the composite


def _train(feature_run, monkeypatch, composite_auc):
    """fit() over real epochs with scripted valid AUCs; returns (setup, towers after each epoch, shared state)."""
    from conftest import SMALL

    from pipeline import models
    from pipeline.features import dataset
    from pipeline.training import fitting, trainer

    cfg = load_config(overrides=[*SMALL, "train.epochs=5", "train.patience=1", "train.per_task_best=true"],
                      home=feature_run)
    run_dir = feature_run / "runs" / RUN_ID
    spec = dataset.read_spec(run_dir)
    inputs = dataset.input_spec(run_dir, spec, cfg.text.proj_dim)
    torch.manual_seed(0)
    model = models.build("mmoe", inputs, cfg.model, TASKS)
    train = dataset.load_split(run_dir, "train", model.output_tasks, spec, inputs.text_rows)
    valid = dataset.load_split(run_dir, "valid", model.output_tasks, spec, inputs.text_rows)
    s = trainer.make_setup(model, train, cfg.train, "fixed", torch.device("cpu"))
    after: dict[int, dict[str, torch.Tensor]] = {}
    calls = []

    def scripted(m, data, device):
        epoch = len(calls) + 1
        calls.append(epoch)
        if epoch in SCRIPT:  # a training epoch just ended: remember the weights it left
            after[epoch] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        aucs = SCRIPT.get(epoch, composite_auc)
        return {"auc": dict(zip(TASKS, aucs)), "loss": dict.fromkeys(TASKS, 0.5), "positives": {}}

    monkeypatch.setattr(fitting, "evaluate_split", scripted)
    fitting.fit(s, train, valid, cfg.train, "per-task-best")
    return s, after


def _member(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in state.items() if k.startswith("towers.")}


def test_each_tower_comes_from_its_own_best_epoch(feature_run, monkeypatch):
    s, after = _train(feature_run, monkeypatch, composite_auc=(0.66, 0.70, 0.70, 0.70))
    # ctr improved at epoch 3 although the mean did not: the patience was reset, epoch 4 ran, then it stopped
    assert [row["epoch"] for row in s.history] == [1, 2, 3, 4]
    assert s.best["epoch"] == 2 and s.best["towers"] == {"ctr": 3, "cart": 1}
    final = s.model.state_dict()
    for i, (task, epoch) in enumerate(zip(TASKS, (3, 1, 2, 2))):
        for k, v in _member(after[epoch], i).items():
            assert torch.equal(final[k][i], v), (task, k)
    for k, v in final.items():  # everything outside the towers is the best epoch's
        if not k.startswith("towers."):
            assert torch.equal(v, after[2][k]), k
    assert math.isclose(s.best["composed"]["metric"], 0.69)


def test_a_composite_worse_on_valid_is_dropped(feature_run, monkeypatch):
    s, after = _train(feature_run, monkeypatch, composite_auc=(0.60, 0.60, 0.60, 0.60))
    assert s.best["towers"] == {}
    final = s.model.state_dict()
    assert all(torch.equal(v, after[2][k]) for k, v in final.items())


def test_refit_takes_the_towers_at_the_selected_epochs(feature_run):
    from conftest import SMALL

    from pipeline import models
    from pipeline.features import dataset
    from pipeline.training import fitting, trainer

    cfg = load_config(overrides=[*SMALL, "train.per_task_best=true"], home=feature_run)
    run_dir = feature_run / "runs" / RUN_ID
    spec = dataset.read_spec(run_dir)
    inputs = dataset.input_spec(run_dir, spec, cfg.text.proj_dim)

    def fresh():
        torch.manual_seed(0)
        model = models.build("mmoe", inputs, cfg.model, TASKS)
        data = dataset.load_split(run_dir, "train", model.output_tasks, spec, inputs.text_rows)
        return trainer.make_setup(model, data, cfg.train, "fixed", torch.device("cpu")), data

    s, data = fresh()
    fitting.refit(s, data, cfg.train, {"epoch": 1, "towers": {"cart": 3}}, "refit")
    assert [row["epoch"] for row in s.history] == [1, 2, 3]  # up to the latest epoch any part needs
    one, data = fresh()
    fitting.refit(one, data, cfg.train, {"epoch": 1, "towers": {}}, "refit-1")
    three, data = fresh()
    fitting.refit(three, data, cfg.train, {"epoch": 3, "towers": {}}, "refit-3")
    got, e1, e3 = s.model.state_dict(), one.model.state_dict(), three.model.state_dict()
    for k, v in got.items():
        if k.startswith("towers."):
            assert torch.equal(v[1], e3[k][1]) and torch.equal(v[0], e1[k][0]), k  # cart at 3, ctr at 1
        else:
            assert torch.equal(v, e1[k]), k
