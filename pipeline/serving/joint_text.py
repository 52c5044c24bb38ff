"""Texts new to a text.finetune=joint model at serving: encoded by the model's own jointly trained transformer.

The stored texts' token ids travel in model.pt (`JointTextEncoder.tokens`); a title or query first met at
serving gets a text-table row past them (pipeline.features.build.serve_features). `JointText` tokenizes those
texts with the tokenizer saved beside the model (`models/mtl/encoder/`), with the settings the stored ones were
tokenized with (the feature state's `max_chars`, the token table's length), and lends them to the encoder for
one prediction, so a new text is encoded exactly as a training-time text would be.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np


class JointText:
    """`JointText.of(model, bundle)`: None for a model without a joint encoder."""

    def __init__(self, encoder: Any, tokenizer: Any, tcfg: Any):
        self.encoder, self.tokenizer, self.tcfg = encoder, tokenizer, tcfg
        self.lock = threading.Lock()  # the encoder's token table is extended per request

    @classmethod
    def of(cls, model: Any, bundle: Path) -> JointText | None:
        from pipeline.config import TextConfig
        from pipeline.io import read_json
        from pipeline.models.text_tower import joint_encoders
        from pipeline.training.train import JOINT_ENCODER_DIR

        encoders = list(joint_encoders(model).values())
        if not encoders:
            return None
        from transformers import AutoTokenizer

        enc = encoders[0]
        t = read_json(Path(bundle) / "features" / "state" / "meta.json")["text"]
        tcfg = dataclasses.replace(TextConfig(), max_chars=int(t["max_chars"]), max_length=int(enc.tokens.shape[2]))
        tokenizer = AutoTokenizer.from_pretrained(Path(bundle) / "models" / "mtl" / JOINT_ENCODER_DIR)
        return cls(enc, tokenizer, tcfg)

    def new_tokens(self, idx: dict[str, np.ndarray], texts: dict[str, list[str | None]], n_rows: int) -> Any:
        """idx: text column ("title", "query") -> its text-table rows [N]; texts: the same columns' raw strings
        [N]; n_rows: the serving text table's length. -> int32 [2, n_rows - stored, L]: token ids and attention
        mask of the rows past the model's token table that these rows use (zeros for rows they do not use)."""
        import torch

        from pipeline.features.text import tokenize

        known = self.encoder.tokens.shape[1]
        extra = torch.zeros(2, max(n_rows - known, 0), self.tcfg.max_length, dtype=torch.int32)
        new: dict[int, str] = {}
        for col, rows in idx.items():
            for i in np.nonzero(rows >= known)[0].tolist():
                new.setdefault(int(rows[i]), texts[col][i])
        if new:
            tok = tokenize(list(new.values()), self.tcfg, self.tokenizer)
            pos = torch.tensor(list(new)) - known
            extra[0, pos] = torch.from_numpy(tok["input_ids"])
            extra[1, pos] = torch.from_numpy(tok["attention_mask"])
        return extra

    def predict(self, model: Any, data: Any, extra: Any) -> np.ndarray:
        """pipeline.training.train.predict with the encoder's token table extended by `extra` (new_tokens)."""
        from pipeline.training.train import predict

        with self.lock, self.encoder.extra_tokens(extra):
            return predict(model, data)
