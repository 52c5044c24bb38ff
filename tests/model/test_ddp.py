"""DDP through torchrun on CPU (gloo, 2 processes): ranks share each global batch and end with the same
weights as one process training on the whole batches (checked where the two are mathematically equal:
all-impression tasks, no dropout or id dropout (random masks differ by rank), equal halves). Under DDP the id
table has dense gradients (`train.embedding_grad=auto`, for NCCL), so the one-process reference trains it densely
too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import RUN_ID, SMALL, write_run

from pipeline.config import load_config
from pipeline.training.train import train_model

REPO = Path(__file__).resolve().parents[2]
DDP = SMALL + ["train.epochs=2", "train.batch_size=200", "model.tasks=[ctr,cart]", "model.dropout=0.0", "model.id_dropout=0.0",
               "train.patience=2"]


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    ddp_home, one_home = tmp_path / "ddp", tmp_path / "one"
    for home in (ddp_home, one_home):
        write_run(home, {"train": 3000, "valid": 600})  # 3000 = 15 global batches of 200, halves of 100
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "pipeline.training.train", "--home", str(ddp_home),
           "--run-id", RUN_ID, *[x for o in DDP for x in ("--set", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = ddp_home / "runs" / RUN_ID / "models" / "mtl"
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["best_epoch"] >= 1
    torch.set_num_threads(1)
    single = train_model(load_config(None, [*DDP, "train.embedding_grad=dense"], home=one_home), RUN_ID)
    a = torch.load(model_dir / "model.pt", weights_only=True)
    b = torch.load(Path(single["model_dir"]) / "model.pt", weights_only=True)
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def test_launch_runs_torchrun_from_the_config(tmp_path):
    """`train.nproc_per_node=2` makes the stage run torchrun over the pipeline's own entry point (what the DAG's
    training tasks and `mtl train` call) and return rank 0's result; the id table is dense under DDP."""
    from pipeline.training.launch import launch, torchrun_command

    home = tmp_path / "home"
    write_run(home, {"train": 1200, "valid": 400})
    cfg = load_config(None, [*DDP, "train.epochs=1", "train.nproc_per_node=2", "train.threads=1"], home=home)
    out = launch(cfg, RUN_ID)
    meta = json.loads((Path(out["model_dir"]) / "meta.json").read_text())
    assert meta["world_size"] == 2 and out["best_epoch"] == 1 and "auc" in out["valid"]
    cmd = torchrun_command(load_config(None, ["train.nnodes=2", "train.node_rank=1", "train.nproc_per_node=4",
                                              "train.rdzv_endpoint=10.0.0.5:29500"], home=home),
                           "c.json", RUN_ID, "mtl", resume=True)
    assert {"--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--rdzv_endpoint=10.0.0.5:29500",
            "--resume"} <= set(cmd) and "--standalone" not in cmd
