"""A feature split as memory-mapped column arrays: what training reads instead of holding the split in memory.

On first use `ensure_arrays` converts `runs/<run_id>/features/<split>.parquet` into the folder
`features/<split>.arrays/` beside it, one Parquet batch at a time (so conversion holds about one row group):

    cat.npy     int32 [N, C]  the spec's `categorical` columns, in order
    num.npy     float32 [N, F] the spec's `numeric` columns
    text.npy    int32 [N, X]  the text index columns (text enabled only)
    seq.npy     int32 [N, S]  the behaviour-sequence columns `sequence.columns` (a sequence in the spec only)
    labels.npy  int8 [N, L]   the contract label columns present (nulls as 0), names in meta.json
    meta.json   rows, column names, text_max, and the stamp of the Parquet file and spec it was made from

The folder appears by one rename (a reader sees all of it or none); a stale one (the Parquet or the spec's
columns changed) is rebuilt. `open_split` maps the arrays read-only (`np.load(mmap_mode="r")`); a batch is
gathered by row index into new tensors (`MappedSplit.take`), so an epoch copies only its batches and a DDP rank
touches only the rows of its shard. The values are those `dataset.load_split` gives (checked in
tests/model/test_arrays.py).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.schema import LABELS, TASKS
from pipeline.errors import FeatureError
from pipeline.features.dataset import TensorData, read_spec, sequence_columns, text_columns
from pipeline.io import recover, write_json
from pipeline.paths import FEATURES_DIR

if TYPE_CHECKING:
    import torch

FORMAT = 1
READ_ROWS = 65536  # rows per Parquet batch while converting (about 20 MB of columns at ~80 features)
META = "meta.json"
# Rows read between two MappedSplit.release() calls. A page fault maps 64 KB around the row (the kernel's
# fault-around, which MADV_RANDOM does not turn off), so random rows map the whole file within ~200k rows.
# Measured on a 10.5M x 125-column split (bench/arrays_bench.py, this 2-core machine under load): 300k random
# rows took 5.1 s and left 5.3 GB resident without releases, 16.7 s / 1.7 GB peak at 16384, 31.7 s / 0.8 GB
# at 4096; training itself reads ~2000 rows/s here, so 16384 costs ~10% for memory that no longer grows.
RELEASE_ROWS = 1 << 14


def arrays_dir(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / FEATURES_DIR / f"{split}.arrays"


def _groups(spec: dict[str, Any]) -> dict[str, tuple[list[str], Any]]:
    """Array name -> (its source columns, dtype); empty groups (no text, no sequence) are left out."""
    seq_cols, _ = sequence_columns(spec)
    groups = {"cat": ([c["column"] for c in spec["categorical"]], np.int32), "num": (list(spec["numeric"]), np.float32),
              "text": (text_columns(spec), np.int32), "seq": (seq_cols, np.int32)}
    return {k: v for k, v in groups.items() if v[0] or k in ("cat", "num")}


def _stamp(src: Path, spec: dict[str, Any]) -> dict[str, Any]:
    st = src.stat()
    return {"format": FORMAT, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "columns": {k: cols for k, (cols, _) in _groups(spec).items()}}


def _current(folder: Path, stamp: dict[str, Any]) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / META).read_text()).get("stamp") == stamp
    return False


def ensure_arrays(run_dir: str | Path, split: str, spec: dict[str, Any] | None = None) -> Path:
    """The split's array folder, converted from its Parquet file when missing or stale. Safe when several
    processes convert at once (DDP ranks, parallel baselines): each writes its own temporary folder and the
    first rename wins; nothing half-written is ever at the final path."""
    spec = spec or read_spec(run_dir)
    src = Path(run_dir) / FEATURES_DIR / f"{split}.parquet"
    if not src.is_file():
        raise FeatureError(f"feature file not found: {src}")
    folder, stamp = arrays_dir(run_dir, split), _stamp(src, spec)
    if _current(folder, stamp):
        return folder
    recover(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        convert(src, spec, tmp, stamp)
        try:
            os.rename(tmp, folder)  # atomic; fails when another writer's folder is already there
        except OSError:
            if not _current(folder, stamp):  # a stale folder: swap it out (io.atomic_path's two renames)
                old = folder.with_name(f".{folder.name}.old")
                os.replace(folder, old)
                os.rename(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _block(batch: Any, cols: list[str], dtype: Any, row: int, where: str) -> np.ndarray:
    """Columns of one Arrow record batch as a [m, len(cols)] array; nulls are an error naming the rows."""
    out = np.empty((batch.num_rows, len(cols)), dtype=dtype)
    for j, name in enumerate(cols):
        col = batch.column(name)
        if col.null_count:
            first = row + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise FeatureError(f"{where}: null values in feature column {name} ({col.null_count} in rows "
                               f"{row}..{row + batch.num_rows - 1}, first at row {first})")
        out[:, j] = col.to_numpy(zero_copy_only=False)
    return out


def _check(name: str, block: np.ndarray, cols: list[str], sizes: list[int] | None, row: int, where: str) -> None:
    """Index columns inside [0, size) (text: >= 0), numbers finite; errors name the column and global rows."""
    if name == "num":
        bad = np.flatnonzero(~np.isfinite(block).all(1))
        if bad.size:
            raise FeatureError(f"{where}: non-finite numeric features, e.g. rows {(bad[:3] + row).tolist()}")
        return
    for j, col in enumerate(cols):
        size = sizes[j] if sizes else np.iinfo(np.int32).max
        bad = np.flatnonzero((block[:, j] < 0) | (block[:, j] >= size))
        if bad.size:
            raise FeatureError(f"{where}: column {col} has {bad.size} index(es) outside [0, {size}) in this batch, "
                               f"e.g. rows {(bad[:3] + row).tolist()} = {block[bad[:3], j].tolist()}")


def convert(src: Path, spec: dict[str, Any], out: Path, stamp: dict[str, Any]) -> None:
    """Write the arrays of Parquet file `src` into folder `out` (see the module docstring), batch by batch."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src)
    n, have = pf.metadata.num_rows, set(pf.schema_arrow.names)
    groups = _groups(spec)
    missing = [c for cols, _ in groups.values() for c in cols if c not in have]
    if missing:
        raise FeatureError(f"{src}: feature columns {missing} named in the spec are missing")
    labels = [c for c in LABELS if c in have]
    sizes = {"cat": [int(c["cardinality"]) for c in spec["categorical"]], "seq": sequence_columns(spec)[1]}
    # Appended as plain writes after a .npy header (C order: row blocks are contiguous), not through a writable
    # map, whose dirty pages would count in this process's memory until the end.
    files = {k: _npy_writer(out / f"{k}.npy", dtype, (n, len(cols))) for k, (cols, dtype) in groups.items()}
    files["labels"] = _npy_writer(out / "labels.npy", np.int8, (n, len(labels)))
    row, text_max = 0, -1
    try:
        for batch in pf.iter_batches(READ_ROWS, columns=[c for cols, _ in groups.values() for c in cols] + labels):
            for name, (cols, dtype) in groups.items():
                block = _block(batch, cols, dtype, row, str(src))
                _check(name, block, cols, sizes.get(name), row, str(src))
                if name == "text" and block.size:
                    text_max = max(text_max, int(block.max()))
                files[name].write(block.tobytes())
            lab = np.empty((batch.num_rows, len(labels)), dtype=np.int8)
            for j, col in enumerate(labels):
                lab[:, j] = batch.column(col).fill_null(0).to_numpy(zero_copy_only=False)
            files["labels"].write(lab.tobytes())
            row += batch.num_rows
    finally:
        for f in files.values():
            f.close()
    if row != n:
        raise FeatureError(f"{src}: read {row} rows, the file's metadata says {n}")
    write_json(out / META, {"rows": n, "labels": labels, "text_max": text_max, "stamp": stamp})


