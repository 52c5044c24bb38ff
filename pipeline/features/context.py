"""Two feature groups computed from the row itself and the other rows of its request (no labels, no history,
so they are the same at training and at serving as long as a request's rows are scored together):

- list context (`features.context`): `req_size` (log1p rows in the request), `pos_frac` (position / (size - 1),
  0 for a single row), `price_rank` (rank of the row's price inside the request, 0 = cheapest, 1 = dearest),
  `price_vs_request` (log price minus the mean log price of the request);
- lexical query-title match (`features.lexical`, search rows; 0 elsewhere): `qt_overlap` (distinct query words
  found in the title), `qt_coverage` (that / distinct query words), `qt_unmatched` (query words not in the
  title), `qt_brand` (1 when the item's brand is one of the query's words). Words: lower case, split on
  anything that is not a letter or digit.

`add_context(base, groups)` adds `n:<name>` float64 columns to the derived frame; `names(groups)` lists them.
"""

from __future__ import annotations

import polars as pl

CONTEXT = ("req_size", "pos_frac", "price_rank", "price_vs_request")
LEXICAL = ("qt_overlap", "qt_coverage", "qt_unmatched", "qt_brand")
GROUPS = {"context": CONTEXT, "lexical": LEXICAL}


def names(groups: dict[str, bool]) -> list[str]:
    """Numeric feature names of the enabled groups, in a fixed order."""
    return [n for g, cols in GROUPS.items() if groups.get(g) for n in cols]


def _words(col: str) -> pl.Expr:
    return (pl.col(col).fill_null("").str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ")
            .str.strip_chars().str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.unique())


def _context(base: pl.DataFrame) -> list[pl.Expr]:
    size = pl.len().over("request_id")
    logp = pl.col("price").log()
    rank = logp.rank("average").over("request_id")
    return [
        size.cast(pl.Float64).log1p().alias("n:req_size"),
        pl.when(size > 1).then(pl.col("position").cast(pl.Float64) / (size - 1)).otherwise(0.0).alias("n:pos_frac"),
        pl.when(size > 1).then((rank - 1) / (size - 1)).otherwise(0.5).alias("n:price_rank"),
        (logp - logp.mean().over("request_id")).fill_null(0.0).alias("n:price_vs_request"),
    ]


def _lexical(base: pl.DataFrame) -> pl.DataFrame:
    brand = pl.col("brand").fill_null("").str.to_lowercase() if "brand" in base.columns else pl.lit("")
    q = base.select(_words("query").alias("q"), _words("title").alias("t"), brand.alias("b"))
    hit = pl.col("q").list.set_intersection(pl.col("t")).list.len().cast(pl.Float64)
    nq = pl.col("q").list.len().cast(pl.Float64)
    return q.select(
        hit.alias("n:qt_overlap"),
        pl.when(nq > 0).then(hit / nq).otherwise(0.0).alias("n:qt_coverage"),
        (nq - hit).alias("n:qt_unmatched"),
        ((pl.col("b") != "") & pl.col("q").list.contains(pl.col("b"))).cast(pl.Float64).alias("n:qt_brand"),
    )


def add_context(base: pl.DataFrame, groups: dict[str, bool]) -> pl.DataFrame:
    """`base` (raw rows with request_id, position, price, query, title, brand) plus the groups' `n:` columns."""
    out = base
    if groups.get("context"):
        out = out.with_columns(_context(base))
    if groups.get("lexical"):
        out = pl.concat([out, _lexical(base)], how="horizontal")
    return out
