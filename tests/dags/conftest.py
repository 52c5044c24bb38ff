"""Fixtures for the Airflow / end-to-end tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the SQLite metadata DB (dag.test needs it: no such table: task_instance otherwise) in the temp AIRFLOW_HOME of conftest."""
    from airflow.utils.db import initdb

    initdb()
