"""Model selection and refit over `trainer`'s epoch loop: `fit` (early stopping on the valid split, optionally
each task's tower from its own best epoch), `refit` (the selected epoch count again, from scratch, on train +
valid), and the per-epoch checkpoints that make a killed run resume to the same result (same seed -> same
batches and dropout).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import TrainConfig
from pipeline.errors import TrainingError
from pipeline.features.dataset import TensorData
from pipeline.io import atomic_path
from pipeline.paths import SELECTED_MODEL
from pipeline.training.trainer import Setup, evaluate_split, stop_metric, train_epoch

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, s: Setup, epoch: int, bad: int, tag: str) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact. Loadable with weights_only=True."""
    state = {"epoch": epoch, "bad": bad, "tag": tag, "model": s.model.state_dict(), "history": s.history,
             "weighting": s.weighting.state_dict(), "optimizers": [o.state_dict() for o in s.optimizers],
             "best": s.best, "rng": torch.get_rng_state(),
             # each GPU has its own generator (dropout on CUDA draws from it): save them too
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, s: Setup, tag: str) -> tuple[int, int]:
    """Restore a checkpoint into `s` -> (epochs done, epochs without improvement). Refuses another config's."""
    state = torch.load(path, map_location=s.device, weights_only=True)
    if state["tag"] != tag:
        raise TrainingError(f"checkpoint {path} was written by another configuration ({state['tag']} != {tag}); "
                            "delete it or rerun without resume")
    s.model.load_state_dict(state["model"])
    s.weighting.load_state_dict(state["weighting"])
    for opt, st in zip(s.optimizers, state["optimizers"]):
        opt.load_state_dict(st)
    s.history, s.best = list(state["history"]), dict(state["best"])
    torch.set_rng_state(state["rng"].cpu())
    cuda_rng = state.get("cuda_rng") or []
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([r.cpu() for r in cuda_rng])
    return int(state["epoch"]), int(state["bad"])


def _tower_slices(model: Any, i: int) -> dict[str, torch.Tensor]:
    """Member i of every parameter of `model.towers` (Towers keep member i of each task in dim 0), cloned."""
    return {n: p.detach()[i].clone() for n, p in model.towers.named_parameters()}


