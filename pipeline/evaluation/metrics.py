"""Ranking and calibration metrics in plain numpy, each checked against a brute-force loop in tests.

Every function takes 1-D arrays of equal length: `labels` in {0, 1}, `scores` (probabilities or any
real-valued ranking score). A metric that is undefined on its input (no positives, no negatives, no
rows) is NaN, never 0.5; `pipeline.io.write_json` writes NaN as null.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def tie_groups(scores) -> tuple[np.ndarray, int]:
    """Index of each row's distinct score value in ascending order -> (inverse [N], number of values)."""
    uniq, inverse = np.unique(np.asarray(scores, dtype=np.float64).ravel(), return_inverse=True)
    return inverse, len(uniq)


def auc_from_groups(inverse: np.ndarray, n_groups: int, labels: np.ndarray, weights=None) -> float:
    """AUC given precomputed tie groups (see `tie_groups`), optionally with row weights.

    A positive scores 1 against each lower negative and 1/2 against each tied one (= average ranks).
    Precomputing the groups once lets the bootstrap reweight rows in O(N) per resample.
    """
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    pos = np.bincount(inverse, weights=w * y, minlength=n_groups)
    neg = np.bincount(inverse, weights=w * (1.0 - y), minlength=n_groups)
    return _auc_counts(pos, neg)


def _auc_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from (weighted) positives and negatives per tie group [G], groups in ascending score order."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


