"""Evaluation on the test window, once: every model of the run, and the current champion, on the same rows.

    evaluate(cfg, run_id) -> {"run_id", "report": runs/<run_id>/evaluation.json}

Each task is scored on its sample space (cvr: clicked rows). Metrics per model and task, overall and per surface:
AUC, logloss, GAUC by user and by request, NDCG@10 by the task probability and by the fused score, calibration.
The run's MTL model is scored exactly as it will be served (`served_mtl`: its pyfunc over the bundle built from
the run folder, on raw test rows), and the champion is re-scored through its registered pyfunc on the same raw
rows with the same history (this home's lake), so the comparison is on the same window and footing. Predictions go to runs/<run_id>/predictions/<name>.parquet. Undefined metrics are null.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import Config
from pipeline.data.schema import SURFACES, TASKS
from pipeline.errors import FeatureError, MTLError
from pipeline.evaluation import gate
from pipeline.evaluation.metrics import calibration_bins, summary
from pipeline.io import atomic_path, write_json
from pipeline.paths import (
    EVALUATION_FILE,
    FEATURES_DIR,
    MODELS_DIR,
    MTL_MODEL,
    SELECTED_MODEL,
    Layout,
    baseline_name,
    gbdt_name,
)
from pipeline.serving.fused import PRICE, effective_exponents, formula, fused_score

if TYPE_CHECKING:
    import polars as pl

CHAMPION = "champion"
# Test rows scored per pyfunc call in `served_mtl` (whole requests): at 3x, one call over all 450k test rows
# took 2.4 GB on top of the model; a chunk of this size keeps that near 0.5 GB at any scale.
SERVE_CHUNK_ROWS = 100_000
ID_COLS = ("event_id", "request_id", "user_id", "surface", "clicked", "carted", "purchased")


def task_mask(frame: pl.DataFrame, task: str) -> np.ndarray:
    """Rows of `frame` in the task's sample space (bool [N])."""
    given = TASKS[task].given
    return np.ones(frame.height, bool) if given is None else frame[given].to_numpy() == 1


def group_codes(frame: pl.DataFrame, column: str) -> np.ndarray:
    """Integer codes of an id column (int64 [N]): grouping by ints is much faster than by Python strings."""
    return frame[column].rank("dense").to_numpy().astype(np.int64)


