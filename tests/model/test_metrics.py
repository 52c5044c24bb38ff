"""Every metric against a brute-force loop, on data with ties, empty groups and missing classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import metrics


def brute_auc(y, s, w=None):
    w = np.ones(len(y)) if w is None else w
    num = den = 0.0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] == 1 and y[j] == 0:
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den if den else math.nan


def brute_gauc(y, s, g):
    num = den = 0.0
    for key in sorted(set(g)):
        idx = [i for i in range(len(y)) if g[i] == key]
        a = brute_auc([y[i] for i in idx], [s[i] for i in idx])
        if not math.isnan(a):
            num += a * len(idx)
            den += len(idx)
    return num / den if den else math.nan


def brute_ndcg(y, s, g, k):
    """Tied scores share the positions they span: each row gets the mean discount of those positions."""
    vals = []
    for key in sorted(set(g)):
        idx = [i for i in range(len(y)) if g[i] == key]
        disc = [1 / math.log2(r + 2) if r < k else 0.0 for r in range(len(idx))]
        dcg = 0.0
        for i in idx:
            above = sum(1 for j in idx if s[j] > s[i])
            tied = sum(1 for j in idx if s[j] == s[i])
            dcg += y[i] * sum(disc[above:above + tied]) / tied
        ideal = sorted((y[i] for i in idx), reverse=True)
        idcg = sum(v * d for v, d in zip(ideal, disc))
        if idcg > 0:
            vals.append(dcg / idcg)
    return sum(vals) / len(vals) if vals else math.nan


def brute_ece(y, p, bins):
    total = 0.0
    for b in range(bins):
        idx = [i for i in range(len(y)) if min(int(p[i] * bins), bins - 1) == b]
        if idx:
            gap = abs(sum(p[i] for i in idx) / len(idx) - sum(y[i] for i in idx) / len(idx))
            total += gap * len(idx) / len(y)
    return total


@pytest.fixture(params=[0, 1, 2])
def data(request):
    rng = np.random.default_rng(request.param)
    n = 120
    y = (rng.random(n) < 0.3).astype(np.int8)
    s = np.round(rng.random(n), 1)  # coarse rounding -> many ties
    g = rng.integers(0, 17, n).astype(str)
    return y, s, g


def test_auc_matches_pairwise_count(data):
    y, s, _ = data
    assert metrics.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_weighted_auc_equals_repeating_rows(data):
    y, s, _ = data
    w = np.random.default_rng(5).integers(0, 4, len(y)).astype(float)
    rep = np.repeat(np.arange(len(y)), w.astype(int))
    assert metrics.auc(y, s, w) == pytest.approx(brute_auc(y[rep], s[rep]), abs=1e-12)


def test_auc_undefined_and_perfect():
    assert math.isnan(metrics.auc([1, 1, 1], [0.2, 0.3, 0.4]))
    assert math.isnan(metrics.auc([], []))
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auc([0, 1], [0.5])


def test_logloss_matches_formula(data):
    y, s, _ = data
    p = np.clip(s, 1e-7, 1 - 1e-7)
    ref = -sum(math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p)) / len(y)
    assert metrics.logloss(y, s) == pytest.approx(ref, rel=1e-12)
    assert math.isnan(metrics.logloss([], []))


def test_gauc_matches_brute_force(data):
    y, s, g = data
    assert metrics.gauc(y, s, g) == pytest.approx(brute_gauc(list(y), list(s), list(g)), abs=1e-12)
    aucs, sizes = metrics.group_aucs(y, s, g)
    for key, a in zip(sorted(set(g)), aucs):
        idx = g == key
        ref = brute_auc(y[idx], s[idx])
        assert (math.isnan(a) and math.isnan(ref)) or a == pytest.approx(ref, abs=1e-12)
        assert sizes[sorted(set(g)).index(key)] == idx.sum()


def test_gauc_undefined_when_no_group_has_both_classes():
    assert math.isnan(metrics.gauc([1, 0, 1], [0.1, 0.2, 0.3], ["a", "b", "c"]))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_brute_force(data, k):
    y, s, g = data
    assert metrics.ndcg_at_k(y, s, g, k) == pytest.approx(brute_ndcg(list(y), list(s), list(g), k), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_sklearn_with_ties(data, k):
    """sklearn.metrics.ndcg_score averages tied scores; per request, over requests with a positive."""
    from sklearn.metrics import ndcg_score

    y, s, g = data
    s = np.round(s, 1)  # many ties
    ref = [ndcg_score([y[g == key]], [s[g == key]], k=k) for key in sorted(set(g))
           if y[g == key].sum() > 0 and (g == key).sum() > 1]
    keep = np.isin(g, [key for key in set(g) if (g == key).sum() > 1])
    assert metrics.ndcg_at_k(y[keep], s[keep], g[keep], k) == pytest.approx(np.mean(ref), abs=1e-12)


def test_ndcg_of_a_constant_scorer_does_not_depend_on_row_order():
    y = np.array([0, 0, 0, 0, 1, 0, 0, 1, 0, 0] * 3, dtype=float)
    g = np.repeat(["a", "b", "c"], 10)
    flat = np.full(y.size, 0.3)
    first = metrics.ndcg_at_k(y, flat, g, 10)
    positives_first = np.argsort(-y, kind="stable")  # the order that broke ties in their favour before
    positives_last = np.argsort(y, kind="stable")
    assert metrics.ndcg_at_k(y[positives_first], flat, g[positives_first], 10) == pytest.approx(first, abs=1e-12)
    assert metrics.ndcg_at_k(y[positives_last], flat, g[positives_last], 10) == pytest.approx(first, abs=1e-12)
    assert 0.0 < first < 1.0


def test_ndcg_undefined_without_positives():
    assert math.isnan(metrics.ndcg_at_k([0, 0], [0.1, 0.2], ["a", "a"]))


def test_calibration_matches_brute_force(data):
    y, s, _ = data
    assert metrics.ece(y, s, 10) == pytest.approx(brute_ece(list(y), list(s), 10), abs=1e-12)
    assert metrics.pred_obs_ratio(y, s) == pytest.approx(s.mean() / y.mean())
    assert math.isnan(metrics.pred_obs_ratio([0, 0], [0.1, 0.2]))
    cb = metrics.calibration_bins(y, s, 10)
    assert sum(cb["count"]) == len(y)


def test_summary_reports_undefined_as_nan():
    out = metrics.summary([0, 0, 0], [0.1, 0.2, 0.3], ["u", "u", "v"], ["r", "r", "q"], fused=[1, 2, 3])
    assert out["rows"] == 3 and out["positives"] == 0
    for key in ("auc", "gauc_user", "gauc_request", "ndcg10", "ndcg10_fused", "pred_obs"):
        assert math.isnan(out[key]), key


def test_bootstrap_resamples_whole_requests():
    """Same draws as the implementation, rows repeated explicitly, AUCs by brute force."""
    rng = np.random.default_rng(3)
    n = 90
    y = (rng.random(n) < 0.4).astype(np.int8)
    a, b = np.round(rng.random(n), 1), np.round(rng.random(n), 1)
    g = rng.integers(0, 12, n)
    out = metrics.bootstrap_auc_diff(y, a, b, g, resamples=15, seed=11)
    assert out["diff"] == pytest.approx(brute_auc(y, a) - brute_auc(y, b), abs=1e-12)
    draws = np.random.default_rng(11)
    codes = np.unique(g, return_inverse=True)[1]
    diffs = []
    for _ in range(15):
        picked = draws.integers(0, 12, 12)
        rows = np.concatenate([np.flatnonzero(codes == p) for p in picked])
        d = brute_auc(y[rows], a[rows]) - brute_auc(y[rows], b[rows])
        if not math.isnan(d):
            diffs.append(d)
    assert out["resamples"] == len(diffs)
    assert out["lo"] == pytest.approx(np.quantile(diffs, 0.025), abs=1e-12)
    assert out["hi"] == pytest.approx(np.quantile(diffs, 0.975), abs=1e-12)


def test_bootstrap_undefined_without_both_classes():
    out = metrics.bootstrap_auc_diff([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [1, 1, 2], resamples=10)
    assert math.isnan(out["diff"]) and math.isnan(out["lo"]) and out["resamples"] == 0


def test_fused_score_is_the_product_of_powers():
    from pipeline.serving.fused import effective_exponents, formula, fused_score

    rng = np.random.default_rng(4)
    probs = {"ctr": rng.random(50), "cvr": rng.random(50), "cart": rng.random(50)}
    price = rng.uniform(1, 300, 50)
    exps = effective_exponents((("ctr", 1.0), ("cvr", 0.5), ("price", 0.3), ("ctcvr", 2.0), ("cart", 0.0)),
                               ["ctr", "cvr", "cart"])
    assert exps == {"ctr": 1.0, "cvr": 0.5, "price": 0.3}  # ctcvr: not predicted; cart: exponent 0
    assert formula(exps) == "p_ctr^1 * p_cvr^0.5 * price^0.3"
    expected = [probs["ctr"][i] * probs["cvr"][i] ** 0.5 * price[i] ** 0.3 for i in range(50)]
    assert np.allclose(fused_score(probs, price, exps), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="price"):
        fused_score(probs, None, exps)


def test_roc_points_match_thresholds():
    from pipeline.evaluation.plots import roc_points

    rng = np.random.default_rng(6)
    y = (rng.random(80) < 0.4).astype(float)
    s = np.round(rng.random(80), 1)
    fpr, tpr = roc_points(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    for t, f, r in zip(sorted(set(s), reverse=True), fpr[1:], tpr[1:]):
        assert f == pytest.approx(((s >= t) & (y == 0)).sum() / (y == 0).sum())
        assert r == pytest.approx(((s >= t) & (y == 1)).sum() / (y == 1).sum())
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auc(y, s), abs=1e-12)  # ties: trapezoid = half credit


def test_request_counts_auc_equals_row_weighted_auc():
    """Per-(tie group, request) counts reweighted by request = rows weighted by their request's weight."""
    rng = np.random.default_rng(8)
    n, r = 120, 15
    y = (rng.random(n) < 0.3).astype(np.float64)
    s = np.round(rng.random(n), 1)  # many ties, also inside a request
    g = rng.integers(0, r, n)
    counts = metrics.RequestCounts(y, s, g, r)
    assert len(counts.pos) + len(counts.neg) < n  # tied rows of a request collapsed
    for _ in range(5):
        w = rng.integers(0, 3, r).astype(np.float64)
        assert counts.auc(w) == pytest.approx(brute_auc(y, s, w[g]), abs=1e-12)


