"""ESMM (Ma et al., SIGIR 2018): ctr and cvr towers over the shared embeddings, both applied to every impression;
p(ctcvr) = p(ctr) * p(cvr), composed in log space. Losses go on ctr and ctcvr over all impressions (and on any
other entire-space task asked for, e.g. cart); cvr has no direct loss - it is learnt through ctcvr = ctr x cvr,
which makes its output p(purchase | click), meaningful on clicked rows, without the clicked-only sample bias.
The loss on ctcvr is kept whatever subset of tasks is asked for (torch-rechub's trainer drops it when the task list is short)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.models.layers import MultiTaskModel, Towers

LOG_HALF = -0.6931471805599453


def logit_from_log_prob(log_p: torch.Tensor) -> torch.Tensor:
    """log p -> log(p / (1 - p)) without leaving log space; log(1 - p) by the stable log1mexp split at log(1/2)."""
    log_p = log_p.clamp(max=-1e-6)
    log_1mp = torch.where(log_p > LOG_HALF, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
    return log_p - log_1mp


class Model(MultiTaskModel):
    def build(self, d_in: int) -> None:
        extra = tuple(t for t in self.tasks if t not in ("ctr", "cvr", "ctcvr"))
        self.tower_tasks = ("ctr", "cvr") + extra
        self.loss_tasks = ("ctr", "ctcvr") + extra
        c = self.cfg
        self.towers = Towers(len(self.tower_tasks), d_in, c.bottom_hidden + c.tower_hidden, c.dropout)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(zip(self.tower_tasks, self.towers(x).unbind(0)))
        out["ctcvr"] = logit_from_log_prob(F.logsigmoid(out["ctr"]) + F.logsigmoid(out["cvr"]))
        return out
