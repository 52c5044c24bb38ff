"""Task loss weighting (`train.weighting`): fixed, uncertainty, gradnorm, dwa, pcgrad.

Every method has one interface: `backward(losses [T], extra)` puts gradients on the model's parameters for one
step (`extra` is a scalar added unweighted: regularisers, AITM's calibrator, or None); `combine(losses)` is the
weighted sum (used for a second, adversarial pass); `epoch_end(mean_losses)` lets epoch-level methods move.
`shared` are the dense parameters that more than one task's loss reaches (the gradient-surgery methods act on
them; sparse embedding gradients are summed plainly: projecting them would densify a table per task per step).
"""

from __future__ import annotations

import torch

from pipeline.config import TrainConfig

GRADNORM_ALPHA = 1.5  # asymmetry (Chen et al. 2018 use 0.12-3; 1.5 on their multi-task benchmarks)
GRADNORM_LR = 0.025  # learning rate of the task weights themselves
DWA_TEMPERATURE = 2.0  # Liu et al. 2019


class Weighting(torch.nn.Module):
    """`fixed`: sum_t w_t L_t with `train.task_weights` (default 1 each)."""

    def __init__(self, n_tasks: int, cfg: TrainConfig, shared: list[torch.nn.Parameter]):
        super().__init__()
        w = cfg.task_weights if len(cfg.task_weights) == n_tasks else (1.0,) * n_tasks
        self.register_buffer("w", torch.tensor(w, dtype=torch.float32))
        self.n_tasks, self.shared = n_tasks, [p for p in shared if p.requires_grad]

    def weights(self) -> list[float]:
        return [float(x) for x in self.w]

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.w * losses).sum()

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None) -> None:
        total = self.combine(losses)
        (total if extra is None else total + extra).backward()

    def epoch_end(self, mean_losses: list[float]) -> None:
        return None

    def task_grads(self, losses: torch.Tensor) -> torch.Tensor:
        """Flattened gradient of each task's loss on the shared dense parameters -> [T, P]."""
        rows = []
        for t in range(self.n_tasks):
            g = torch.autograd.grad(losses[t], self.shared, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                   for x, p in zip(g, self.shared)]))
        return torch.stack(rows)


class Uncertainty(Weighting):
    """Kendall et al. 2018: sum_t exp(-s_t) L_t + s_t / 2 with learnt s_t = log sigma_t^2. A noisier task (higher
    irreducible loss) gets a larger s_t, hence a smaller weight exp(-s_t)."""

    def __init__(self, n_tasks: int, cfg: TrainConfig, shared: list[torch.nn.Parameter]):
        super().__init__(n_tasks, cfg, shared)
        self.log_var = torch.nn.Parameter(torch.zeros(n_tasks))

    def weights(self) -> list[float]:
        return [float(x) for x in torch.exp(-self.log_var.detach())]

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (torch.exp(-self.log_var) * losses + 0.5 * self.log_var).sum()


class DWA(Weighting):
    """Dynamic Weight Average (Liu et al. 2019): w_t = T softmax_t(r_t / K), r_t = L_t(e-1) / L_t(e-2) from the
    epoch mean losses; a task whose loss falls more slowly gets more weight. Weights are 1 for two epochs."""

    def __init__(self, n_tasks: int, cfg: TrainConfig, shared: list[torch.nn.Parameter]):
        super().__init__(n_tasks, cfg, shared)
        self.register_buffer("last", torch.zeros(2, n_tasks))  # mean losses of the last two epochs (older first)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def epoch_end(self, mean_losses: list[float]) -> None:
        # the new row is made where the history lives (a CUDA buffer cannot be stacked with a CPU tensor)
        now = torch.tensor(mean_losses, dtype=self.last.dtype, device=self.last.device)
        self.last = torch.stack([self.last[1], now])
        self.seen += 1
        if int(self.seen) >= 2:
            r = self.last[1] / self.last[0].clamp_min(1e-12)
            self.w = self.n_tasks * torch.softmax(r / DWA_TEMPERATURE, 0)


