"""The trainer's two optimisers: RowSparseAdam for the large id table, GroupedAdam for everything else.

torch.optim.SparseAdam adds three sparse updates (first moment, second moment, the step) into dense [rows, D]
tensors; on CPU each of those adds is a pass over the whole table, so its step cost grows with the number of
users and items instead of the batch (bench/train_bench.py --peer-config: 5.2 of ~20 ms per MMoE step on a
43k-row table). `RowSparseAdam` does the same maths on the gathered rows and writes them back: its cost is
the batch's distinct ids. Its state (`step`, `exp_avg`, `exp_avg_sq`) and state_dict are SparseAdam's.

torch.optim.Adam's fused step spends most of its time outside the kernel on a small model: per group it walks
every parameter through `_init_group`'s checks, regroups the tensors by device and dtype, and wraps the call in
profiler and hook machinery (peer-config MMoE, 13 tensors in 2 groups: 228 us a step, of which the kernels take
92). `GroupedAdam` keeps Adam's state and state_dict and runs the same kernels, once for all groups that share
their settings. Both set gradients to None without torch.optim's per-call record_function.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.training.hugepages import huge_page_copy


class _PlainZeroGrad:
    """zero_grad(set_to_none=True) as a plain loop: torch.optim's wraps it in a profiler record_function and
    groups the tensors first (~10 us a call, every step). set_to_none=False is torch's own."""

    param_groups: list[dict]

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return torch.optim.Optimizer.zero_grad(self, False)  # type: ignore[arg-type]
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class RowSparseAdam(_PlainZeroGrad, torch.optim.SparseAdam):
    """Drop-in torch.optim.SparseAdam (same arguments, state and update): for each parameter with a sparse
    gradient [N, D] whose coalesced rows are r and values g [R, D],
    m_r <- b1 m_r + (1 - b1) g, v_r <- b2 v_r + (1 - b2) g^2, p_r <- p_r - lr_t m_r / (sqrt(v_r) + eps)
    with lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); rows not in the batch are untouched (moments included)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam does not support dense gradients, use Adam instead")
                state = self.state[p]
                if not state:  # SparseAdam's own state layout, so checkpoints load either way
                    state["step"] = 0
                    state["exp_avg"] = huge_page_copy(torch.zeros_like(p, memory_format=torch.preserve_format))
                    state["exp_avg_sq"] = huge_page_copy(torch.zeros_like(p, memory_format=torch.preserve_format))
                state["step"] += 1
                grad = p.grad.coalesce()  # the update is non-linear, so each row must come once
                rows, g = grad._indices()[0], grad._values()
                if g.numel() == 0:
                    continue
                if group.get("maximize", False):
                    g = -g
                _update_rows(p, state, rows, g, beta1, beta2, lr, group["eps"])
        return loss


def _update_rows(p: torch.Tensor, state: dict, rows: torch.Tensor, g: torch.Tensor, beta1: float, beta2: float,
                 lr: float, eps: float) -> None:
    """Adam on rows `rows` (int64 [R], distinct) of `p` [N, D] with their gradient g [R, D], in place: gather the
    rows of p and both moments, one fused Adam kernel over them (torch's own, as Adam(fused=True) runs: one pass
    instead of ~10 elementwise ones), scatter the three back. The fused kernel divides by
    sqrt(v) / sqrt(1 - b2^t) + eps; SparseAdam by sqrt(v) + eps after scaling lr by sqrt(1 - b2^t), so eps is
    passed as eps / sqrt(1 - b2^t) to make the two the same update."""
    t = state["step"]
    bc2 = math.sqrt(1 - beta2 ** t)
    m, v, w = (x.index_select(0, rows) for x in (state["exp_avg"], state["exp_avg_sq"], p))
    step = torch.tensor(float(t), device=p.device)  # the kernel reads t; Adam increments it beforehand, as here
    torch._fused_adam_([w], [g.contiguous()], [m], [v], [], [step], lr=lr, beta1=beta1, beta2=beta2,
                       weight_decay=0.0, eps=eps / bc2, amsgrad=False, maximize=False)
    for x, new in ((state["exp_avg"], m), (state["exp_avg_sq"], v), (p, w)):
        x.index_copy_(0, rows, new)


_PLAIN = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
          "decoupled_weight_decay": False, "foreach": None}


class GroupedAdam(_PlainZeroGrad, torch.optim.Adam):
    """torch.optim.Adam(params, fused=True, ...) with the same update, state (`step` a float32 tensor on the
    parameter's device, `exp_avg`, `exp_avg_sq`) and state_dict. A step calls `_foreach_add_` and
    `_fused_adam_` once per distinct (lr, betas, eps, weight_decay, device, dtype); groups with any setting beyond
    plain Adam's (amsgrad, maximize, a tensor lr, ...) and closures take torch's own step."""

    def __init__(self, params: Any, **kwargs: Any):
        super().__init__(params, fused=True, **kwargs)

    def _plain(self, group: dict) -> bool:
        return not isinstance(group["lr"], torch.Tensor) and all(group.get(k, v) == v for k, v in _PLAIN.items())

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is not None or not all(self._plain(g) for g in self.param_groups):
            return super().step(closure)
        calls: dict[tuple, tuple[list, ...]] = {}
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GroupedAdam does not support sparse gradients (use RowSparseAdam)")
                state = self.state[p]
                if not state:  # Adam's own fused-path state, so checkpoints load either way
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                key = (float(group["lr"]), float(b1), float(b2), float(group["eps"]),
                       float(group["weight_decay"]), p.device, p.dtype)
                lists = calls.setdefault(key, ([], [], [], [], []))
                for out, x in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    out.append(x)
        for (lr, b1, b2, eps, wd, *_), (ps, grads, m, v, steps) in calls.items():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(ps, grads, m, v, [], steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps,
                               amsgrad=False, maximize=False)
        return None
