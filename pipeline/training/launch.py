"""Run one model's training in this process, or over several processes/hosts with torchrun.

    launch(cfg, run_id, name="mtl", resume=False) -> train_model's result

With `train.nproc_per_node` > 1 or `train.nnodes` > 1, this runs `python -m torch.distributed.run ... -m
pipeline.training.train` (the pipeline's own entry point) with the run's exact config written to a file, waits,
and returns rank 0's result. The DAG's training tasks and `mtl train` both call this, so a multi-GPU host (or
several, with a rendezvous endpoint) trains from the Airflow UI like a single process does.

Under DDP the large id table uses dense gradients (`train.embedding_grad=auto`): NCCL has no sparse all-reduce,
and the same choice on gloo keeps CPU tests on the path GPUs take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from pipeline.config import Config, save_config
from pipeline.errors import TrainingError
from pipeline.paths import MTL_MODEL, Layout


def torchrun_command(cfg: Config, config_path: str, run_id: str, name: str, resume: bool) -> list[str]:
    """The torchrun command line for this config (standalone rendezvous on one host, c10d across hosts)."""
    t = cfg.train
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={t.nproc_per_node}",
           f"--nnodes={t.nnodes}"]
    if t.nnodes > 1:
        cmd += [f"--node_rank={t.node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={t.rdzv_endpoint}",
                f"--rdzv_id={run_id}-{name}"]
    else:
        cmd.append("--standalone")
    cmd += ["-m", "pipeline.training.train", "--home", str(cfg.home), "--run-id", run_id, "--name", name,
            "--config", config_path]
    return cmd + (["--resume"] if resume else [])


def launch(cfg: Config, run_id: str, name: str = MTL_MODEL, resume: bool = False,
           timeout_s: float | None = None) -> dict[str, Any]:
    """Train model `name` of run `run_id`, distributed when the config asks for it; see the module docstring."""
    from pipeline.training.train import RESULT_MARK, train_model

    if (cfg.train.nproc_per_node <= 1 and cfg.train.nnodes <= 1) or name.startswith("gbdt_"):
        return train_model(cfg, run_id, name, resume)  # LightGBM has its own threads (gbdt.n_jobs), no DDP
    # the ranks read the run's exact config from this file (never re-resolved from $MTL_CONFIG or a form)
    config_path = Layout.of(cfg.home).run_dir(run_id) / "launch" / f"{name}.config.json"
    save_config(cfg, config_path)
    env = dict(os.environ)
    if cfg.train.threads > 0:  # torchrun otherwise sets OMP_NUM_THREADS=1 per rank with a warning
        env["OMP_NUM_THREADS"] = str(cfg.train.threads)
    cmd = torchrun_command(cfg, str(config_path), run_id, name, resume)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    sys.stderr.write(proc.stderr[-20000:])  # the ranks' logs, for the task log
    marked = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not marked:
        raise TrainingError(f"torchrun ({cfg.train.nproc_per_node} process(es) x {cfg.train.nnodes} node(s)) "
                            f"failed for {run_id}/{name} with exit {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(marked[-1][len(RESULT_MARK):])
