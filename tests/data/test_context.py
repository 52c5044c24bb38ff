"""List-context and lexical query-title features (pipeline.features.context) against a plain-Python reference."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

from pipeline.features.context import add_context, names

ROWS = pl.DataFrame({
    "request_id": ["a", "a", "a", "b", "c", "c"],
    "position": [0, 1, 2, 0, 0, 1],
    "price": [10.0, 30.0, 20.0, 5.0, 7.0, 7.0],
    "query": ["Zoka red sneakers", "Zoka red sneakers", "Zoka red sneakers", None, "blue  lamp!", "blue  lamp!"],
    "title": ["Zoka classic red leather sneakers", "classic black sneakers", "Red lamp", "x", "modern blue lamp",
              "lamp"],
    "brand": ["Zoka", None, "Mika", "Qui", None, "Blue"],
})


def _words(text):
    return set(w for w in re.split(r"[^0-9a-z]+", (text or "").lower()) if w)


def test_features_match_a_brute_force_reference():
    out = add_context(ROWS, {"context": True, "lexical": True})
    for i, row in enumerate(ROWS.iter_rows(named=True)):
        req = [r for r in ROWS.iter_rows(named=True) if r["request_id"] == row["request_id"]]
        n = len(req)
        logs = [math.log(r["price"]) for r in req]
        below = sum(v < math.log(row["price"]) for v in logs) + (sum(v == math.log(row["price"]) for v in logs) - 1) / 2
        q, t = _words(row["query"]), _words(row["title"])
        want = {"req_size": math.log1p(n), "pos_frac": row["position"] / (n - 1) if n > 1 else 0.0,
                "price_rank": below / (n - 1) if n > 1 else 0.5,
                "price_vs_request": math.log(row["price"]) - sum(logs) / n,
                "qt_overlap": len(q & t), "qt_coverage": len(q & t) / len(q) if q else 0.0,
                "qt_unmatched": len(q - t), "qt_brand": float(bool(row["brand"]) and row["brand"].lower() in q)}
        for name, value in want.items():
            assert out[f"n:{name}"][i] == pytest.approx(value, abs=1e-12), (i, name)


def test_groups_switch_columns_on_and_off():
    assert names({}) == [] and names({"context": True}) == ["req_size", "pos_frac", "price_rank",
                                                            "price_vs_request"]
    out = add_context(ROWS, {"lexical": True})
    assert [c for c in out.columns if c.startswith("n:")] == [f"n:{n}" for n in names({"lexical": True})]
    assert np.all(out.filter(pl.col("query").is_null())["n:qt_overlap"].to_numpy() == 0)
