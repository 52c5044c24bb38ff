"""Training throughput of each architecture. One JSON line per architecture:

    {"model": ..., "samples_per_s": ..., "peak_rss_mb": ..., "auc": {task: ...}, ...}

Data: a generated landing folder of 14 days x 150,000 impressions (200k users, 50k items), or --landing DIR;
ingest -> validate -> features run once for its last day (12 train days, 1 valid, 1 test) and are cached under
--work. Each architecture then trains in a fresh process (so peak RSS is its own) for one epoch; samples/s is
train rows / wall time of the training pass (no evaluation inside); AUC is on the test day.

--peer-config: exactly the peers' setting (torch-rechub / DeepCTR benches): embedding 16, 4 experts [64], towers [32], batch 2048,
Adam lr 1e-3, 1 epoch, 2 torch threads, categorical features user_id, item_id, category, brand, shop_id, surface,
position, age_bucket, gender, city_tier plus log price only; no dropout, no weight decay, no embedding L2;
BatchNorm in the MLPs and gates as in theirs; no cross layers and no tower skip (the paper's MMoE, as theirs).
Our training recipe stays ours (train.sample_space_weighting, train.embedding_lr_scale: the defaults).

    .venv/bin/python bench/train_bench.py --peer-config --models mmoe,ple
    .venv/bin/python bench/train_bench.py --peer-config --models mmoe --rechub /tmp/peer/bin/python --seeds 3

Parity figures (issue 11), at the issue's size (14 days x 150k impressions, 200k users, 50k items: 1.8M train
rows), `--threads 2 --seeds 5 --rechub ...`, each seed's two runs back to back (odd seeds the peer first),
mean over seeds 0-4 (sd):

    ours, the paper's MMoE    ctr 0.7541 (.0005) / cart 0.7492 / ctcvr 0.7881 / cvr 0.7280   136k samples/s (5.75x)
    torch-rechub 0.9 MMOE     ctr 0.7541 (.0008) / cart 0.7453 / ctcvr 0.7816 / cvr 0.6518   24k samples/s

Speed ratio per seed 5.3 / 5.6 / 5.8 / 5.0 / 7.4 (median 5.57x). Ours' ctr per seed 0.7549 / 0.7544 / 0.7540 /
0.7538 / 0.7535 (the same in every run), rechub's 0.7533 / 0.7529 / 0.7547 / 0.7546 / 0.7549 (it moves by up
to 0.0004 between runs of one seed: in an earlier run of the same code, ours always first, 0.7544 / 0.7542 for
seeds 2 / 3, mean 0.7539, and a ratio of 5.11x, median 5.14x, per seed 4.3-6.3x). The machine ran at ~60% of
its idle speed during both runs and drifted within them, so the ratio, not the rate, is the figure. Before
this round's step changes it was 4.86x (198k against 41k); before last round's, 4.5x. This round: the id table
and its two Adam moments in transparent huge pages (pipeline.training.hugepages; a step 0.93-0.96 of its time
before, in-process runs with the steps interleaved), the dense Adam's fused kernels called directly
(optimizers.GroupedAdam: 228 -> 92 us a step) and id dropout drawn for the id columns only (190 -> 115 us).
What closed the ctr gap (the old recipe gave 0.7526 over seeds 0-2, one thread): train.sample_space_weighting=sqrt
(cvr, a mean over the clicked 16% of rows, had the same pull on the shared experts as ctr; alone 0.7536) and
train.embedding_lr_scale=5 (SparseAdam moves a user's row only in the ~9 batches an epoch that hold the user, where
the peers' dense Adam keeps moving every row on its momentum; alone 0.7534). Rechub's cvr column is trained on every
impression (label = purchased), a second ctcvr, which is why its cvr on clicked rows is 0.65. Earlier steps:
BatchNorm (model.batch_norm, on in this list) +0.004 ctr at 600k rows; RowSparseAdam (torch's SparseAdam made three
passes over the whole id table per step) and the fused dense Adam. What took the step from 4.5x to 4.86x, each
timed against the code before it on the same batches in one process (steps interleaved): no bias on a Linear
that feeds BatchNorm plus one fused Adam kernel over the id rows (-5%), the gates' softmax and BatchNorm with the
batch as the inner dim (-1 to -2.5%), ReLU in place after BatchNorm (-1.6%). Tried without gain: id dropout 0 /
0.02, embedding init std 1e-4, dense Adam on the id table, no output-bias init, torch.compile (1.7x slower a step
here), a custom autograd mix, b-major expert layout, jemalloc, one matmul + BatchNorm for experts and gates
together, a block-diagonal or elementwise tower output, towers laid out batch-inner, torch.unique ids before the
lookup, the next batch gathered in a background thread; this round also a sort-based coalesce of the id
gradient, the small table's gradient as a transposed index_add, and the split's arrays in huge pages. What a
step cost before this round (2 threads, 2048 rows, ~11 ms): heads forward ~3 ms and backward (with the
embeddings') ~5.4 ms, the row-wise optimiser ~1.2 ms (cold random rows of the table and both moments), ~3 ms of
it fixed per-op cost (a 64-row step takes 3 ms). bf16 autocast (--set
train.precision=bf16) is faster per CPU second, but the peers run fp32, so the ratio above is fp32 against fp32.

With --set model.batch_norm=false (our layers' default: no BatchNorm), before the step changes above: ctr 0.7538
(.0004) / cart 0.7480 / ctcvr 0.7886 / cvr 0.7288 at 238k samples/s against rechub's 47k (5.1x); its valid ctr is
0.0014 below ours with BatchNorm. --set model.tower_skip=true (ours' default MMoE) ran at 0.88x the paper MMoE's
rate with ctr 0.7545 (.0002), also before them.

--rechub runs torch-rechub 0.9 (MMOE, PLE, ESMM with its DataLoader and MTLTrainer) on the same features for a
side-by-side figure; install it apart from the project, e.g. `python -m venv /tmp/peer` plus a .pth line pointing
at this venv's site-packages, then `/tmp/peer/bin/pip install --no-deps torch-rechub==0.9.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARCHS = ("shared_bottom", "omoe", "mmoe", "ple", "esmm", "aitm")
PEER_CATS = ("user_id", "item_id", "category", "brand", "shop_id", "surface", "position", "age_bucket", "gender",
             "city_tier")
PEER = ["model.embedding_dim=16", "model.num_experts=4", "model.expert_hidden=[64]", "model.tower_hidden=[32]",
        "model.bottom_hidden=[64]", "model.dropout=0.0", "train.batch_size=2048", "train.lr=0.001",
        "train.epochs=1", "train.threads=2", "train.weight_decay=0", "train.embedding_l2=0",
        "model.batch_norm=true",  # the peers' MLPs and gates have BatchNorm after every Linear (torch-rechub's MLP)
        "model.cross_layers=0",  # the peers' MMoE has no cross layers (ours has 2 by default)
        "model.tower_skip=false"]  # nor a tower skip: the paper's MMoE (--set model.tower_skip=true for ours)
DATA = ["data.train_days=12", "data.valid_days=1", "data.test_days=1", "text.enabled=false"]
SIZE = {"days": 14, "impressions_per_day": 150_000, "users": 200_000, "items": 50_000, "seed": 7,
        "start_date": "2026-01-01"}


def prepare(work: Path, landing: Path | None, peer: bool) -> Path:
    """Landing -> features for the last day, cached by setting. Returns the run folder."""
    from pipeline.config import load_config
    home = work / ("home-peer" if peer else "home")
    if landing is None:
        landing = work / "landing"
        if not (landing / "items.parquet").is_file():
            from pipeline.data.generate import generate

            generate(landing, **SIZE)
    date = max(p.name[3:] for p in (landing / "impressions").iterdir() if p.name.startswith("dt="))
    run_dir = home / "runs" / date
    overrides = DATA + ([f"features.categorical=[{','.join(PEER_CATS)}]", "features.history=false",
                        "features.context=false", "features.lexical=false"] if peer else [])
    if (run_dir / "features" / "feature_spec.json").is_file():
        return run_dir
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate
    from pipeline.features.build import build_features

    cfg = load_config(None, overrides, home=home)
    t0 = time.perf_counter()
    ingest(cfg, landing, date)
    validate(cfg, date)
    build_features(cfg, date)
    print(f"# prepared {run_dir} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return run_dir


def peer_spec(spec: dict) -> dict:
    """Keep only the peers' inputs: the ten categorical columns and log price."""
    return {**spec, "categorical": [c for c in spec["categorical"] if c["name"] in PEER_CATS],
            "numeric": [n for n in spec["numeric"] if n == "num__log_price"], "text": {"enabled": False}}