def _put_towers(model: Any, slices: dict[int, dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        params = dict(model.towers.named_parameters())
        for i, parts in slices.items():
            for n, v in parts.items():
                params[n][i].copy_(v)


def _track_tasks(s: Setup, row: dict[str, Any]) -> bool:
    """Per-task best: remember each tower task's best valid AUC, its epoch and its tower -> any task improved."""
    tasks = s.best.setdefault("tasks", {})
    improved = False
    for i, t in enumerate(s.model.tower_tasks):
        a = row["valid"]["auc"].get(t)
        if a is None or math.isnan(a) or a <= tasks.get(t, {}).get("auc", -math.inf):
            continue
        tasks[t] = {"epoch": row["epoch"], "auc": a, "tower": _tower_slices(s.model, i)}
        improved = True
    return improved


def _compose(s: Setup, valid: TensorData, cfg: TrainConfig) -> None:
    """Put each task's tower from its own best epoch onto the best epoch's shared layers, and keep that only when
    the valid stop metric says so (selected on valid like everything else); s.best["towers"]: task -> epoch."""
    base = {k: v.clone() for k, v in s.model.state_dict().items()}
    moved = {i: s.best["tasks"][t]["tower"] for i, t in enumerate(s.model.tower_tasks)
             if t in s.best.get("tasks", {}) and s.best["tasks"][t]["epoch"] != s.best["epoch"]}
    s.best["towers"] = {}
    if not moved:
        return
    _put_towers(s.model, moved)
    result = evaluate_split(s.model, valid, s.device)
    metric = stop_metric(result, cfg.early_stop_metric)
    if metric >= s.best["metric"]:
        s.best["towers"] = {s.model.tower_tasks[i]: s.best["tasks"][s.model.tower_tasks[i]]["epoch"] for i in moved}
        s.best["composed"] = {"metric": metric, "valid": result}
    else:
        s.model.load_state_dict(base)


def fit(s: Setup, train: TensorData, valid: TensorData, cfg: TrainConfig, label: str,
        checkpoint: Path | None = None, resume: bool = False, tag: str = "") -> Setup:
    """Train up to `cfg.epochs`, early-stopping on the valid split; leaves the best epoch's weights in s.model.

    With `cfg.per_task_best` an epoch that improves any task's valid AUC also resets the patience, and each
    task's tower comes from its own best epoch when that composite is no worse on the valid stop metric
    (`s.best["towers"]`: task -> epoch of its tower; empty when every tower is the best epoch's)."""
    done, bad = (load_checkpoint(checkpoint, s, tag) if resume and checkpoint and checkpoint.is_file() else (0, 0))
    if done:
        log.info("%s: resumed from %s after epoch %d", label, checkpoint, done)
    for epoch in range(done + 1, cfg.epochs + 1):
        if bad >= cfg.patience and s.best["state"] is not None:
            break
        t0 = time.perf_counter()
        row = {"epoch": epoch, **train_epoch(s, train, cfg, epoch, label)}
        row["valid"] = evaluate_split(s.model, valid, s.device)
        row["metric"], row["seconds"] = stop_metric(row["valid"], cfg.early_stop_metric), time.perf_counter() - t0
        s.history.append(row)
        task_better = cfg.per_task_best and _track_tasks(s, row)
        if row["metric"] > s.best["metric"]:
            state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            s.best, bad = {**s.best, "epoch": epoch, "metric": row["metric"], "state": state}, 0
        else:
            bad = 0 if task_better else bad + 1
        if checkpoint is not None and s.rank == 0:
            save_checkpoint(checkpoint, s, epoch, bad, tag)
    s.model.load_state_dict(s.best["state"])
    if cfg.per_task_best:
        _compose(s, valid, cfg)
    return s


def refit(s: Setup, data: TensorData, cfg: TrainConfig, plan: dict[str, Any], label: str,
          checkpoint: Path | None = None, resume: bool = False, tag: str = "") -> Setup:
    """Train `s.model` (fresh) on `data` (train + valid) for exactly plan["epoch"] epochs, the count selected on
    valid, with no early stopping (nothing is held out); tasks in plan["towers"] (task -> epoch) take their tower
    as it was after that epoch, as the selected model did. Checkpoints after each epoch like `fit`."""
    towers = plan.get("towers") or {}
    last = max([plan["epoch"], *towers.values()])
    done = load_checkpoint(checkpoint, s, tag)[0] if resume and checkpoint and checkpoint.is_file() else 0
    for epoch in range(done + 1, last + 1):
        t0 = time.perf_counter()
        row = {"epoch": epoch, **train_epoch(s, data, cfg, epoch, label)}
        row["seconds"] = time.perf_counter() - t0
        s.history.append(row)
        keep = s.best.setdefault("tasks", {})
        for i, t in enumerate(s.model.tower_tasks):
            if towers.get(t) == epoch:
                keep[t] = {"epoch": epoch, "tower": _tower_slices(s.model, i)}
        if epoch == plan["epoch"]:
            s.best = {**s.best, "epoch": epoch, "metric": math.nan,
                      "state": {k: v.detach().clone() for k, v in s.model.state_dict().items()}}
        if checkpoint is not None and s.rank == 0:
            save_checkpoint(checkpoint, s, epoch, 0, tag)
    s.model.load_state_dict(s.best["state"])
    _put_towers(s.model, {i: s.best["tasks"][t]["tower"] for i, t in enumerate(s.model.tower_tasks) if t in towers})
    s.best["towers"] = dict(towers)
    return s


def concat_splits(a: Any, b: Any) -> Any:
    """Two splits as one in-memory TensorData (train then valid), for the refit: unlike the selection run, the
    refit holds train + valid in memory (train.refit is off by default)."""
    a, b = (x.slice(0, len(x)) for x in (a, b))  # TensorData and MappedSplit both slice to TensorData

    def cat(x: Any, y: Any) -> Any:
        return None if x is None else torch.cat([x, y])

    return TensorData(cat(a.cat, b.cat), cat(a.num, b.num), cat(a.text, b.text), cat(a.labels, b.labels),
                      cat(a.mask, b.mask), a.tasks, seq=cat(a.seq, b.seq))


def refit_info(spec: dict, r: Any, plan: dict, selected: bool) -> dict[str, Any]:
    """What the refit did, for meta.json and the model card: epochs, towers' epochs, windows, train losses."""
    splits = spec.get("splits", {})
    return {"epochs": plan["epoch"], "towers": plan["towers"],
            "train_dates": [*splits.get("train", {}).get("dates", []), *splits.get("valid", {}).get("dates", [])],
            "selected_on": splits.get("valid", {}).get("dates", []),
            "selected_model": SELECTED_MODEL if selected else None,
            "train_loss": [row["train_loss"] for row in r.history]}
