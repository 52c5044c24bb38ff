"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task, one tower per task.

With `model.tower_skip` each task's tower reads [its gate's expert mix, the shared input x] side by side, so every
task keeps a direct path from the features to its logit that the other tasks' gradients do not reshape (the
experts are shared; the tower's first layer on x is the task's own)."""

from __future__ import annotations

import torch

from pipeline.models.layers import Gates, MultiTaskModel, ParallelMLP, Towers, mix


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c, n_tasks = self.cfg, len(self.tasks)
        self.experts = ParallelMLP(c.num_experts, d_in, c.expert_hidden, c.dropout)
        names = tuple(f"e{i}" for i in range(c.num_experts))
        self.gates = Gates(n_tasks, d_in, c.num_experts, tuple(f"task:{t}" for t in self.tasks), (names,) * n_tasks)
        self.skip = bool(c.tower_skip)
        self.towers = Towers(n_tasks, self.experts.out_dim + (d_in if self.skip else 0), c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = self.experts(x)  # [E, B, h]
        gates = self.gates(x)  # [T, B, E]
        mixed = mix(gates, experts)  # [T, B, h]
        if self.skip:  # [T, B, h + d_in]: expand is a view, the cat makes the one copy
            mixed = torch.cat([mixed, x.expand(mixed.shape[0], *x.shape)], -1)
        return dict(zip(self.tasks, self.towers(mixed).unbind(0)))
