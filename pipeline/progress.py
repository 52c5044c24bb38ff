"""Progress bars for long CLI work (features, text embedding, training epochs), quiet in Airflow logs.

`bar(iterable, ...)` is a tqdm bar on stderr when stderr is a terminal, and the plain iterable otherwise (Airflow
task logs, pytest, pipes), so logs get no carriage-return noise. `MTL_PROGRESS=1` forces bars on, `0` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Bars on? $MTL_PROGRESS (1/0) if set, else whether stderr is a terminal."""
    forced = os.environ.get("MTL_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """`iterable`, shown as a bar when `enabled()`; the bar disappears when done (leave=False)."""
    if not enabled():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
