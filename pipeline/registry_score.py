"""Scoring with a registered model version in a fresh interpreter, the way serving runs it.

`predict_isolated` loads `models:/<name>/<version or @alias>` with MLflow's pyfunc loader in a subprocess (so the
version's own bundled code, not this checkout's, builds its features) and returns its predictions;
`champion_predictions` re-scores raw rows with the current champion for the gate. Split out of `pipeline.registry`,
which keeps the tracking-server and alias logic this module calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config
from pipeline.errors import RegistryError
from pipeline.registry import CHAMPION, alias_version, connect, tracking_uri

if TYPE_CHECKING:
    import pandas as pd

# Scores in a fresh interpreter that has not imported `pipeline`: MLflow puts the model's bundled copy of the
# code (code_paths) first on sys.path, so a version registered by older code still loads after the code moved on.
_RUNNER = """
import json, sys
import mlflow
from mlflow.exceptions import MlflowException
uri, model_uri, src, dst = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
def fail(code, msg):
    print("MTL-ERROR:" + json.dumps(msg), file=sys.stderr)
    sys.exit(code)
try:
    model = mlflow.pyfunc.load_model(model_uri)
except Exception as exc:
    fail(3, f"cannot load model {model_uri!r}: {type(exc).__name__}: {exc}")
import pandas as pd
try:
    out = model.predict(pd.read_parquet(src))
except MlflowException as exc:
    fail(2, exc.message)
out.to_parquet(dst, index=False)
"""


def predict_isolated(cfg: Config, model_uri: str, rows: pd.DataFrame, timeout_s: float = 3600,
                     history_from: str | os.PathLike | None = None) -> pd.DataFrame:
    """Score raw rows with a registered model (e.g. `models:/ecommerce-mtl@champion`) in a subprocess.

    The model reads history from the lake of `history_from` (a home; default `serving.history_from`, "" = the
    snapshot it bundles) and caches new texts under `cfg`'s text cache (`pipeline.serving.pyfunc.text_cache_dir`).
    Raises RegistryError when the model cannot be found or loaded, DataValidationError when it refuses the rows.
    """
    import json
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    from pipeline.errors import DataValidationError, RuleFailure
    from pipeline.serving.pyfunc import HISTORY_ENV, TEXT_CACHE_ENV, text_cache_dir

    connect(cfg)  # fails fast, naming the URI, when the tracking server is down
    uri = tracking_uri(cfg)
    with tempfile.TemporaryDirectory(prefix="mtl-score-") as tmp:
        src, dst = Path(tmp) / "rows.parquet", Path(tmp) / "out.parquet"
        rows.to_parquet(src, index=False)
        hist = cfg.serving.history_from if history_from is None else history_from
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, TEXT_CACHE_ENV: text_cache_dir(cfg),
               HISTORY_ENV: str(Path(hist).resolve()) if hist else ""}
        try:
            proc = subprocess.run([sys.executable, "-c", _RUNNER, uri, model_uri, str(src), str(dst)], env=env,
                                  cwd=tmp, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RegistryError(f"scoring with {model_uri!r} took longer than {timeout_s:g} s") from None
        if proc.returncode == 0:
            return pd.read_parquet(dst)
    marked = [ln for ln in proc.stderr.splitlines() if ln.startswith("MTL-ERROR:")]
    msg = json.loads(marked[-1][len("MTL-ERROR:"):]) if marked else proc.stderr.strip()[-2000:]
    if proc.returncode == 2:
        raise DataValidationError([RuleFailure("scoring request", "*", msg, len(rows))], where="scoring request")
    raise RegistryError(f"scoring with {model_uri!r} failed (exit {proc.returncode}): {msg}")



def champion_predictions(cfg: Config, raw) -> tuple[dict[str, Any], Any] | None:
    """Re-score raw contract rows (pandas) with the current champion: (info, frame with p_<task>) or None.
    History comes from this home's lake, as for the challenger it is compared with."""
    client = connect(cfg)
    mv = alias_version(client, cfg.registry.model_name, CHAMPION)
    if mv is None:
        return None
    info = {"version": int(mv.version), "run_id": mv.tags.get("run_id"), "data_date": mv.tags.get("data_date")}
    return info, predict_isolated(cfg, f"models:/{cfg.registry.model_name}/{mv.version}", raw,
                                  history_from=cfg.home)