def _npy_writer(path: Path, dtype: Any, shape: tuple[int, int]) -> Any:
    """An open file positioned after the .npy header of a C-order array `shape`; the caller appends the rows."""
    f = open(path, "wb")  # noqa: SIM115 (closed by convert)
    np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
    return f


@dataclass(frozen=True)
class MappedSplit:
    """One split's rows on disk for `tasks`. `cat`, `num`, `text`, `seq`, `label_cols` are read-only memory maps
    (see the module docstring); `take`/`slice` give TensorData with the dtypes and values of `load_split`
    (pinned host memory when `pin`, for asynchronous copies to a GPU)."""

    cat: np.ndarray
    num: np.ndarray
    text: np.ndarray | None
    seq: np.ndarray | None
    label_cols: np.ndarray
    tasks: tuple[str, ...]
    label_index: tuple[int, ...]
    given_index: tuple[int | None, ...]
    pin: bool = False
    read_rows: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)  # since the last release

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def _rows(self, sel: slice | np.ndarray) -> TensorData:
        import torch

        self.read_rows[0] += (sel.stop - sel.start) if isinstance(sel, slice) else len(sel)
        if self.read_rows[0] >= RELEASE_ROWS:
            self.release()

        def read(arr: np.ndarray, dtype: Any) -> torch.Tensor:
            # a slice of a map is a read-only view: copy it; fancy indexing already gives a fresh array
            got = np.asarray(arr[sel]) if isinstance(sel, slice) else np.take(arr, sel, axis=0)
            t = torch.from_numpy(got.astype(dtype, copy=isinstance(sel, slice) or got.dtype != dtype))
            return t.pin_memory() if self.pin else t

        lab = read(self.label_cols, np.float32)
        labels = lab[:, list(self.label_index)]
        mask = torch.ones_like(labels)
        for j, g in enumerate(self.given_index):
            if g is not None:
                mask[:, j] = (lab[:, g] == 1).float()
        text = None if self.text is None else read(self.text, np.int64)
        seq = None if self.seq is None else read(self.seq, np.int64)
        return TensorData(read(self.cat, np.int64), read(self.num, np.float32), text, labels, mask, self.tasks,
                          seq=seq)

    def take(self, index: torch.Tensor | np.ndarray) -> TensorData:
        """Rows at `index` (int64 [M]; sorted indices read the map in order) as new tensors."""
        return self._rows(np.asarray(index.cpu() if hasattr(index, "cpu") else index, dtype=np.int64))

    def slice(self, start: int, stop: int) -> TensorData:
        return self._rows(slice(start, stop))

    def label_sums(self, chunk: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
        """(positives, rows in the sample space) per task, float64 [T], read in chunks of rows."""
        import torch

        pos, cnt = np.zeros(len(self.tasks)), np.zeros(len(self.tasks))
        for start in range(0, len(self), chunk):
            lab = np.asarray(self.label_cols[start:start + chunk], dtype=np.float64)  # only the label columns
            for j, (li, gi) in enumerate(zip(self.label_index, self.given_index)):
                m = np.ones(len(lab)) if gi is None else (lab[:, gi] == 1)
                pos[j] += float((lab[:, li] * m).sum())
                cnt[j] += float(m.sum())
        self.release()
        return torch.from_numpy(pos), torch.from_numpy(cnt)

    def release(self) -> None:
        """Drop this process's mapping of the pages read so far (MADV_DONTNEED). They stay in the page cache, so
        reading them again costs no disk read, but they stop counting in this process's resident memory: without
        this an epoch would leave the whole split resident."""
        self.read_rows[0] = 0
        for arr in (self.cat, self.num, self.text, self.seq, self.label_cols):
            mm = getattr(arr, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)

    def nbytes(self) -> int:
        """Bytes of the split as TensorData (ids and indices widen to int64)."""
        wide = self.cat.shape[1] + sum(a.shape[1] for a in (self.text, self.seq) if a is not None)
        return len(self) * (8 * wide + 4 * self.num.shape[1] + 8 * len(self.tasks))

    def pin_memory(self) -> MappedSplit:
        return replace(self, pin=True)

    def to(self, device: Any) -> TensorData:
        """The whole split as TensorData on `device` (what `_place` does when it fits in GPU memory)."""
        return self.slice(0, len(self)).to(device)


def open_split(run_dir: str | Path, split: str, tasks: tuple[str, ...], spec: dict[str, Any] | None = None,
               text_rows: int | None = None) -> MappedSplit:
    """The split's arrays (converted on first use) mapped read-only for `tasks`. Text indices are checked
    against `text_rows` (the text table's length) when given."""
    spec = spec or read_spec(run_dir)
    folder = ensure_arrays(run_dir, split, spec)
    meta = json.loads((folder / META).read_text())
    labels = list(meta["labels"])
    for t in tasks:
        for col in (TASKS[t].label, TASKS[t].given):
            if col is not None and col not in labels:
                raise FeatureError(f"{folder}: label column '{col}' for task {t} is missing")
    if text_rows is not None and meta["text_max"] >= text_rows:
        raise FeatureError(f"{folder}: text index {meta['text_max']} beyond the text table ({text_rows} rows)")

    def load(name: str) -> np.ndarray | None:
        path = folder / f"{name}.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    return MappedSplit(load("cat"), load("num"), load("text"), load("seq"), load("labels"), tuple(tasks),
                       tuple(labels.index(TASKS[t].label) for t in tasks),
                       tuple(None if TASKS[t].given is None else labels.index(TASKS[t].given) for t in tasks))