def predict_models(run_dir: Path, test: pl.DataFrame, spec: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Probabilities of each baseline present (DNN `baseline_<task>`, LightGBM `gbdt_<task>`) and, with
    train.refit, of the MTL model as selected on valid before its refit (`mtl_selected`, reported beside the
    registered refit one, never gated), from the test feature file: name -> task -> float [N]. (The MTL model
    is scored as served: `served_mtl`.)"""
    from pipeline.features.dataset import from_frame
    from pipeline.training.gbdt import predict_gbdt
    from pipeline.training.train import load_trained, predict

    out: dict[str, dict[str, np.ndarray]] = {}
    names = [SELECTED_MODEL] + [baseline_name(t) for t in TASKS]
    for name in names:
        model_dir = run_dir / MODELS_DIR / name
        if not (model_dir / "meta.json").is_file():
            continue
        model, meta = load_trained(model_dir)
        tasks = tuple(meta["tasks"])
        probs = predict(model, from_frame(test, spec, tasks, where=str(model_dir)))
        out[name] = {t: np.asarray(probs[:, j], dtype=np.float64) for j, t in enumerate(tasks)}
    for name in (gbdt_name(t) for t in TASKS):
        if (run_dir / MODELS_DIR / name / "meta.json").is_file():
            out[name] = predict_gbdt(run_dir / MODELS_DIR / name, test)
    return out


def request_chunks(requests: np.ndarray, rows: int) -> list[np.ndarray]:
    """Row indices [n_c] of chunks of about `rows` rows that never split a request (`requests`: int codes [N]).

    A request goes whole into the chunk where it starts (its rows in request-code order), so a chunk holds
    at most `rows` + one request's rows; the request-level (list-context) features see the same rows."""
    if requests.size == 0:
        return []
    codes = np.unique(requests, return_inverse=True)[1].ravel()
    sizes = np.bincount(codes)
    chunk_of_request = (np.cumsum(sizes) - sizes) // max(rows, 1)
    row_chunk = chunk_of_request[codes]
    return [np.flatnonzero(row_chunk == c) for c in np.unique(row_chunk)]


def served_mtl(cfg: Config, run_dir: Path, raw: pl.DataFrame, date: str,
               chunk_rows: int = SERVE_CHUNK_ROWS) -> dict[str, np.ndarray]:
    """The run's MTL model on raw test rows, scored the way it will be served: the pyfunc's own code over the
    bundle built from this run folder (as registration builds it), history from this home's lake, new texts
    embedded with its encoder: task -> float [N] in the order of `raw`. Offline = online by construction.

    Scored in chunks of whole requests (`request_chunks`, about `chunk_rows` rows), as requests reach a
    server: memory follows the chunk, not the test window; every row gets the value it gets alone."""
    import tempfile
    from types import SimpleNamespace

    import torch

    from pipeline.io import read_json
    from pipeline.serving.pyfunc import MTLModel, build_bundle, serving_info, text_cache_dir
    from pipeline.serving.request import check_rows, to_polars

    model_dir = run_dir / MODELS_DIR / MTL_MODEL
    if not (model_dir / "meta.json").is_file():
        raise FeatureError(f"no trained MTL model in {model_dir} (run the train stage first)")
    layout, threads = Layout.of(cfg.home), torch.get_num_threads()
    tasks = read_json(model_dir / "meta.json")["tasks"]
    with tempfile.TemporaryDirectory(prefix="mtl-eval-bundle-") as tmp:
        bundle = build_bundle(run_dir, Path(tmp) / "bundle", layout.snapshot("users", date),
                              layout.snapshot("items", date), serving_info(cfg, tasks, run_id=run_dir.name,
                                                                           data_date=date))
        model = MTLModel(history_from=str(layout.home), text_cache=text_cache_dir(cfg))
        try:
            model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
            probs = {t: np.zeros(raw.height, np.float64) for t in tasks}
            for idx in request_chunks(group_codes(raw, "request_id"), chunk_rows):
                # through pandas, as a request reaches the pyfunc
                out = model.score_frame(check_rows(to_polars(raw[idx].to_pandas()), model.extras))
                for t in tasks:
                    probs[t][idx] = out[f"p_{t}"].to_numpy()
        finally:
            torch.set_num_threads(threads)  # the pyfunc sets its own thread count
    return probs


def raw_test_rows(cfg: Config, dates: list[str], test: pl.DataFrame) -> pl.DataFrame:
    """The test window's raw contract rows from the lake (impressions joined with the users/items snapshots of
    the last test day), in the order of the feature file's rows."""
    import polars as pl

    layout = Layout.of(cfg.home)
    parts = [pl.read_parquet(sorted(layout.impressions_dir(d).glob("*.parquet"))) for d in dates]
    raw = pl.concat(parts, how="diagonal_relaxed")
    for table, key in (("users", "user_id"), ("items", "item_id")):
        raw = raw.join(pl.read_parquet(layout.snapshot(table, dates[-1])), on=key, how="left", suffix=f"_{table}")
    ordered = test.select("event_id").join(raw, on="event_id", how="left", maintain_order="left")
    if ordered["ts"].null_count():
        raise FeatureError(f"{ordered['ts'].null_count()} test rows have no raw row in the lake for {dates}")
    return ordered


def champion_probs(cfg: Config, raw: pl.DataFrame) -> tuple[dict | None, dict[str, np.ndarray] | None, str | None]:
    """(champion info, task -> probabilities [N], error). No champion -> (None, None, None).

    A champion that cannot be reached, loaded or run on these rows is an error string, not an exception: the gate
    then fails (nothing moves) and the run's own metrics are still reported."""
    from pipeline.registry_score import champion_predictions

    try:
        found = champion_predictions(cfg, raw.to_pandas())
    except MTLError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    if found is None:
        return None, None, None
    import polars as pl

    info, frame = found
    frame = raw.select("event_id").join(pl.from_pandas(frame), on="event_id", how="left", maintain_order="left")
    tasks = [c[2:] for c in frame.columns if c.startswith("p_")]
    if not tasks or frame[f"p_{tasks[0]}"].null_count():
        return None, None, f"the champion answered {len(found[1])} rows without all of the {raw.height} asked"
    return info, {t: frame[f"p_{t}"].to_numpy().astype(np.float64) for t in tasks}, None


def model_metrics(test: pl.DataFrame, probs: dict[str, np.ndarray], fused: np.ndarray | None) -> dict[str, Any]:
    """task -> {"overall": summary, "by_surface": {surface: summary}, "calibration": bins} for one model."""
    out: dict[str, Any] = {}
    surface = test["surface"].to_numpy()
    users, requests = group_codes(test, "user_id"), group_codes(test, "request_id")
    for task, p in probs.items():
        y = test[TASKS[task].label].to_numpy().astype(np.float64)
        m = task_mask(test, task)
        parts = {"overall": m, **{s: m & (surface == s) for s in SURFACES}}
        done = {k: summary(y[sel], p[sel], users[sel], requests[sel], None if fused is None else fused[sel])
                for k, sel in parts.items()}
        out[task] = {"overall": done.pop("overall"), "by_surface": done,
                     "calibration": calibration_bins(y[m], p[m])}
    return out


def baselines_of(task: str, names) -> list[str]:
    """The models among `names` that are baselines of `task`: `baseline_<task>` (DNN) and `gbdt_<task>`."""
    return [n for n in names if n in (baseline_name(task), gbdt_name(task))]


def comparison(test: pl.DataFrame, preds: dict[str, dict[str, np.ndarray]], cfg: Config,
               champion: tuple[dict | None, dict[str, np.ndarray] | None, str | None],
               data_date: str | None = None) -> dict[str, Any]:
    """gate.compare on each task's sample space: MTL vs each of its baselines and vs the champion.

    The champion's info gains `tasks`, every task it serves (also those the challenger lacks)."""
    info, champ, error = champion
    mtl = preds[MTL_MODEL]
    masks = {t: task_mask(test, t) for t in mtl}
    req = group_codes(test, "request_id")
    if info is not None and champ is not None:
        info = {**info, "tasks": list(champ)}
    return gate.compare(
        labels={t: test[TASKS[t].label].to_numpy()[masks[t]] for t in mtl},
        requests={t: req[masks[t]] for t in mtl},
        mtl={t: p[masks[t]] for t, p in mtl.items()},
        baselines={t: {n: preds[n][t][masks[t]] for n in baselines_of(t, preds) if t in preds[n]} for t in mtl},
        champion=None if champ is None else {t: champ[t][masks[t]] for t in mtl if t in champ},
        champion_info=info, cfg=cfg.gate, champion_error=error, data_date=data_date)


def _write_predictions(path: Path, test: pl.DataFrame, probs: dict[str, np.ndarray], fused) -> None:
    import polars as pl

    frame = test.select(ID_COLS).with_columns([pl.Series(f"p_{t}", p) for t, p in probs.items()])
    if fused is not None:
        frame = frame.with_columns(pl.Series("score", fused))
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def _add_model(cfg: Config, run_dir: Path, report: dict, name: str, probs: dict[str, np.ndarray],
               test: pl.DataFrame, price: np.ndarray | None) -> None:
    """Metrics and predictions file of one model into `report` (the fused score for MTL and champion)."""
    exps = effective_exponents(cfg.serving.score_exponents, list(probs))
    fused = fused_score(probs, price, exps) if name in (MTL_MODEL, CHAMPION) else None
    report["models"][name] = model_metrics(test, probs, fused)
    rel = f"predictions/{name}.parquet"
    _write_predictions(run_dir / rel, test, probs, fused)
    report["predictions"][name] = rel


def _finish(cfg: Config, run_dir: Path, report: dict, test: pl.DataFrame, preds: dict, champ: tuple) -> dict:
    report["comparison"] = comparison(test, preds, cfg, champ, data_date=report["date"])
    report["seesaw"] = gate.seesaw(report["comparison"])
    report["gate"] = gate.decide(report["comparison"], cfg.gate).to_dict()
    write_json(run_dir / EVALUATION_FILE, report)
    return report


def evaluate(cfg: Config, run_id: str) -> dict[str, Any]:
    """Score the test window once with every model of the run and the champion; write evaluation.json."""
    import polars as pl

    from pipeline.features.dataset import read_spec

    run_dir = Layout.of(cfg.home).run_dir(run_id)
    spec = read_spec(run_dir)
    test_path = run_dir / FEATURES_DIR / "test.parquet"
    if not test_path.is_file():
        raise FeatureError(f"test feature file not found: {test_path}")
    test = pl.read_parquet(test_path)
    if test.height == 0:
        raise FeatureError(f"{test_path} has no rows: nothing to evaluate")
    dates = [str(d) for d in spec["splits"]["test"]["dates"]]
    raw = raw_test_rows(cfg, dates, test)
    preds = {MTL_MODEL: served_mtl(cfg, run_dir, raw, dates[-1]), **predict_models(run_dir, test, spec)}
    champ = champion_probs(cfg, raw)
    tasks = list(preds[MTL_MODEL])
    price = raw[PRICE].to_numpy() if PRICE in raw.columns else None
    report: dict[str, Any] = {"run_id": run_id, "date": dates[-1], "tasks": tasks, "models": {},
                              "test": {"dates": dates, "rows": test.height,
                                       "label_rates": spec["splits"]["test"].get("label_rates", {})},
                              "predictions": {}, "evaluated_at": dt.datetime.now(dt.UTC).isoformat(),
                              "score_formula": formula(effective_exponents(cfg.serving.score_exponents, tasks))}
    for name, probs in preds.items():
        _add_model(cfg, run_dir, report, name, probs, test, price)
    if champ[1] is not None:
        _add_model(cfg, run_dir, report, CHAMPION, champ[1], test, price)
    _finish(cfg, run_dir, report, test, preds, champ)
    return {"run_id": run_id, "report": str(run_dir / EVALUATION_FILE)}


def refresh_champion(cfg: Config, run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Re-score the current champion on a saved run's test rows (it moved, or was unreachable, since
    evaluation) and rewrite the comparison, seesaw and gate; the run's own predictions are reused as saved."""
    import polars as pl

    frames = {n: pl.read_parquet(run_dir / rel) for n, rel in report["predictions"].items() if n != CHAMPION}
    test = frames[MTL_MODEL]
    preds = {n: {c[2:]: f[c].to_numpy().astype(np.float64) for c in f.columns if c.startswith("p_")}
             for n, f in frames.items()}
    report["models"].pop(CHAMPION, None)
    report["predictions"].pop(CHAMPION, None)
    try:
        raw = raw_test_rows(cfg, report["test"]["dates"], test)
        champ = champion_probs(cfg, raw)
    except MTLError as exc:  # e.g. the lake of this home does not hold the saved run's days
        raw, champ = None, (None, None, f"cannot rebuild the test rows: {exc}")
    if champ[1] is not None:
        price = raw[PRICE].to_numpy() if PRICE in raw.columns else None
        _add_model(cfg, run_dir, report, CHAMPION, champ[1], test, price)
    return _finish(cfg, run_dir, report, test, preds, champ)
