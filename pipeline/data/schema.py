"""The raw data contract (docs/CONTRACT.md) as code: columns, dtypes, the casts into them, tasks.

Everything that reads landing or lake data takes column names and types from here, and every cast into a
contract type (ingestion of landing files, serving's input coercion) goes through `cast_array`, so a value that
ingestion accepts is a value that serving accepts, and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SURFACES: tuple[str, ...] = ("recommend", "search", "ad")
LABELS: tuple[str, ...] = ("clicked", "carted", "purchased")

TS_TYPE = pa.timestamp("us", tz="UTC")

IMPRESSIONS = pa.schema(
    [
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("ts", TS_TYPE),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("surface", pa.string()),
        ("query", pa.string()),
        ("position", pa.int32()),
        ("clicked", pa.int8()),
        ("carted", pa.int8()),
        ("purchased", pa.int8()),
    ]
)

USERS = pa.schema(
    [
        ("user_id", pa.string()),
        ("age_bucket", pa.string()),
        ("gender", pa.string()),
        ("city_tier", pa.int8()),
        ("signup_ts", TS_TYPE),
    ]
)

ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("shop_id", pa.string()),
        ("price", pa.float64()),
    ]
)

TABLES: dict[str, pa.Schema] = {"impressions": IMPRESSIONS, "users": USERS, "items": ITEMS}
# Column -> contract type over the three tables (user_id and item_id have one type wherever they appear).
CONTRACT_TYPES: dict[str, pa.DataType] = {f.name: f.type for s in TABLES.values() for f in s}
KEYS: dict[str, str] = {"impressions": "event_id", "users": "user_id", "items": "item_id"}
# Columns that may hold nulls; every other contract column must be non-null.
NULLABLE: dict[str, frozenset[str]] = {
    "impressions": frozenset({"query"}),
    "users": frozenset({"age_bucket", "gender", "city_tier"}),
    "items": frozenset({"brand"}),
}


@dataclass(frozen=True)
class Task:
    """A funnel task: its label column and the rows it is trained and scored on.

    `given` names the label that must be 1 for a row to be in the sample space (None = all impressions).
    """

    name: str
    label: str
    given: str | None = None


TASKS: dict[str, Task] = {
    "ctr": Task("ctr", "clicked"),
    "cart": Task("cart", "carted"),
    "ctcvr": Task("ctcvr", "purchased"),
    "cvr": Task("cvr", "purchased", given="clicked"),
}


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def cast_array(arr: pa.Array, typ: pa.DataType) -> pa.Array:
    """Cast one column to its contract type, all or nothing (pyarrow.ArrowInvalid on any value that does not fit).

    Timestamps: text with a zone offset is converted to UTC, naive values (text or timestamps) are read as UTC,
    digits below the microsecond are dropped; a number is refused (it has no unit). Integers: integral values
    written as text ("3", "1.0") are accepted. Text: integer ids become their decimal text; floats, booleans and
    dates are refused (a float id would have lost digits already).
    """
    import pyarrow.compute as pc

    if pa.types.is_timestamp(typ):
        if _is_text(arr.type):
            try:
                return pc.cast(arr, typ)
            except pa.ArrowInvalid:  # no zone offset in the text: parse naive, read as UTC
                return pc.cast(pc.cast(arr, pa.timestamp("us")), typ)
        if pa.types.is_timestamp(arr.type):
            return pc.cast(arr, options=pc.CastOptions(target_type=typ, allow_time_truncate=True))
        if not (pa.types.is_date(arr.type) or pa.types.is_null(arr.type)):
            raise pa.ArrowInvalid(f"expected a timestamp or text, got {arr.type}")
    if pa.types.is_integer(typ) and _is_text(arr.type):
        try:
            return pc.cast(arr, typ)
        except pa.ArrowInvalid:  # "1.0" from a float-formatting exporter: integral floats are fine
            return pc.cast(pc.cast(arr, pa.float64()), typ)
    if pa.types.is_string(typ) and not (_is_text(arr.type) or pa.types.is_dictionary(arr.type)
                                        or pa.types.is_null(arr.type)
                                        or pa.types.is_integer(arr.type)  # integer ids -> text is lossless
                                        or pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise pa.ArrowInvalid(f"expected text, got {arr.type}")
    return pc.cast(arr, typ)


def _fits(value, arr_type: pa.DataType, typ: pa.DataType) -> bool:
    try:
        cast_array(pa.array([value], arr_type), typ)
        return True
    except (pa.ArrowException, ValueError):
        return False


def bad_values(arr: pa.Array, typ: pa.DataType) -> tuple[int, list]:
    """Values of `arr` that `cast_array` refuses: (row count, up to 3 distinct values). For error messages only:
    it tries each distinct value on its own."""
    import pyarrow.compute as pc

    bad = [v for v in arr.unique().to_pylist() if v is not None and not _fits(v, arr.type, typ)]
    count = pc.sum(pc.is_in(arr, value_set=pa.array(bad, arr.type))).as_py() if bad else 0
    return count or 0, bad[:3]


def bad_mask(arr: pa.Array, typ: pa.DataType) -> pa.Array:
    """bool [N]: rows of `arr` whose value `cast_array` refuses (nulls are never bad here)."""
    import pyarrow.compute as pc

    bad = [v for v in arr.unique().to_pylist() if v is not None and not _fits(v, arr.type, typ)]
    return pc.fill_null(pc.is_in(arr, value_set=pa.array(bad, arr.type)), False)
