"""The fused ranking score: score = prod_task p_task^a_task * price^c (`serving.score_exponents`).

Used by the pyfunc at serving and by evaluation (NDCG of the fused score), so both rank the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PRICE = "price"


def effective_exponents(exponents: Sequence[tuple[str, float]], tasks: Sequence[str]) -> dict[str, float]:
    """The non-zero exponents that apply to a model with `tasks` (a task it does not predict is left out)."""
    return {k: float(v) for k, v in exponents if v != 0 and (k == PRICE or k in tasks)}


def formula(exponents: Mapping[str, float]) -> str:
    """Human-readable fused score, e.g. 'p_ctr^1 * p_cvr^1'."""
    parts = [f"{'price' if k == PRICE else 'p_' + k}^{v:g}" for k, v in exponents.items()]
    return " * ".join(parts) if parts else "1"


def fused_score(probs: Mapping[str, np.ndarray], price: np.ndarray | None, exponents: Mapping[str, float]) -> np.ndarray:
    """score = prod_task p_task^a_task * price^c, over `exponents` (from `effective_exponents`).

    probs: task -> float [N]; price: float [N] (> 0), needed only when the price exponent is non-zero.
    Computed in log space so small probabilities do not underflow before ranking.
    """
    n = len(next(iter(probs.values()))) if probs else (0 if price is None else len(price))
    log_score = np.zeros(n, dtype=np.float64)
    for name, a in exponents.items():
        if name == PRICE:
            if price is None:
                raise ValueError("the fused score has a price exponent but no price was given")
            values = np.asarray(price, dtype=np.float64)
        else:
            values = np.asarray(probs[name], dtype=np.float64)
        log_score += a * np.log(np.clip(values, 1e-12, None))
    return np.exp(log_score)
