"""Issue 7 item 2: a training process killed by SIGKILL mid-epoch resumes from its last checkpoint and ends
exactly where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import RUN_ID, SMALL, write_run

from pipeline.config import load_config
from pipeline.errors import TrainingError
from pipeline.training.train import train_model

REPO = Path(__file__).resolve().parents[2]
# Small batches make an epoch last long enough for the kill to land inside one.
RESUME = SMALL + ["train.epochs=3", "train.batch_size=16", "train.patience=3", "model.dropout=0.2"]


def _train_cmd(home: Path, *extra: str) -> list[str]:
    sets = [x for o in RESUME + list(extra) for x in ("--set", o)]
    return [sys.executable, "-m", "pipeline.training.train", "--home", str(home), "--run-id", RUN_ID, *sets]


def _kill_during_epoch_2(home: Path, extra: list[str]) -> int:
    ckpt = home / "runs" / RUN_ID / "checkpoints" / "mtl" / "last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(home, *extra), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        time.sleep(0.05)  # inside epoch 2 (an epoch of 6000 rows in batches of 16 takes ~1 s)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    return int(torch.load(ckpt, weights_only=True)["epoch"])


@pytest.mark.parametrize("weighting", ["gradnorm"])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, weighting):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for home in (killed, clean):
        write_run(home, {"train": 6000, "valid": 800})
    extra = [f"train.weighting={weighting}"]
    done = _kill_during_epoch_2(killed, extra)
    assert done == 1, f"the kill landed after epoch {done}; it should be inside epoch 2"
    assert not (killed / "runs" / RUN_ID / "models" / "mtl").exists()  # nothing half-written is visible
    torch.set_num_threads(1)
    resumed = train_model(load_config(None, RESUME + extra, home=killed), RUN_ID, resume=True)
    reference = train_model(load_config(None, RESUME + extra, home=clean), RUN_ID)
    assert resumed["valid"] == reference["valid"] and resumed["best_epoch"] == reference["best_epoch"]
    a = torch.load(Path(resumed["model_dir"]) / "model.pt", weights_only=True)
    b = torch.load(Path(reference["model_dir"]) / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b)
    meta = json.loads((Path(resumed["model_dir"]) / "meta.json").read_text())
    assert [row["epoch"] for row in meta["epochs"]] == [1, 2, 3]
    assert not (killed / "runs" / RUN_ID / "checkpoints").exists()  # removed once the model is written


def test_resume_refuses_a_checkpoint_of_another_configuration(feature_run):
    ckpt = feature_run / "runs" / RUN_ID / "checkpoints" / "mtl" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"tag": "someone-else:mtl", "epoch": 1}, ckpt)
    with pytest.raises(TrainingError, match="another configuration"):
        train_model(load_config(None, SMALL, home=feature_run), RUN_ID, resume=True)
