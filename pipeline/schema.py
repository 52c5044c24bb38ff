"""The raw data contract (../shared/CONTRACT.md) as code: columns, dtypes, tasks.

Everything that reads landing or lake data takes column names and types from here.
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
