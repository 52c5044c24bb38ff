"""Feature building (polars): time-split windows, train-only vocabularies and stats, point-in-time history,
cached transformer text embeddings. `transform` is the one function that turns raw contract rows into
feature columns, for every split at training time and for scoring (docs/architecture.md, "Feature files").

Derived inputs besides the configured columns: categorical `hour` (UTC hour of `ts`); numeric `position`
(log1p), `log_price`, `price_vs_category` (log price minus the log median price of the item's category in
the items snapshot), the history features of `pipeline.features.history`, the list-context and lexical
query-title groups of `pipeline.features.context`, and with text on `query_title_cos`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import Config
from pipeline.data.schema import LABELS, TASKS
from pipeline.errors import FeatureError
from pipeline.features import context, sequences
from pipeline.features.aggregates import ensure_days
from pipeline.features.fitstate import base_state, fit, save_state
from pipeline.features.fresh import history_for_day
from pipeline.features.history import add_history, feature_names
from pipeline.features.state import FeatureState
from pipeline.features.stream import SplitWriter, day_history, scan_day
from pipeline.features.windows import SPLITS, lake_days, split_dates
from pipeline.io import atomic_path, write_json
from pipeline.paths import FEATURES_DIR, Layout, parse_date
from pipeline.progress import bar

PASSTHROUGH = ("event_id", "request_id", "user_id", "item_id", "surface", "dt", *LABELS)
TEXT_COLUMNS = ("text__title", "text__query")
_REQUIRED = ("event_id", "request_id", "ts", "user_id", "item_id", "surface", "query", "position",
             "signup_ts", "title", "category", "shop_id", "price")


def transform(raw: pl.DataFrame, state_dir: str | Path) -> pl.DataFrame:
    """Raw contract rows (impressions joined with users and items) -> the feature columns.

    Texts missing from the stored text table are embedded on the fly with the encoder named in the state
    (`meta.json` text.model): their query-title cosine is exact either way. Their `text__*` index is 0 (no text),
    so indices always fit the stored table a trained model holds. History: the stored snapshot, for a day
    past its eve through `pipeline.features.fresh.stand_in`, as a served model without a lake reads it."""
    path = Path(state_dir).resolve()
    meta = path / "meta.json"
    state = _load_state(str(path), meta.stat().st_mtime_ns if meta.is_file() else 0)
    # The cached state is shared between calls: only the text table changes in a call, so it gets a copy.
    state = dataclasses.replace(state, text=state.text.copy() if state.text else None)
    if state.history is not None:  # the stored history as serving reads it without a lake (its stand-in too)
        state.history_for = functools.partial(history_for_day, state.history, None)
    return _transform(raw, state, extend_text=False)


@functools.lru_cache(maxsize=4)
def _load_state(path: str, mtime_ns: int) -> FeatureState:
    """Loaded once per state folder version: scoring calls transform per request."""
    return FeatureState.load(path)


_SERVE_LOCK = threading.Lock()
_MAX_NEW_TEXTS = 100_000  # texts embedded at serving kept in memory; past this the table restarts from the stored rows


def serve_features(raw: pl.DataFrame, state_dir: str | Path, text_cache: str | Path | None = None,
                   history_from: str | Path | None = None) -> tuple[pl.DataFrame, np.ndarray | None]:
    """What a served model computes: (feature columns, text table float32 [n, dim] or None).

    Like `transform`, but a title or query missing from the stored table is embedded with the state's encoder
    (batched; cached by text hash under `text_cache/<encoder key>/`, None = no disk cache) and gets a row after
    the stored ones, so the text tower sees its vector: feed the returned table with the indices (rows
    0..stored-1 are the stored table, what the trained model holds). History comes from the lake of
    `history_from` where it has the window days, else from the stored snapshot
    (`pipeline.features.fresh.history_for_day`). Loaded state, new texts and per-day history are kept between
    calls."""
    path = Path(state_dir).resolve()
    meta = path / "meta.json"
    state = _serving_state(str(path), meta.stat().st_mtime_ns if meta.is_file() else 0,
                           str(text_cache) if text_cache else "")
    home = str(Path(history_from).resolve()) if history_from else None
    with _SERVE_LOCK:  # the shared text table grows here; requests are served one feature build at a time
        if state.text is not None and len(state.text.vecs) - state.text.stored > _MAX_NEW_TEXTS:
            state.text = _load_state(str(path), meta.stat().st_mtime_ns).text.copy()
        if state.history is not None:
            state.history_for = functools.partial(history_for_day, state.history, home)
        if state.sequences is not None:
            state.sequence_for = functools.partial(sequences.clicks_for_day, state.sequences, home)
        out = _transform(raw, state, extend_text=True)
        return out, (state.text.vecs if state.text is not None else None)


@functools.lru_cache(maxsize=4)
def _serving_state(path: str, mtime_ns: int, text_cache: str) -> FeatureState:
    """A serving copy of the stored state: its own growing text table, a text cache, per-day history cache."""
    from pipeline.features.text import encoder_key

    state = _load_state(path, mtime_ns)
    state = dataclasses.replace(state, text=state.text.copy() if state.text else None)
    if state.text is not None and text_cache:
        state.cache_dir = Path(text_cache) / encoder_key(state.text_cfg)
    if state.history is not None:
        state.history = dataclasses.replace(state.history, day_cache={})
    if state.sequences is not None:
        state.sequences = dataclasses.replace(state.sequences, day_cache={})
    return state


def _transform(raw: pl.DataFrame, state: FeatureState, extend_text: bool = True) -> pl.DataFrame:
    return _finalize(_derive(raw, state, extend_text), state)


def _derive(raw: pl.DataFrame, state: FeatureState, extend_text: bool = True) -> pl.DataFrame:
    """Raw rows -> pass-through columns, `c:<name>` strings, `n:<name>` float64 values, text indices."""
    meta = state.meta
    needed = [*_REQUIRED, *(c for c in meta["categorical"] if c != "hour"), *meta["numeric_inputs"]]
    missing = sorted({c for c in needed if c not in raw.columns})
    if missing:
        raise FeatureError(f"feature input rows lack column(s) {missing}: rows must be raw impressions joined with "
                           "users and items, plus the columns declared in features.categorical / features.numeric")
    base = _utc(raw, ("ts", "signup_ts")).with_columns(
        pl.col("ts").dt.date().alias("dt"),
        pl.col("ts").dt.hour().alias("hour"),
        pl.col("price").cast(pl.Float64),
    ).join(state.category_price, on="category", how="left", maintain_order="left")
    if state.history is not None:
        base = _with_history(base, state)
    groups = meta.get("groups") or {}  # states written before the groups existed have none
    base = context.add_context(base, groups)
    cols = [pl.col(c) for c in PASSTHROUGH if c in base.columns]
    cols += [pl.col(c).cast(pl.String).alias(f"c:{c}") for c in meta["categorical"]]
    cols += [
        pl.col("position").cast(pl.Float64).log1p().alias("n:position"),
        pl.col("price").log().alias("n:log_price"),
        (pl.col("price").log() - pl.col("log_median")).fill_null(0.0).alias("n:price_vs_category"),
        *[pl.col(c).cast(pl.Float64).alias(f"n:{c}") for c in meta["numeric_inputs"]],
    ]
    if state.history is not None:
        cols += [pl.col(c).alias(f"n:{c}") for c in feature_names(state.history.windows)]
    cols += [pl.col(f"n:{c}") for c in context.names(groups)]
    out = base.select(cols)
    if state.text is not None:
        out = _add_text(out, base.select("title", "query"), state, extend_text)
    return out


def _with_history(base: pl.DataFrame, state: FeatureState) -> pl.DataFrame:
    """add_history with the stored tables, or per row day with `state.history_for(day)` (serving)."""
    if state.history_for is None:
        return add_history(base, state.history)
    days = base["dt"].unique().sort().to_list()
    if len(days) <= 1:
        return add_history(base, state.history_for(days[0]) if days else state.history)
    base = base.with_row_index("_hrow")
    parts = [add_history(base.filter(pl.col("dt") == d), state.history_for(d)) for d in days]
    return pl.concat(parts, how="vertical").sort("_hrow").drop("_hrow")


def _utc(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Timestamps in UTC whatever the caller sent: naive values are read as UTC (the contract's zone)."""
    fixed = []
    for c in columns:
        dtype = frame.schema[c]
        if not isinstance(dtype, pl.Datetime):
            raise FeatureError(f"column {c!r} must be a timestamp, got {dtype}")
        col = pl.col(c).cast(pl.Datetime("us", dtype.time_zone))
        fixed.append((col.dt.replace_time_zone("UTC") if dtype.time_zone is None
                      else col.dt.convert_time_zone("UTC")).alias(c))
    return frame.with_columns(fixed)


