"""Speed of the evaluation metrics on a test window of N rows (default 1,000,000; 10 rows per request).

    .venv/bin/python bench/bench_metrics.py [--rows N] [--resamples B]

Targets on 2 CPU cores, 1M rows: AUC < 0.5 s, GAUC and NDCG@10 < 2 s each, one bootstrap resample < 0.2 s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.evaluation import metrics


def _timed(label: str, fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    took = time.perf_counter() - start
    print(f"{label:<28} {took:7.3f} s   value {value if not isinstance(value, dict) else value['diff']:.4f}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--resamples", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    requests = np.repeat(np.arange(n // 10 + 1), 10)[:n]
    users = rng.integers(0, max(1, n // 20), n)
    y = (rng.random(n) < 0.08).astype(np.float64)
    a = np.clip(0.08 + 0.05 * y + rng.normal(0, 0.05, n), 1e-4, 1 - 1e-4)
    b = np.clip(0.08 + 0.03 * y + rng.normal(0, 0.05, n), 1e-4, 1 - 1e-4)
    print(f"{n} rows, {requests.max() + 1} requests, {users.max() + 1} users")
    _timed("auc", metrics.auc, y, a)
    _timed("logloss", metrics.logloss, y, a)
    _timed("gauc by user", metrics.gauc, y, a, users)
    _timed("gauc by request", metrics.gauc, y, a, requests)
    _timed("ndcg@10 by request", metrics.ndcg_at_k, y, a, requests)
    _timed("ece", metrics.ece, y, a)
    took = _timed(f"bootstrap x{args.resamples}", metrics.bootstrap_auc_diff, y, a, b, requests, args.resamples)
    print(f"{'per resample':<28} {took / max(args.resamples, 1):7.3f} s")


if __name__ == "__main__":
    main()
