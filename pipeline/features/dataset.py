"""Feature frames -> contiguous tensors, and batches gathered from them (no per-row Dataset, no collate).

`TensorData` holds rows in memory: `cat` int64 [N, C] (ids stay integers: float32 collides above 2^24), `num`
float32 [N, F], `text` int64 [N, X] or None, `seq` int64 [N, S] (behaviour-sequence ids, the spec's
`sequence.columns` order, 0 = padding) or None, `labels` float32 [N, T] and `mask` float32 [N, T] (1 where the row
is in the task's sample space: cvr only on clicked rows). `InputSpec` is what a model needs to build its input
layer. Training reads a split through `pipeline.features.arrays.open_split` instead (memory-mapped columns, the
same `take`/`slice`/`label_sums` interface); `batches` works on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.schema import TASKS
from pipeline.errors import FeatureError
from pipeline.paths import FEATURES_DIR

if TYPE_CHECKING:
    import polars as pl
    import torch

SPEC_FILE = "feature_spec.json"
TEXT_TABLE = "state/text_table.npy"


@dataclass(frozen=True)
class InputSpec:
    """Model input layout. `text_table` (float32 [n_texts, text_dim]) is not serialised: the model keeps it as a
    buffer in its state_dict, so a loaded model rebuilds it from `text_rows` x `text_dim` zeros then loads it.
    `text_encoder` (text.finetune=joint, pipeline.features.finetune.joint_inputs): {"config": the transformer's
    config dict, "layers": top layers that train, "lr", "max_length"}; serialised. `text_tokens` (int32
    [2, text_rows, max_length]) and `text_encoder_model` (the loaded transformer) are runtime only, like the table."""

    cat_names: tuple[str, ...]
    cardinalities: tuple[int, ...]
    num_names: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    text_rows: int = 0
    text_dim: int = 0
    text_proj_dim: int = 16
    text_table: Any = field(default=None, compare=False, repr=False)
    text_encoder: dict[str, Any] | None = None
    text_tokens: Any = field(default=None, compare=False, repr=False)
    text_encoder_model: Any = field(default=None, compare=False, repr=False)
    # Behaviour sequence (feature_spec.json "sequence"): its columns (one block of equal length per field), and
    # per block the categorical feature whose embedding rows its indices select (pipeline.features.sequences).
    seq_columns: tuple[str, ...] = ()
    seq_vocabs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        runtime = ("text_table", "text_tokens", "text_encoder_model")  # arrays and modules: in the state_dict
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in runtime}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class TensorData:
    cat: torch.Tensor
    num: torch.Tensor
    text: torch.Tensor | None
    labels: torch.Tensor
    mask: torch.Tensor
    tasks: tuple[str, ...]
    # Serving: a text table float32 [n, dim] that `text` indexes instead of the model's own (its first rows are
    # the model's table, then texts embedded at scoring time). Not per row: slicing keeps it whole.
    text_table: torch.Tensor | None = None
    # Behaviour sequence: int64 [N, S] vocabulary indices of feature_spec "sequence" columns (0 = padding), or None.
    seq: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def _map(self, fn) -> TensorData:
        text = None if self.text is None else fn(self.text)
        seq = None if self.seq is None else fn(self.seq)
        return TensorData(fn(self.cat), fn(self.num), text, fn(self.labels), fn(self.mask), self.tasks,
                          self.text_table, seq)

    def nbytes(self) -> int:
        tensors = [self.cat, self.num, self.labels, self.mask] + [t for t in (self.text, self.seq) if t is not None]
        return sum(t.element_size() * t.numel() for t in tensors)

    def label_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positives, rows in the sample space), float64 [T] each."""
        return (self.labels * self.mask).double().sum(0), self.mask.double().sum(0)

    def to(self, device: Any) -> TensorData:
        out = self._map(lambda t: t.to(device, non_blocking=True))
        if out.text_table is not None:
            out.text_table = out.text_table.to(device)
        return out

    def pin_memory(self) -> TensorData:
        return self._map(lambda t: t.pin_memory())

    def take(self, index: torch.Tensor) -> TensorData:
        """Rows at `index` (int64 [M]) as new contiguous tensors."""
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def slice(self, start: int, stop: int) -> TensorData:
        return self._map(lambda t: t[start:stop])

    def batch(self) -> dict[str, torch.Tensor]:
        """The model input dict: `cat`, `num` and (when present) `seq` and `text`."""
        out = {"cat": self.cat, "num": self.num}
        if self.seq is not None:
            out["seq"] = self.seq
        if self.text is not None:
            out["text"] = self.text
            if self.text_table is not None:
                out["text_table"] = self.text_table
        if self.seq is not None:
            out["seq"] = self.seq
        return out


