"""Shared test set-up.

Airflow reads its configuration the first time `airflow` is imported, so the environment
is set here at conftest import time, before any test module can import it. No unit-test mode: it would load
Airflow's own test config (examples on, a dags folder inside Airflow's tree).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mtl-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "mtl-tests-" + "x" * 48)
# A stray MLFLOW_TRACKING_URI from the shell must not send test runs to a real server.
os.environ.pop("MLFLOW_TRACKING_URI", None)

TINY = {"days": 10, "impressions_per_day": 3000, "users": 400, "items": 150, "seed": 7, "start_date": "2026-01-01"}
TINY_LAST_DATE = "2026-01-10"

FAST = [
    "text.enabled=false",
    "train.epochs=1",
    "train.batch_size=512",
    "train.threads=1",
    "model.embedding_dim=8",
    "model.num_experts=2",
    "model.expert_hidden=[16]",
    "model.tower_hidden=[8]",
    "model.bottom_hidden=[16]",
    "gate.bootstrap=20",
]


@pytest.fixture(scope="session")
def tiny_landing(tmp_path_factory) -> Path:
    """A generated landing folder: 10 days 2026-01-01..2026-01-10, 3000 impressions a day. Read-only: copy it
    before changing anything."""
    from pipeline.data.generate import generate

    out = tmp_path_factory.mktemp("tiny") / "landing"
    generate(out, **TINY)
    return out


@pytest.fixture
def tiny_last_date() -> str:
    return TINY_LAST_DATE


@pytest.fixture
def fast_overrides() -> list[str]:
    """`key=value` overrides that make a whole run quick (text off, 1 epoch, small model)."""
    return list(FAST)


@pytest.fixture(scope="session")
def fast_overrides_session() -> tuple[str, ...]:
    """The same overrides for session/module-scoped fixtures (a tuple, so nobody can change them)."""
    return tuple(FAST)


@pytest.fixture
def tmp_home(tmp_path, monkeypatch) -> Path:
    """A fresh MTL home; MTL_HOME points at it for code that reads the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MTL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory, tiny_landing, fast_overrides_session) -> Path:
    """A home after dry runs (no registry) of `run_all` for the last two days of tiny_landing, built once per
    session and shared by the evaluation, registry and serving tests. Copy it; never write into it."""
    from pipeline.config import load_config
    from pipeline.run import run_all

    root = tmp_path_factory.mktemp("trained") / "home"
    cfg = load_config(overrides=[*fast_overrides_session, "dry_run=true"], home=root)
    for day in ("2026-01-09", "2026-01-10"):
        run_all(cfg, tiny_landing, day)
    return root