class RequestCounts:
    """Positives and negatives per (tie group of the scores, request) pair: what a request bootstrap needs.

    Rows of one request that tie on the score collapse into one pair; the pairs holding negatives are kept in
    ascending score order (request [Pn], neg [Pn]) and each pair holding positives (request [Pp], pos [Pp])
    knows where its tie group starts and ends among them (lo, hi [Pp]). Reweighting requests is then one
    cumulative sum over the negative pairs and a gather at the positive ones: O(pairs), no per-row weights.
    `auc(w)` with w = request weights [R] equals the row-weighted AUC with weight w[request].
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, requests: np.ndarray, n_requests: int):
        inverse, _ = tie_groups(scores)
        key = inverse.astype(np.int64) * n_requests + requests
        pairs, at = np.unique(key, return_inverse=True)
        tie, request = pairs // n_requests, pairs % n_requests
        pos = np.bincount(at.ravel(), weights=labels, minlength=len(pairs))
        neg = np.bincount(at.ravel(), weights=1.0 - labels, minlength=len(pairs))
        has_neg, has_pos = neg > 0, pos > 0
        self.neg_request, self.neg = request[has_neg], neg[has_neg]
        self.pos_request, self.pos = request[has_pos], pos[has_pos]
        # negatives strictly below a positive pair's score: neg pairs [0, lo); tied with it: [lo, hi)
        self.lo = np.searchsorted(tie[has_neg], tie[has_pos], side="left")
        self.hi = np.searchsorted(tie[has_neg], tie[has_pos], side="right")

    def auc(self, request_weights: np.ndarray) -> float:
        neg = request_weights[self.neg_request] * self.neg
        pos = request_weights[self.pos_request] * self.pos
        below = np.r_[0.0, np.cumsum(neg)]
        total_pos, total_neg = pos.sum(), below[-1]
        if total_pos <= 0 or total_neg <= 0:
            return float("nan")
        # a positive beats the negatives below it and half of those tied with it
        return float(np.dot(pos, 0.5 * (below[self.lo] + below[self.hi])) / (total_pos * total_neg))


def auc(labels, scores, weights=None) -> float:
    """Area under the ROC curve; ties count 1/2 (average rank). NaN when a class is missing."""
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return float("nan")
    inverse, n = tie_groups(s)
    return auc_from_groups(inverse, n, y, weights)


def logloss(labels, probs, eps: float = EPS) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]. NaN on no rows."""
    y, p = _arrays(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def _group_codes(groups) -> np.ndarray:
    return np.unique(np.asarray(groups).ravel(), return_inverse=True)[1].ravel()


def group_aucs(labels, scores, groups) -> tuple[np.ndarray, np.ndarray]:
    """AUC of every group (NaN where a group lacks a class) and its row count, groups in sorted order."""
    y, s = _arrays(labels, scores)
    g = _group_codes(groups)
    n_groups = int(g.max()) + 1 if g.size else 0
    # Rank ties within (group, score): distinct pairs in lexicographic order.
    order = np.lexsort((s, g))
    gs, ss, ys = g[order], s[order], y[order]
    new_run = np.r_[True, (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])] if gs.size else np.zeros(0, bool)
    run = np.cumsum(new_run) - 1
    n_runs = int(run[-1]) + 1 if run.size else 0
    pos = np.bincount(run, weights=ys, minlength=n_runs)
    neg = np.bincount(run, weights=1.0 - ys, minlength=n_runs)
    run_group = gs[new_run]
    # Negatives strictly below each run inside its group = cumulative negatives minus the group's start.
    cum_neg = np.cumsum(neg) - neg
    group_start = np.r_[True, run_group[1:] != run_group[:-1]] if run_group.size else np.zeros(0, bool)
    start_cum = cum_neg[group_start][np.cumsum(group_start) - 1]
    wins = np.bincount(run_group, weights=pos * (cum_neg - start_cum + 0.5 * neg), minlength=n_groups)
    tot_pos = np.bincount(run_group, weights=pos, minlength=n_groups)
    tot_neg = np.bincount(run_group, weights=neg, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        aucs = np.where((tot_pos > 0) & (tot_neg > 0), wins / (tot_pos * tot_neg), np.nan)
    return aucs, tot_pos + tot_neg


def gauc(labels, scores, groups) -> float:
    """Group AUC: the mean of per-group AUCs weighted by group size, over groups with both classes."""
    aucs, sizes = group_aucs(labels, scores, groups)
    ok = ~np.isnan(aucs)
    if not ok.any():
        return float("nan")
    return float(np.sum(aucs[ok] * sizes[ok]) / np.sum(sizes[ok]))


def _dcg_by_group(gains: np.ndarray, keys: np.ndarray, g: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """DCG@k per group when rows are ranked by `keys` descending, ties averaged as sklearn's ndcg_score does.

    Rows with equal keys in a group share the positions they span: each gets the tie run's mean gain, times the
    sum of the discounts 1/log2(pos + 2) of those positions (positions >= k count 0). So the result does not
    depend on the input row order.
    """
    order = np.lexsort((-keys, g))
    gs, ks, gains = g[order], keys[order], gains[order]
    idx = np.arange(gs.size)
    start = np.r_[True, gs[1:] != gs[:-1]]
    pos = idx - np.maximum.accumulate(np.where(start, idx, 0))
    disc = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    new_run = start | np.r_[True, ks[1:] != ks[:-1]]
    run = np.cumsum(new_run) - 1
    n_runs = int(run[-1]) + 1
    counts = np.bincount(run, minlength=n_runs)
    mean_gain = np.bincount(run, weights=gains, minlength=n_runs) / counts
    disc_sum = np.bincount(run, weights=disc, minlength=n_runs)
    return np.bincount(gs[new_run], weights=mean_gain * disc_sum, minlength=n_groups)


def ndcg_at_k(labels, scores, groups, k: int = 10) -> float:
    """Mean NDCG@k over groups (requests) with at least one positive; binary gains, log2 discount.

    Tied scores are averaged like `sklearn.metrics.ndcg_score` (ignore_ties=False), so a constant scorer gets
    the same NDCG whatever the row order. NaN when no group has a positive.
    """
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return float("nan")
    g = _group_codes(groups)
    n_groups = int(g.max()) + 1
    dcg = _dcg_by_group(y, s, g, n_groups, k)
    ideal = _dcg_by_group(y, y, g, n_groups, k)
    ok = ideal > 0
    if not ok.any():
        return float("nan")
    return float(np.mean(dcg[ok] / ideal[ok]))


def calibration_bins(labels, probs, bins: int = 10) -> dict[str, list]:
    """Equal-width probability bins: mean prediction, observed rate and row count per non-empty bin."""
    y, p = _arrays(labels, probs)
    b = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(b, minlength=bins)
    pred = np.bincount(b, weights=p, minlength=bins)
    obs = np.bincount(b, weights=y, minlength=bins)
    ok = counts > 0
    return {
        "mean_pred": (pred[ok] / counts[ok]).tolist(),
        "observed": (obs[ok] / counts[ok]).tolist(),
        "count": counts[ok].tolist(),
    }


def ece(labels, probs, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of |mean pred - observed rate| * bin share."""
    cb = calibration_bins(labels, probs, bins)
    n = sum(cb["count"])
    if n == 0:
        return float("nan")
    gaps = np.abs(np.asarray(cb["mean_pred"]) - np.asarray(cb["observed"]))
    return float(np.sum(gaps * np.asarray(cb["count"])) / n)


def pred_obs_ratio(labels, probs) -> float:
    """Mean prediction / observed positive rate (1 = calibrated on average). NaN without positives."""
    y, p = _arrays(labels, probs)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    return float(p.mean() / y.mean())


def summary(labels, probs, users, requests, fused=None, k: int = 10) -> dict[str, float | int]:
    """All metrics of one task on one slice of rows (rows already restricted to the task's sample space)."""
    y, p = _arrays(labels, probs)
    out: dict[str, float | int] = {
        "rows": int(y.size),
        "positives": int(y.sum()),
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "gauc_user": gauc(y, p, users) if y.size else float("nan"),
        "gauc_request": gauc(y, p, requests) if y.size else float("nan"),
        f"ndcg{k}": ndcg_at_k(y, p, requests, k),
        "pred_obs": pred_obs_ratio(y, p),
        "ece": ece(y, p) if y.size else float("nan"),
    }
    if fused is not None:
        out[f"ndcg{k}_fused"] = ndcg_at_k(y, fused, requests, k)
    return out


def bootstrap_auc_diff(labels, a, b, groups, resamples: int, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same rows, with a percentile interval from resampling whole groups (requests).

    Each resample draws as many groups as there are, with replacement; a row's weight is how often its group
    was drawn. The weights are applied to per-(tie group, request) counts (`RequestCounts`), never to rows:
    the same draws and the same intervals as reweighting rows, up to float rounding, at O(pairs) a resample.
    Resamples where an AUC is undefined are dropped. Returns diff, lo, hi (NaN when undefined)
    and `resamples`, the number of resamples used.
    """
    y, sa = _arrays(labels, a)
    _, sb = _arrays(labels, b)
    diff = auc(y, sa) - auc(y, sb)
    out = {"diff": diff, "lo": float("nan"), "hi": float("nan"), "resamples": 0}
    if y.size == 0 or np.isnan(diff) or resamples <= 0:
        return out
    g = _group_codes(groups)
    n_groups = int(g.max()) + 1
    count_a, count_b = RequestCounts(y, sa, g, n_groups), RequestCounts(y, sb, g, n_groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):  # the same draws as weighting every row by its request's count
        w = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        d = count_a.auc(w) - count_b.auc(w)
        if not np.isnan(d):
            diffs.append(d)
    if diffs:
        tail = (1.0 - level) / 2.0
        out.update(lo=float(np.quantile(diffs, tail)), hi=float(np.quantile(diffs, 1.0 - tail)), resamples=len(diffs))
    return out
