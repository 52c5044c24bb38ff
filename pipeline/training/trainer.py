"""The training loop shared by every architecture and the baselines: one code path, no per-model branches.

`train_epoch()` runs one epoch over a split (TensorData in memory, or a memory-mapped
`pipeline.features.arrays.MappedSplit`: each batch is gathered by index from one seeded permutation, so no
epoch copies the split), `evaluate_split()` scores the valid split in chunks, `stop_metric()` ranks epochs;
model selection, refit and checkpoints over these are in `pipeline.training.fitting`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.errors import TrainingError
from pipeline.evaluation.metrics import auc
from pipeline.features.dataset import TensorData, batch_order, batches
from pipeline.progress import bar
from pipeline.training.hugepages import huge_page_copy
from pipeline.training.losses import masked_bce
from pipeline.training.optimizers import GroupedAdam, RowSparseAdam
from pipeline.training.weighting import Weighting, make_weighting

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0
SPARSE_PARAM = "features.embedding.weight"  # the large-vocabulary table with sparse gradients


@dataclass
class Setup:
    """Everything one run of `fit` mutates. `net` is what forward goes through (the model, or its DDP wrapper);
    `model` is the bare module (state_dict, regularisers)."""

    model: Any
    net: Any
    weighting: Weighting
    optimizers: list[torch.optim.Optimizer]
    device: torch.device
    rank: int = 0
    world: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "metric": -math.inf, "state": None})


def shared_parameters(model: Any, sample: TensorData) -> list[torch.nn.Parameter]:
    """Dense parameters reached by more than one loss task's logits (found from the autograd graph, so no
    architecture needs to declare them)."""
    dense = [p for n, p in model.named_parameters() if p.requires_grad and n != SPARSE_PARAM]
    logits = model(sample.batch())
    used = torch.zeros(len(dense), dtype=torch.int64)
    for t in model.loss_tasks:
        grads = torch.autograd.grad(logits[t].sum(), dense, retain_graph=True, allow_unused=True)
        used += torch.tensor([g is not None for g in grads], dtype=torch.int64)
    return [p for p, u in zip(dense, used.tolist()) if u > 1]


def make_optimizers(model: Any, weighting: Weighting, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for the large-id table (only the batch's rows move); Adam for everything else, with weight
    decay on weight matrices only (never on embeddings, biases or the weighting's own parameters). The id table
    learns at lr x `train.embedding_lr_scale`, sparse or dense. Groups the model declares (`model.param_groups()`,
    e.g. a jointly trained text encoder) keep their own settings."""
    sparse, ids, decay, plain = [], [], [], list(weighting.parameters())
    table = model.features.embedding
    sparse_table = table is not None and table.sparse  # dense under DDP (model.dense_embedding_gradients)
    own = model.param_groups()  # e.g. the jointly trained text encoder, with its own learning rate
    taken = {id(p) for g in own for p in g["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad and id(p) not in taken:
            group = ((sparse if sparse_table else ids) if n == SPARSE_PARAM else
                     plain if n.endswith("bias") or "embedding" in n else decay)
            group.append(p)
    id_lr = cfg.lr * cfg.embedding_lr_scale
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0},
              *([{"params": ids, "weight_decay": 0.0, "lr": id_lr}] if ids else []), *own]
    # fused: one kernel over all tensors instead of ~10 passes per tensor (same update; bench/train_bench.py
    # --peer-config MMoE: dense step 0.65 -> 0.33 ms of ~11 ms), called without torch.optim's per-step walk
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for g in groups for p in g["params"])
    dense = GroupedAdam(groups, lr=cfg.lr) if fused else torch.optim.Adam(groups, lr=cfg.lr)
    return [RowSparseAdam(sparse, lr=id_lr), dense] if sparse else [dense]