def run_one(name: str, run_dir: Path, peer: bool, overrides: list[str], threads: int) -> dict:
    """Train `name` for one epoch in this process -> the JSON row."""
    import torch

    from pipeline import models
    from pipeline.config import load_config
    from pipeline.features import dataset
    from pipeline.training import trainer

    cfg = load_config(None, (PEER if peer else []) + [f"model.name={name}"] + overrides, home=run_dir.parent.parent)
    torch.set_num_threads(threads or cfg.train.threads or 2)
    torch.manual_seed(cfg.train.seed)
    spec = dataset.read_spec(run_dir)
    spec = peer_spec(spec) if peer else {**spec, "text": {"enabled": False}}
    inputs = dataset.input_spec(run_dir, spec, cfg.text.proj_dim)
    model = models.build(name, inputs, cfg.model, cfg.model.tasks)
    if cfg.train.embedding_grad == "dense":  # as pipeline.training.train does
        model.dense_embedding_gradients()
    train = dataset.load_split(run_dir, "train", model.output_tasks, spec)
    test = dataset.load_split(run_dir, "test", model.output_tasks, spec)
    s = trainer.make_setup(model, train, cfg.train, cfg.train.weighting, torch.device("cpu"))
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(1, cfg.train.epochs + 1):
        trainer.train_epoch(s, train, cfg.train, epoch, name)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    valid = dataset.load_split(run_dir, "valid", model.output_tasks, spec)
    aucs, valid_aucs = _split_aucs(model, test), _split_aucs(model, valid)
    return {"model": name, "samples_per_s": round(len(train) * cfg.train.epochs / seconds),
            "samples_per_cpu_s": round(len(train) * cfg.train.epochs / cpu),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "auc": aucs, "valid_auc": valid_aucs, "train_rows": len(train), "epochs": cfg.train.epochs, "seconds": round(seconds, 1),
            "threads": torch.get_num_threads(), "precision": cfg.train.precision, "peer_config": peer}


