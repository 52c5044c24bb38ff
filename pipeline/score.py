"""Batch scoring of one landing day with a registered model, and the fused ranking score.

    score(cfg, "models:/ecommerce-mtl@champion", landing, "2026-01-10", "scores.parquet")

reads `<landing>/impressions/dt=D/*` plus the landing's users/items snapshots, scores the rows through the
model's pyfunc in a fresh interpreter (`predict_isolated`: the model rebuilds features from raw rows with its own
bundled state and code) and writes `event_id`, `p_<task>` per task and `score` as Parquet, atomically.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Config
from pipeline.errors import IngestError
from pipeline.io import atomic_path
from pipeline.paths import parse_date

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

PRICE = "price"


def effective_exponents(exponents: Sequence[tuple[str, float]], tasks: Sequence[str]) -> dict[str, float]:
    """The non-zero exponents that apply to a model with `tasks` (a task it does not predict is left out)."""
    return {k: float(v) for k, v in exponents if v != 0 and (k == PRICE or k in tasks)}


def formula(exponents: Mapping[str, float]) -> str:
    """Human-readable fused score, e.g. 'p_ctr^1 * p_cvr^1'."""
    parts = [f"{'price' if k == PRICE else 'p_' + k}^{v:g}" for k, v in exponents.items()]
    return " * ".join(parts) if parts else "1"


def fused_score(probs: Mapping[str, np.ndarray], price: np.ndarray | None, exponents: Mapping[str, float]) -> np.ndarray:
    """score = prod_task p_task^a_task * price^c, over `exponents` (from `effective_exponents`).

    probs: task -> float [N]; price: float [N] (> 0), needed only when the price exponent is non-zero.
    Computed in log space so small probabilities do not underflow before ranking.
    """
    n = len(next(iter(probs.values()))) if probs else (0 if price is None else len(price))
    log_score = np.zeros(n, dtype=np.float64)
    for name, a in exponents.items():
        if name == PRICE:
            if price is None:
                raise ValueError("the fused score has a price exponent but no price was given")
            values = np.asarray(price, dtype=np.float64)
        else:
            values = np.asarray(probs[name], dtype=np.float64)
        log_score += a * np.log(np.clip(values, 1e-12, None))
    return np.exp(log_score)


def read_landing_day(landing: str | os.PathLike, date: str | dt.date) -> pl.DataFrame:
    """Impressions of day D (cast to the contract types) left-joined with the landing's users and items."""
    import polars as pl

    from pipeline.ingest import conform, read_day, read_file, snapshot_file

    root, day = Path(landing), parse_date(date)
    folder = root / "impressions" / f"dt={day.isoformat()}"
    if not folder.is_dir():
        raise IngestError(f"landing day not found: {folder}")
    rows = pl.from_arrow(read_day(folder, day))
    if rows.height == 0:
        raise IngestError(f"empty landing partition: {folder}")
    for table, key in (("users", "user_id"), ("items", "item_id")):
        path = snapshot_file(root, table)
        snap = pl.from_arrow(conform(read_file(path), table, str(path)))
        rows = rows.join(snap, on=key, how="left", suffix=f"_{table}")
    return rows


# Scores in a fresh interpreter that has not imported `pipeline`: MLflow puts the model's bundled copy of the
# code (code_paths) first on sys.path, so a version registered by older code still loads after the code moved on.
_RUNNER = """
import json, sys
import mlflow
from mlflow.exceptions import MlflowException
uri, model_uri, src, dst = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
def fail(code, msg):
    print("MTL-ERROR:" + json.dumps(msg), file=sys.stderr)
    sys.exit(code)
try:
    model = mlflow.pyfunc.load_model(model_uri)
except Exception as exc:
    fail(3, f"cannot load model {model_uri!r}: {type(exc).__name__}: {exc}")
import pandas as pd
try:
    out = model.predict(pd.read_parquet(src))
except MlflowException as exc:
    fail(2, exc.message)
out.to_parquet(dst, index=False)
"""


def predict_isolated(cfg: Config, model_uri: str, rows: pd.DataFrame, timeout_s: float = 3600) -> pd.DataFrame:
    """Score raw rows with a registered model (e.g. `models:/ecommerce-mtl@champion`) in a subprocess.

    Raises RegistryError when the model cannot be found or loaded, DataValidationError when it refuses the rows.
    """
    import json
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    from pipeline.errors import DataValidationError, RegistryError, RuleFailure
    from pipeline.registry import connect, tracking_uri

    connect(cfg)  # fails fast, naming the URI, when the tracking server is down
    uri = tracking_uri(cfg)
    with tempfile.TemporaryDirectory(prefix="mtl-score-") as tmp:
        src, dst = Path(tmp) / "rows.parquet", Path(tmp) / "out.parquet"
        rows.to_parquet(src, index=False)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        try:
            proc = subprocess.run([sys.executable, "-c", _RUNNER, uri, model_uri, str(src), str(dst)], env=env,
                                  cwd=tmp, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RegistryError(f"scoring with {model_uri!r} took longer than {timeout_s:g} s") from None
        if proc.returncode == 0:
            return pd.read_parquet(dst)
    marked = [ln for ln in proc.stderr.splitlines() if ln.startswith("MTL-ERROR:")]
    msg = json.loads(marked[-1][len("MTL-ERROR:"):]) if marked else proc.stderr.strip()[-2000:]
    if proc.returncode == 2:
        raise DataValidationError([RuleFailure("scoring request", "*", msg, len(rows))], where="scoring request")
    raise RegistryError(f"scoring with {model_uri!r} failed (exit {proc.returncode}): {msg}")


def score(cfg: Config, model_uri: str, landing: str | os.PathLike, date: str | dt.date,
          out: str | os.PathLike) -> dict[str, object]:
    """Score landing day `date` with `model_uri`; write `event_id`, `p_<task>`, `score` to `out` (Parquet)."""
    rows = read_landing_day(landing, date)
    result = predict_isolated(cfg, model_uri, rows.to_pandas())
    out = Path(out)
    with atomic_path(out) as tmp:
        result.to_parquet(tmp, index=False)
    return {"out": str(out), "rows": len(result)}
