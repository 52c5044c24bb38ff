"""Masked per-task binary cross-entropy on logits.

A row counts for task t only where mask[:, t] = 1 (its sample space: cvr = clicked rows), so a cvr logit on an
unclicked row gets exactly zero gradient.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def masked_bce(logits: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor,
               tasks: tuple[str, ...], data_tasks: tuple[str, ...]) -> torch.Tensor:
    """Per-task mean BCE over the rows in each task's sample space -> [len(tasks)].

    logits: {task: [B]}; labels, mask: [B, len(data_tasks)] with columns in `data_tasks` order. A task with no
    row of its sample space in the batch contributes 0 (and no gradient)."""
    cols = [data_tasks.index(t) for t in tasks]
    z = torch.stack([logits[t] for t in tasks], 1).float()  # [B, T]
    y, m = labels, mask
    if cols != list(range(labels.shape[1])):  # indexing by a list builds an index tensor per call: only if needed
        index = torch.tensor(cols, device=labels.device)
        y, m = labels.index_select(1, index), mask.index_select(1, index)
    per_row = F.binary_cross_entropy_with_logits(z, y, reduction="none") * m
    return per_row.sum(0) / m.sum(0).clamp_min(1.0)
