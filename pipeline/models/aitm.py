"""AITM (Xi et al., KDD 2021): one tower per task in funnel order (ctr, cart, ctcvr, cvr); each step receives
information transferred from the previous step (an attention over [transferred, own] representations); a
behavioural calibrator penalises a step predicted likelier than the step it implies (cart and purchase imply
click: p(cart) <= p(ctr), p(ctcvr) <= p(ctr)), weighted by `model.calibrator_weight`."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.layers import MultiTaskModel, ParallelMLP, Towers

FUNNEL = ("ctr", "cart", "ctcvr", "cvr")
IMPLIES = {"cart": "ctr", "ctcvr": "ctr"}  # task -> the entire-space task it implies (contract: needs a click)


class Transfer(nn.Module):
    """AIT module: z = sum_i softmax_i(<Q u_i, K u_i> / sqrt(h)) V u_i over u = [transferred p, own q]."""

    def __init__(self, h: int):
        super().__init__()
        self.transfer = nn.Sequential(nn.Linear(h, h), nn.ReLU())
        self.q, self.k, self.v = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, prev: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        u = torch.stack([self.transfer(prev), own], 1)  # [B, 2, h]
        score = (self.q(u) * self.k(u)).sum(-1) / math.sqrt(u.shape[-1])  # [B, 2]
        return (torch.softmax(score, 1).unsqueeze(-1) * self.v(u)).sum(1)  # [B, h]


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        c = self.cfg
        self.order = tuple(t for t in FUNNEL if t in self.tasks)
        self.encoders = ParallelMLP(len(self.order), d_in, c.bottom_hidden, c.dropout)
        self.transfers = nn.ModuleList(Transfer(self.encoders.out_dim) for _ in self.order[1:])
        self.towers = Towers(len(self.order), self.encoders.out_dim, c.tower_hidden, c.dropout)
        self.tower_tasks = self.order

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        own = self.encoders(x)  # [T, B, h]
        z = [own[0]]
        for i, transfer in enumerate(self.transfers, start=1):
            z.append(transfer(z[-1], own[i]))
        return dict(zip(self.order, self.towers(torch.stack(z)).unbind(0)))

    def auxiliary_loss(self, logits: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Behavioural calibrator: weight * mean over rows of relu(p_task - p_implied), summed over pairs."""
        pairs = [(t, p) for t, p in IMPLIES.items() if t in logits and p in logits]
        if not pairs or self.cfg.calibrator_weight == 0:
            return None
        terms = [F.relu(torch.sigmoid(logits[t].float()) - torch.sigmoid(logits[p].float())).mean() for t, p in pairs]
        return self.cfg.calibrator_weight * torch.stack(terms).sum()
