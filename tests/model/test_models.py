"""Forward contracts of every architecture, and known model bugs of other MTL libraries."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.config import MODEL_NAMES, ModelConfig
from pipeline.features.dataset import InputSpec, from_frame
from pipeline.models import build
from pipeline.models.esmm import logit_from_log_prob

ALL = ("ctr", "cart", "ctcvr", "cvr")
MCFG = ModelConfig(embedding_dim=4, num_experts=3, expert_hidden=(8,), tower_hidden=(4,), bottom_hidden=(8,),
                   ple_levels=2, shared_experts=2, task_experts=1, dropout=0.0)


def spec(text: bool = True) -> InputSpec:
    table = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    return InputSpec(("a", "b"), (11, 5), ("num__x",), ("text__title",) if text else (), 7 if text else 0,
                     5 if text else 0, 3, table if text else None)


def batch(n: int = 6, text: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"cat": torch.stack([torch.randint(0, 11, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
           "num": torch.randn(n, 1, generator=g)}
    if text:
        out["text"] = torch.randint(0, 7, (n, 1), generator=g)
    return out


def tasks_for(name: str) -> tuple[str, ...]:
    return ("cvr",) if name == "single_task" else ALL


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("text", [True, False])
def test_forward_gives_one_logit_vector_per_task(name, text):
    torch.manual_seed(0)
    model = build(name, spec(text), MCFG, tasks_for(name))
    out = model(batch(6, text))
    assert set(tasks_for(name)) <= set(out) and set(model.loss_tasks) <= set(out)
    for t, z in out.items():
        assert z.shape == (6,) and z.dtype == torch.float32 and torch.isfinite(z).all(), t
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in ("single_task", "esmm")])
@pytest.mark.parametrize("tasks", [("ctr",), ("cvr", "ctr"), ("cart", "ctcvr", "cvr")])
def test_any_task_subset(name, tasks):
    model = build(name, spec(), MCFG, tasks)
    out = model(batch())
    assert model.tasks == tasks and set(out) == set(tasks) == set(model.loss_tasks)


@pytest.mark.parametrize("tasks", [("ctr", "cvr"), ("ctr", "ctcvr"), ("ctr", "cvr", "ctcvr", "cart")])
def test_esmm_composes_ctcvr_and_keeps_its_loss_for_short_task_lists(tasks):
    model = build("esmm", spec(), MCFG, tasks)
    assert "ctcvr" in model.loss_tasks and "ctr" in model.loss_tasks and "cvr" not in model.loss_tasks
    out = model(batch())
    p_ctr, p_cvr, p_ctcvr = (torch.sigmoid(out[t].double()) for t in ("ctr", "cvr", "ctcvr"))
    assert torch.allclose(p_ctcvr, p_ctr * p_cvr, rtol=1e-5)
    # The cvr output is the cvr tower, not ctcvr (some libraries report the product as cvr).
    assert not torch.allclose(out["cvr"], out["ctcvr"])


def test_log_space_logit_matches_direct_formula_and_stays_finite():
    log_p = torch.tensor([-1e-5, -0.1, -0.69, -0.7, -5.0, -60.0], dtype=torch.float64)
    p = torch.exp(log_p)
    assert torch.allclose(logit_from_log_prob(log_p)[:-1], torch.log(p / (1 - p))[:-1], rtol=1e-4)
    assert torch.isfinite(logit_from_log_prob(torch.tensor([0.0, -200.0]))).all()


def test_experts_start_and_stay_distinct():
    torch.manual_seed(0)
    model = build("mmoe", spec(), MCFG, ALL)
    w = model.experts.layers[0].weight.detach()  # [E, in, h]
    for i in range(w.shape[0]):
        for j in range(i + 1, w.shape[0]):
            assert (w[i] - w[j]).abs().max() > 1e-2
    outs = model.experts(model.features(batch(32)))  # [E, B, h]
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_two_models_never_share_an_embedding_table():
    a, b = build("mmoe", spec(), MCFG, ALL), build("mmoe", spec(), MCFG, ALL)
    for ta, tb in zip(a.features.tables(), b.features.tables()):
        assert ta.weight.data_ptr() != tb.weight.data_ptr()
        before = tb.weight.detach().clone()
        ta.weight.data.add_(1.0)
        assert torch.equal(tb.weight, before)


def test_ids_above_2_pow_24_stay_distinct_through_dataset_and_model():
    big = 2 ** 24 + 1  # float32 rounds it to 2**24
    frame = pl.DataFrame({"cat__id": np.array([big - 1, big], dtype=np.int32), "clicked": [1, 0],
                          "carted": [0, 0], "purchased": [0, 0]})
    spec_d = {"categorical": [{"name": "id", "column": "cat__id", "cardinality": big + 1}], "numeric": []}
    data = from_frame(frame, spec_d, ("ctr",))
    assert data.cat.dtype == torch.int64 and data.cat[:, 0].tolist() == [big - 1, big]
    cfg = dataclasses.replace(MCFG, embedding_dim=1)
    model = build("single_task", InputSpec(("id",), (big + 1,)), cfg, ("ctr",))
    assert model.features.embedding.weight.is_leaf and model.features.small_embedding is None
    rows = model.features(data.batch())
    assert rows[0].item() != rows[1].item()


def test_unknown_model_name_is_a_config_error():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model"):
        build("mmoe2", spec(), MCFG, ALL)


def test_ple_level_matches_a_per_task_loop():
    """CGC: task t's output = sum over its own experts and the shared experts of gate weight x expert output."""
    from pipeline.models.ple import CGC

    torch.manual_seed(0)
    cfg = dataclasses.replace(MCFG, task_experts=2, shared_experts=3)
    level = CGC(("ctr", "cvr"), 5, cfg, 0, last=False).eval()
    x = torch.randn(7, 5)
    task_out, shared_out = level(x, None)
    shared = level.shared(x)  # [S, B, h]
    specific = level.specific(x)  # [T*K, B, h]
    gates = level.task_gates(x)  # [T, B, K+S]
    for t in range(2):
        experts = [specific[t * 2 + k] for k in range(2)] + [shared[s] for s in range(3)]
        for b in range(7):
            want = sum(gates[t, b, e] * experts[e][b] for e in range(5))
            assert torch.allclose(task_out[t, b], want, atol=1e-6)
    everything = [specific[i] for i in range(4)] + [shared[s] for s in range(3)]
    g = level.shared_gate(x)[0]
    for b in range(7):
        assert torch.allclose(shared_out[b], sum(g[b, e] * everything[e][b] for e in range(7)), atol=1e-6)