class GradNorm(Weighting):
    """GradNorm (Chen et al. 2018): learnt weights w_t pull each task's weighted gradient norm on the shared
    parameters, G_t = w_t ||grad L_t||, toward mean(G) * r_t^alpha, r_t = relative inverse training rate
    (L_t / L_t(0), normalised). A task whose gradients dominate gets its weight lowered. Weights sum to T."""

    def __init__(self, n_tasks: int, cfg: TrainConfig, shared: list[torch.nn.Parameter]):
        super().__init__(n_tasks, cfg, shared)
        self.register_buffer("initial", torch.zeros(n_tasks))
        self.w_avg = torch.optim.Adam([self.w], lr=GRADNORM_LR)  # w is a buffer updated by hand below

    def _apply(self, fn, recurse=True):
        """`.to(device)` / `.double()` replace buffers with new tensors: point the weights' optimizer (and its
        moment estimates) at the new `w`, or it would keep stepping the old tensor and the weights never move."""
        old = self.w_avg.param_groups[0]["params"][0]
        out = super()._apply(fn, recurse)
        if old is not self.w:
            state = self.w_avg.state.pop(old, {})
            self.w_avg.param_groups[0]["params"][0] = self.w
            if state:  # moments follow w; Adam keeps its step counter where it was (a CPU scalar)
                self.w_avg.state[self.w] = {k: fn(v) if torch.is_tensor(v) and v.dim() else v
                                            for k, v in state.items()}
        return out

    def get_extra_state(self) -> dict:
        return {"adam": self.w_avg.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.w_avg.load_state_dict(state["adam"])

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None) -> None:
        norms = self.task_grads(losses).norm(dim=1).detach() if self.shared else torch.ones_like(self.w)
        super().backward(losses, extra)
        detached = losses.detach().float()
        if not bool(self.initial.any()):
            self.initial = detached.clamp_min(1e-12)
        ratio = detached / self.initial
        target = (self.w * norms).mean() * (ratio / ratio.mean()).pow(GRADNORM_ALPHA)
        # d/dw_t sum_t |w_t n_t - target_t| = sign(w_t n_t - target_t) n_t (target held constant, as in the paper)
        self.w.grad = torch.sign(self.w * norms - target) * norms
        self.w_avg.step()
        self.w.grad = None
        with torch.no_grad():
            self.w.clamp_(min=1e-3).mul_(self.n_tasks / self.w.sum())


class PCGrad(Weighting):
    """PCGrad (Yu et al. 2020): on the shared parameters, each task gradient g_i is projected off every other
    task gradient g_j it conflicts with (g_i . g_j < 0), in random order; the projected gradients are summed."""

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None) -> None:
        if not self.shared or self.n_tasks < 2:
            return super().backward(losses, extra)
        grads = self.task_grads(self.w * losses)  # [T, P]
        raw_sum = grads.sum(0)
        surgery = project_conflicts(grads).sum(0)
        super().backward(losses, extra)
        offset = 0
        for p in self.shared:
            n = p.numel()
            delta = (surgery - raw_sum)[offset:offset + n].view_as(p)
            p.grad = delta.clone() if p.grad is None else p.grad + delta
            offset += n


def project_conflicts(grads: torch.Tensor) -> torch.Tensor:
    """PCGrad's projection: [T, P] -> [T, P]; row i loses its component along each conflicting other row."""
    out = grads.clone()
    for i in range(grads.shape[0]):
        for j in torch.randperm(grads.shape[0]).tolist():
            if j == i:
                continue
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return out


METHODS: dict[str, type[Weighting]] = {
    "fixed": Weighting, "uncertainty": Uncertainty, "dwa": DWA, "gradnorm": GradNorm, "pcgrad": PCGrad,
}


def make_weighting(name: str, n_tasks: int, cfg: TrainConfig, shared: list[torch.nn.Parameter],
                   device: torch.device | str = "cpu") -> Weighting:
    """The weighting module `name`, already on `device` (before any optimizer sees its parameters)."""
    return METHODS[name](n_tasks, cfg, shared).to(device)
