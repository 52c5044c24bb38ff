"""Print the gate scenario table as Markdown: champion before -> after and the gate lines of each scenario.

    PYTHONPATH=. .venv/bin/python bench/gate_scenarios.py       # about 2-3 minutes on 2 cores

The scenarios of tests/dags/test_registry.py, run for real in a temporary folder: the tiny landing of the tests
(10 days x 3000 impressions), published into a home's lake, then real trained models (tests/dags/gate_scenarios.py:
WEAK, STRONG, a ctr-only STRONG) registered in order on a MLflow SQLite store: a weak first version, a ctr-only
challenger, a clearly stronger one, a backfill of an older day, a degraded one; then, on a fresh registry over
the same weak first version, two dates registering at once (two processes).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "dags")]


def main() -> None:
    import logging

    from conftest import FAST, TINY
    from gate_scenarios import CONCURRENT, SCENARIOS, release, release_in_processes, rows_of, table, train

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.run import run_all

    logging.disable(logging.WARNING)
    # MLflow prints progress on stdout: keep stdout for the table.
    with tempfile.TemporaryDirectory(prefix="mtl-gate-") as tmp, contextlib.redirect_stdout(sys.stderr):
        root = Path(tmp)
        generate(root / "landing", **TINY)
        home = root / "home"
        run_all(load_config(overrides=[*FAST, "dry_run=true"], home=home), root / "landing", "2026-01-10")
        for kind, date in {(k, d) for _, k, d in SCENARIOS} | set(CONCURRENT):
            train(home, FAST, kind, date, root / "landing")
        fresh = root / "fresh"
        shutil.copytree(home, fresh)
        rows = [release(home, FAST, kind, date) for _, kind, date in SCENARIOS]
        labels = [label for label, _, _ in SCENARIOS]
        rows.append(release(fresh, FAST, "weak", "2026-01-08"))
        labels.append("concurrent: weak first version")
        both = sorted(rows_of(release_in_processes(fresh, FAST, CONCURRENT)), key=lambda r: r["version"])
        rows += both
        labels += [f"concurrent: {r['run']} (at once)" for r in both]
    print(table(rows, labels))


if __name__ == "__main__":
    main()
