"""Gate scenarios on real trained models whose strength is known by construction, shared by
tests/dags/test_registry.py and bench/gate_scenarios.py (which prints their table).

A run here is a run folder `<kind>-<date>` of a home whose lake holds the days: features for its data date, an MTL
model trained with `KINDS[kind]`, evaluation against the champion of the moment, `register`, then
`promote_champion`. WEAK barely leaves its random start (lr 1e-5 for one epoch: near-chance or worse AUC),
STRONG trains 4 epochs of a wider model: on the tiny landing STRONG - WEAK has a 95% interval above +0.02 on every
task, so the gate's outcome against either is known. No baselines are trained here (the baseline rule has its
own tests): every gate line is about the champion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NAME = "ecommerce-mtl"
# Two test days (about 120 purchases: cvr intervals are still about +-0.06 wide) and 5 train days, so that
# 2026-01-08 (the backfill day) has a full window in the 10-day tiny landing.
BASE = ["train.baselines=false", "train.gbdt_baselines=false", "data.train_days=5", "data.test_days=2"]
KINDS = {
    "weak": ["train.lr=0.00001"],
    "strong": ["train.epochs=4", "train.patience=2", "model.embedding_dim=16", "model.expert_hidden=[32]",
               "model.tower_hidden=[16]"],
    "ctronly": ["model.tasks=[ctr]", "train.epochs=4", "train.patience=2", "model.embedding_dim=16",
                "model.expert_hidden=[32]", "model.tower_hidden=[16]"],
}
# (label, kind, data date) in the order they run; each is judged against the champion the previous ones left.
SCENARIOS = [
    ("weak first version", "weak", "2026-01-08"),
    ("ctr-only challenger", "ctronly", "2026-01-09"),
    ("clearly stronger", "strong", "2026-01-09"),
    ("backfill of an older day", "strong", "2026-01-08"),
    ("degraded", "weak", "2026-01-10"),
]
CONCURRENT = [("strong", "2026-01-09"), ("strong", "2026-01-10")]


def config(home: Path, fast, kind: str):
    from pipeline.config import load_config

    return load_config(overrides=[*fast, *BASE, *KINDS[kind]], home=home)


def champion(home: Path) -> int | None:
    from pipeline import registry
    from pipeline.config import load_config

    cfg = load_config(home=home)
    mv = registry.alias_version(registry.connect(cfg), cfg.registry.model_name, registry.CHAMPION)
    return None if mv is None else int(mv.version)


def train(home: Path, fast, kind: str, date: str, landing: Path) -> str:
    """Features and the MTL model of run `<kind>-<date>` (no evaluation yet); returns the run id. A day without
    its lake snapshots (users/items are snapshotted by the day's own run) is ingested and validated first."""
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate
    from pipeline.features.build import build_features
    from pipeline.paths import Layout
    from pipeline.training.train import train_model

    cfg, run_id = config(home, fast, kind), f"{kind}-{date}"
    if not Layout.of(home).snapshot("users", date).is_file():
        ingest(cfg, landing, date, run_id)
        validate(cfg, date, run_id)
    build_features(cfg, date, run_id)
    train_model(cfg, run_id, name="mtl")
    return run_id


def release(home: Path, fast, kind: str, date: str) -> dict[str, Any]:
    """evaluate -> register -> promote_champion for a trained run; -> one table row."""
    from pipeline.errors import GateRefusedError
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.release import promote_champion, register

    cfg, run_id = config(home, fast, kind), f"{kind}-{date}"
    before = champion(home)
    evaluate(cfg, run_id)
    reg = register(cfg, run_id=run_id)
    try:
        reasons, moved = promote_champion(cfg, run_id=run_id)["reasons"], True
    except GateRefusedError as exc:
        reasons, moved = exc.reasons, False
    return {"run": run_id, "date": date, "version": reg["version"], "before": before, "after": champion(home),
            "moved": moved, "reasons": reasons}


def release_in_processes(home: Path, fast, runs) -> list[subprocess.CompletedProcess]:
    """`release` of each (kind, date) in its own process, all started at once."""
    code = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[6]]; import gate_scenarios as g; "
            "from pathlib import Path; r = g.release(Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], "
            "sys.argv[5]); print('ROW:' + json.dumps(r))")
    import json

    procs = [subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(home),
                               json.dumps(list(fast)), kind, date, str(REPO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO) for kind, date in runs]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def rows_of(done: list[subprocess.CompletedProcess]) -> list[dict[str, Any]]:
    import json

    rows = []
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows += [json.loads(ln[4:]) for ln in proc.stdout.splitlines() if ln.startswith("ROW:")]
    return rows


def table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """Markdown: scenario | run | version | champion before -> after | gate lines (FAIL lines, else all)."""
    lines = ["| scenario | run | version | champion before -> after | gate lines |", "|---|---|---|---|---|"]
    for label, r in zip(labels, rows):
        shown = [x for x in r["reasons"] if x.endswith("FAIL") or "not moved again" in x] or r["reasons"]
        cell = "<br>".join(x.replace("|", "/") for x in shown)
        lines.append(f"| {label} | {r['run']} | v{r['version']} | {r['before'] or '-'} -> {r['after'] or '-'} "
                     f"| {cell} |")
    return "\n".join(lines)
