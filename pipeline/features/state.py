"""What `pipeline.features.build.transform` needs to rebuild feature columns, and its `state/` folder format.

    state/meta.json              names, numeric stats, history and text settings (see FeatureState.meta)
    state/vocabs.parquet         name, value (string), index (int32 >= 1; 0 = unknown/null, not stored)
    state/category_price.parquet category, log_median (log of the median item price of the category)
    state/history/*.parquet      per-day per-key count tables (pipeline.features.history)
    state/sequences.parquet      per-(user, day) clicked items, newest first (pipeline.features.sequences)
    state/text_table.npy         float32 [n_texts + 1, dim], row 0 zeros
    state/text_index.parquet     hash (uint64, pipeline.features.text.text_hash of the cut text), row (int32), text
    state/text_tokens.npy        int32 [2, n_texts + 1, max_length]: input ids and attention mask, row 0 empty
                                 (only with text.finetune=joint)
    state/encoder/               the fine-tuned encoder the table was embedded with (text.finetune=contrastive;
                                 pipeline.features.text.save_encoder format): scoring embeds unseen texts with it
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import TextConfig
from pipeline.errors import FeatureError
from pipeline.features.history import History
from pipeline.features.sequences import Sequences
from pipeline.features.text import TextTable
from pipeline.io import read_json, write_json

ENCODER_DIR = "encoder"


@dataclass
class FeatureState:
    """meta keys: categorical (names), numeric (names, in column order), numeric_inputs (declared extra
    numeric columns), stats {name: [mean, std]}, min_count, history {enabled, windows, smoothing},
    text (TextConfig fields + dim + encoder_key, or null), sequence ({length, lookback, fields} or null)."""

    meta: dict[str, Any]
    vocabs: dict[str, pl.DataFrame]
    category_price: pl.DataFrame
    history: History | None = None
    text: TextTable | None = None
    cache_dir: Path | None = None  # text cache for texts not in the table; None = embed without caching
    folder: Path | None = None  # where it was loaded from (its encoder/ lives there)
    # Serving only: day -> the History to compute that day's rows with (pipeline.features.fresh); None = `history`.
    history_for: Callable[[dt.date], History] | None = None
    sequences: Sequences | None = None  # with features.sequence_length > 0
    sequence_for: Callable[[dt.date], Sequences] | None = None  # serving: like history_for

    @property
    def text_cfg(self) -> TextConfig | None:
        t = self.meta.get("text")
        if not t:
            return None
        names = {f.name for f in dataclasses.fields(TextConfig)}
        tcfg = TextConfig(**{k: v for k, v in t.items() if k in names})
        if t.get("encoder") and self.folder is not None and (self.folder / ENCODER_DIR).is_dir():
            tcfg = dataclasses.replace(tcfg, model=str(self.folder / ENCODER_DIR))  # the copy stored with the state
        return tcfg

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "meta.json", self.meta)
        rows = [v.with_columns(pl.lit(k).alias("name")) for k, v in self.vocabs.items()]
        empty = pl.DataFrame(schema={"value": pl.String, "index": pl.Int32, "name": pl.String})
        pl.concat([empty, *rows]).select("name", "value", "index").write_parquet(folder / "vocabs.parquet")
        self.category_price.write_parquet(folder / "category_price.parquet")
        if self.history is not None:
            self.history.save(folder / "history")
        if self.sequences is not None:
            self.sequences.save(folder)
        if self.text is not None:
            np.save(folder / "text_table.npy", self.text.vecs)
            pl.DataFrame({"hash": pl.Series(list(self.text.rows), dtype=pl.UInt64),
                          "row": pl.Series(list(self.text.rows.values()), dtype=pl.Int32),
                          "text": [self.text.texts[r] for r in self.text.rows.values()]},
                         ).write_parquet(folder / "text_index.parquet")
            if self.meta["text"].get("encoder"):
                _link_tree(Path(self.text_cfg.model), folder / ENCODER_DIR)
            if self.text_cfg.finetune == "joint":
                np.save(folder / "text_tokens.npy", _tokens(self.text, self.text_cfg))

    @classmethod
    def load(cls, folder: str | Path) -> FeatureState:
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FeatureError(f"no feature state in {folder} (expected meta.json written by build_features)")
        meta = read_json(folder / "meta.json")
        vocab_rows = pl.read_parquet(folder / "vocabs.parquet")
        vocabs = {n: vocab_rows.filter(pl.col("name") == n).select("value", "index") for n in meta["categorical"]}
        state = cls(meta, vocabs, pl.read_parquet(folder / "category_price.parquet"), folder=folder)
        h = meta["history"]
        if h["enabled"]:
            state.history = History.load(folder / "history", tuple(h["windows"]), h["smoothing"])
        seq = meta.get("sequence")  # states written before sequences existed have none
        if seq:
            state.sequences = Sequences.load(folder, seq["length"], seq["lookback"], tuple(seq["fields"]))
        if meta.get("text"):
            idx = pl.read_parquet(folder / "text_index.parquet")
            rows = dict(zip(idx["hash"].to_list(), idx["row"].to_list()))
            vecs = np.load(folder / "text_table.npy")
            texts = [""] * len(vecs)
            for r, t in zip(idx["row"].to_list(), idx["text"].to_list()):
                texts[r] = t
            state.text = TextTable(vecs, rows, texts, stored=len(vecs))
        return state


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder of files as hard links where the file system allows (the encoder is ~90 MB), else copies."""
    import os
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def _tokens(table: TextTable, tcfg: TextConfig) -> np.ndarray:
    from pipeline.features.text import load_tokenizer, tokenize

    tokenizer = load_tokenizer(tcfg)
    enc = tokenize(table.texts[1:], tcfg, tokenizer) if len(table.texts) > 1 else None
    out = np.zeros((2, len(table.texts), tcfg.max_length), dtype=np.int32)
    out[0, 0, :] = tokenizer.pad_token_id or 0
    if enc is not None:
        out[0, 1:], out[1, 1:] = enc["input_ids"], enc["attention_mask"]
    return out


def fit_vocabs(frame: pl.DataFrame, names: list[str], min_count: int) -> dict[str, pl.DataFrame]:
    """Per name: values of column `c:<name>` seen >= min_count times -> 1.. by descending count (ties by value)."""
    out = {}
    for name in names:
        counts = (frame.group_by(pl.col(f"c:{name}").alias("value")).agg(pl.len().alias("n"))
                  .drop_nulls("value").filter(pl.col("n") >= min_count).sort(["n", "value"], descending=[True, False]))
        out[name] = counts.select("value", (pl.int_range(1, pl.len() + 1, dtype=pl.Int32)).alias("index"))
    return out


def fit_stats(frame: pl.DataFrame, names: list[str]) -> dict[str, list[float]]:
    """Per numeric name: [mean, std] of column `n:<name>` over finite values; std 1 where it would be 0."""
    out = {}
    for name in names:
        col = pl.col(f"n:{name}")
        # One contiguous column: the float sums then do not depend on how the frame was chunked (whole window
        # in memory or read back day by day), so both builds give the same stats to the last bit.
        finite = frame.select(col.filter(col.is_finite())).rechunk()
        mean, std = finite.select(col.mean()).item(), finite.select(col.std()).item()
        mean = float(mean) if mean is not None else 0.0
        std = float(std) if std is not None and std > 1e-12 else 1.0
        out[name] = [mean, std]
    return out
