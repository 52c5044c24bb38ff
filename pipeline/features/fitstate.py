"""The FeatureState a feature build starts from and what it fits and saves: settings and text table
(`base_state`), train-window vocabularies and stats from the derived train days on disk (`fit`), and the
state folder with the history of every lake day the build read (`save_state`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.features import context
from pipeline.features.aggregates import write_history
from pipeline.features.history import feature_names
from pipeline.features.sequences import Sequences, day_clicks
from pipeline.features.state import FeatureState, fit_stats, fit_vocabs
from pipeline.features.stream import distinct_texts, placeholder_history
from pipeline.features.windows import SPLITS
from pipeline.paths import Layout

BASE_NUMERIC = ("position", "log_price", "price_vs_category")


def base_state(cfg: Config, layout: Layout, splits: dict[str, list[dt.date]], date: dt.date,
                scan: Callable[[dt.date], pl.LazyFrame], items: pl.DataFrame, days: list[dt.date]) -> FeatureState:
    """Everything but vocabularies and stats: history settings, category prices, text table (embedded with the
    contrastively fine-tuned encoder when text.finetune=contrastive: pairs of the train window only; that
    option collects the train window's rows). The text table holds the sorted distinct texts of the splits."""
    from pipeline.features.finetune import run_encoder
    from pipeline.features.text import TextTable, encoder_info, encoder_key, model_dim

    f = cfg.features
    cat_price = (items.group_by("category").agg(pl.col("price").cast(pl.Float64).median().log().alias("log_median")))
    declared = [c for c in dict.fromkeys(f.numeric) if c not in BASE_NUMERIC]  # a base name is derived once
    numeric = [*BASE_NUMERIC, *declared]
    meta: dict[str, Any] = {"categorical": list(dict.fromkeys([*f.categorical, "hour"])), "numeric_inputs": declared,
                            "min_count": f.min_count, "stats": {}, "text": None,
                            "history": {"enabled": f.history, "windows": list(f.history_windows),
                                        "smoothing": f.smoothing},
                            "groups": {"context": f.context, "lexical": f.lexical}, "sequence": None}
    state = FeatureState(meta, {}, cat_price)
    if f.sequence_length:
        meta["sequence"] = {"length": f.sequence_length, "lookback": max(f.history_windows),
                            "fields": list(f.sequence_fields)}
        state.sequences = day_sequences(scan, days, f.sequence_length, max(f.history_windows), f.sequence_fields)
    if f.history:
        state.history = placeholder_history(f.history_windows, f.smoothing)
        numeric += feature_names(f.history_windows)
    if cfg.text.enabled:
        train = (pl.concat([scan(d) for d in splits["train"]], how="diagonal_relaxed").collect()
                 if cfg.text.finetune == "contrastive" else None)
        tcfg = run_encoder(cfg.text, layout.text_encoders, train, date, cfg.train.seed)
        dim = model_dim(tcfg)
        meta["text"] = {**dataclasses.asdict(tcfg), "dim": dim, "encoder_key": encoder_key(tcfg),
                        "encoder": encoder_info(tcfg)}
        state.text, state.cache_dir = TextTable.empty(dim), layout.text_cache / encoder_key(tcfg)
        state.text.add(distinct_texts(layout, [d for s in SPLITS for d in splits[s]], items), tcfg, state.cache_dir)
        numeric.append("query_title_cos")
    numeric += context.names(meta["groups"])
    meta["numeric"] = numeric
    return state


def day_sequences(scan: Callable[[dt.date], pl.LazyFrame], days: list[dt.date], length: int, lookback: int,
                  fields: tuple[str, ...]) -> Sequences:
    """The sequence state from every lake day the build reads, one day's clicked rows at a time."""
    need = ["user_id", "ts", "clicked", "event_id", *fields]
    clicks = [day_clicks(scan(d).filter(pl.col("clicked") == 1).select(need).collect(), length, tuple(fields))
              for d in days]
    return Sequences(pl.concat(clicks).sort("user_id", "dt"), length, lookback, tuple(fields))


def fit(state: FeatureState, files: list[Path], min_count: int) -> None:
    """Vocabularies and numeric stats of the derived train days, one column at a time."""
    meta, vocabs, stats = state.meta, {}, {}
    for name in meta["categorical"]:
        vocabs.update(fit_vocabs(pl.read_parquet(files, columns=[f"c:{name}"]), [name], min_count))
    for name in meta["numeric"]:
        stats.update(fit_stats(pl.read_parquet(files, columns=[f"n:{name}"]), [name]))
    state.vocabs, meta["stats"] = vocabs, stats


def save_state(state: FeatureState, layout: Layout, days: list[dt.date], folder: Path) -> None:
    """state/ with the history of every lake day the build read, concatenated from the per-day aggregates."""
    hist, state.history, state.history_for = state.history, None, None
    try:
        state.save(folder)
    finally:
        state.history = hist
    if hist is not None:
        write_history(layout, days, folder / "history")
