"""A scoring request: the contract rules and casts it must meet, the declared extra columns it must carry,
and the join of user/item columns it did not send from a model's snapshots. Errors are DataValidationError
naming the column, the rule and up to 3 rows (the pyfunc turns them into HTTP 400)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.data import schema
from pipeline.errors import DataValidationError, RuleFailure
from pipeline.serving.fused import PRICE

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

# Impression columns a scoring request must carry (labels are what we predict, so they are optional).
REQUIRED = ("event_id", "request_id", "ts", "user_id", "item_id", "surface", "position")
USER_COLS = tuple(n for n in schema.USERS.names if n != "user_id")
ITEM_COLS = tuple(n for n in schema.ITEMS.names if n != "item_id")


WHERE = "scoring request"


def declared_extras(meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(categorical, numeric) input columns the feature state declares beyond the contract (e.g. Hillstrom's
    `recency`): a scoring request must carry them, since no contract table holds them."""
    contract = set(schema.IMPRESSIONS.names) | set(schema.USERS.names) | set(schema.ITEMS.names)
    cats = [c for c in meta["categorical"] if c != "hour" and c not in contract]
    nums = [c for c in meta["numeric_inputs"] if c not in contract]
    return cats, nums


def fail_rows(column: str, rule: str, frame: pl.DataFrame, bad: pl.Series) -> None:
    """Raise DataValidationError naming the column, the rule and up to 3 offending rows where `bad` holds."""
    n = int(bad.sum())
    if n:
        rows = frame.with_row_index("row").filter(bad).head(3)
        examples = tuple(f"row {r['row']}: {column}={r.get(column)!r}" for r in rows.to_dicts())
        raise DataValidationError([RuleFailure(WHERE, column, rule, n, examples)], where=WHERE)


def _coerce(rows: pl.DataFrame) -> pl.DataFrame:
    """Cast contract columns to their types with the contract's own casts (`schema.cast_array`, as ingestion
    does); a value that does not convert is a DataValidationError naming the column and rows."""
    import polars as pl
    import pyarrow as pa

    missing = [c for c in REQUIRED if c not in rows.columns]
    if missing:
        fails = [RuleFailure(WHERE, c, f"required column missing (got {rows.columns})", rows.height) for c in missing]
        raise DataValidationError(fails, where=WHERE)
    for col, typ in schema.CONTRACT_TYPES.items():
        if col not in rows.columns:
            continue
        arr = rows[col].to_arrow()
        if arr.type == typ:
            continue
        try:
            cast = schema.cast_array(arr, typ)
        except (pa.ArrowException, ValueError) as exc:
            fail_rows(col, f"not convertible to {typ}", rows, pl.Series(schema.bad_mask(arr, typ)))
            # arrow refused the column as a whole, not one value (e.g. a list column)
            raise DataValidationError([RuleFailure(WHERE, col, f"not convertible to {typ}: {exc}", rows.height)],
                                      where=WHERE) from None
        rows = rows.with_columns(pl.Series(col, cast))
    return rows


def to_polars(frame: pd.DataFrame) -> pl.DataFrame:
    """pandas -> polars; a column whose values do not form one type (e.g. 3 and "x") is a DataValidationError."""
    import polars as pl

    try:
        return pl.from_pandas(frame)
    except Exception:  # noqa: BLE001 - find the column(s) to name them in the error
        bad = []
        for col in frame.columns:
            try:
                pl.from_pandas(frame[[col]])
            except Exception as exc:  # noqa: BLE001 - arrow raises several types for mixed values
                bad.append(RuleFailure(WHERE, str(col), f"values of mixed types ({str(exc).splitlines()[0]})",
                                       len(frame)))
        raise DataValidationError(bad or [RuleFailure(WHERE, "*", "not a table", len(frame))], where=WHERE) from None


def _check_extras(rows: pl.DataFrame, cats: list[str], nums: list[str]) -> pl.DataFrame:
    """Declared extra columns: all present (one error naming every missing one); numeric ones numbers."""
    import polars as pl

    missing = [c for c in [*cats, *nums] if c not in rows.columns]
    if missing:
        fails = [RuleFailure(WHERE, c, "declared feature column missing (features.categorical / features.numeric)",
                             rows.height) for c in missing]
        raise DataValidationError(fails, where=WHERE)
    for col in nums:
        if rows[col].dtype.is_numeric():
            continue
        cast = rows[col].cast(pl.String).cast(pl.Float64, strict=False)
        fail_rows(col, "must be a number", rows, cast.is_null() & rows[col].is_not_null())
        rows = rows.with_columns(cast.alias(col))
    return rows


def check_rows(rows: pl.DataFrame, extras: tuple[list[str], list[str]] = ([], [])) -> pl.DataFrame:
    """Contract rules a scoring request must meet, and the declared extra columns (categorical, numeric) it
    must carry; returns the rows cast to contract types."""
    import polars as pl

    if rows.height == 0:
        raise DataValidationError([RuleFailure(WHERE, "*", "no rows to score", 0)], where=WHERE)
    rows = _check_extras(_coerce(rows), *extras)
    for col in REQUIRED:
        fail_rows(col, "must not be null", rows, rows[col].is_null())
    fail_rows("event_id", "must be unique", rows, rows["event_id"].is_duplicated())
    fail_rows("surface", f"must be one of {schema.SURFACES}", rows, ~rows["surface"].is_in(schema.SURFACES))
    fail_rows("position", "must be >= 0", rows, rows["position"] < 0)
    if PRICE in rows.columns:
        fail_rows(PRICE, "must be > 0", rows, rows[PRICE].is_not_null() & (rows[PRICE] <= 0))
    if "query" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("query"))
    return rows


def join_snapshots(rows: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Add the user/item columns a request did not send from the given snapshots (the served model passes the
    lake's newest or the bundled ones; left join: unknown ids keep nulls and fall to the reserved index in the
    features)."""
    for snap, key, cols in ((users, "user_id", USER_COLS), (items, "item_id", ITEM_COLS)):
        need = [c for c in cols if c not in rows.columns]
        if need:
            rows = rows.join(snap.select([key, *need]), on=key, how="left")
    return rows
