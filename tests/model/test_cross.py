"""DCN-v2 cross layers (model.cross_layers): the formula against a loop, identity at start, saved and loaded."""

from __future__ import annotations

import torch

from pipeline.config import load_config
from pipeline.models.layers import CrossNet

RUN_ID = "2026-01-10"  # the run of the feature_run fixture (tests/model/conftest.py)
SMALL = ["train.epochs=1", "train.batch_size=256", "train.threads=1", "model.embedding_dim=4",
         "model.num_experts=2", "model.expert_hidden=[8]", "model.tower_hidden=[4]", "text.proj_dim=4"]


def test_cross_layers_match_the_formula_and_start_as_identity():
    torch.manual_seed(0)
    net = CrossNet(5, 2)
    x0 = torch.randn(3, 5)
    assert torch.equal(net(x0), x0)  # zero-initialised W and b: identity
    for lin in net.linears:
        torch.nn.init.normal_(lin.weight)
        torch.nn.init.normal_(lin.bias)
    want = x0.clone()
    for lin in net.linears:  # x_{l+1} = x0 * (W x_l + b) + x_l, element by element
        want = torch.stack([torch.stack([x0[b, i] * (sum(lin.weight[i, k] * want[b, k] for k in range(5))
                                                     + lin.bias[i]) + want[b, i] for i in range(5)])
                            for b in range(3)])
    torch.testing.assert_close(net(x0), want)


def test_a_model_with_cross_layers_trains_saves_and_loads(feature_run):
    from pipeline.features import dataset
    from pipeline.training.train import load_trained, predict, train_model

    cfg = load_config(overrides=[*SMALL, "model.cross_layers=2"], home=feature_run)
    train_model(cfg, RUN_ID, "mtl")
    model, meta = load_trained(feature_run / "runs" / RUN_ID / "models" / "mtl")
    assert meta["config"]["model"]["cross_layers"] == 2 and len(model.cross.linears) == 2
    assert any(lin.weight.abs().sum() > 0 for lin in model.cross.linears)  # the crosses were trained
    test = dataset.load_split(feature_run / "runs" / RUN_ID, "test", model.tasks)
    p = predict(model, test)
    assert p.shape == (len(test), 4) and ((p > 0) & (p < 1)).all()