def _split_aucs(model, data) -> dict[str, float]:
    """AUC per task of `model` on a split, each on its sample space (cvr: clicked rows)."""
    from pipeline.evaluation.metrics import auc
    from pipeline.training.train import predict

    probs, out = predict(model, data), {}
    for j, t in enumerate(model.tasks):
        k = data.tasks.index(t)
        m = data.mask[:, k] > 0
        out[t] = round(auc(data.labels[m, k].numpy(), probs[m.numpy(), j]), 4)
    return out


RECHUB_LABELS = {"mmoe": ("clicked", "carted", "purchased", "purchased"),
                 "ple": ("clicked", "carted", "purchased", "purchased"),
                 "esmm": ("purchased", "clicked", "purchased")}  # rechub ESMM outputs [cvr, ctr, ctcvr]
RECHUB_TASKS = {"mmoe": ("ctr", "cart", "ctcvr", "cvr"), "ple": ("ctr", "cart", "ctcvr", "cvr"),
                "esmm": ("cvr", "ctr", "ctcvr")}


def run_rechub(name: str, run_dir: Path, threads: int, seed: int = 0) -> dict:
    """torch-rechub 0.9's own model, Dataset/DataLoader and MTLTrainer.train_one_epoch on the same peer-config
    features (run in a separate interpreter that has torch-rechub; it is not a project dependency). Adam lr 1e-3
    without their default weight decay (that would add a pass over every embedding row each step)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the peer interpreter lacks the editable install
    import polars as pl
    import torch
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE, PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    from pipeline.evaluation.metrics import auc
    from pipeline.features.dataset import read_spec

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # its init and its DataLoader's shuffle
    spec = peer_spec(read_spec(run_dir))
    cats = [SparseFeature(c["name"], c["cardinality"], embed_dim=16) for c in spec["categorical"]]
    frames = {s: pl.read_parquet(run_dir / "features" / f"{s}.parquet") for s in ("train", "valid", "test")}

    def xy(df):
        x = {c["name"]: df[c["column"]].to_numpy().astype("int64") for c in spec["categorical"]}
        x["log_price"] = df["num__log_price"].to_numpy()
        return x, np.stack([df[c].to_numpy() for c in RECHUB_LABELS[name]], 1).astype("float32")

    (xt, yt), (xv, yv), (xs, ys) = (xy(frames[s]) for s in ("train", "valid", "test"))
    tasks = ["classification"] * len(RECHUB_TASKS[name])
    expert, towers = {"dims": [64]}, [{"dims": [32]}] * len(tasks)
    model = {"mmoe": lambda: MMOE(cats + [DenseFeature("log_price")], tasks, 4, expert, towers),
             "ple": lambda: PLE(cats + [DenseFeature("log_price")], tasks, 2, 1, 2, expert, towers),
             "esmm": lambda: ESMM(cats[:1] + cats[6:], cats[1:6], {"dims": [64, 32]}, {"dims": [64, 32]})}[name]()
    train_dl, _, test_dl = DataGenerator(xt, yt).generate_dataloader(xv, yv, xs, ys, batch_size=2048)
    trainer = MTLTrainer(model, tasks, optimizer_params={"lr": 1e-3, "weight_decay": 0.0}, n_epoch=1,
                         device="cpu", model_path=tempfile.mkdtemp())
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train_one_epoch(train_dl)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    probs = np.asarray(trainer.predict(model, [x for x, _ in test_dl]))
    test = frames["test"]
    aucs = {}
    for j, t in enumerate(RECHUB_TASKS[name]):
        rows = test["clicked"].to_numpy() == 1 if t == "cvr" else np.ones(test.height, bool)
        aucs[t] = round(auc(ys[rows, j], probs[rows, j]), 4)
    return {"model": f"rechub-{name}", "samples_per_s": round(len(yt) / seconds),
            "samples_per_cpu_s": round(len(yt) / cpu),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "auc": aucs,
            "train_rows": len(yt), "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "seed": seed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(ARCHS), help="comma-separated architectures")
    p.add_argument("--landing", type=Path, help="use this landing folder instead of generating one")
    p.add_argument("--peer-config", action="store_true", help="the peers' exact configuration (see above)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("MTL_BENCH_DIR", ".mtl/bench")))
    p.add_argument("--set", action="append", default=[], dest="overrides", help="extra key=value overrides")
    p.add_argument("--rechub", metavar="PYTHON", help="also run torch-rechub 0.9's mmoe/ple/esmm side by side with "
                   "this interpreter (one that has torch-rechub installed; needs --peer-config): per seed the two "
                   "run back to back (odd seeds the peer first), then a row of speed ratios")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's, 2 in peer config); "
                   "with 1, samples_per_cpu_s is a load-independent figure on a shared machine")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every model (ours and, with --rechub, the peer's) with seeds 0..N-1 and print a mean "
                        "row per model after the per-seed rows (1: ours with the configured train.seed, the peer "
                        "with 0)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--one-rechub", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one or args.one_rechub:
        row = run_rechub(args.one_rechub, args.run_dir, args.threads or 2, args.seed) if args.one_rechub else \
            run_one(args.one, args.run_dir, args.peer_config, args.overrides, args.threads)
        print(json.dumps(row), flush=True)
        return
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    run_dir = prepare(args.work.resolve(), args.landing.resolve() if args.landing else None, args.peer_config)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows: dict[str, list[dict]] = {}
        for seed in range(args.seeds):
            cmd = [sys.executable, __file__, "--one", name, "--run-dir", str(run_dir), "--threads", str(args.threads)]
            cmd += (["--peer-config"] if args.peer_config else []) + [x for o in args.overrides for x in ("--set", o)]
            cmd += ["--set", f"train.seed={seed}"] if args.seeds > 1 else []
            pair = {name: cmd}
            if args.rechub and args.peer_config and name in RECHUB_TASKS:
                pair[f"rechub-{name}"] = [args.rechub, __file__, "--one-rechub", name, "--run-dir", str(run_dir),
                                          "--threads", str(args.threads), "--seed", str(seed)]
            # Odd seeds run the peer first, so a drift of the machine's speed during the run favours neither.
            for model in (list(pair) if seed % 2 == 0 else list(pair)[::-1]):
                rows.setdefault(model, []).append(_child(pair[model]))
        if args.seeds > 1:
            for model, runs in rows.items():
                print(json.dumps(mean_row(model, runs)), flush=True)
        if f"rechub-{name}" in rows:
            print(json.dumps(speed_ratio(name, rows[name], rows[f"rechub-{name}"])), flush=True)


def speed_ratio(name: str, ours: list[dict], peer: list[dict]) -> dict:
    """Our samples/s over the peer's, per seed (each pair ran back to back), their median and the ratio of the
    mean rates."""
    per_seed = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(ours, peer)]
    of_means = float(np.mean([r["samples_per_s"] for r in ours]) / np.mean([r["samples_per_s"] for r in peer]))
    return {"model": name, "vs": f"rechub-{name}", "speed_ratio_per_seed": [round(x, 2) for x in per_seed],
            "speed_ratio_median": round(float(np.median(per_seed)), 2), "speed_ratio_of_means": round(of_means, 2)}


def mean_row(model: str, runs: list[dict]) -> dict:
    """The mean over seeds of the rows of one model: AUC per task (and its sd), samples/s."""
    tasks = runs[0]["auc"]
    return {"model": model, "seeds": len(runs),
            "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in runs]))),
            "samples_per_cpu_s": round(float(np.mean([r["samples_per_cpu_s"] for r in runs]))),
            "auc": {t: round(float(np.mean([r["auc"][t] for r in runs])), 4) for t in tasks},
            "auc_sd": {t: round(float(np.std([r["auc"][t] for r in runs])), 4) for t in tasks}}


def _child(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


if __name__ == "__main__":
    main()
