"""The id table and its optimiser state live in transparent huge pages (pipeline.training.hugepages)."""

from __future__ import annotations

import copy
import gc
import io
import re
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.features.dataset import InputSpec, TensorData
from pipeline.models import build
from pipeline.training import trainer
from pipeline.training.hugepages import HUGE_PAGE, huge_page_copy
from pipeline.training.optimizers import RowSparseAdam

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _advised(t: torch.Tensor) -> bool:
    """Whether the kernel may back the mapping holding t's first byte with huge pages (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= t.data_ptr() < int(m.group(2), 16)
        elif inside and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    return False


def _thp_on() -> bool:
    return THP.is_file() and "[never]" not in THP.read_text()


def test_huge_page_copy_is_an_independent_copy_that_outlives_its_views():
    t = torch.randn(HUGE_PAGE // 2, 2)  # 4 MiB
    h = huge_page_copy(t)
    assert torch.equal(h, t) and h.shape == t.shape and h.dtype == t.dtype and h.data_ptr() != t.data_ptr()
    h[0, 0] = 1e6
    assert t[0, 0] != 1e6
    if _thp_on():
        assert _advised(h)  # (t may be too: numpy advises its own large arrays, and malloc reuses that memory)
    tail = huge_page_copy(torch.arange(HUGE_PAGE, dtype=torch.int64))[-3:]
    gc.collect()  # only the view is left: the mapping must stay
    assert tail.tolist() == [HUGE_PAGE - 3, HUGE_PAGE - 2, HUGE_PAGE - 1]
    buf = io.BytesIO()
    torch.save(h, buf)  # checkpoints and deep copies hold plain memory
    assert torch.equal(torch.load(io.BytesIO(buf.getvalue())), h) and torch.equal(copy.deepcopy(h), h)
    small = torch.randn(100)
    assert huge_page_copy(small) is small


def test_trainer_puts_the_sparse_table_and_its_adam_moments_in_huge_pages():
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.embedding_dim=16", "model.num_experts=2", "model.expert_hidden=[8]",
                                 "model.tower_hidden=[4]", "train.batch_size=64"])
    inputs = InputSpec(("user", "surface"), (40_000, 4), ("num__x",), (), 0, 0, 3, None)  # 2.4 MiB table
    model = build("mmoe", inputs, cfg.model, ("ctr", "cvr"))
    n, g = 256, torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, 40_000, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)], 1)
    labels = (torch.rand(n, 2, generator=g) < 0.3).float()
    data = TensorData(cat, torch.randn(n, 1, generator=g), None, labels, torch.ones(n, 2), ("ctr", "cvr"))
    before = model.features.embedding.weight.detach().clone()
    s = trainer.make_setup(model, data, cfg.train, cfg.train.weighting, torch.device("cpu"))
    weight = model.features.embedding.weight
    assert torch.equal(weight, before)  # the same values, only moved
    trainer.train_epoch(s, data, cfg.train, 1, "t")
    sparse = next(o for o in s.optimizers if isinstance(o, RowSparseAdam))
    state = sparse.state[weight]
    rows = torch.unique(torch.cat([cat[:, 0], torch.zeros(1, dtype=torch.int64)]))  # 0: id dropout's unknown row
    assert not torch.equal(weight[rows], before[rows]) and state["exp_avg"][rows].abs().sum() > 0
    untouched = torch.ones(40_000, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(weight[untouched], before[untouched])
    if _thp_on():
        assert _advised(weight) and _advised(state["exp_avg"]) and _advised(state["exp_avg_sq"])
