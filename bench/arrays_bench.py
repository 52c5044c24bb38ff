"""The training data path alone at any size: Parquet -> memory-mapped arrays, one shuffled epoch of batch
gathers, one chunked pass over the valid split; wall time and peak RSS per phase. One JSON line.

    .venv/bin/python bench/arrays_bench.py --run-dir .mtl/runs/2026-01-14 --times 10 --out /tmp/x10run
    .venv/bin/python bench/arrays_bench.py --run-dir /tmp/x10run --path memory   # the in-memory path, to compare

--times K first writes a copy of the run's features under --out whose train.parquet is the original's rows K
times (row groups kept), which is what training would see at K x the train days' rows. `--path mapped` (default)
is what `mtl train` reads (pipeline.features.arrays.open_split; conversion on first use); `--path memory` is
`dataset.load_split` (all rows as tensors) plus the whole-split shuffle copy the trainer made per epoch before.
No model runs: for the trainer's own figures run `/usr/bin/time -v mtl train ...` on the same run folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_run(src: Path, out: Path, times: int) -> Path:
    """runs/<id>-like folder `out` with features/{spec, state, valid.parquet} of `src` and train x `times`."""
    import pyarrow.parquet as pq

    feats = out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    for name in ("feature_spec.json", "valid.parquet"):
        shutil.copy2(src / "features" / name, feats / name)
    if (src / "features" / "state").is_dir() and not (feats / "state").exists():
        shutil.copytree(src / "features" / "state", feats / "state")
    pf = pq.ParquetFile(src / "features" / "train.parquet")
    with pq.ParquetWriter(feats / "train.parquet", pf.schema_arrow) as w:
        for _ in range(times):
            for g in range(pf.num_row_groups):
                w.write_table(pf.read_row_group(g))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--times", type=int, default=0, help="write a K x train copy under --out first")
    p.add_argument("--out", type=Path)
    p.add_argument("--path", choices=("mapped", "memory"), default="mapped")
    p.add_argument("--batch-size", type=int, default=2048)
    a = p.parse_args()
    import torch

    from pipeline.features import arrays, dataset

    run = fake_run(a.run_dir, a.out, a.times) if a.times else a.run_dir
    tasks, row, t0 = ("ctr", "cvr", "ctcvr"), {"path": a.path, "run_dir": str(run)}, time.perf_counter()
    if a.path == "mapped":
        for split in ("train", "valid"):
            arrays.ensure_arrays(run, split)
        row["convert_s"], row["convert_peak_rss_mb"] = round(time.perf_counter() - t0, 1), round(_rss_mb())
        train, valid = (arrays.open_split(run, s, tasks) for s in ("train", "valid"))
    else:
        train, valid = (dataset.load_split(run, s, tasks) for s in ("train", "valid"))
        row["load_s"], row["load_peak_rss_mb"] = round(time.perf_counter() - t0, 1), round(_rss_mb())
    row["train_rows"], t0 = len(train), time.perf_counter()
    gen, seen = torch.Generator().manual_seed(0), 0
    if a.path == "memory":  # the old per-epoch shuffle: one gather of the whole split, then slices
        train = train.take(torch.randperm(len(train), generator=gen))
    for chunk in dataset.batches(train, a.batch_size, shuffle=a.path == "mapped", generator=gen):
        seen += len(chunk)
    row["epoch_s"], row["epoch_peak_rss_mb"] = round(time.perf_counter() - t0, 1), round(_rss_mb())
    t0 = time.perf_counter()
    n_valid = sum(len(c) for c in dataset.batches(valid, 65536))
    row.update(valid_rows=n_valid, valid_pass_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(_rss_mb()))
    assert seen == row["train_rows"]
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
