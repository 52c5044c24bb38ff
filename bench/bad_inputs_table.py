"""Print the bad-input catalog of tests/data/test_bad_inputs.py as a Markdown table: case, outcome, message.

    .venv/bin/python bench/bad_inputs_table.py

Runs every case for real (generate, ingest, validate) in a temporary folder, like the test does.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from test_bad_inputs import CASES, D3

    from pipeline.config import load_config
    from pipeline.data.generate import generate
    from pipeline.data.ingest import ingest
    from pipeline.data.validate import validate
    from pipeline.errors import MTLError

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "landing", days=3, impressions_per_day=400, users=60, items=40, seed=3,
                 start_date="2026-02-01")
        base = load_config(home=root / "home")
        ingest(base, root / "landing", "2026-02-02")
        validate(base, "2026-02-02")
        print("| case | outcome | message (first line or first failure) |\n|---|---|---|")
        for i, (name, setup, _, _) in enumerate(CASES):
            landing, home = root / f"l{i}", root / f"h{i}"
            shutil.copytree(root / "landing", landing)
            shutil.copytree(root / "home", home)
            setup(landing)
            cfg = load_config(home=home)
            try:
                ingest(cfg, landing, D3)
                validate(cfg, D3)
                print(f"| {name} | success | |")
            except MTLError as exc:
                lines = [ln.strip() for ln in str(exc).replace(str(root), "…").splitlines()]
                text = lines[1].lstrip("- ") if len(lines) > 1 and "rule(s) failed" in lines[0] else lines[0]
                print(f"| {name} | {type(exc).__name__} | {text[:150].replace('|', '/')} |")


if __name__ == "__main__":
    main()
