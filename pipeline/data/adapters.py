"""Public / real datasets -> a landing folder in the raw data contract (`mtl import NAME SRC --out LANDING`).

hillstrom  The MineThatData e-mail campaign (64,000 customers, one row each). Customers are users, the three
           campaigns (`segment`) are items; each customer gets one request with one impression at position 0:
           surface `ad` for an e-mail campaign, `recommend` for the no-e-mail control. visit -> clicked,
           conversion -> purchased and also carted (the log has no cart stage; carted = purchased is the only
           choice that keeps the funnel without inventing events). `spend` is an outcome, so it is dropped
           (it would leak the label if declared as a feature). The customer attributes (recency, history,
           history_segment, mens, womens, zip_code, newbie, channel) pass through as extra users columns;
           declare them as features (see `SUGGESTED`). Rows are spread over 14 days (the campaign's two-week
           response window) by a seeded permutation, so every day is a random sample of customers.
ali-ccp    The column format of Ali-CCP as preprocessed by torch-rechub (click, purchase, label-encoded
           sparse fields 101..853, dense D* fields). 101 -> user (124 gender, 125 age level, 129 city level
           when 1..5; the other profile fields pass through on users), 205 -> item (206 category, 207 shop,
           216 brand); every other field passes through on impressions. There are no titles, prices or
           timestamps: titles are built from the item's ids, price is a constant 1.0. A folder with
           *train*/*val*/*test* files maps them onto consecutive days in that order (train over all days but
           the last two), so the original split stays a split by time; a single file is spread over all
           days. Each user's rows of a day form requests of at most 20 rows, positions in file order.
Timestamps inside a day come from the same seeded generator; signup_ts is set one day before the first day
(neither source records it). Output files are in the contract's types; each day folder ends with `_SUCCESS`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, IngestError

HILLSTROM_ITEMS = {  # segment -> (item_id, title, surface)
    "Mens E-Mail": ("campaign-mens", "Mens e-mail campaign: new men's apparel collection", "ad"),
    "Womens E-Mail": ("campaign-womens", "Womens e-mail campaign: new women's apparel collection", "ad"),
    "No E-Mail": ("no-email", "No e-mail: organic visit to the apparel shop", "recommend"),
}
SUGGESTED = {  # `--set` overrides that give the models the sources' real signal
    "hillstrom": [
        "features.categorical=[item_id,surface,city_tier,history_segment,channel,zip_code,mens,womens,newbie]",
        "features.numeric=[recency,history]",
        "features.history=false",  # each customer appears once: there is no history to count
        "data.train_days=12",  # 14 days: train on all but the valid and test days
    ],
    "ali-ccp": [
        ("features.categorical=[user_id,item_id,category,brand,shop_id,age_bucket,gender,city_tier,"
         "f121,f122,f126,f127,f128,f210,f508,f509,f702,f853,f301]"),
        "features.numeric=[fD109_14,fD110_14,fD127_14,fD150_14,fD508,fD509,fD702,fD853]",
    ],
}


def _spread(rng: np.random.Generator, n: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Day index [n] (balanced: a seeded permutation cut into `days` parts) and second of day [n]."""
    day = np.empty(n, dtype=np.int64)
    day[rng.permutation(n)] = np.arange(n) * days // max(n, 1)
    return day, rng.integers(0, 86400, n)


def _timestamps(start: dt.date, day: np.ndarray, sec: np.ndarray) -> np.ndarray:
    midnight = np.datetime64(start.isoformat(), "us")
    return midnight + day.astype("timedelta64[D]") + sec.astype("timedelta64[s]")


