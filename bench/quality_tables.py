"""Helpers of bench/quality_bench.py: the `mtl` call, AUC per task, the popularity and oracle rows, tables.

The oracle row scores each task with the probabilities the generator drew the labels from (`mtl generate
--oracle-out`, pipeline.data.generate_model.funnel_probs), so it shows how much of the ranking is learnable at
all: a model's gap to it is what is left to gain; no model should pass it but by noise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ORACLE_ROW = "oracle (generator's true probabilities)"


def mtl(*args: str, env: dict | None = None) -> dict:
    """One `mtl` CLI call; its JSON result."""
    exe = Path(sys.executable).with_name("mtl")
    out = subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"mtl {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def add_generator_args(ap, days: int, impressions: int, users: int, items: int, drift: tuple[float, float, float]):
    """The generator flags the quality and drift benches share (their own default sizes and drift settings)."""
    for flag, value in (("--days", days), ("--impressions", impressions), ("--users", users), ("--items", items),
                        ("--seed", 11)):
        ap.add_argument(flag, type=int, default=value)
    ap.add_argument("--popularity-drift", type=float, default=drift[0], help="generator: daily log-popularity step")
    ap.add_argument("--new-items", type=float, default=drift[1], help="generator: share of items appearing later")
    ap.add_argument("--long-tail", type=float, default=drift[2], help="generator: share of reworded titles/queries")


def generator_flags(args) -> list[str]:
    """`mtl generate` arguments (all but --out) from the flags `add_generator_args` defines; start 2026-03-01."""
    return ["--days", str(args.days), "--impressions-per-day", str(args.impressions), "--users", str(args.users),
            "--items", str(args.items), "--seed", str(args.seed), "--start-date", "2026-03-01",
            "--popularity-drift", str(args.popularity_drift), "--new-items", str(args.new_items),
            "--long-tail", str(args.long_tail)]


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from pipeline.evaluation.metrics import auc as _auc

    value = _auc(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64))
    return None if value is None or np.isnan(value) else float(value)


def aucs(frame, probs: dict[str, np.ndarray]) -> dict[str, float | None]:
    """AUC per task of `probs` (task -> float [N]) against the labels of `frame` (N rows), each task on its
    sample space (cvr on clicked rows only)."""
    from pipeline.data.schema import TASKS

    out = {}
    for task, p in probs.items():
        spec = TASKS[task]
        m = np.ones(frame.height, bool) if spec.given is None else frame[spec.given].to_numpy() == 1
        out[task] = auc(frame[spec.label].to_numpy()[m], np.asarray(p)[m])
    return out


def landing_days(landing: Path) -> list[str]:
    return sorted(p.name[3:] for p in (landing / "impressions").glob("dt=*"))


def popularity(landing: Path, train: list[str], test: str, task: str, k: float = 20.0) -> float | None:
    """Test-day AUC of the item's smoothed label rate over the train days (bench/popularity_baseline.py)."""
    import polars as pl

    from pipeline.data.schema import TASKS

    spec = TASKS[task]
    imp = pl.read_parquet(f"{landing}/impressions/*/*.parquet", hive_partitioning=True)
    imp = imp.with_columns(pl.col("dt").cast(pl.String))
    tr, te = imp.filter(pl.col("dt").is_in(train)), imp.filter(pl.col("dt") == test)
    if spec.given:
        tr, te = tr.filter(pl.col(spec.given) == 1), te.filter(pl.col(spec.given) == 1)
    prior = tr[spec.label].mean()
    rate = tr.group_by("item_id").agg(((pl.col(spec.label).sum() + k * prior) / (pl.len() + k)).alias("p"))
    te = te.join(rate, on="item_id", how="left").with_columns(pl.col("p").fill_null(prior))
    return auc(te[spec.label].to_numpy(), te["p"].to_numpy())


