"""Per-date run lock: two runs of one date never interleave; dead holders do not block forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.errors import ConcurrentRunError
from pipeline.lock import acquire, lock_path, release, run_lock


def test_second_owner_is_refused_with_the_holder_named(tmp_path):
    acquire(tmp_path, "2026-01-10", "airflow:mtl_retrain:run-1")
    with pytest.raises(ConcurrentRunError, match="airflow:mtl_retrain:run-1") as err:
        acquire(tmp_path, "2026-01-10", "cli")
    assert str(lock_path(tmp_path, "2026-01-10")) in str(err.value)
    acquire(tmp_path, "2026-01-11", "cli")  # another date is independent
    acquire(tmp_path, "2026-01-10", "airflow:mtl_retrain:run-1")  # a retry by the holder is not locked out


def test_release_only_by_the_owner(tmp_path):
    acquire(tmp_path, "2026-01-10", "a")
    assert release(tmp_path, "2026-01-10", "b") is False
    assert lock_path(tmp_path, "2026-01-10").exists()
    assert release(tmp_path, "2026-01-10", "a") is True
    assert not lock_path(tmp_path, "2026-01-10").exists()
    assert release(tmp_path, "2026-01-10", "a") is False


def test_context_manager_releases_even_on_error(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path, "2026-01-10"):
        with pytest.raises(ConcurrentRunError):
            acquire(tmp_path, "2026-01-10", "someone-else")
        raise RuntimeError("stage failed")
    acquire(tmp_path, "2026-01-10", "someone-else")


def test_old_lease_is_stale(tmp_path):
    path = acquire(tmp_path, "2026-01-10", "airflow:run-killed")
    holder = json.loads(path.read_text())
    holder["since"] -= 13 * 3600
    path.write_text(json.dumps(holder))
    acquire(tmp_path, "2026-01-10", "next")
    assert json.loads(path.read_text())["owner"] == "next"


def test_killed_process_frees_its_lock(tmp_path):
    code = ("import sys, time; from pipeline.lock import run_lock\n"
            "with run_lock(sys.argv[1], '2026-01-10', owner='child'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(ConcurrentRunError, match="child"):
            acquire(tmp_path, "2026-01-10", "parent", pid=os.getpid())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    time.sleep(0.05)
    acquire(tmp_path, "2026-01-10", "parent", pid=os.getpid())


def test_racing_acquirers_have_exactly_one_winner(tmp_path):
    code = ("import sys; from pipeline.lock import acquire; from pipeline.errors import ConcurrentRunError\n"
            "try:\n    acquire(sys.argv[1], '2026-01-10', sys.argv[2]); print('won')\n"
            "except ConcurrentRunError:\n    print('lost')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"p{i}"], stdout=subprocess.PIPE,
                              text=True) for i in range(4)]
    results = sorted(p.communicate()[0].strip() for p in procs)
    assert results == ["lost", "lost", "lost", "won"]


def test_registry_lease_makes_writers_take_turns_and_names_the_holder(tmp_path):
    import threading

    from pipeline.lock import registry_lease

    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with registry_lease(tmp_path, owner="register 2026-01-09"):
            order.append("first in")
            inside.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    with pytest.raises(ConcurrentRunError, match="register 2026-01-09"), \
            registry_lease(tmp_path, owner="impatient", wait_s=0.1):
        pass
    with registry_lease(tmp_path, owner="register 2026-01-10"):  # waits for the first, then gets in
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert not list((tmp_path / "locks").glob("*.lock"))  # not a per-date lease