def _day_before(start: dt.date) -> dt.datetime:
    """Midnight UTC of the day before `start`: the signup time when a source does not record one."""
    return dt.datetime.combine(start - dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _write(out: Path, users, items, impressions, start: dt.date, days: int) -> list[str]:
    """Write the landing folder atomically (built aside, renamed into place) in the contract's types."""
    import polars as pl
    import pyarrow.parquet as pq

    from pipeline.data.ingest import conform
    from pipeline.io import atomic_path

    dates = [start + dt.timedelta(days=i) for i in range(days)]
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(conform(users.to_arrow(), "users", "adapter users"), tmp / "users.parquet")
        pq.write_table(conform(items.to_arrow(), "items", "adapter items"), tmp / "items.parquet")
        for d in dates:
            folder = tmp / "impressions" / f"dt={d.isoformat()}"
            folder.mkdir(parents=True)
            part = impressions.filter(pl.col("ts").dt.date() == d).sort("ts", "request_id", "position")
            table = conform(part.to_arrow(), "impressions", f"adapter day {d}")
            pq.write_table(table, folder / "part-0.parquet")
            (folder / "_SUCCESS").write_text("")
    return [d.isoformat() for d in dates]


def _hillstrom(src: Path, rng, start: dt.date, days: int):
    import polars as pl

    path = src / "hillstrom.csv" if src.is_dir() else src
    raw = _read_csv(path, ["visit", "conversion", "segment", "recency", "zip_code"])
    unknown = set(raw["segment"].unique()) - set(HILLSTROM_ITEMS)
    if unknown:
        raise IngestError(f"{path}: hillstrom.segment has unknown campaign(s) {sorted(unknown)[:3]}")
    n = raw.height
    day, sec = _spread(rng, n, days)
    ids = pl.Series(np.arange(n)).cast(pl.String).str.zfill(5)
    item = {k: v[0] for k, v in HILLSTROM_ITEMS.items()}
    surface = {k: v[2] for k, v in HILLSTROM_ITEMS.items()}
    tier = {"Urban": 1, "Surburban": 2, "Suburban": 2, "Rural": 3}
    users = raw.select(
        ("c" + ids).alias("user_id"),
        pl.lit(None, pl.String).alias("age_bucket"),
        pl.lit(None, pl.String).alias("gender"),
        pl.col("zip_code").replace_strict(tier, default=None, return_dtype=pl.Int8).alias("city_tier"),
        pl.lit(_day_before(start)).alias("signup_ts"),
        *[c for c in raw.columns if c not in ("segment", "visit", "conversion", "spend")])
    items = pl.DataFrame({"item_id": [v[0] for v in HILLSTROM_ITEMS.values()],
                          "title": [v[1] for v in HILLSTROM_ITEMS.values()],
                          "category": [("e-mail" if v[2] == "ad" else "none")
                                       for v in HILLSTROM_ITEMS.values()],
                          "brand": [None] * 3, "shop_id": ["hillstrom"] * 3, "price": [1.0] * 3})
    imp = raw.select(
        ("h" + ids).alias("event_id"), ("r" + ids).alias("request_id"),
        pl.Series("ts", _timestamps(start, day, sec)).dt.replace_time_zone("UTC"),
        ("c" + ids).alias("user_id"), pl.col("segment").replace_strict(item).alias("item_id"),
        pl.col("segment").replace_strict(surface).alias("surface"), pl.lit(None, pl.String).alias("query"),
        pl.lit(0, pl.Int32).alias("position"), pl.col("visit").alias("clicked"),
        pl.col("conversion").alias("carted"), pl.col("conversion").alias("purchased"))
    return users, items, imp


def _read_csv(path: Path, required: list[str]):
    import polars as pl

    if not path.is_file():
        raise IngestError(f"source file not found: {path}")
    try:
        raw = pl.read_csv(path, infer_schema_length=10000)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        raise IngestError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing} of the expected format")
    return raw


def _ali_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob("*.csv"))
    order = {"train": 0, "val": 1, "test": 2}
    key = [next((v for k, v in order.items() if k in p.name), None) for p in files]
    if not files or (None in key and len(files) > 1):
        raise IngestError(f"{src}: expected one CSV, or *train*/*val*/*test* CSV files")
    return [p for _, p in sorted(zip(key, files), key=lambda t: t[0] or 0)]


