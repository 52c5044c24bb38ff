"""The lake's event-id index: is an event_id already on a published day? at a cost that follows the new day.

    <lake>/_event_ids/index.json          {"runs": [{"name", "level", "rows"}], "days": {iso day: sha256}}
    <lake>/_event_ids/<name>.h.npy        uint64 [n] BLAKE2b-64 hashes of event_id, sorted
    <lake>/_event_ids/<name>.d.npy        int32 [n] the day (date ordinal) of each hash

A log-structured index: publishing a day writes one sorted run of its hashes; when FANOUT runs share a level
they are merged into one run of the next level, so a lake of N days holds O(FANOUT * log N) runs. A lookup of
the staged ids is a binary search in each run's memory-mapped arrays: it reads O(ids * runs * log) pages, not
the lake's event_id columns (validation used to scan every earlier day each night). A 64-bit hash can collide,
so every hit is confirmed on the hit day's real event_ids before anyone calls it a duplicate.

A day published again with other content has its old entries dropped first (rare: that rewrites the runs); the
same bytes published again change nothing. The index is derived data: lake days it lacks (an older lake, a
crash between publish and index update) are indexed on the next lookup.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path, read_json, write_json

FANOUT = 8
INDEX_DIR = "_event_ids"
MANIFEST = "index.json"


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """uint64 [n]: BLAKE2b-64 of each id's UTF-8 bytes (stable across processes and library versions)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64)


def search(h: np.ndarray, d: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into `hashes`, day ordinals) of every entry of the sorted run (`h` uint64 [n], `d` [n]) equal
    to one of `hashes` (a hash may repeat in a run: the same id on several days)."""
    pos: list[int] = []
    days: list[int] = []
    if len(h) == 0 or len(hashes) == 0:
        return np.asarray(pos, dtype=np.int64), np.asarray(days, dtype=np.int64)
    at = np.searchsorted(h, hashes)
    ok = at < len(h)
    ok[ok] = h[at[ok]] == hashes[ok]
    for i in np.flatnonzero(ok):
        j = at[i]
        while j < len(h) and h[j] == hashes[i]:
            pos.append(int(i))
            days.append(int(d[j]))
            j += 1
    return np.asarray(pos, dtype=np.int64), np.asarray(days, dtype=np.int64)


class EventIdIndex:
    """The index of one lake folder. Use `lookup` before publishing and `add` after (under `locked`)."""

    def __init__(self, lake: str | os.PathLike):
        self.root = Path(lake) / INDEX_DIR

    @contextlib.contextmanager
    def locked(self) -> Iterator[EventIdIndex]:
        """Serialise index updates across processes (two dates may publish at once)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def manifest(self) -> dict:
        path = self.root / MANIFEST
        return read_json(path) if path.is_file() else {"runs": [], "days": {}}

    def _arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return (np.load(self.root / f"{name}.h.npy", mmap_mode="r"),
                np.load(self.root / f"{name}.d.npy", mmap_mode="r"))

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions into `hashes`, day ordinals) of every indexed entry equal to one of `hashes`."""
        pos, days = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for run in self.manifest()["runs"]:
            p, d = search(*self._arrays(run["name"]), hashes)
            pos.append(p)
            days.append(d)
        return np.concatenate(pos), np.concatenate(days)

    def add(self, day: dt.date, hashes: np.ndarray, sha256: str) -> None:
        """Index `day`'s ids (call under `locked`). Same content again: nothing; other content: replaced."""
        man = self.manifest()
        iso = day.isoformat()
        if man["days"].get(iso) == sha256:
            return
        if iso in man["days"]:
            man = self._drop_day(man, day.toordinal())
        order = np.argsort(hashes, kind="stable")
        new = self._write_run(man, 0, hashes[order], np.full(len(hashes), day.toordinal(), dtype=np.int32))
        man["runs"].append(new)
        man["days"][iso] = sha256
        man = self._compact(man)
        self._commit(man)

    def _write_run(self, man: dict, level: int, h: np.ndarray, d: np.ndarray) -> dict:
        taken = {r["name"] for r in man["runs"]}
        seq = len(taken)
        while f"L{level}-{seq:06d}" in taken or (self.root / f"L{level}-{seq:06d}.h.npy").exists():
            seq += 1
        name = f"L{level}-{seq:06d}"
        for suffix, arr in ((".h.npy", h), (".d.npy", d)):
            with atomic_path(self.root / f"{name}{suffix}") as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr))
        return {"name": name, "level": level, "rows": len(h)}

    def _merge(self, man: dict, runs: list[dict], level: int, keep=None) -> dict:
        hs, ds = zip(*(self._arrays(r["name"]) for r in runs)) if runs else ((), ())
        h = np.concatenate([np.asarray(x) for x in hs]) if hs else np.zeros(0, np.uint64)
        d = np.concatenate([np.asarray(x) for x in ds]) if ds else np.zeros(0, np.int32)
        if keep is not None:
            mask = keep(d)
            h, d = h[mask], d[mask]
        order = np.argsort(h, kind="stable")
        return self._write_run(man, level, h[order], d[order])

    def _compact(self, man: dict) -> dict:
        """Merge FANOUT runs of a level into one run of the next, level by level."""
        level = 0
        while True:
            same = [r for r in man["runs"] if r["level"] == level]
            if len(same) < FANOUT:
                if not any(r["level"] > level for r in man["runs"]):
                    return man
                level += 1
                continue
            merged = self._merge(man, same, level + 1)
            man["runs"] = [r for r in man["runs"] if r not in same] + [merged]

    def _drop_day(self, man: dict, ordinal: int) -> dict:
        """Rewrite every run without `ordinal`'s entries (a day republished with other content)."""
        runs = []
        for run in man["runs"]:
            runs.append(self._merge(man, [run], run["level"], keep=lambda d: d != ordinal))
        man = {**man, "runs": runs}
        man["days"] = {k: v for k, v in man["days"].items() if dt.date.fromisoformat(k).toordinal() != ordinal}
        return man

    def _commit(self, man: dict) -> None:
        """Swap the manifest in atomically, then delete the run files it no longer names."""
        write_json(self.root / MANIFEST, man)
        live = {r["name"] for r in man["runs"]}
        for path in self.root.glob("L*-*.npy"):
            if path.name.split(".")[0] not in live:
                path.unlink(missing_ok=True)