def label_rates(data: TensorData, sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Label rate of each task on its sample space; cvr also from the funnel identity ctcvr = ctr x cvr when only
    ctr and ctcvr labels are at hand."""
    pos, count = data.label_sums() if sums is None else sums  # a memory-mapped split reads in chunks: pass sums once
    rates = (pos / count.clamp_min(1)).tolist()
    out = dict(zip(data.tasks, rates))
    if "cvr" not in out and out.get("ctr", 0) > 0 and "ctcvr" in out:
        out["cvr"] = out["ctcvr"] / out["ctr"]
    return out


def task_weights(data: Any, tasks: tuple[str, ...], cfg: TrainConfig,
                 sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, ...]:
    """Static loss weight per task in `tasks`: `train.task_weights` (default 1) times, with
    `train.sample_space_weighting=sqrt`, the square root of the share of `data`'s rows in the task's sample space
    (1 for tasks on every row, the click rate for cvr). A task whose loss is a mean over a share f of the batch has
    a gradient ~1/sqrt(f) noisier than one over every row; the factor keeps it from outvoting them in the shared
    layers. A task without a label column counts as on every row. `sums`: `data.label_sums()` when already read."""
    base = cfg.task_weights if len(cfg.task_weights) == len(tasks) else (1.0,) * len(tasks)
    if cfg.sample_space_weighting == "none":
        return tuple(base)
    count = (data.label_sums() if sums is None else sums)[1]
    share = {t: float(count[j]) / max(len(data), 1) for j, t in enumerate(data.tasks)}  # in [0, 1]
    return tuple(w * math.sqrt(share.get(t, 1.0)) for w, t in zip(base, tasks))


def make_setup(model: Any, train: TensorData, cfg: TrainConfig, weighting_name: str, device: torch.device,
               rank: int = 0, world: int = 1) -> Setup:
    sums = train.label_sums()  # one pass over a memory-mapped split for both uses
    model.init_output_bias(label_rates(train, sums))
    model.to(device)
    table = model.features.embedding
    if table is not None and table.sparse:  # read and written at random rows every step
        table.weight.data = huge_page_copy(table.weight.data)
    shared = shared_parameters(model, train.slice(0, min(len(train), 256)).to(device))
    weighted = dataclasses.replace(cfg, task_weights=task_weights(train, model.loss_tasks, cfg, sums))
    weighting = make_weighting(weighting_name, len(model.loss_tasks), weighted, shared, device)
    net: Any = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model.compile_heads()
    return Setup(model, net, weighting, make_optimizers(model, weighting, cfg), device, rank, world)


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """bf16 autocast on CUDA unless `fp32`; on CPU only with `bf16` (MMoE in bench/train_bench.py --peer-config: 1.8x faster on an
    AVX512-BF16 CPU, same test AUC; slower on CPUs without bf16 units). Losses and weights stay float32."""
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def _step_losses(s: Setup, chunk: TensorData, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    with autocast(s.device, cfg.precision):
        logits = s.net(chunk.batch())
    losses = masked_bce(logits, chunk.labels, chunk.mask, s.model.loss_tasks, chunk.tasks)
    extra = s.model.auxiliary_loss(logits)
    if cfg.embedding_l2 > 0:
        reg = cfg.embedding_l2 * s.model.embedding_penalty()
        extra = reg if extra is None else extra + reg
    return losses, extra


def fgm_step(s: Setup, chunk: TensorData, cfg: TrainConfig) -> None:
    """FGM (Miyato et al.): move each embedding table by eps * g / ||g|| along its gradient g, accumulate the
    gradient of the perturbed loss, then move it back. On the sparse table only the batch's rows move."""
    moves = []
    with torch.no_grad():
        for table in s.model.features.tables():
            g = table.weight.grad
            if g is None:
                continue
            g = g.coalesce() if g.is_sparse else g
            vals = g.values() if g.is_sparse else g
            norm = vals.norm()
            if torch.isfinite(norm) and norm > 0:
                delta = cfg.fgm_epsilon * vals / norm
                rows = g.indices()[0] if g.is_sparse else None
                _shift(table.weight, rows, delta)
                moves.append((table.weight, rows, delta))
    losses, extra = _step_losses(s, chunk, cfg)
    total = s.weighting.combine(losses)
    (total if extra is None else total + extra).backward()
    with torch.no_grad():
        for weight, rows, delta in moves:
            _shift(weight, rows, -delta)


def _shift(weight: torch.Tensor, rows: torch.Tensor | None, delta: torch.Tensor) -> None:
    if rows is None:
        weight.add_(delta)
    else:
        weight.index_add_(0, rows, delta)


def _shard(index: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank r takes the r-th equal contiguous part of a global batch's row indices (int64 [B] -> [~B/world]), so
    it reads only those rows; every rank draws the same permutation, so the parts are disjoint and cover the
    epoch (DDP averages the ranks' gradients)."""
    if world == 1:
        return index
    n = len(index)
    return index[rank * n // world:(rank + 1) * n // world]


def train_epoch(s: Setup, data: Any, cfg: TrainConfig, epoch: int, label: str) -> dict[str, Any]:
    """One pass over `data` (TensorData or MappedSplit) in a seed- and epoch-determined order (the same on every
    rank) -> {"train_loss": [T], "samples_per_s", "weights"}."""
    s.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    sums, n_batches, seen = torch.zeros(len(s.model.loss_tasks)), 0, 0
    start = last = time.perf_counter()
    n_steps = math.ceil(len(data) / cfg.batch_size)
    order = batch_order(len(data), cfg.batch_size, gen)
    if s.rank == 0:  # one bar per epoch on a terminal (pipeline.progress), nothing in Airflow logs
        order = bar(order, total=n_steps, desc=f"{label} epoch {epoch}/{cfg.epochs}", unit="batch")
    for step, index in enumerate(order):
        chunk = data.take(_shard(index, s.rank, s.world)).to(s.device)
        losses, extra = _step_losses(s, chunk, cfg)
        if not bool(torch.isfinite(losses).all()):
            raise TrainingError(f"{label}: non-finite loss at epoch {epoch} step {step}: {losses.tolist()}")
        s.weighting.backward(losses, extra)
        if cfg.adversarial == "fgm":
            fgm_step(s, chunk, cfg)
        for opt in s.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sums += losses.detach().float().cpu()
        n_batches, seen = n_batches + 1, seen + len(chunk) * s.world
        now = time.perf_counter()
        if s.rank == 0 and (now - last > PROGRESS_EVERY_S or step + 1 == n_steps):
            log.info("%s epoch %d step %d/%d loss %.4f %.0f samples/s", label, epoch, step + 1, n_steps,
                     float(sums.sum()) / n_batches, seen / (now - start))
            last = now
    mean = (sums / max(n_batches, 1)).tolist()
    s.weighting.epoch_end(mean)
    return {"train_loss": dict(zip(s.model.loss_tasks, mean)), "samples_per_s": seen / (time.perf_counter() - start),
            "weights": dict(zip(s.model.loss_tasks, s.weighting.weights()))}


@torch.no_grad()
def _predict(model: Any, data: Any, device: torch.device, batch_size: int,
             labels: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Logits {task: float32 [N]} (and, when `labels`, labels and mask float32 [N, T]) on the CPU, read in
    chunks of `batch_size` rows in row order (a memory-mapped split is never loaded whole)."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    ys, ms = [], []
    for chunk in batches(data, batch_size):
        with autocast(device):
            logits = model(chunk.to(device).batch())
        for t, z in logits.items():
            outs.setdefault(t, []).append(z.float().cpu())
        if labels:
            ys.append(chunk.labels)
            ms.append(chunk.mask)
    cat = (lambda v: torch.cat(v) if v else None)
    return {t: torch.cat(v) for t, v in outs.items()}, cat(ys), cat(ms)


def predict_logits(model: Any, data: Any, device: torch.device, batch_size: int = 65536) -> dict[str, Any]:
    """Logits of every output task on `data` (TensorData or MappedSplit), eval mode -> {task: float32 [N]} on
    the CPU, computed in chunks of `batch_size` rows."""
    return _predict(model, data, device, batch_size, labels=False)[0]


def evaluate_split(model: Any, data: Any, device: torch.device, batch_size: int = 65536) -> dict[str, Any]:
    """Valid-split AUC per output task (on its sample space) and masked loss per loss task, over chunks of
    `data` (TensorData or MappedSplit)."""
    logits, y, mask = _predict(model, data, device, batch_size, labels=True)
    tasks = data.tasks
    losses = masked_bce(logits, y, mask, model.loss_tasks, tasks)
    aucs, positives = {}, {}
    for t in model.tasks:
        j = tasks.index(t)
        m = mask[:, j] > 0
        aucs[t] = auc(y[m, j].numpy(), logits[t][m].numpy())
        positives[t] = float(y[m, j].sum())
    return {"auc": aucs, "loss": dict(zip(model.loss_tasks, losses.tolist())), "positives": positives}


def stop_metric(result: dict[str, Any], metric: str) -> float:
    """`mean_auc` over the tasks with a defined AUC, `weighted_auc` (the same mean, each task weighted by the square
    root of its valid positives: an AUC's noise shrinks as 1/sqrt(positives), so a task with 50 positives cannot
    stop the training of one with 5000), or `auc:<task>`; minus the mean loss when no AUC is defined."""
    aucs = result["auc"]
    names = [metric[4:]] if metric.startswith("auc:") and metric[4:] in aucs else list(aucs)
    names = [t for t in names if not math.isnan(aucs[t])]
    if not names:
        return -float(np.mean(list(result["loss"].values())))
    pos = result.get("positives") or {}
    w = [math.sqrt(pos.get(t, 1.0)) if metric == "weighted_auc" else 1.0 for t in names]
    return float(np.average([aucs[t] for t in names], weights=w)) if sum(w) > 0 else float(np.mean([aucs[t] for t in names]))