def oracle_probs(frame, oracle: Path) -> dict[str, np.ndarray]:
    """The generator's true probability per task for the rows of `frame` (an `event_id` column), float [N]:
    ctr P(click); cart P(click) P(cart | click); ctcvr P(click) P(purchase | click); cvr P(purchase | click)
    (scored on clicked rows only, as the task is). Every row must have its oracle row: a missing one stops."""
    import polars as pl

    orc = pl.read_parquet(f"{oracle}/dt=*/part-0.parquet", hive_partitioning=False)
    got = frame.select("event_id").join(orc, on="event_id", how="left", maintain_order="left")
    missing = got["p_click"].null_count()
    if missing:
        raise SystemExit(f"oracle {oracle}: {missing} of {frame.height} scored rows have no oracle row")
    click, cart, buy = (got[c].to_numpy() for c in ("p_click", "p_cart_given_click", "p_purchase_given_click"))
    return {"ctr": click, "cart": click * cart, "ctcvr": click * buy, "cvr": buy}


def _impressions(landing: Path, day: str, columns: list[str] | None = None):
    import polars as pl

    return pl.read_parquet(landing / "impressions" / f"dt={day}" / "part-0.parquet", columns=columns)


def check_oracle(landing: Path, oracle: Path) -> None:
    """Stop unless the oracle has exactly the landing's days and, per day, its event ids in the same order."""
    import polars as pl

    days, have = landing_days(landing), sorted(p.name[3:] for p in oracle.glob("dt=*"))
    if have != days:
        raise SystemExit(f"oracle {oracle} has days {have[:3]}...; the landing {landing} has {days[:3]}...")
    for day in days:
        want = _impressions(landing, day, ["event_id"])["event_id"]
        got = pl.read_parquet(oracle / f"dt={day}" / "part-0.parquet", columns=["event_id"])["event_id"]
        if not got.equals(want):
            raise SystemExit(f"oracle {oracle} day {day}: event ids differ from the landing's")


def ensure_oracle(landing: Path, oracle: Path, generate_args: list[str]) -> None:
    """Make `oracle` (the oracle folder of a generated `landing`) if it is missing: generate again with the same
    `generate_args` into a temporary folder beside it, with --oracle-out; stop unless the regenerated
    impressions equal the landing's (the arguments were the ones used); keep only the oracle. Then check it."""
    if not oracle.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".oracle-", dir=oracle.parent))
        try:
            mtl("generate", "--out", str(tmp / "landing"), "--oracle-out", str(tmp / "oracle"), *generate_args)
            days = landing_days(landing)
            if landing_days(tmp / "landing") != days:
                raise SystemExit(f"regenerating {landing} with {generate_args} gives other days: not the arguments "
                                 "it was generated with; no oracle written")
            for day in days:
                if not _impressions(tmp / "landing", day).equals(_impressions(landing, day)):
                    raise SystemExit(f"regenerating {landing} with {generate_args} gives other impressions on "
                                     f"{day}: not the arguments it was generated with; no oracle written")
            os.replace(tmp / "oracle", oracle)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    check_oracle(landing, oracle)


def mean_spread(runs: list[dict[str, float | None]]) -> dict[str, str]:
    """Per column over repeated runs: "mean ± sd" (sample standard deviation over the runs)."""
    out = {}
    for key in runs[0]:
        vals = np.array([r[key] for r in runs if r.get(key) is not None], dtype=np.float64)
        out[key] = "-" if len(vals) == 0 else f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.4f}"
    return out


def print_table(title: str, rows: dict[str, dict[str, float | str | None]], tasks: list[str]) -> None:
    """A markdown table: a row per model, a column per task; floats to 4 digits, text as given, None as -."""
    print(f"\n{title}")
    print(f"| model | {' | '.join(tasks)} |")
    print("|---|" + "---|" * len(tasks))
    for name, vals in rows.items():
        cells = ["-" if vals.get(t) is None else vals[t] if isinstance(vals[t], str) else f"{vals[t]:.4f}"
                 for t in tasks]
        print(f"| {name} | " + " | ".join(cells) + " |")
