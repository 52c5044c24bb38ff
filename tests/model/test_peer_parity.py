"""What the torch-rechub parity work built (bench/train_bench.py --peer-config): the row-wise SparseAdam and the
model.batch_norm option."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import RUN_ID, SMALL
from test_models import MCFG, batch, spec, tasks_for

from pipeline.config import MODEL_NAMES, load_config
from pipeline.features import dataset
from pipeline.models import build
from pipeline.models.blocks import ParallelBatchNorm
from pipeline.training.optimizers import GroupedAdam, RowSparseAdam
from pipeline.training.train import load_trained, predict, train_model


def _sparse_steps(opt_cls, weight: torch.Tensor, steps: int) -> tuple[torch.nn.Embedding, torch.optim.Optimizer]:
    table = torch.nn.Embedding(*weight.shape, sparse=True)
    table.weight.data.copy_(weight)
    opt = opt_cls(table.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 40, (64, 3), generator=g)  # rows 40.. are never in a batch; repeats within one
        (table(ids).sin() * torch.arange(ids.numel() * 4).view(64, 3, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    return table, opt


def test_row_sparse_adam_is_sparse_adam_and_leaves_other_rows_alone():
    weight = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    ref, ref_opt = _sparse_steps(torch.optim.SparseAdam, weight, 12)
    row, row_opt = _sparse_steps(RowSparseAdam, weight, 12)
    torch.testing.assert_close(row.weight, ref.weight)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(row_opt.state[row.weight][key], ref_opt.state[ref.weight][key])
    assert row_opt.state[row.weight]["step"] == 12
    assert torch.equal(row.weight[40:], weight[40:]) and not torch.equal(row.weight[:40], weight[:40])
    assert not row_opt.state[row.weight]["exp_avg"][40:].any()
    # the state is SparseAdam's: a checkpoint of one resumes in the other
    back = torch.optim.SparseAdam(row.parameters(), lr=0.01)
    back.load_state_dict(row_opt.state_dict())
    assert back.state[row.weight]["step"] == 12


def _dense_steps(make, steps: int) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((5, 3), (3,), (2, 4, 2), (7,))]
    # groups 0 and 1 share their settings (one kernel call), group 2 has its own lr and weight decay
    opt = make([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:3]},
                {"params": params[3:], "lr": 0.05, "weight_decay": 0.1}])
    for i in range(steps):
        loss = sum((p.sin() * (j + 1)).sum() for j, p in enumerate(params) if not (i == 2 and j == 1))
        loss.backward()  # step 2: params[1] gets no gradient and must not move
        opt.step()
        opt.zero_grad(set_to_none=True)
    return params, opt


def test_grouped_adam_is_torch_adam():
    ref, ref_opt = _dense_steps(lambda groups: torch.optim.Adam(groups, lr=0.01, fused=True), 6)
    plain, _ = _dense_steps(lambda groups: torch.optim.Adam(groups, lr=0.01), 6)
    ours, opt = _dense_steps(lambda groups: GroupedAdam(groups, lr=0.01), 6)
    for a, b, c in zip(ours, ref, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt.state[a][key], ref_opt.state[b][key], rtol=0, atol=0)
    assert float(opt.state[ours[1]]["step"]) == 5 and float(opt.state[ours[0]]["step"]) == 6
    # the state is Adam's: a checkpoint of one resumes in the other
    back = torch.optim.Adam([{"params": ours[:1]}, {"params": ours[1:3]}, {"params": ours[3:]}], lr=0.01)
    back.load_state_dict(opt.state_dict())
    assert float(back.state[ours[0]]["step"]) == 6


def test_parallel_batch_norm_is_one_batch_norm_per_member():
    torch.manual_seed(0)
    norm = ParallelBatchNorm(3, 5)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 2.0)
        norm.norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 16, 5) * 3 + 1
    out = norm(x)
    for i in range(3):
        ref = torch.nn.BatchNorm1d(5)
        with torch.no_grad():
            ref.weight.copy_(norm.norm.weight[i * 5:(i + 1) * 5])
            ref.bias.copy_(norm.norm.bias[i * 5:(i + 1) * 5])
        torch.testing.assert_close(out[i], ref(x[i]))
        torch.testing.assert_close(norm.norm.running_mean[i * 5:(i + 1) * 5], ref.running_mean)
    norm.eval()  # eval: the running statistics, not the batch's
    m = norm.norm
    want = (x - m.running_mean.view(3, 1, 5)) / torch.sqrt(m.running_var.view(3, 1, 5) + m.eps)
    torch.testing.assert_close(norm(x), want * m.weight.view(3, 1, 5) + m.bias.view(3, 1, 5))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_norm_option_puts_one_after_every_hidden_linear_and_gate(name):
    torch.manual_seed(0)
    model = build(name, spec(), dataclasses.replace(MCFG, batch_norm=True), tasks_for(name))
    norms = [m for m in model.modules() if isinstance(m, ParallelBatchNorm)]
    mlps = [m for m in model.modules() if hasattr(m, "norms")]
    assert norms and all(m.norms is not None and len(m.norms) == len(m.layers) for m in mlps)
    assert all(m.norm is not None for m in model.modules() if type(m).__name__ == "Gates")
    model.train()
    for n in (6, 1):  # a one-row training batch (an epoch's last) uses the running statistics instead of failing
        out = model(batch(n))
        assert all(z.shape == (n,) and torch.isfinite(z).all() for z in out.values())
    model.eval()
    assert all(torch.isfinite(z).all() for z in model(batch(6)).values())


def test_a_batch_norm_model_trains_saves_loads_and_scores_like_the_trained_one(feature_run):
    cfg = load_config(overrides=[*SMALL, "model.batch_norm=true"], home=feature_run)
    res = train_model(cfg, RUN_ID, "mtl")
    assert all(0.3 < v < 1.0 for v in res["valid"]["auc"].values())
    model, meta = load_trained(feature_run / "runs" / RUN_ID / "models" / "mtl")
    assert meta["config"]["model"]["batch_norm"] is True
    norms = [m.norm for m in model.modules() if isinstance(m, ParallelBatchNorm)]
    assert norms and all(int(n.num_batches_tracked) > 0 and n.running_var.ne(1).any() for n in norms)
    test = dataset.load_split(feature_run / "runs" / RUN_ID, "test", model.tasks)
    p = predict(model, test)
    assert p.shape == (len(test), 4) and ((p > 0) & (p < 1)).all()
    # served one row at a time, a row scores as in the whole split (eval uses the running statistics)
    torch.testing.assert_close(torch.as_tensor(predict(model, test.slice(3, 4))), torch.as_tensor(p[3:4]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_linear_before_batch_norm_drops_its_bias_and_a_stored_one_folds_into_the_running_mean(name):
    """BatchNorm subtracts the batch mean, so a bias just before it changes nothing: those Linears have none (one
    pass and one gradient less per layer). A state saved while they still had one loads with the bias moved into
    the norm's running mean, and scores exactly as that model did."""
    from pipeline.models.layers import Gates, ParallelLinear, ParallelMLP

    cfg = dataclasses.replace(MCFG, batch_norm=True)
    torch.manual_seed(0)
    model = build(name, spec(), cfg, tasks_for(name))
    before_bn = [lin for m in model.modules() if isinstance(m, ParallelMLP) for lin in m.layers]
    before_bn += [m.linear for m in model.modules() if isinstance(m, Gates)]
    assert before_bn and all(lin.bias is None for lin in before_bn)
    assert all(lin.bias is not None for lin in model.modules()
               if isinstance(lin, ParallelLinear) and all(lin is not b for b in before_bn))  # output layers keep theirs
    model.train()
    for n in (8, 8, 8):  # move the running statistics off their initial values
        model(batch(n))
    model.eval()
    x = batch(6)
    want = model(x)
    # the state the old code saved: the same weights plus a bias b, whose running mean was mean(xW + b)
    legacy = dict(model.state_dict())
    g = torch.Generator().manual_seed(3)
    for key, mod in model.named_modules():
        if isinstance(mod, ParallelLinear) and mod.bias is None:
            norm = key.replace("layers.", "norms.") + ".norm" if ".layers." in f".{key}" else \
                key.rsplit(".", 1)[0] + ".norm.norm"
            b = torch.randn(mod.weight.shape[0], 1, mod.weight.shape[2], generator=g)
            legacy[f"{key}.bias"] = b
            legacy[f"{norm}.running_mean"] = legacy[f"{norm}.running_mean"] + b.reshape(-1)
    fresh = build(name, spec(), cfg, tasks_for(name)).eval()
    fresh.load_state_dict(legacy)
    got = fresh(x)
    for t in want:
        torch.testing.assert_close(got[t], want[t])


