"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task, one tower per task."""

from __future__ import annotations

import torch

from pipeline.models.layers import Gates, MultiTaskModel, ParallelMLP, Towers, mix


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c, n_tasks = self.cfg, len(self.tasks)
        self.experts = ParallelMLP(c.num_experts, d_in, c.expert_hidden, c.dropout)
        names = tuple(f"e{i}" for i in range(c.num_experts))
        self.gates = Gates(n_tasks, d_in, c.num_experts, tuple(f"task:{t}" for t in self.tasks), (names,) * n_tasks)
        self.towers = Towers(n_tasks, self.experts.out_dim, c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = self.experts(x)  # [E, B, h]
        gates = self.gates(x)  # [T, B, E]
        mixed = mix(gates, experts)  # [T, B, h]
        return dict(zip(self.tasks, self.towers(mixed).unbind(0)))
