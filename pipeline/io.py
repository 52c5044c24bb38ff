"""Atomic file and folder writes: a reader sees the old version or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


STALE_TMP_S = 3600.0  # a temporary older than this belongs to a writer that died, not to one still running


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: str | os.PathLike) -> None:
    """Finish a folder swap that a killed writer left half done, and drop dead writers' temporaries.

    The swap is two renames (old aside, new in). A kill between them leaves only the aside copy: put it
    back. A kill after both leaves a stale aside copy: delete it.
    """
    path = Path(path)
    aside = _aside(path)
    if aside.exists():
        if path.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, path)
    if path.parent.is_dir():
        now = time.time()
        for tmp in path.parent.glob(f".{path.name}.tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success rename it over `path` (file or folder).

    On error the temporary is removed and `path` is untouched. A file is replaced by one atomic rename. A
    folder cannot be renamed over a non-empty folder, so the old one goes aside first (`.<name>.old`); a
    writer killed between the two renames is repaired by `recover()`, which every later write to the same
    path runs first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = _aside(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, NaN written as null)."""
    path = Path(path)
    text = json.dumps(_clean(obj), indent=2, sort_keys=True, default=str)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _clean(obj: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    return obj
