"""One-gate mixture of experts (OMoE, the baseline of the MMoE paper): one gate shared by all tasks."""

from __future__ import annotations

import torch

from pipeline.models.layers import Gates, MultiTaskModel, ParallelMLP, Towers, mix


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c = self.cfg
        self.experts = ParallelMLP(c.num_experts, d_in, c.expert_hidden, c.dropout)
        self.gate = Gates(1, d_in, c.num_experts, ("shared",), (tuple(f"e{i}" for i in range(c.num_experts)),))
        self.towers = Towers(len(self.tasks), self.experts.out_dim, c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = self.experts(x)  # [E, B, h]
        mixed = mix(self.gate(x), experts)[0]  # [B, h]
        return dict(zip(self.tasks, self.towers(mixed).unbind(0)))
