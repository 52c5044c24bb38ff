"""Train stage: `train_model(cfg, run_id, name)` -> runs/<run_id>/models/<name>/{model.pt, meta.json}.

name "mtl" builds `cfg.model.name` over `cfg.model.tasks`; "baseline_<task>" builds `single_task` on that task
with the same trainer and features; "gbdt_<task>" trains the LightGBM baseline (pipeline.training.gbdt). Model selection uses the valid split only; the test split is never read here.

Multi-GPU / multi-process (DDP): every rank runs the same command and takes its share of each global batch:

    torchrun --nproc_per_node=2 -m pipeline.training.train --home .mtl --run-id 2026-11-29 [--name mtl] [--set k=v ...]

`pipeline.training.launch` builds that command from `train.nproc_per_node` / `train.nnodes` (the DAG and `mtl
train` go through it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import Config, ModelConfig, load_config
from pipeline.errors import ConfigError, TrainingError
from pipeline.io import atomic_path, read_json, write_json
from pipeline.paths import MODELS_DIR, MTL_MODEL, SELECTED_MODEL, Layout

log = logging.getLogger(__name__)
RESULT_MARK = "MTL-RESULT:"  # the line pipeline.training.launch reads from rank 0's stdout
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE, META_FILE = "model.pt", "meta.json"
JOINT_ENCODER_DIR = "encoder"  # text.finetune=joint: the trained encoder (safetensors + tokenizer) beside model.pt
# Model keys added after models were already saved: a stored config without one was built as this value says (a
# champion trained before `model.tower_skip` has towers over the expert mix only), not as today's default.
LEGACY_MODEL_KEYS = {"tower_skip": False}


def model_plan(cfg: Config, name: str) -> tuple[str, tuple[str, ...], ModelConfig, str]:
    """name -> (architecture, tasks, model config, weighting). Baselines always weight their one loss 1."""
    if name == MTL_MODEL:
        return cfg.model.name, cfg.model.tasks, cfg.model, cfg.train.weighting
    task = name.removeprefix("baseline_")
    if not name.startswith("baseline_") or task not in cfg.model.tasks:
        raise ConfigError(f"model name must be '{MTL_MODEL}', baseline_<task> or gbdt_<task> for a task in model.tasks "
                          f"{cfg.model.tasks}, got '{name}'")
    return "single_task", (task,), dataclasses.replace(cfg.model, name="single_task", tasks=(task,)), "fixed"


def _device(cfg: Config) -> Any:
    import torch

    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _distributed(device: Any) -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def train_model(cfg: Config, run_id: str, name: str = MTL_MODEL, resume: bool = False) -> dict[str, Any]:
    """Train one model of run `run_id` -> {"run_id", "name", "model_dir", "best_epoch", "valid"}.

    With `train.refit` (DNN models) the epoch count is selected on valid as usual, then a fresh model trains on
    train + valid for that many epochs and is the one saved under models/<name>/; for the MTL model the selected
    one is saved too, as models/mtl_selected/, so the evaluation can report it. "valid" is the selected model's
    (with per-task best towers, the composite's)."""
    if name.startswith("gbdt_") and name.removeprefix("gbdt_") in cfg.model.tasks:
        from pipeline.training.gbdt import train_gbdt

        return train_gbdt(cfg, run_id, name.removeprefix("gbdt_"))
    import torch

    from pipeline.features import dataset
    from pipeline.training import fitting, trainer
    from pipeline.training.diagnostics import gate_diagnostics

    arch, tasks, mcfg, weighting = model_plan(cfg, name)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = _device(cfg)
    rank, world = _distributed(device)
    if world > 1 and weighting in ("gradnorm", "pcgrad"):
        raise ConfigError(f"train.weighting={weighting} needs per-task gradients and is not supported under DDP")
    run_dir = Layout.of(cfg.home).run_dir(run_id)
    spec = dataset.read_spec(run_dir)
    model, inputs, joint = _new_model(cfg, run_dir, spec, name, arch, mcfg, tasks, world)
    data_tasks = model.output_tasks
    train, valid = _open_splits(run_dir, data_tasks, spec, inputs.text_rows, rank, world)
    _check_sample_spaces(train, valid, model.loss_tasks, name)
    placed = _place(train, device)
    s = trainer.make_setup(model, placed, cfg.train, weighting, device, rank, world)
    ckpt = run_dir / CHECKPOINTS_DIR / name / "last.pt"
    tag = f"{cfg.hash()}:{name}"
    fitting.fit(s, placed, valid, cfg.train, f"{run_id}/{name}", ckpt, resume, tag)
    best = s.history[s.best["epoch"] - 1]
    if s.best.get("towers"):  # the saved model is the composite of per-task best towers: report its valid scores
        best = {"valid": s.best["composed"]["valid"], "metric": s.best["composed"]["metric"]}
    meta = _meta(cfg, run_id, name, arch, model, inputs, s, len(train), world)
    meta["diagnostics"] = gate_diagnostics(model, valid, device, f"{run_id}/{name}")
    plan = {"epoch": s.best["epoch"], "towers": s.best.get("towers") or {}}
    meta["per_task_best"] = plan["towers"]
    done = [ckpt]
    if cfg.train.refit:
        if name == MTL_MODEL and rank == 0:
            _save(run_dir / MODELS_DIR / SELECTED_MODEL, model, {**meta, "name": SELECTED_MODEL},
                  (lambda tmp: _save_joint_encoder(cfg, model, inputs, tmp / JOINT_ENCODER_DIR, run_id))
                  if joint else None, joint)
        model, _, _ = _new_model(cfg, run_dir, spec, name, arch, mcfg, tasks, world)
        del placed  # the GPU copy of train, before train + valid takes its place
        both = _place(fitting.concat_splits(train, valid), device)
        r = trainer.make_setup(model, both, cfg.train, weighting, device, rank, world)
        done.append(ckpt.with_name("refit.pt"))
        fitting.refit(r, both, cfg.train, plan, f"{run_id}/{name} refit", done[-1], resume, tag)
        meta.update(train_rows=len(both), refit=fitting.refit_info(spec, r, plan, name == MTL_MODEL))
    model_dir = run_dir / MODELS_DIR / name
    if rank == 0:
        _save(model_dir, model, meta, (lambda tmp: _save_joint_encoder(cfg, model, inputs, tmp / JOINT_ENCODER_DIR,
                                                                       run_id)) if joint else None, joint)
        _drop_checkpoints(done)
    return {"run_id": run_id, "name": name, "model_dir": str(model_dir), "best_epoch": s.best["epoch"],
            "valid": {**best["valid"], "metric": best["metric"]}}


def _new_model(cfg: Config, run_dir: Path, spec: dict, name: str, arch: str, mcfg: ModelConfig,
               tasks: tuple[str, ...], world: int) -> tuple[Any, Any, bool]:
    """(model, its InputSpec, joint text encoder?), initialised from `train.seed`: the refit starts from the same
    initial weights as the selection run, so the two differ by their data only."""
    import torch

    from pipeline import models
    from pipeline.features import dataset

    torch.manual_seed(cfg.train.seed)
    inputs = dataset.input_spec(run_dir, spec, cfg.text.proj_dim)
    joint = name == MTL_MODEL and cfg.text.enabled and cfg.text.finetune == "joint"
    if joint:  # the MTL model trains the encoder's top layers; baselines keep the frozen table
        from pipeline.features.finetune import joint_inputs

        inputs = joint_inputs(inputs, run_dir, cfg.text)
    model = models.build(arch, inputs, mcfg, tasks)
    grad = cfg.train.embedding_grad
    if grad == "dense" or (grad == "auto" and world > 1):
        model.dense_embedding_gradients()
    return model, inputs, joint


def _save(model_dir: Path, model: Any, meta: dict[str, Any], extra: Any = None, joint: bool = False) -> None:
    """models/<name>/{model.pt, meta.json} (+ what `extra(tmp)` writes), atomically as one folder."""
    import torch

    with atomic_path(model_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save(_weights(model, joint), tmp / MODEL_FILE)
        write_json(tmp / META_FILE, meta)
        if extra is not None:
            extra(tmp)


def _drop_checkpoints(paths: list[Path]) -> None:
    for ckpt in paths:
        ckpt.unlink(missing_ok=True)
    for folder in (paths[0].parent, paths[0].parent.parent):  # drop the checkpoint folders once empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def _weights(model: Any, joint: bool) -> dict[str, Any]:
    """What model.pt holds: the state_dict, less a joint encoder's transformer (stored once, in encoder/)."""
    from pipeline.models.text_tower import stored_state

    return stored_state(model) if joint else model.state_dict()


def _save_joint_encoder(cfg: Config, model: Any, inputs: Any, folder: Path, run_id: str) -> None:
    """The jointly trained encoder as its own versioned folder (safetensors + tokenizer, text.save_encoder): the
    only copy of its weights (model.pt leaves them out), read back by `load_trained`, and the tokenizer with
    which serving tokenizes texts new to the model."""
    from pipeline.features.text import load_tokenizer, save_encoder

    info = inputs.text_encoder
    tokenizer = load_tokenizer(dataclasses.replace(cfg.text, model=info["base"]))
    save_encoder(tokenizer, model.features.text_encoder.model, folder,
                 {"base": info["base"], "max_length": info["max_length"], "trained_on": run_id,
                  "joint": {"layers": info["layers"], "lr": info["lr"]}})


def _open_splits(run_dir: Path, tasks: tuple[str, ...], spec: dict[str, Any], text_rows: int, rank: int,
                 world: int) -> tuple[Any, Any]:
    """(train, valid) as memory-mapped splits (pipeline.features.arrays). Under DDP rank 0 converts the Parquet
    files on first use while the other ranks wait, then every rank maps the same arrays."""
    from pipeline.features import arrays

    if world > 1:
        import torch.distributed as dist

        if rank == 0:
            for split in ("train", "valid"):
                arrays.ensure_arrays(run_dir, split, spec)
        dist.barrier()
    return tuple(arrays.open_split(run_dir, split, tasks, spec, text_rows) for split in ("train", "valid"))


def _place(train: Any, device: Any) -> Any:
    """On CUDA the whole split goes to the GPU when it takes under half the free memory (batches are then
    gathered from GPU tensors); otherwise it stays memory-mapped and each batch is gathered into pinned host
    memory and copied asynchronously."""
    if device.type != "cuda":
        return train
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return train.to(device) if train.nbytes() < free // 2 else train.pin_memory()


def _check_sample_spaces(train: Any, valid: Any, tasks: tuple[str, ...], name: str) -> None:
    if len(valid) == 0:
        raise TrainingError(f"{name}: the valid split has no rows (early stopping and model selection need it)")
    counts = train.label_sums()[1]
    empty = [t for t in tasks if float(counts[train.tasks.index(t)]) == 0]
    if len(train) == 0 or empty:
        raise TrainingError(f"{name}: the train split has no rows for task(s) {empty or list(tasks)}")


def _meta(cfg: Config, run_id: str, name: str, arch: str, model: Any, inputs: Any, s: Any, rows: int,
          world: int) -> dict[str, Any]:
    hist = [{k: v for k, v in row.items()} for row in s.history]
    return {
        "run_id": run_id, "name": name, "model": arch, "tasks": list(model.tasks),
        "loss_tasks": list(model.loss_tasks), "config": {"model": dataclasses.asdict(model.cfg),
                                                         "train": dataclasses.asdict(cfg.train)},
        "config_hash": cfg.hash(), "inputs": inputs.to_dict(), "best_epoch": s.best["epoch"],
        "epochs": hist, "train_rows": rows, "device": str(s.device), "world_size": world,
        "loss_curves": {t: [row["train_loss"][t] for row in hist] for t in model.loss_tasks},
        "valid_auc_curves": {t: [row["valid"]["auc"][t] for row in hist] for t in model.tasks},
    }


def load_trained(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode on the CPU, meta). Weights load with weights_only=True: no pickle from disk."""
    import torch

    from pipeline import models
    from pipeline.features.dataset import InputSpec

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / META_FILE).is_file():
        raise TrainingError(f"no trained model in {model_dir} (expected {MODEL_FILE} and {META_FILE})")
    meta = read_json(model_dir / META_FILE)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    stored = {**LEGACY_MODEL_KEYS, **meta["config"]["model"]}
    mcfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in fields})
    model = models.build(meta["model"], InputSpec.from_dict(meta["inputs"]), mcfg, tuple(meta["tasks"]))
    state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    if meta["inputs"].get("text_encoder"):  # text.finetune=joint: the transformer's weights are in encoder/
        from pipeline.models.text_tower import load_stored_state

        load_stored_state(model, state, model_dir / JOINT_ENCODER_DIR)
    else:
        model.load_state_dict(state)
    return model.eval(), meta


def predict(model: Any, data: Any, batch_size: int = 65536) -> Any:
    """Probabilities float32 [N, T], columns in `model.tasks` (= meta["tasks"]) order."""
    import torch

    from pipeline.training.trainer import predict_logits

    device = next(model.parameters()).device
    logits = predict_logits(model, data, device, batch_size)
    return torch.sigmoid(torch.stack([logits[t] for t in model.tasks], 1)).numpy()


def main(argv: list[str] | None = None) -> None:
    """Entry point for torchrun (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pipeline.training.train", description="train one model of a run")
    p.add_argument("--home", default=os.environ.get("MTL_HOME", ".mtl"))
    p.add_argument("--run-id", required=True)
    p.add_argument("--name", default=MTL_MODEL)
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides, home=args.home)
    result = train_model(cfg, args.run_id, args.name, args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line for pipeline.training.launch to read
        print(RESULT_MARK + json.dumps(result), flush=True)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
