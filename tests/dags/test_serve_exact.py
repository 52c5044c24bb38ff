"""Offline = online with the text tower on: the evaluation's test-day probabilities are what `mtl score` of the
registered version gives on that day, and a title never seen in training reaches the text tower as its own
encoder vector (not the reserved unknown row), also under `mlflow models serve` with an empty text cache."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from test_serving import _free_port, _models_serve, _post, _records, _stop, _wait_up

pytestmark = pytest.mark.slow
DATE = "2026-01-10"
MODEL = "models:/ecommerce-mtl/1"
TASKS = ("ctr", "cart", "ctcvr", "cvr")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_landing, fast_overrides_session):
    """A real run (ingest .. register, the gate as configured) of DATE with text.enabled=true: (cfg, home)."""
    from pipeline.config import load_config
    from pipeline.run import run_all

    home = tmp_path_factory.mktemp("text-run") / "home"
    over = [o for o in fast_overrides_session if not o.startswith("text.")] + ["text.enabled=true"]
    cfg = load_config(overrides=over, home=home)
    run_all(cfg, tiny_landing, DATE)
    assert json.loads((home / "runs" / DATE / "registration.json").read_text())["version"] == 1
    return cfg, home


def test_evaluation_equals_mtl_score_of_the_registered_model(text_run, tiny_landing, tmp_path):
    from pipeline.serving.score import score

    cfg, home = text_run
    spec = json.loads((home / "runs" / DATE / "features" / "feature_spec.json").read_text())
    assert spec["text"]["enabled"] and spec["text"]["dim"] == 384
    score(cfg, MODEL, tiny_landing, DATE, tmp_path / "scores.parquet")
    served = pl.read_parquet(tmp_path / "scores.parquet")
    offline = pl.read_parquet(home / "runs" / DATE / "predictions" / "mtl.parquet")
    both = offline.join(served, on="event_id", how="inner", suffix="_served")
    assert both.height == offline.height == served.height
    diff = max(float(np.abs(both[f"p_{t}"].to_numpy() - both[f"p_{t}_served"].to_numpy()).max()) for t in TASKS)
    print(f"\nmax |evaluation - mtl score| over {both.height} test rows x {len(TASKS)} tasks: {diff:.3g}")
    assert diff <= 1e-6
    report = json.loads((home / "runs" / DATE / "evaluation.json").read_text())
    assert report["models"]["mtl"]["ctr"]["overall"]["rows"] == offline.height


def _reworded(frame: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    title = "Reworded: " + frame["title"][0] + " (new listing, never in training)"
    return frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(title))
                              .otherwise(pl.col("title")).alias("title")), title


def test_a_title_never_in_training_reaches_the_tower_as_its_encoder_vector(text_run):
    import mlflow

    from pipeline.evaluation.evaluate import raw_test_rows
    from pipeline.features.text import embed
    from pipeline.registry import _set_uri

    cfg, home = text_run
    _set_uri(mlflow, f"sqlite:///{home / 'mlflow.db'}")  # leaves os.environ as it was
    pyfunc = mlflow.pyfunc.load_model(MODEL)
    served = pyfunc.unwrap_python_model()
    saved = pl.read_parquet(home / "runs" / DATE / "predictions" / "mtl.parquet").head(6)
    raw, title = _reworded(raw_test_rows(cfg, [DATE], saved))
    stored = np.load(home / "runs" / DATE / "features" / "state" / "text_table.npy")
    known = {t for t in pl.read_parquet(home / "runs" / DATE / "features" / "state" / "text_index.parquet")["text"]}
    assert title not in known
    seen = []
    hook = served.model.features.text_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        out = pyfunc.predict(raw.to_pandas())
    finally:
        hook.remove()
    tower_in = seen[-1].detach().numpy()  # [B, X, dim]: X = (title, query)
    want = embed([title], cfg.text, progress=False)[0]
    assert np.abs(tower_in[0, 0] - want).max() < 1e-5 and np.abs(want).max() > 0
    # The other rows' titles are the stored rows, exactly.
    rows = pl.read_parquet(home / "runs" / DATE / "features" / "test.parquet").head(6)["text__title"].to_numpy()
    assert np.array_equal(tower_in[1:, 0], stored[rows[1:]])
    # The new title changes the answer only for its own row.
    before = saved.select(f"p_{t}" for t in TASKS).to_numpy()
    after = out[[f"p_{t}" for t in TASKS]].to_numpy()
    assert np.abs(after[1:] - before[1:]).max() < 1e-6


def test_models_serve_embeds_new_titles_with_an_empty_cache(text_run, tiny_landing, tmp_path):
    _, home = text_run
    port, log, cache = _free_port(), tmp_path / "serve.log", tmp_path / "empty-cache"
    url = f"http://127.0.0.1:{port}"
    proc = _models_serve(home, port, log, MODEL, MTL_TEXT_CACHE=str(cache))
    try:
        _wait_up(proc, url, log)
        records = _records(tiny_landing, 5)
        records[0]["title"] = "A reworded title the model has never seen"
        status, body = _post(url + "/invocations", {"dataframe_records": records})
        assert status == 200, body
        assert len(json.loads(body)["predictions"]) == 5
        assert list(cache.rglob("shard-*.npz")), "the new title's vector was not cached"
    finally:
        _stop(proc)
