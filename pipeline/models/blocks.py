"""Building blocks of the shared layers (pipeline.models.layers): DIN target attention, DCN-v2 cross layers and
a per-member BatchNorm for the parallel MLPs. Shapes as there: B = batch, n = parallel members, h = width."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TargetAttention(nn.Module):
    """DIN target attention (Zhou et al. 2018): a small MLP scores each sequence item against the candidate from
    [s, c, s - c, s * c]; softmax over the unmasked items; the pooled vector is their weighted sum.
    seq [B, S, D], cand [B, D], mask [B, S] bool (False = padding) -> [B, D]. Padding gets weight exactly 0
    (so its vectors cannot change the output), and a row without any item pools to zeros. `last_weights`
    [B, S] keeps the weights of the last call (diagnostics and tests)."""

    def __init__(self, dim: int, hidden: int = 36):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.last_weights: torch.Tensor | None = None

    def forward(self, seq: torch.Tensor, cand: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = cand.unsqueeze(1).expand_as(seq)
        score = self.mlp(torch.cat([seq, c, seq - c, seq * c], -1)).squeeze(-1).float()  # [B, S]
        # A large finite negative, not -inf: an all-padding row then gets finite uniform weights (zeroed below)
        # instead of NaN, whose gradient would poison the step.
        w = torch.softmax(score.masked_fill(~mask, -1e9), -1) * mask
        self.last_weights = w.detach()
        return torch.einsum("bs,bsd->bd", w.to(seq.dtype), seq)


class CrossNet(nn.Module):
    """DCN-v2 cross layers (Wang et al. 2021): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, [B, d] -> [B, d].
    Each layer adds explicit feature crosses one degree higher; W_l starts at zero, so the stack starts as the
    identity and the MLPs above see their usual input until crosses pay off."""

    def __init__(self, d: int, layers: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        for lin in self.linears:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.linears:
            x = torch.addcmul(x, x0, lin(x))
        return x


class ParallelBatchNorm(nn.Module):
    """BatchNorm1d of each of n members' h features ([n, B, h] -> [n, B, h]): batch statistics in training (a
    batch of one row uses the running ones, which BatchNorm cannot estimate from it), running ones in eval."""

    def __init__(self, n: int, h: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(n * h)

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """`relu`: also apply ReLU, in place on the normalised output (BatchNorm's backward does not read its
        output; doing it on the base tensor, not the [n, B, h] view, keeps autograd from replaying the view)."""
        n, b, h = x.shape
        flat = x.transpose(0, 1).reshape(b, n * h)  # a view when x came from ParallelLinear's shared-input matmul
        y = self._normalise(flat, b)
        return (torch.relu_(y) if relu else y).view(b, n, h).transpose(0, 1)

    def channels_first(self, z: torch.Tensor) -> torch.Tensor:
        """The same normalisation of z laid out [n*h, B] (member-major channels, the batch inner) -> [n*h, B]."""
        return self._normalise(z.unsqueeze(0), z.shape[1]).squeeze(0)

    def _normalise(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """F.batch_norm over x ([B, C] or [1, C, B]) with this norm's parameters and statistics; b = batch rows."""
        m, train = self.norm, self.training and b > 1
        if train:
            m.num_batches_tracked.add_(1)
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, train, m.momentum, m.eps)


def fold_dropped_bias(state: dict, prefix: str, pairs: list[tuple[str, str]]) -> None:
    """Load-time shim for a state saved while a Linear before BatchNorm still had its bias: for each (linear,
    norm) prefix pair, move the stored bias b into the norm's running mean (mean(xW + b) = mean(xW) + b), so
    eval outputs stay exactly what they were and training is unchanged (the bias had no effect there)."""
    for lin, norm in pairs:
        bias = state.pop(f"{prefix}{lin}.bias", None)
        mean = f"{prefix}{norm}.norm.running_mean"
        if bias is not None and mean in state:
            state[mean] = state[mean] - bias.reshape(-1).to(state[mean].dtype)
