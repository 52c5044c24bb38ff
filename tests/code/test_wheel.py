"""The package installs anywhere: a wheel built from the tree, installed into a fresh virtual environment, runs
`mtl run` from a folder that is not the checkout (suites and other data come from the installed package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy holding only what the package build reads, so the checkout gets no build/ folder."""
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    return next(out.glob("mtl_ecommerce-*.whl"))


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv whose only copy of `pipeline` is the wheel's. Its dependencies (torch, airflow, ...) come from
    this interpreter's site-packages through a .pth line, which adds that folder without running its .pth
    files, so the editable install of the checkout is not seen."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --force-reinstall: pip would otherwise skip the wheel when it sees this project's metadata on the path
    # (the checkout's egg-info through PYTHONPATH, or the outer venv's editable install)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
                    str(wheel)], check=True, env=env)
    return venv


def test_wheel_in_a_fresh_venv_runs_the_pipeline_from_another_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], check=True, capture_output=True,
                           text=True).stdout
    assert "pipeline/data/expectations/impressions.json" in names and "pipeline/data/static/data_docs_offline.css" in names and "pipeline/py.typed" in names
    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MTL_HOME", "MTL_CONFIG")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), f"pipeline imported from {where}, not the installed wheel"
    mtl = str(venv / "bin" / "mtl")
    subprocess.run([mtl, "generate", "--out", "landing", "--days", "5", "--impressions-per-day", "1500",
                    "--users", "200", "--items", "80", "--start-date", "2026-01-01"], cwd=elsewhere, env=env,
                   check=True, capture_output=True, text=True)
    sets = ["text.enabled=false", "train.epochs=1", "train.baselines=false", "train.gbdt_baselines=false", "data.train_days=2",
            "train.threads=1", "gate.bootstrap=0"]
    proc = subprocess.run([mtl, "run", "--landing", "landing", "--date", "2026-01-05", "--home", "home",
                           *[a for s in sets for a in ("--set", s)]], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["validate"]["published"][-1] == "2026-01-05"
    assert out["register"]["version"] == 1
    assert (elsewhere / "home" / "runs" / "2026-01-05" / "validation" / "data_docs").is_dir()
