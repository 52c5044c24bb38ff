"""The `mtl` CLI: every command has --help, imports stay light, errors exit 2 with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.lock import run_lock

COMMANDS = ["generate", "import", "ingest", "validate", "aggregate", "features", "train", "evaluate", "register", "run",
            "show", "score", "promote", "rollback"]
HEAVY = ("torch", "mlflow", "great_expectations", "polars", "transformers", "airflow")


def test_every_command_has_help(capsys):
    for command in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"] if command else ["--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "usage: mtl" in out
        if command not in (None, "generate", "import"):
            assert "--home" in out and "--config" in out and "--set" in out


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom pipeline import cli\ntry:\n    cli.main(['run', '--help'])\nexcept SystemExit:\n"
            f"    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["show", "--date", "2026-01-10", "--set", "train.epochs=zero"], "train.epochs"),
        (["show", "--date", "2026-01-10", "--set", "model.name=gpt"], "model.name"),
        (["show", "--date", "Jan 10"], "not a date"),
        (["show"], "--date"),
        (["run", "--date", "2026-01-10"], "--landing is required"),
    ],
)
def test_errors_exit_2_with_message_on_stderr(argv, fragment, tmp_home, capsys):
    assert cli.main(argv) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.err.startswith(f"mtl {argv[0]}: ConfigError")
    assert captured.out == ""


def test_missing_config_file_names_it(tmp_home, capsys):
    assert cli.main(["show", "--date", "2026-01-10", "--config", str(tmp_home / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_run_refuses_a_date_that_another_run_holds(tmp_home, tmp_path, capsys):
    with run_lock(tmp_home, "2026-01-10", owner="airflow:mtl_retrain:manual__x"):
        assert cli.main(["run", "--landing", str(tmp_path), "--date", "2026-01-10"]) == 2
    err = capsys.readouterr().err
    assert "ConcurrentRunError" in err and "airflow:mtl_retrain:manual__x" in err
    assert not (tmp_home / "lake").exists() and not (tmp_home / "runs").exists()


def test_show_prints_json(tmp_home, capsys):
    (tmp_home / "runs" / "2026-01-10").mkdir(parents=True)
    (tmp_home / "runs" / "2026-01-10" / "evaluation.json").write_text('{"models": {}}')
    assert cli.main(["show", "--date", "2026-01-10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == "2026-01-10" and out["evaluation"]["content"] == {"models": {}}