def _add_text(out: pl.DataFrame, texts: pl.DataFrame, state: FeatureState, extend: bool) -> pl.DataFrame:
    """Text table rows of each title and query (0 = none; texts new to the table too unless `extend`) and
    their cosine (0 without a query)."""
    tcfg, stored = state.text_cfg, state.text.stored
    distinct = texts.select(pl.concat_list("title", "query").explode().drop_nulls().unique().sort()).to_series()
    distinct = distinct.filter(distinct.str.len_chars() > 0)
    state.text.add(distinct.to_list(), tcfg, state.cache_dir)  # no-op for texts already in the table
    rows = pl.DataFrame({"_text": distinct, "_row": state.text.index(distinct.to_list(), tcfg.max_chars)})
    idx = [texts.select(pl.col(c).alias("_text")).join(rows, on="_text", how="left", maintain_order="left")
           ["_row"].fill_null(0).to_numpy() for c in ("title", "query")]
    cos, has_query = np.zeros(len(idx[0])), idx[1] > 0
    cos[has_query] = state.text.cosine(idx[0][has_query], idx[1][has_query])
    if not extend:
        idx = [np.where(i < stored, i, 0) for i in idx]
    return out.with_columns(pl.Series("text__title", idx[0], dtype=pl.Int32),
                            pl.Series("text__query", idx[1], dtype=pl.Int32),
                            pl.Series("n:query_title_cos", cos.astype(np.float64)))


