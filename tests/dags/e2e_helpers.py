"""Helpers for the end-to-end tests: landing folders to break, byte snapshots of trees."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAST_DATE = "2026-01-10"  # the last day of the tiny_landing fixture
LOGICAL = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)


def copy_landing(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def break_funnel(landing: Path, day: str, rows: int = 3) -> list[str]:
    """Make `rows` rows of day `day` purchased without a click (a contract violation); returns their event ids."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((landing / "impressions" / f"dt={day}").glob("*.parquet"))
    table = pq.read_table(files[0])
    unclicked = pc.equal(table["clicked"], 0).to_numpy(zero_copy_only=False).nonzero()[0][:rows]
    purchased = table["purchased"].to_numpy().copy()
    purchased[unclicked] = 1
    idx = table.schema.get_field_index("purchased")
    table = table.set_column(idx, table.schema.field(idx), [purchased.astype("int8")])
    pq.write_table(table, files[0])
    return [table["event_id"][int(i)].as_py() for i in unclicked]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: equal dicts mean a byte-identical tree."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl (Debian puts them in /usr/lib/postgresql/<v>/bin), or None."""
    import shutil as sh

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    found = [c for c in candidates if (c / "initdb").exists()]
    if found:
        return found[-1]
    initdb = sh.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(root: Path) -> tuple[str, callable]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, loopback only). Returns (server URI, stop)."""
    import os
    import subprocess

    pg = postgres_bin()
    data, port = root / "pgdata", free_port()
    data.mkdir(parents=True)
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the Debian `postgres` user
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    run = {"capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*prefix, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "mtl", "--no-sync"],
                   check=True, **run)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w",
                    "start"], check=True, **run)

    def stop() -> None:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True, timeout=60)

    return f"postgresql+psycopg2://mtl@127.0.0.1:{port}", stop