@pytest.mark.parametrize("batch_norm", [False, True])
def test_shared_input_gates_in_expert_major_layout_equal_the_per_gate_path(batch_norm):
    """Gates over a shared [B, in] input are computed as [n*E, B] (the batch the fast inner dim); weights, running
    statistics and gradients equal those of the [n, B, in] path (Linear -> BatchNorm -> softmax per gate), and the
    bmm mix equals the plain gate-weighted sum of the experts."""
    import copy

    from pipeline.models.layers import Gates, mix

    torch.manual_seed(0)
    gates = Gates(3, 7, 4, ("a", "b", "c"), (("e0", "e1", "e2", "e3"),) * 3)
    if batch_norm:
        gates.add_batch_norm()
    ref = copy.deepcopy(gates)
    x = torch.randn(32, 7, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    w, w_ref = gates(x), ref(xr.expand(3, 32, 7))
    assert w.shape == (3, 32, 4)
    torch.testing.assert_close(w, w_ref)
    experts = torch.randn(4, 32, 5)
    want = (w_ref.unsqueeze(-1) * experts.transpose(0, 1).unsqueeze(0)).sum(2)  # [n, B, h]
    torch.testing.assert_close(mix(w, experts), want)
    g = torch.randn(3, 32, 5)
    (mix(w, experts) * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    for p, q in zip(gates.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    if batch_norm:
        torch.testing.assert_close(gates.norm.norm.running_mean, ref.norm.norm.running_mean)
        torch.testing.assert_close(gates.norm.norm.running_var, ref.norm.norm.running_var)
        gates.eval(), ref.eval()
        torch.testing.assert_close(gates(x), ref(xr.expand(3, 32, 7)))
