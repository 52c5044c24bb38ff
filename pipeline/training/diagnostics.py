"""Diagnostics of a trained model: what its gates do on the valid split (logged in meta.json, shown in the card)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def gate_diagnostics(model: Any, valid: Any, device: Any, label: str, collapse_at: float = 0.9) -> dict[str, Any]:
    """Per gate: mean weight per expert and mean entropy over the valid split. A gate set has collapsed when one
    expert takes >= `collapse_at` of the mean weight in every one of its gates (logged as a warning)."""
    from pipeline.models.layers import Gates
    from pipeline.training.trainer import predict_logits

    sets = [m for m in model.modules() if isinstance(m, Gates)]
    for g in sets:
        g.reset_stats()
        g.record = True
    try:
        predict_logits(model, valid, device)
    finally:
        for g in sets:
            g.record = False
    gates, collapsed = {}, []
    for g in sets:
        if not g.rows:
            continue
        means = (g.weight_sum / g.rows).tolist()
        tops = set()
        for name, experts, w, ent in zip(g.names, g.expert_names, means, (g.entropy_sum / g.rows).tolist()):
            gates[name] = {"weights": dict(zip(experts, w)), "entropy": ent}
            tops.add(experts[max(range(len(w)), key=w.__getitem__)] if max(w) >= collapse_at else None)
        if len(tops) == 1 and None not in tops:
            collapsed.append({"gates": list(g.names), "expert": tops.pop()})
    if collapsed:
        log.warning("%s: expert collapse - one expert takes nearly all gate weight: %s", label, collapsed)
    return {"gates": gates, "expert_collapse": collapsed}