def batch_order(n: int, batch_size: int, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Row indices of each batch of one shuffled pass over `n` rows: consecutive ranges of one
    `torch.randperm(n, generator=generator)`, each sorted (neighbouring rows share pages of a memory map).
    int64 [batch_size] (the last one shorter unless `drop_last`). Every row comes exactly once; nothing is copied."""
    import torch

    perm = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield perm[start:min(start + batch_size, n)].sort().values


def batches(data: Any, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[TensorData]:
    """Batches of `data` (TensorData or a memory-mapped split) as TensorData: in row order as slices, or
    shuffled, each gathered by index (`batch_order`), so no epoch copies the whole split."""
    n = len(data)
    if shuffle:
        for index in batch_order(n, batch_size, generator, drop_last):
            yield data.take(index)
        return
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield data.slice(start, min(start + batch_size, n))


def _columns(df: pl.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix)]


def _check_indices(values: np.ndarray, names: list[str], sizes: list[int], where: str) -> None:
    for j, (name, size) in enumerate(zip(names, sizes)):
        col = values[:, j]
        bad = np.flatnonzero((col < 0) | (col >= size))
        if bad.size:
            raise FeatureError(f"{where}: column {name} has {bad.size} index(es) outside [0, {size}), "
                               f"e.g. rows {bad[:3].tolist()} = {col[bad[:3]].tolist()}")


def _matrix(df: pl.DataFrame, cols: list[str], dtype: Any, where: str) -> np.ndarray:
    if not cols:
        return np.zeros((df.height, 0), dtype=dtype)
    nulls = {c: n for c in cols if (n := df[c].null_count())}
    if nulls:
        raise FeatureError(f"{where}: null values in feature columns {nulls}")
    return np.array(df.select(cols).to_numpy(), dtype=dtype, order="C")  # a writable copy torch can own


def label_arrays(df: pl.DataFrame, tasks: tuple[str, ...], where: str = "frame") -> tuple[np.ndarray, np.ndarray]:
    """Labels and sample-space masks, float32 [N, T], from the contract label columns."""
    labels, masks = [], []
    for t in tasks:
        task = TASKS[t]
        for col in (task.label, task.given):
            if col is not None and col not in df.columns:
                raise FeatureError(f"{where}: label column '{col}' for task {t} is missing")
        labels.append(df[task.label].fill_null(0).to_numpy().astype(np.float32))
        given = df[task.given].fill_null(0).to_numpy() if task.given else np.ones(df.height)
        masks.append((given == 1).astype(np.float32))
    return np.stack(labels, 1), np.stack(masks, 1)


def from_frame(df: pl.DataFrame, spec: dict[str, Any], tasks: tuple[str, ...], where: str = "frame") -> TensorData:
    """A feature frame (columns as docs/architecture.md) + its feature_spec dict -> TensorData."""
    import torch

    cats = [c["column"] for c in spec["categorical"]]
    seq_cols, seq_sizes = sequence_columns(spec)
    missing = [c for c in cats + list(spec["numeric"]) + text_columns(spec) + seq_cols if c not in df.columns]
    if missing:
        raise FeatureError(f"{where}: feature columns {missing} named in the spec are missing")
    cat = _matrix(df, cats, np.int64, where)
    _check_indices(cat, cats, [int(c["cardinality"]) for c in spec["categorical"]], where)
    num = _matrix(df, list(spec["numeric"]), np.float32, where)
    if num.size and not np.isfinite(num).all():
        rows = np.flatnonzero(~np.isfinite(num).all(1))[:3].tolist()
        raise FeatureError(f"{where}: non-finite numeric features, e.g. rows {rows}")
    text = None
    if text_columns(spec):
        text_np = _matrix(df, text_columns(spec), np.int64, where)
        if text_np.size and text_np.min() < 0:
            raise FeatureError(f"{where}: negative text index")
        text = torch.from_numpy(text_np)
    seq = None
    if seq_cols:
        seq_np = _matrix(df, seq_cols, np.int64, where)
        _check_indices(seq_np, seq_cols, seq_sizes, where)
        seq = torch.from_numpy(seq_np)
    labels, mask = label_arrays(df, tasks, where)
    return TensorData(torch.from_numpy(cat), torch.from_numpy(num), text, torch.from_numpy(labels),
                      torch.from_numpy(mask), tuple(tasks), seq=seq)


def sequence_columns(spec: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The spec's behaviour-sequence columns (`seq__<name>_<k>`, in order) and, per column, the cardinality of the
    categorical feature whose vocabulary it shares (`sequence.vocab[<name>]`); ([], []) without a sequence."""
    seq = spec.get("sequence")
    if not seq:
        return [], []
    cards = {c["name"]: int(c["cardinality"]) for c in spec["categorical"]}
    cols, sizes = list(seq["columns"]), []
    for col in cols:
        name = col.removeprefix("seq__").rpartition("_")[0]
        vocab = (seq.get("vocab") or {}).get(name)
        if vocab not in cards:
            raise FeatureError(f"feature spec: sequence column {col} shares vocabulary '{vocab}' of sequence "
                               f"'{name}', which is not a categorical feature {sorted(cards)}")
        sizes.append(cards[vocab])
    return cols, sizes


def _seq_vocabs(spec: dict[str, Any]) -> tuple[str, ...]:
    """Per sequence field, in column order (`seq__<name>_<k>`: the JSON mapping's key order is not kept), the
    categorical feature it shares (e.g. item_id)."""
    seq = spec.get("sequence") or {}
    names = dict.fromkeys(c[len("seq__"):-3] for c in seq.get("columns", []))
    return tuple(seq["vocab"][n] for n in names)


def text_columns(spec: dict[str, Any]) -> list[str]:
    text = spec.get("text") or {}
    return list(text.get("columns", [])) if text.get("enabled") else []


def read_spec(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / FEATURES_DIR / SPEC_FILE
    if not path.is_file():
        raise FeatureError(f"feature spec not found: {path} (run the features stage first)")
    return json.loads(path.read_text())


def input_spec(run_dir: str | Path, spec: dict[str, Any], text_proj_dim: int) -> InputSpec:
    """The model input layout of a run's features, with the text table loaded when text is enabled."""
    table = None
    if text_columns(spec):
        path = Path(run_dir) / FEATURES_DIR / TEXT_TABLE
        if not path.is_file():
            raise FeatureError(f"text is enabled in the spec but the text table is missing: {path}")
        table = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
    return InputSpec(
        cat_names=tuple(c["name"] for c in spec["categorical"]),
        cardinalities=tuple(int(c["cardinality"]) for c in spec["categorical"]),
        num_names=tuple(spec["numeric"]),
        text_columns=tuple(text_columns(spec)),
        text_rows=0 if table is None else int(table.shape[0]),
        text_dim=0 if table is None else int(table.shape[1]),
        text_proj_dim=text_proj_dim,
        text_table=table,
        seq_columns=tuple(sequence_columns(spec)[0]),
        seq_vocabs=_seq_vocabs(spec),
    )


def load_split(run_dir: str | Path, split: str, tasks: tuple[str, ...], spec: dict[str, Any] | None = None,
               text_rows: int | None = None) -> TensorData:
    """runs/<run_id>/features/<split>.parquet -> TensorData for `tasks`. Text indices are checked against
    `text_rows` (the text table's length) when given."""
    import polars as pl

    spec = spec or read_spec(run_dir)
    path = Path(run_dir) / FEATURES_DIR / f"{split}.parquet"
    if not path.is_file():
        raise FeatureError(f"feature file not found: {path}")
    cols = [c["column"] for c in spec["categorical"]] + list(spec["numeric"]) + text_columns(spec)
    cols += sequence_columns(spec)[0]
    labels = sorted({TASKS[t].label for t in tasks} | {TASKS[t].given for t in tasks if TASKS[t].given})
    df = pl.read_parquet(path, columns=cols + labels)
    data = from_frame(df, spec, tasks, where=str(path))
    if data.text is not None and text_rows is not None and data.text.numel() and int(data.text.max()) >= text_rows:
        raise FeatureError(f"{path}: text index {int(data.text.max())} beyond the text table ({text_rows} rows)")
    return data