def _row_weighted_bootstrap(y, a, b, g, resamples, seed):
    """The implementation before per-request counts: a weight per row each resample (the reference)."""
    g = np.unique(g, return_inverse=True)[1].ravel()
    n = int(g.max()) + 1
    (ia, na), (ib, nb) = metrics.tie_groups(a), metrics.tie_groups(b)
    rng, diffs = np.random.default_rng(seed), []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n)[g].astype(np.float64)
        d = metrics.auc_from_groups(ia, na, y, w) - metrics.auc_from_groups(ib, nb, y, w)
        if not math.isnan(d):
            diffs.append(d)
    return np.quantile(diffs, 0.025), np.quantile(diffs, 0.975), len(diffs)


def test_bootstrap_same_seed_same_interval_as_row_weights():
    """Same seed -> the same interval as the row-weighted bootstrap (equal up to float rounding)."""
    rng = np.random.default_rng(5)
    n = 20_000
    g = rng.integers(0, 2_000, n)
    y = (rng.random(n) < 0.1 + 0.05 * (g % 3)).astype(np.float64)
    a = np.round(y * 0.3 + rng.random(n), 3)
    b = rng.random(n).astype(np.float32).astype(np.float64)
    out = metrics.bootstrap_auc_diff(y, a, b, g, resamples=40, seed=9)
    lo, hi, used = _row_weighted_bootstrap(y, a, b, g, 40, 9)
    assert out["resamples"] == used == 40
    assert out["lo"] == pytest.approx(lo, abs=1e-12) and out["hi"] == pytest.approx(hi, abs=1e-12)
    assert out["lo"] < out["diff"] < out["hi"]


def test_roc_points_thinned_keep_the_ends_and_lie_on_the_curve():
    from pipeline.evaluation.plots import roc_points

    rng = np.random.default_rng(7)
    y = (rng.random(5_000) < 0.3).astype(float)
    s = rng.random(5_000)
    full = roc_points(y, s)
    fpr, tpr = roc_points(y, s, max_points=100)
    assert 90 <= len(fpr) <= 100 and (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    on_curve = set(zip(*full))
    assert all((f, t) in on_curve for f, t in zip(fpr, tpr))
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auc(y, s), abs=5e-3)