def _finalize(derived: pl.DataFrame, state: FeatureState) -> pl.DataFrame:
    """Vocabulary indices (0 = unknown/null) and standardised float32 numerics, in the contract's order."""
    meta = state.meta
    cats = []
    for name in meta["categorical"]:
        v = state.vocabs[name]
        mapped = pl.col(f"c:{name}").replace_strict(v["value"], v["index"], default=0, return_dtype=pl.Int32)
        cats.append(mapped.fill_null(0).alias(f"cat__{name}"))
    nums = []
    for name in meta["numeric"]:
        mean, std = meta["stats"][name]
        x = (pl.col(f"n:{name}") - mean) / std
        nums.append(pl.when(x.is_finite()).then(x).otherwise(0.0).cast(pl.Float32).alias(f"num__{name}"))
    text = [pl.col(c) for c in TEXT_COLUMNS if c in derived.columns]
    out = derived.select(*[c for c in PASSTHROUGH if c in derived.columns], *cats, *nums, *text)
    seq = sequences.for_state(derived, state)  # seq__item_id_* (pipeline.features.sequences), or None
    return out if seq is None else pl.concat([out, seq], how="horizontal")


def _snapshot(layout: Layout, table: str, date: dt.date) -> pl.DataFrame:
    """The dated snapshot of D, else the latest one before D."""
    folder = layout.lake / table
    dates = sorted(parse_date(p.name[3:]) for p in folder.glob("dt=*")) if folder.is_dir() else []
    dates = [d for d in dates if d <= date and layout.snapshot(table, d).is_file()]
    if not dates:
        raise FeatureError(f"no {table} snapshot on or before {date} under {folder}")
    return pl.read_parquet(layout.snapshot(table, dates[-1]))


def _label_rates(frame: pl.DataFrame) -> dict[str, float | None]:
    out = {}
    for name, task in TASKS.items():
        rows = frame.filter(pl.col(task.given) == 1) if task.given else frame
        out[name] = float(rows[task.label].mean()) if rows.height else None
    return out


