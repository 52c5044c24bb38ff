"""Shared-bottom (Caruana 1997): one MLP over the inputs shared by all tasks, one tower per task."""

from __future__ import annotations

import torch

from pipeline.models.layers import MultiTaskModel, ParallelMLP, Towers


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c = self.cfg
        self.bottom = ParallelMLP(1, d_in, c.bottom_hidden, c.dropout)
        self.towers = Towers(len(self.tasks), self.bottom.out_dim, c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.bottom(x)[0]  # [B, h]
        return dict(zip(self.tasks, self.towers(shared).unbind(0)))
