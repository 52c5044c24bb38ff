"""Where everything lives under the home folder (default `.mtl`, env `MTL_HOME`).

    <home>/lake/impressions/dt=D/part-*.parquet (+ _FINGERPRINT.json)   ingested, validated-on-read days
    <home>/lake/users/dt=D/users.parquet, <home>/lake/items/dt=D/items.parquet   dated snapshots
    <home>/runs/<run_id>/                                  one nightly run (run_id defaults to the date D)
        validation/   validation.json, data_docs/
        features/     train|valid|test.parquet, feature_spec.json, state/ (vocabularies, history, text)
        models/<name>/ model.pt, meta.json        name = "mtl" or "baseline_<task>"
        models/gbdt_<task>/ model.txt, meta.json  the LightGBM baseline (LightGBM's text format)
        evaluation.json, predictions/<name>.parquet, registration.json
    <home>/text_cache/<encoder-key>/                       text embeddings by text hash, shared across runs
    <home>/text_encoders/<date>-<version>/                 contrastively fine-tuned encoders (reused for days)
    <home>/mlflow.db, <home>/mlartifacts/                  default MLflow tracking store and artifacts
    <home>/locks/                                          per-date run locks
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError


def parse_date(value: str | dt.date) -> dt.date:
    """'2026-11-29' -> date; raises ConfigError on anything else."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(f"not a date (YYYY-MM-DD): {value!r}") from None


@dataclass(frozen=True)
class Layout:
    home: Path

    @classmethod
    def of(cls, home: str | os.PathLike) -> Layout:
        return cls(Path(home).resolve())

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    def impressions_dir(self, date: dt.date | str) -> Path:
        return self.lake / "impressions" / f"dt={parse_date(date).isoformat()}"

    def snapshot(self, table: str, date: dt.date | str) -> Path:
        return self.lake / table / f"dt={parse_date(date).isoformat()}" / f"{table}.parquet"

    def ingested_dates(self) -> list[dt.date]:
        root = self.lake / "impressions"
        if not root.is_dir():
            return []
        from pipeline.io import recover

        for aside in root.glob(".dt=*.old"):  # a publish killed mid-swap: put the day back before listing
            recover(root / aside.name[1:-4])
        return sorted(parse_date(p.name[3:]) for p in root.iterdir() if p.is_dir() and p.name.startswith("dt="))

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    @property
    def text_cache(self) -> Path:
        return self.home / "text_cache"

    @property
    def text_encoders(self) -> Path:
        return self.home / "text_encoders"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def locks(self) -> Path:
        return self.home / "locks"


# Names inside a run folder, shared by every stage.
VALIDATION_DIR = "validation"
FEATURES_DIR = "features"
MODELS_DIR = "models"
EVALUATION_FILE = "evaluation.json"
REGISTRATION_FILE = "registration.json"
MTL_MODEL = "mtl"
SELECTED_MODEL = "mtl_selected"  # with train.refit: the model selected on valid, before the refit (reported only)


def baseline_name(task: str) -> str:
    return f"baseline_{task}"


def gbdt_name(task: str) -> str:
    return f"gbdt_{task}"