def _ali_ccp(src: Path, rng, start: dt.date, days: int):
    import polars as pl

    files = _ali_files(src)
    if len(files) == 3 and days < 3:
        raise ConfigError("ali-ccp with train/val/test files needs days >= 3")
    parts = []
    for i, path in enumerate(files):
        raw = _read_csv(path, ["click", "purchase", "101", "205", "206", "207", "216"])
        lo, hi = ((0, days - 2), (days - 2, days - 1), (days - 1, days))[i] if len(files) == 3 else (0, days)
        day, sec = _spread(rng, raw.height, hi - lo)
        parts.append(raw.with_columns(pl.Series("_day", day + lo), pl.Series("_sec", sec),
                                      pl.lit(f"a{i}-").alias("_f"), pl.int_range(pl.len()).alias("_row")))
    raw = pl.concat(parts, how="diagonal_relaxed")
    s = lambda c, p: (pl.lit(p) + pl.col(c).cast(pl.String))
    # Requests: a user's rows of a day, in file order, cut into lists of at most 20.
    raw = raw.with_columns(pl.int_range(pl.len()).over("_day", "101").alias("_k"))
    raw = raw.with_columns((pl.col("_k") % 20).cast(pl.Int32).alias("position"),
                           (pl.col("_k") // 20).alias("_req"),
                           pl.col("_sec").min().over("_day", "101", pl.col("_k") // 20).alias("_rsec"))
    ts = _timestamps(start, raw["_day"].to_numpy(), np.minimum(raw["_rsec"].to_numpy(), 86399 - 1))
    ts = ts + raw["position"].to_numpy().astype("timedelta64[ms]")
    user_cols = ["101", "121", "122", "124", "125", "126", "127", "128", "129"]
    users = raw.group_by("101", maintain_order=True).first().select(
        s("101", "u").alias("user_id"), s("125", "age").alias("age_bucket"), s("124", "g").alias("gender"),
        pl.when(pl.col("129").is_between(1, 5)).then(pl.col("129")).cast(pl.Int8).alias("city_tier"),
        pl.lit(_day_before(start)).alias("signup_ts"),
        *[pl.col(c).alias(f"f{c}") for c in ("121", "122", "126", "127", "128") if c in raw.columns])
    items = raw.group_by("205", maintain_order=True).first().select(
        s("205", "i").alias("item_id"),
        pl.format("item {} in category {} by brand {} from shop {}", "205", "206", "216", "207")
        .alias("title"),
        s("206", "c").alias("category"), s("216", "b").alias("brand"), s("207", "s").alias("shop_id"),
        pl.lit(1.0).alias("price"), *([pl.col("210").alias("f210")] if "210" in raw.columns else []))
    passthrough = [c for c in raw.columns if not c.startswith("_") and c not in
                   {"click", "purchase", "205", "206", "207", "216", "210", "position", *user_cols}]
    imp = raw.select(
        (pl.col("_f") + pl.col("_row").cast(pl.String)).alias("event_id"),
        pl.format("q{}-{}-{}", "_day", "101", "_req").alias("request_id"),
        pl.Series("ts", ts).dt.replace_time_zone("UTC"), s("101", "u").alias("user_id"),
        s("205", "i").alias("item_id"), pl.lit("recommend").alias("surface"),
        pl.lit(None, pl.String).alias("query"),
        "position", pl.col("click").alias("clicked"), pl.col("purchase").alias("carted"),
        pl.col("purchase").alias("purchased"), *[pl.col(c).alias(f"f{c}") for c in passthrough])
    return users, items, imp


ADAPTERS = {"hillstrom": (_hillstrom, "2008-03-01", 14), "ali-ccp": (_ali_ccp, "2018-01-01", 9)}


def import_dataset(name: str, src: str | os.PathLike, out: str | os.PathLike, *, days: int | None = None,
                   start_date: str | dt.date | None = None, seed: int = 0) -> dict:
    """Convert dataset `name` at `src` into a contract landing folder `out` (replaced atomically).

    Returns {"landing", "dates", "suggested_overrides"}: the last lists `--set` overrides that declare the
    source's extra columns as features.
    """
    from pipeline.paths import parse_date

    if name not in ADAPTERS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(ADAPTERS)}")
    fn, default_start, default_days = ADAPTERS[name]
    days = default_days if days is None else int(days)
    if days < 1:
        raise ConfigError("import: days must be >= 1")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise IngestError(f"source not found: {src}")
    start = parse_date(start_date or default_start)
    users, items, imp = fn(src, np.random.default_rng(seed), start, days)
    dates = _write(out, users, items, imp, start, days)
    return {"landing": str(out), "dates": dates, "suggested_overrides": list(SUGGESTED[name])}