def build_features(cfg: Config, date: dt.date | str, run_id: str | None = None) -> dict[str, Any]:
    """Write runs/<run_id>/features/{train,valid,test}.parquet, feature_spec.json and state/ (atomically).

    One lake day at a time: the missing per-day aggregates are built first (history reads them); the train
    days are derived once into scratch files, vocabularies and stats are fit on those, then every split is
    written one row group per day."""
    d = parse_date(date)
    run_id = run_id or d.isoformat()
    layout = Layout.of(cfg.home)
    splits = split_dates(cfg, d)
    looks_back = cfg.features.history or cfg.features.sequence_length > 0
    days = lake_days(layout, splits, max(cfg.features.history_windows) if looks_back else 0)
    users, items = _snapshot(layout, "users", d), _snapshot(layout, "items", d)
    extra = set(cfg.features.categorical) | set(cfg.features.numeric)
    scan = functools.partial(scan_day, layout, users=users, items=items, extra=extra)
    if sum(scan(x).select(pl.len()).collect().item() for x in splits["train"]) == 0:
        raise FeatureError(f"train window {splits['train'][0]}..{splits['train'][-1]} has no impressions")
    if cfg.features.history:
        ensure_days(layout, days)
    state = base_state(cfg, layout, splits, d, scan, items, days)
    derive = functools.partial(_derive_day, layout=layout, days=days, scan=scan, state=state)
    out = layout.run_dir(run_id) / FEATURES_DIR
    spec_splits = {}
    with atomic_path(out) as tmp:
        scratch = tmp / "_train_derived"
        scratch.mkdir(parents=True)
        for day in bar(splits["train"], desc=f"features {run_id} (fit)", unit="day"):
            derive(day).write_parquet(scratch / f"{day}.parquet")
        fit(state, sorted(scratch.glob("*.parquet")), cfg.features.min_count)
        for split in SPLITS:
            writer = SplitWriter(tmp / f"{split}.parquet")
            for day in bar(splits[split], desc=f"features {run_id} ({split})", unit="day"):
                derived = pl.read_parquet(scratch / f"{day}.parquet") if split == "train" else derive(day)
                writer.write(_finalize(derived, state))
            writer.close()
            spec_splits[split] = {"dates": [x.isoformat() for x in splits[split]], "rows": writer.rows,
                                  "label_rates": writer.label_rates()}
        shutil.rmtree(scratch)
        save_state(state, layout, days, tmp / "state")
        write_json(tmp / "feature_spec.json", _spec(cfg, state, spec_splits))
    return {"run_id": run_id, "spec": str(out / "feature_spec.json"),
            "rows": {s: v["rows"] for s, v in spec_splits.items()}}


def _derive_day(day: dt.date, layout: Layout, days: list[dt.date], scan: Callable[[dt.date], pl.LazyFrame],
                state: FeatureState) -> pl.DataFrame:
    """`_derive` of one lake day's raw rows, history from the per-day aggregates before it."""
    raw = scan(day).collect()
    if state.history is not None:
        hist = day_history(layout, days, day, raw, state.history.windows, state.history.smoothing)
        state.history_for = lambda _day: hist
    return _derive(raw, state)


def _spec(cfg: Config, state: FeatureState, splits: dict[str, Any]) -> dict[str, Any]:
    meta, text = state.meta, state.meta["text"]
    return {
        "categorical": [{"name": n, "column": f"cat__{n}", "cardinality": state.vocabs[n].height + 1}
                        for n in meta["categorical"]],
        "numeric": [f"num__{n}" for n in meta["numeric"]],
        "text": {"enabled": bool(text), "dim": text["dim"] if text else 0,
                 "columns": list(TEXT_COLUMNS) if text else [], "model": text["model"] if text else None,
                 "n_texts": len(state.text.vecs) if text else 0, "finetune": text["finetune"] if text else "false",
                 "encoder": text["encoder"] if text else None},
        "sequence": sequences.spec(meta["sequence"]["length"], tuple(meta["sequence"]["fields"]))
        if meta.get("sequence") else None,
        "tasks": list(cfg.model.tasks),
        "splits": splits,
    }
