"""Batch scoring of one landing day with a registered model.

    score(cfg, "models:/ecommerce-mtl@champion", landing, "2026-01-10", "scores.parquet")

reads `<landing>/impressions/dt=D/*` plus the landing's users/items snapshots, scores the rows through the
model's pyfunc in a fresh interpreter (`pipeline.registry_score.predict_isolated`: the model rebuilds features from raw rows with its own
bundled state and code, history from the lake of `serving.history_from` when set, new texts cached under
`serving.text_cache`) and writes `event_id`, `p_<task>` per task and `score` as Parquet, atomically.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Config
from pipeline.errors import IngestError
from pipeline.io import atomic_path
from pipeline.paths import parse_date
from pipeline.registry_score import predict_isolated

if TYPE_CHECKING:
    import polars as pl

def read_landing_day(landing: str | os.PathLike, date: str | dt.date) -> pl.DataFrame:
    """Impressions of day D (cast to the contract types) left-joined with the landing's users and items."""
    import polars as pl

    from pipeline.data.ingest import conform, read_day, read_file, snapshot_file

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


def score(cfg: Config, model_uri: str, landing: str | os.PathLike, date: str | dt.date,
          out: str | os.PathLike) -> dict[str, object]:
    """Score landing day `date` with `model_uri`; write `event_id`, `p_<task>`, `score` to `out` (Parquet)."""
    rows = read_landing_day(landing, date)
    result = predict_isolated(cfg, model_uri, rows.to_pandas())
    out = Path(out)
    with atomic_path(out) as tmp:
        result.to_parquet(tmp, index=False)
    return {"out": str(out), "rows": len(result)}
