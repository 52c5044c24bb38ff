"""Per-date run locks under `<home>/locks/`, so two runs of the same date never interleave.

A lock is a lease file `<home>/locks/<date>.lock` holding its owner. It is a file rather than an OS lock
because an Airflow run spans many processes (one per task): the DAG's first task acquires it with the DAG
run id as owner and its last task releases it, while `run_all` (the CLI path) holds it for one process.

- The same owner may acquire again (a retried first task is not locked out by itself).
- A lease is stale, and may be taken over, when its process is gone (same host, pid recorded) or when it is
  older than `stale_after` seconds (a worker killed before it could release).
- Check-and-write is serialised with `fcntl.flock` on a sibling file, so two acquirers cannot both win.

`registry_lease(home)` is the other lock: one for the whole home, held while a run's version is judged,
registered and `champion` moved (`pipeline.release`), so runs of different dates take turns there. It is a
plain `flock`, held by the process inside a `with` block and freed by the kernel if that process dies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ConcurrentRunError
from pipeline.io import write_json
from pipeline.paths import Layout, parse_date

DEFAULT_STALE_AFTER = 12 * 3600.0
# Registering a version (log the model, re-score the champion) takes seconds to minutes: wait this long.
REGISTRY_WAIT_S = 1800.0
REGISTRY_LEASE = "registry.lease"  # not *.lock: those are the per-date leases


def lock_path(home: str | os.PathLike, date: str | dt.date) -> Path:
    return Layout.of(home).locks / f"{parse_date(date).isoformat()}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(holder: dict, stale_after: float) -> bool:
    if time.time() - float(holder.get("since", 0)) > stale_after:
        return True
    pid = holder.get("pid")
    return bool(pid) and holder.get("host") == socket.gethostname() and not _pid_alive(int(pid))


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".guard"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def acquire(home: str | os.PathLike, date: str | dt.date, owner: str, *, pid: int | None = None,
            stale_after: float = DEFAULT_STALE_AFTER) -> Path:
    """Take the lease for `date` as `owner`; raise ConcurrentRunError naming the holder if someone else has it.

    `pid`: the process whose death frees the lease (None for a lease that outlives processes, e.g. a DAG run).
    """
    path = lock_path(home, date)
    with _guard(path):
        if path.exists():
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("owner") not in (None, owner) and not _is_stale(holder, stale_after):
                raise ConcurrentRunError(
                    f"date {parse_date(date)} is locked by '{holder.get('owner')}' (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {time.ctime(float(holder.get('since', 0)))}); "
                    f"lock file {path}. Wait for it, or delete the file if that run is surely dead."
                )
        write_json(path, {"owner": owner, "pid": pid, "host": socket.gethostname(), "since": time.time()})
    return path


def release(home: str | os.PathLike, date: str | dt.date, owner: str) -> bool:
    """Drop the lease if `owner` holds it; returns whether it did. Someone else's lease is left alone."""
    path = lock_path(home, date)
    with _guard(path):
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if holder.get("owner") != owner:
            return False
        path.unlink()
        return True


@contextlib.contextmanager
def run_lock(home: str | os.PathLike, date: str | dt.date, owner: str | None = None) -> Iterator[Path]:
    """Hold the lease for the duration of a `with` block in this process."""
    owner = owner or f"pid:{os.getpid()}@{socket.gethostname()}"
    path = acquire(home, date, owner, pid=os.getpid())
    try:
        yield path
    finally:
        release(home, date, owner)


@contextlib.contextmanager
def registry_lease(home: str | os.PathLike, owner: str | None = None,
                   wait_s: float = REGISTRY_WAIT_S) -> Iterator[Path]:
    """Hold the home's registry lease for a `with` block, waiting up to `wait_s` for the current holder.

    Raises ConcurrentRunError naming the holder when it is still held after `wait_s` (the DAG retries it).
    """
    path = Layout.of(home).locks / REGISTRY_LEASE
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = owner or f"pid:{os.getpid()}@{socket.gethostname()}"
    deadline = time.monotonic() + wait_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    raise ConcurrentRunError(f"the registry lease {path} is still held by {fh.read().strip() or '?'} "
                                             f"after {wait_s:g} s; registration and champion moves take turns")
                time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"owner": owner, "pid": os.getpid(), "since": time.time()}))
            fh.flush()
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
