"""Print the reliability table as Markdown: case | outcome | message.

    .venv/bin/python bench/reliability_table.py            # data catalog rows + end-to-end rows (~3-4 min)
    .venv/bin/python bench/reliability_table.py --no-data  # only the end-to-end / crash / rerun rows

The data rows come from bench/bad_inputs_table.py (tests/data/test_bad_inputs.py's catalog). The other rows
run the scenarios of tests/dags/test_reliability.py for real (generate, run_all, MLflow SQLite store, SIGKILL)
in a temporary folder: one home gets a champion for 2026-01-09, each scenario runs 2026-01-10 on a copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
Outcome = tuple[str, str]  # (outcome, message)


def _first_line(exc: Exception) -> str:
    """The line of an MTLError worth a table cell: the first failure of a validation report, else line 1."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[1].lstrip("- ") if len(lines) > 1 and "failed" in lines[0] else lines[0]


def _row(root: Path, name: str, fn: Callable[[], Outcome]) -> tuple[str, str, str]:
    from pipeline.errors import MTLError

    try:
        outcome, message = fn()
    except MTLError as exc:
        outcome, message = type(exc).__name__, _first_line(exc)
    message = message.replace(str(root), "…").replace("|", "/")
    return name, outcome, message[:220]


def scenarios(
    root: Path, landing: Path, base: Path, fast: list[str]
) -> list[tuple[str, Callable[[], Outcome]]]:
    """(case, fn) pairs; each fn works on its own copy of `base` and returns (outcome, message)."""
    import polars as pl
    from e2e_helpers import copy_landing, tree_bytes
    from test_reliability import (
        TEST_DAY,
        _day_file,
        _edit,
        _fresh_ids,
        _kill_mid_write,
        _run,
        registry_state,
        reuse_published_ids,
    )

    from pipeline.config import load_config
    from pipeline.errors import DataValidationError

    counter = iter(range(1000))

    def fresh() -> tuple[Path, Path]:
        i = next(counter)
        home = root / f"h{i}"
        shutil.copytree(base, home)
        return home, copy_landing(landing, root / f"l{i}")

    def zero_clicks(warn: bool) -> Outcome:
        home, land = fresh()
        _edit(
            _day_file(land),
            lambda df: df.with_columns(
                pl.lit(0, pl.Int8).alias(c) for c in ("clicked", "carted", "purchased")
            ),
        )
        res = _run(home, fast, land, *(["validation.drift_action=warn"] if warn else []))
        report = json.loads((home / "runs" / TEST_DAY / "evaluation.json").read_text())
        aucs = {m: [v["overall"]["auc"] for v in t.values()] for m, t in report["models"].items()}
        undefined = [r for r in report["gate"]["reasons"] if "undefined" in r]
        return "success", (
            f"every test AUC null: {all(a is None for v in aucs.values() for a in v)}; gate failed "
            f"({undefined[0] if undefined else report['gate']['reasons'][0]}); version "
            f"{res['register']['version']} registered, champion stays "
            f"{registry_state(home)['aliases']['champion']}"
        )

    def cold_start() -> Outcome:
        home, land = fresh()
        _fresh_ids(land)
        res = _run(home, fast, land)
        test = pl.read_parquet(home / "runs" / TEST_DAY / "features" / "test.parquet")
        pred = pl.read_parquet(home / "runs" / TEST_DAY / "predictions" / "mtl.parquet")
        return "success", (
            f"{int((test['cat__user_id'] == 0).sum())}/{test.height} users and "
            f"{int((test['cat__item_id'] == 0).sum())} items on reserved index 0; p_ctr in "
            f"[{pred['p_ctr'].min():.3f}, {pred['p_ctr'].max():.3f}]; version "
            f"{res['register']['version']}"
        )

    def extreme_prices() -> Outcome:
        home, land = fresh()
        ids = pl.read_parquet(_day_file(land))["item_id"].unique().sort()
        _edit(
            land / "items.parquet",
            lambda df: df.with_columns(
                pl.when(pl.col("item_id") == ids[0])
                .then(1e-6)
                .when(pl.col("item_id") == ids[1])
                .then(1e9)
                .otherwise(pl.col("price"))
                .alias("price")
            ),
        )
        res = _run(home, fast, land)
        pred = pl.read_parquet(home / "runs" / TEST_DAY / "predictions" / "mtl.parquet")
        return "success", (
            f"prices 1e-6 and 1e9: score finite {pred['score'].is_finite().all()}, range "
            f"[{pred['score'].min():.3g}, {pred['score'].max():.3g}]; version "
            f"{res['register']['version']}"
        )

    def rejected() -> Outcome:
        home, land = fresh()
        reuse_published_ids(land)
        lake, reg = tree_bytes(home / "lake"), registry_state(home)
        try:
            _run(home, fast, land)
        except DataValidationError as exc:
            unchanged = tree_bytes(home / "lake") == lake and registry_state(home) == reg
            return (
                "DataValidationError",
                f"lake bytes and registry unchanged: {unchanged}; {_first_line(exc)}",
            )
        return "success", "not rejected"

    def killed_features() -> Outcome:
        from pipeline.data.ingest import ingest
        from pipeline.data.validate import validate
        from pipeline.features.build import build_features

        home, _ = fresh()
        cfg = load_config(overrides=fast, home=home)
        ingest(cfg, landing, TEST_DAY)
        validate(cfg, TEST_DAY)
        held = _kill_mid_write(home, fast)
        visible = (home / "runs" / TEST_DAY / "features").exists()
        rows = build_features(cfg, TEST_DAY)["rows"]
        return "recovered", (
            f"SIGKILL with {held} in the temporary folder; features/ visible after the kill: "
            f"{visible}; rerun wrote {rows}"
        )

    def concurrent() -> Outcome:
        home, _ = fresh()
        code = (
            "import sys, time; from pipeline.lock import run_lock\n"
            "with run_lock(sys.argv[1], sys.argv[2], owner='first-trigger'):\n"
            "    print('held', flush=True); time.sleep(60)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(home), TEST_DAY], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        try:
            child.stdout.readline()
            _run(home, fast, landing)
        finally:
            child.kill()
            child.wait()
        return "success", "second run was not refused"

    def rerun() -> Outcome:
        home, _ = fresh()
        first = _run(home, fast, landing)["register"]
        lake, champ = tree_bytes(home / "lake"), registry_state(home)["aliases"]["champion"]
        run = _run(home, fast, landing)
        second = {**run["register"], "champion": run["promote"]["champion"]}
        return "success", (
            f"lake byte-identical: {tree_bytes(home / 'lake') == lake}; champion {champ} -> "
            f"{registry_state(home)['aliases']['champion']} (moved by the rerun: "
            f"{second['champion']}); version {second['version']} rerun_of={second['rerun_of']} "
            f"(first: v{first['version']})"
        )

    def unreachable() -> Outcome:
        from pipeline.errors import RegistryError
        from pipeline.release import register

        home, _ = fresh()
        _run(home, [*fast, "dry_run=true"], landing)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        down = load_config(
            overrides=[
                *fast,
                f"registry.tracking_uri=http://127.0.0.1:{port}",
                "registry.connect_retries=2",
                "registry.retry_wait_s=0.05",
            ],
            home=home,
        )
        try:
            register(down, run_id=TEST_DAY)
            return "success", "registered against a closed port?"
        except RegistryError as exc:
            first = str(exc).splitlines()[0]
        later = register(load_config(overrides=fast, home=home), run_dir=home / "runs" / TEST_DAY)
        return (
            "RegistryError, then registered",
            f"{first} / later `register --run-dir`: version {later['version']}",
        )

    return [
        ("test day with zero clicks (drift_action=fail)", lambda: zero_clicks(False)),
        ("test day with zero clicks (drift_action=warn)", lambda: zero_clicks(True)),
        ("test day: all users and items new (cold start)", cold_start),
        ("extreme prices (1e-6, 1e9) end to end", extreme_prices),
        ("rejected day (event_id seen on an earlier day)", rejected),
        ("SIGKILL of build_features mid-write", killed_features),
        ("second trigger of a running date", concurrent),
        ("rerun of the same date", rerun),
        ("MLflow tracking server unreachable at registration", unreachable),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-data", action="store_true", help="skip the data catalog rows")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "dags")]
    from conftest import FAST, TINY  # the tests' generator settings and quick config
    from test_reliability import DAY, KNOWN_PASS

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.run import run_all

    if not args.no_data:
        table = subprocess.run(
            [sys.executable, str(REPO / "bench" / "bad_inputs_table.py")],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        print("\n".join(table))
    else:
        print("| case | outcome | message |\n|---|---|---|")
    fast = [*FAST, *KNOWN_PASS]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        landing = generate(root / "landing", **TINY)["landing"]
        run_all(load_config(overrides=fast, home=root / "base"), landing, DAY)
        for name, fn in scenarios(root, Path(landing), root / "base", fast):
            row = _row(root, name, fn)
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
