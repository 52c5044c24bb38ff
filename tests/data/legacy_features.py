"""Today's (pre-streaming) feature build, kept as the reference the streaming build must equal: every lake day of
the window in one frame, history recomputed from the raw rows. Only the test of equality uses it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.data.schema import IMPRESSIONS, ITEMS, LABELS, USERS
from pipeline.errors import FeatureError
from pipeline.features import context, sequences
from pipeline.features.build import SPLITS, _derive, _finalize, _label_rates, _snapshot, _spec, _transform
from pipeline.features.fitstate import BASE_NUMERIC
from pipeline.features.history import KEYS, build_history, feature_names
from pipeline.features.state import FeatureState, fit_stats, fit_vocabs
from pipeline.features.windows import lake_days as _lake_days
from pipeline.features.windows import split_dates
from pipeline.io import atomic_path, write_json
from pipeline.paths import FEATURES_DIR, Layout, parse_date


def _load_raw(layout: Layout, days: list[dt.date], users: pl.DataFrame, items: pl.DataFrame,
              extra: set[str]) -> pl.DataFrame:
    """Impressions of `days` joined with the snapshots; contract columns plus declared extras only."""
    frames = []
    for d in days:
        if not any(layout.impressions_dir(d).glob("*.parquet")):
            raise FeatureError(f"lake day {d} has no Parquet files in {layout.impressions_dir(d)}")
        lf = pl.scan_parquet(str(layout.impressions_dir(d) / "*.parquet"))
        names = lf.collect_schema().names()
        keep = [c for c in IMPRESSIONS.names if c in names] + sorted(extra & set(names) - set(IMPRESSIONS.names))
        frames.append(lf.select(keep))
    imp = pl.concat(frames, how="diagonal_relaxed").collect()
    if imp.height == 0:
        raise FeatureError(f"no impressions in lake days {days[0]}..{days[-1]}")
    u_keep = [c for c in users.columns if c in USERS.names or c in extra]
    i_keep = [c for c in items.columns if c in ITEMS.names or c in extra]
    raw = (imp.join(users.select(u_keep), on="user_id", how="left", maintain_order="left")
           .join(items.select(i_keep), on="item_id", how="left", maintain_order="left"))
    return raw.with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.date().alias("dt"))


def _base_state(cfg: Config, raw: pl.DataFrame, split_raw: dict[str, pl.DataFrame], date: dt.date,
                items: pl.DataFrame, layout: Layout) -> FeatureState:
    """Everything but vocabularies and stats: history tables, category prices, text table (embedded with the
    contrastively fine-tuned encoder when text.finetune=contrastive: pairs of the train window only)."""
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
        state.sequences = sequences.build_sequences(raw, f.sequence_length, max(f.history_windows),
                                                    f.sequence_fields)
    if f.history:
        state.history = build_history(raw.select("dt", *{c for cols in KEYS.values() for c in cols}, *LABELS,
                                                 "price"), f.history_windows, f.smoothing)
        numeric += feature_names(f.history_windows)
    if cfg.text.enabled:
        tcfg = run_encoder(cfg.text, layout.text_encoders, split_raw["train"], date, cfg.train.seed)
        dim = model_dim(tcfg)
        meta["text"] = {**dataclasses.asdict(tcfg), "dim": dim, "encoder_key": encoder_key(tcfg),
                        "encoder": encoder_info(tcfg)}
        state.text, state.cache_dir = TextTable.empty(dim), layout.text_cache / encoder_key(tcfg)
        texts = pl.concat(split_raw.values()).select(pl.concat_list("title", "query").explode().drop_nulls()
                                                     .unique().sort())
        state.text.add(texts.to_series().to_list(), tcfg, state.cache_dir)
        numeric.append("query_title_cos")
    numeric += context.names(meta["groups"])
    meta["numeric"] = numeric
    return state


def legacy_build_features(cfg: Config, date: dt.date | str, run_id: str | None = None) -> dict[str, Any]:
    """Write runs/<run_id>/features/{train,valid,test}.parquet, feature_spec.json and state/ (atomically)."""
    d = parse_date(date)
    run_id = run_id or d.isoformat()
    layout = Layout.of(cfg.home)
    splits = split_dates(cfg, d)
    looks_back = cfg.features.history or cfg.features.sequence_length > 0
    days = _lake_days(layout, splits, max(cfg.features.history_windows) if looks_back else 0)
    users, items = _snapshot(layout, "users", d), _snapshot(layout, "items", d)
    extra = set(cfg.features.categorical) | set(cfg.features.numeric)
    raw = _load_raw(layout, days, users, items, extra)
    split_raw = {s: raw.filter(pl.col("dt").is_in(splits[s])) for s in SPLITS}
    if split_raw["train"].height == 0:
        raise FeatureError(f"train window {splits['train'][0]}..{splits['train'][-1]} has no impressions")
    state = _base_state(cfg, raw, split_raw, d, items, layout)
    train = _derive(split_raw["train"], state)
    state.vocabs = fit_vocabs(train, state.meta["categorical"], cfg.features.min_count)
    state.meta["stats"] = fit_stats(train, state.meta["numeric"])
    out = layout.run_dir(run_id) / FEATURES_DIR
    spec_splits = {}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for split in SPLITS:
            frame = _finalize(train, state) if split == "train" else _transform(split_raw[split], state)
            frame.write_parquet(tmp / f"{split}.parquet")
            spec_splits[split] = {"dates": [x.isoformat() for x in splits[split]], "rows": frame.height,
                                  "label_rates": _label_rates(frame)}
        state.save(tmp / "state")
        write_json(tmp / "feature_spec.json", _spec(cfg, state, spec_splits))
    return {"run_id": run_id, "spec": str(out / "feature_spec.json"),
            "rows": {s: v["rows"] for s, v in spec_splits.items()}}


