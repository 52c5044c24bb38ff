"""PLE (Tang et al., RecSys 2020): `ple_levels` stacked CGC layers. Each level has `shared_experts` shared
experts and `task_experts` experts per task; task t's gate mixes its own experts and the shared ones; below
the last level a shared gate mixes all experts into the next level's shared input."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.layers import Gates, MultiTaskModel, ParallelMLP, Towers, mix


class CGC(nn.Module):
    """One extraction level. Inputs: shared [B, in] and per-task [T, B, in] (the same tensor at level 0).
    Outputs: per-task [T, B, h] and (unless last) shared [B, h]."""

    def __init__(self, tasks: tuple[str, ...], d_in: int, cfg, level: int, last: bool):
        super().__init__()
        n_t, k, s = len(tasks), cfg.task_experts, cfg.shared_experts
        self.n_t, self.k = n_t, k
        self.shared = ParallelMLP(s, d_in, cfg.expert_hidden, cfg.dropout)
        self.specific = ParallelMLP(n_t * k, d_in, cfg.expert_hidden, cfg.dropout)
        shared_names = tuple(f"L{level}/shared{i}" for i in range(s))
        own = [tuple(f"L{level}/{t}{i}" for i in range(k)) for t in tasks]
        self.task_gates = Gates(n_t, d_in, k + s, tuple(f"L{level}/task:{t}" for t in tasks),
                                tuple(o + shared_names for o in own))
        self.shared_gate = None if last else Gates(
            1, d_in, n_t * k + s, (f"L{level}/shared",), (sum(own, ()) + shared_names,))
        self.out_dim = self.shared.out_dim

    def forward(self, shared_in: torch.Tensor, task_in: torch.Tensor | None):
        shared = self.shared(shared_in)  # [S, B, h]
        spec_in = shared_in if task_in is None else task_in.repeat_interleave(self.k, 0)  # [T*K, B, in]
        specific = self.specific(spec_in)  # [T*K, B, h]
        b, h = shared.shape[1], shared.shape[2]
        own = specific.view(self.n_t, self.k, b, h)  # [T, K, B, h]
        gates = self.task_gates(shared_in if task_in is None else task_in)  # [T, B, K+S]
        # Own experts and shared experts mixed apart and summed: a [T, K+S, B, h] pool (cat + expand) and one
        # einsum over it took 1.5x the CPU time of the whole step.
        task_out = mix(gates[..., :self.k], own) + mix(gates[..., self.k:], shared)
        if self.shared_gate is None:
            return task_out, None
        everything = torch.cat([specific, shared], 0)  # [T*K+S, B, h]
        return task_out, mix(self.shared_gate(shared_in), everything)[0]


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c, levels = self.cfg, max(self.cfg.ple_levels, 1)
        dims = [d_in] + [c.expert_hidden[-1]] * levels
        self.levels = nn.ModuleList(CGC(self.tasks, dims[i], c, i, i == levels - 1) for i in range(levels))
        self.towers = Towers(len(self.tasks), dims[-1], c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared, per_task = x, None
        for level in self.levels:
            per_task, shared = level(shared, per_task)
        return dict(zip(self.tasks, self.towers(per_task).unbind(0)))
