"""Single-task baseline: the same input layer, one MLP (bottom widths then tower widths), one logit."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.models.layers import MultiTaskModel, Towers


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        if len(self.tasks) != 1:
            raise ConfigError(f"single_task takes exactly one task, got {self.tasks}")
        self.towers = Towers(1, d_in, self.cfg.bottom_hidden + self.cfg.tower_hidden, self.cfg.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.tasks[0]: self.towers(x)[0]}
