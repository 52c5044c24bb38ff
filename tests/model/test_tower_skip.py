"""MMoE's tower skip (`model.tower_skip`): each task's tower reads [expert mix, shared input x]."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.config import ModelConfig
from pipeline.features.dataset import InputSpec
from pipeline.models import build

TASKS = ("ctr", "cart", "cvr")
MCFG = ModelConfig(embedding_dim=4, num_experts=3, expert_hidden=(8,), tower_hidden=(5,), dropout=0.0,
                   id_dropout=0.0, tower_skip=True)


def spec() -> InputSpec:
    table = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    return InputSpec(("a", "b"), (11, 5), ("num__x",), ("text__title",), 7, 5, 3, table)


def batch(n: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"cat": torch.stack([torch.randint(0, 11, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
            "num": torch.randn(n, 1, generator=g), "text": torch.randint(0, 7, (n, 1), generator=g)}


def reference_logits(model, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The paper's MMoE written out one expert, task and row at a time, tower input [mix_t(x), x]."""
    x = model.features(b)  # [B, d]
    ex = model.experts.layers[0]
    experts = [F.relu(x @ ex.weight[e] + ex.bias[e, 0]) for e in range(MCFG.num_experts)]  # each [B, 8]
    gl = model.gates.linear
    tw, to = model.towers.mlp.layers[0], model.towers.out
    joint = torch.cat([tw.weight, model.towers.skip_weight], 1)  # [T, 8 + d, 5]: one layer over [mix, x]
    out = {}
    for t, task in enumerate(TASKS):
        rows = []
        for i in range(x.shape[0]):
            g = torch.softmax(x[i] @ gl.weight[t] + gl.bias[t, 0], 0)  # [E]
            mixed = sum(g[e] * experts[e][i] for e in range(MCFG.num_experts))  # [8]
            h = F.relu(torch.cat([mixed, x[i]]) @ joint[t] + tw.bias[t, 0])  # [5]
            rows.append(h @ to.weight[t, :, 0] + to.bias[t, 0, 0])
        out[task] = torch.stack(rows)
    return out


def test_tower_skip_matches_the_written_out_formula():
    torch.manual_seed(0)
    model = build("mmoe", spec(), MCFG, TASKS).eval()
    b = batch()
    with torch.no_grad():
        got, want = model(b), reference_logits(model, b)
    for t in TASKS:
        assert torch.allclose(got[t], want[t], atol=1e-5), t


def test_tower_skip_adds_only_one_first_layer_block_on_x_per_task():
    on = build("mmoe", spec(), MCFG, TASKS)
    off = build("mmoe", spec(), dataclasses.replace(MCFG, tower_skip=False), TASKS)
    d_in = on.features.out_dim
    assert on.towers.skip_weight.shape == (len(TASKS), d_in, 5)
    assert on.towers.mlp.layers[0].weight.shape == off.towers.mlp.layers[0].weight.shape
    n_on, n_off = (sum(p.numel() for p in m.parameters()) for m in (on, off))
    assert n_on - n_off == len(TASKS) * d_in * 5


@pytest.mark.parametrize("hidden", [(5,), (6, 3), ()])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_split_towers_equal_one_towers_over_the_concatenation(hidden, batch_norm):
    """Same seed -> the split layer starts with the joint layer's weights and computes the same logits; with
    model.batch_norm the split tower normalises after every hidden layer as the joint one does (train mode, so
    the batch statistics are used and the running ones move)."""
    from pipeline.models.layers import Towers
    from pipeline.models.mmoe import SkipTowers

    torch.manual_seed(3)
    joint = Towers(4, 8 + 6, hidden, 0.0)
    torch.manual_seed(3)
    split = SkipTowers(4, 8, 6, hidden, 0.0)
    if batch_norm:
        joint.mlp.add_batch_norm()
        split.mlp.add_batch_norm()
    else:
        joint.eval(), split.eval()
    mixed, x = torch.randn(4, 10, 8), torch.randn(10, 6)
    with torch.no_grad():
        want = joint(torch.cat([mixed, x.expand(4, 10, 6)], -1))
        got = split(mixed, x)
    if batch_norm and hidden:
        assert [int(n.norm.num_batches_tracked) for n in split.mlp.norms] == [1] * len(hidden)
    assert got.shape == (4, 10) and torch.allclose(got, want, atol=1e-5)
    first = joint.mlp.layers[0] if hidden else joint.out
    split_first = split.mlp.layers[0] if hidden else split.out
    assert torch.equal(torch.cat([split_first.weight, split.skip_weight], 1), first.weight)


def test_per_task_best_slices_cover_the_skip_weights():
    """fitting keeps each task's tower as member i of every `model.towers` parameter: the skip part included."""
    from pipeline.training.fitting import _tower_slices

    model = build("mmoe", spec(), MCFG, TASKS)
    parts = _tower_slices(model, 1)
    assert torch.equal(parts["skip_weight"], model.towers.skip_weight[1])


def test_skip_gives_each_task_a_gradient_path_past_the_experts():
    """With the experts' output at zero (all ReLUs dead), a task's logit still moves with x through its tower."""
    torch.manual_seed(0)
    model = build("mmoe", spec(), MCFG, TASKS).eval()
    with torch.no_grad():
        model.experts.layers[0].bias.fill_(-1e3)
    b = batch()
    x = model.features(b).detach().requires_grad_(True)
    model.heads(x)["ctr"].sum().backward()
    assert x.grad.abs().sum() > 0
    off = build("mmoe", spec(), dataclasses.replace(MCFG, tower_skip=False), TASKS).eval()
    with torch.no_grad():
        off.experts.layers[0].bias.fill_(-1e3)
    x = model.features(b).detach().requires_grad_(True)
    off.heads(x)["ctr"].sum().backward()
    assert x.grad.abs().sum() == 0


def test_a_model_saved_before_the_key_loads_as_it_was_built(tmp_path):
    """A stored config without `tower_skip` (a champion trained before it) rebuilds without the skip."""
    from pipeline.training.train import load_trained

    torch.manual_seed(0)
    old = build("mmoe", spec(), dataclasses.replace(MCFG, tower_skip=False), TASKS).eval()
    stored = {k: v for k, v in dataclasses.asdict(old.cfg).items() if k != "tower_skip"}
    meta = {"model": "mmoe", "tasks": list(TASKS), "config": {"model": stored}, "inputs": spec().to_dict()}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    torch.save(old.state_dict(), tmp_path / "model.pt")
    model, _ = load_trained(tmp_path)
    assert model.skip is False
    b = batch()
    with torch.no_grad():
        got, want = model(b), old(b)
    for t in TASKS:
        assert torch.equal(got[t], want[t])


@pytest.mark.parametrize("value", [True, False])
def test_the_key_reaches_the_model_through_the_config(value):
    from pipeline.config import load_config

    cfg = load_config(None, [f"model.tower_skip={str(value).lower()}"])
    assert build("mmoe", spec(), dataclasses.replace(cfg.model, embedding_dim=4), TASKS).skip is value
