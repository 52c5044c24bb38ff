"""Each loss weighting's defining behaviour, on tiny problems with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.training.weighting import DWA, GradNorm, PCGrad, Uncertainty, Weighting, project_conflicts


def test_fixed_weights_scale_each_task_gradient():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    w = Weighting(2, TrainConfig(task_weights=(3.0, 0.0)), [p])
    w.backward(torch.stack([(p ** 2).sum(), p.sum()]), None)
    assert torch.allclose(p.grad, 3.0 * 2 * p.detach())


def test_uncertainty_gives_the_noisier_task_the_smaller_weight():
    """With constant losses L_t the optimum of exp(-s) L + s/2 is s = log(2 L): weight 1 / (2 L)."""
    losses = torch.tensor([0.1, 1.0])  # task 1 is the noisy one
    u = Uncertainty(2, TrainConfig(), [])
    opt = torch.optim.Adam(u.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        u.backward(losses, None)
        opt.step()
    w = u.weights()
    assert w[1] < w[0]
    assert w == pytest.approx([1 / 0.2, 1 / 2.0], rel=0.05)


def test_dwa_raises_the_weight_of_the_task_whose_loss_falls_slowest():
    d = DWA(3, TrainConfig(), [])
    d.epoch_end([1.0, 1.0, 1.0])
    assert d.weights() == [1.0, 1.0, 1.0]
    d.epoch_end([0.5, 0.9, 1.0])
    r = torch.tensor([0.5, 0.9, 1.0])
    expected = 3 * torch.softmax(r / 2.0, 0)
    assert d.weights() == pytest.approx(expected.tolist())
    assert d.weights()[0] < d.weights()[1] < d.weights()[2] and sum(d.weights()) == pytest.approx(3.0)


def test_gradnorm_balances_weighted_gradient_norms():
    """Task 0's gradient on the shared weights is 10x task 1's: GradNorm lowers w_0 until w_t ||g_t|| match."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    g = GradNorm(2, TrainConfig(), [p])
    for _ in range(300):
        p.grad = None
        g.backward(torch.stack([5.0 * (p ** 2).sum(), 0.5 * (p ** 2).sum()]), None)
    w = g.weights()
    assert w[0] < w[1] and sum(w) == pytest.approx(2.0, rel=1e-4)
    assert w[1] / w[0] == pytest.approx(10.0, rel=0.15)


def test_pcgrad_projection_removes_the_conflicting_component():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = project_conflicts(g)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.5]))  # g1 - (g1.g2 / |g2|^2) g2
    assert torch.allclose(out[1], torch.tensor([0.0, 1.0]))  # g2 - (g2.g1 / |g1|^2) g1
    assert (out[0] @ g[1]).abs() < 1e-6 and (out[1] @ g[0]).abs() < 1e-6
    agree = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(project_conflicts(agree), agree)  # no conflict, no change


def test_pcgrad_backward_puts_the_projected_sum_on_shared_params_only():
    shared = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    own = torch.nn.Parameter(torch.tensor([2.0]))
    pc = PCGrad(2, TrainConfig(), [shared])
    l0 = shared[0] * 1.0 + own.sum() ** 2  # grad on shared: [1, 0]
    l1 = -shared[0] + shared[1]  # grad on shared: [-1, 1] (conflicts with task 0)
    pc.backward(torch.stack([l0, l1]), None)
    assert torch.allclose(shared.grad, torch.tensor([0.5, 1.5]))  # [0.5, 0.5] + [0, 1]
    assert torch.allclose(own.grad, torch.tensor([4.0]))  # task-specific: plain gradient
    for gi in (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])):
        assert shared.grad @ gi >= 0  # the update no longer increases any task's loss to first order


@pytest.mark.parametrize("cls", [Weighting, Uncertainty, DWA, GradNorm, PCGrad])
def test_weighting_state_round_trips(cls):
    p = torch.nn.Parameter(torch.ones(2))
    a = cls(2, TrainConfig(), [p])
    a.backward(torch.stack([(p ** 2).sum(), 3 * p.sum()]), None)
    a.epoch_end([1.0, 2.0])
    a.epoch_end([0.5, 1.9])
    b = cls(2, TrainConfig(), [p])
    b.load_state_dict(a.state_dict())
    assert b.weights() == pytest.approx(a.weights()) and not any(math.isnan(x) for x in b.weights())


def _gradnorm_steps(g: GradNorm, p: torch.nn.Parameter, n: int = 50) -> None:
    for _ in range(n):
        p.grad = None
        g.backward(torch.stack([5.0 * (p ** 2).sum(), 0.5 * (p ** 2).sum()]), None)


def test_gradnorm_weights_still_move_after_the_module_is_moved():
    """`.to(...)` replaces buffers; the weights' optimizer must follow the new tensor (a GPU run moves the module
    to CUDA; here float64 replaces the buffer the same way)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    g = GradNorm(2, TrainConfig(), [p])
    _gradnorm_steps(g, p, 5)  # Adam has moments before the move
    g = g.to(torch.float64)
    assert g.w.dtype == torch.float64 and g.w_avg.param_groups[0]["params"][0] is g.w
    assert g.w_avg.state[g.w]["exp_avg"].dtype == torch.float64
    before = g.weights()
    _gradnorm_steps(g, p)
    assert g.weights()[0] < before[0] - 1e-3  # the dominating task's weight keeps falling


def test_weighting_modules_move_to_the_meta_device_without_stale_tensors():
    """On `meta` every tensor is replaced: nothing may still point at a CPU tensor afterwards."""
    for cls in (Weighting, Uncertainty, DWA, GradNorm, PCGrad):
        m = cls(3, TrainConfig(), []).to("meta")
        assert all(t.device.type == "meta" for t in list(m.buffers()) + list(m.parameters()))
        if isinstance(m, GradNorm):
            assert m.w_avg.param_groups[0]["params"][0] is m.w


def test_dwa_history_lives_on_the_module_device():
    """DWA stacks each epoch's mean losses onto its history buffer: the new row must be made on that device."""
    d = DWA(2, TrainConfig(), []).to(torch.float64)
    d.epoch_end([1.0, 1.0])
    d.epoch_end([0.5, 1.0])
    assert d.last.dtype == torch.float64 and d.w.dtype == torch.float64
    m = DWA(2, TrainConfig(), []).to("meta")
    # The old code stacked a CPU tensor onto the meta buffer and raised "Tensor on device cpu is not on the
    # expected device meta". Now the stack succeeds; only reading the epoch counter back fails on meta.
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
        m.epoch_end([1.0, 1.0])
    assert m.last.device.type == "meta"


def test_make_weighting_builds_on_the_device():
    from pipeline.training.weighting import make_weighting

    g = make_weighting("gradnorm", 2, TrainConfig(), [], torch.device("meta"))
    assert g.w.device.type == "meta" and g.w_avg.param_groups[0]["params"][0] is g.w
