"""CPU tensors in transparent huge pages, for the tables a step reads and writes at random rows.

Each step the id table's optimiser updates a few thousand random rows of three [rows, D] tensors (the table and
Adam's two moments), and the forward reads as many rows of the table: with 4 KiB pages almost every such row
costs a TLB miss (a page walk) on top of its cache miss. Linux backs memory advised MADV_HUGEPAGE with 2 MiB
pages when /sys/kernel/mm/transparent_hugepage/enabled is `always` or `madvise` (most distributions' default),
so one TLB entry covers 512 times as many rows. bench/train_bench.py --peer-config MMoE (8 MiB table): a
training step takes 0.93-0.96 of its time with 4 KiB pages (3 in-process runs, steps interleaved). The split's
arrays gained nothing: a batch reads its rows sorted.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 << 20


def huge_page_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` (same shape, dtype and values) in a private anonymous mapping advised
    MADV_HUGEPAGE; `t` itself when it is not on the CPU, is smaller than one huge page, or the platform or kernel
    has no transparent huge pages. The copy's memory lives as long as the tensor (or a view of it) does."""
    if t.device.type != "cpu" or t.nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t
    # Whole huge pages from a 2 MiB boundary: the kernel aligns only some mappings itself, and a huge page
    # needs an aligned 2 MiB range inside the mapping.
    size = -(-t.nbytes // HUGE_PAGE) * HUGE_PAGE
    area = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel built without transparent huge pages
        area.close()
        return t
    raw = torch.frombuffer(area, dtype=torch.uint8)  # holds a reference to `area`, as do its views
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start:start + t.nbytes].view(t.dtype).view(t.shape).copy_(t)
