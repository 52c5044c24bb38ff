"""A model trained on declared extra columns (the vendored Hillstrom sample with the importer's suggested
overrides) scores through `mtl score` and `mlflow models serve`; a request without them is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_serving import _free_port, _models_serve, _post, _stop, _wait_up

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hillstrom" / "hillstrom.csv"
MODEL = "models:/ecommerce-mtl/1"
EXTRAS = ("recency", "history", "history_segment", "channel", "zip_code", "mens", "womens", "newbie")


def _overrides(suggested: list[str], fast: tuple[str, ...]) -> list[str]:
    """The importer's overrides, with train_days cut so that two days follow the run's date."""
    return [*fast, *[o for o in suggested if not o.startswith("data.train_days=")], "data.train_days=10"]


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory, fast_overrides_session):
    """`mtl import hillstrom` + `mtl run` of the third-to-last day: (home, landing, dates, --set args)."""
    from pipeline import cli
    from pipeline.data.adapters import import_dataset

    root = tmp_path_factory.mktemp("hillstrom")
    got = import_dataset("hillstrom", FIXTURE, root / "landing")
    sets = [a for o in _overrides(got["suggested_overrides"], fast_overrides_session) for a in ("--set", o)]
    home = root / "home"
    argv = ["run", "--landing", got["landing"], "--date", got["dates"][-3], "--home", str(home), *sets]
    assert cli.main(argv) == 0
    registration = json.loads((home / "runs" / got["dates"][-3] / "registration.json").read_text())
    assert registration["version"] == 1
    return home, Path(got["landing"]), got["dates"], sets


def test_signature_and_example_carry_the_declared_extras(hillstrom):
    import mlflow

    from pipeline.registry import _set_uri

    home, *_ = hillstrom
    _set_uri(mlflow, f"sqlite:///{home / 'mlflow.db'}")  # leaves os.environ as it was
    info = mlflow.models.get_model_info(MODEL)
    inputs = {c.name: c for c in info.signature.inputs.inputs}
    for name in EXTRAS:
        assert name in inputs and inputs[name].required, name
    assert inputs["channel"].type.to_numpy().kind in "OU"  # strings are typed
    for label in ("clicked", "carted", "purchased"):
        assert not inputs[label].required


def test_mtl_score_of_the_next_day(hillstrom, tmp_path, capsys):
    from pipeline import cli
    from pipeline.evaluation.metrics import auc

    home, landing, dates, sets = hillstrom
    out = tmp_path / "next.parquet"
    capsys.readouterr()
    argv = ["score", "--model", MODEL, "--landing", str(landing), "--date", dates[-2], "--out", str(out),
            "--home", str(home), *sets]
    assert cli.main(argv) == 0, capsys.readouterr().err
    scores = pl.read_parquet(out)
    day = pl.read_parquet(sorted((landing / "impressions" / f"dt={dates[-2]}").glob("*.parquet")))
    joined = day.join(scores, on="event_id", how="left")
    assert scores.height == day.height and joined["p_ctr"].null_count() == 0
    # visits are predictable from the customer's attributes: the extras carry real signal through serving
    assert auc(joined["clicked"].to_numpy(), joined["p_ctr"].to_numpy()) > 0.5


def _records(landing: Path, day: str, n: int) -> list[dict]:
    """Raw rows of `day` as a caller sends them: impressions + users + items with the extras, ISO times, no labels."""
    from pipeline.serving.score import read_landing_day

    rows = read_landing_day(landing, day).head(n).drop(["clicked", "carted", "purchased"])
    times = [c for c, t in rows.schema.items() if isinstance(t, pl.Datetime)]
    return rows.with_columns(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ") for c in times).to_dicts()


def test_models_serve_takes_the_extras_and_names_missing_ones(hillstrom, tmp_path):
    home, landing, dates, _ = hillstrom
    port, log = _free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _models_serve(home, port, log, MODEL)
    try:
        _wait_up(proc, url, log)
        records = _records(landing, dates[-1], 10)
        assert set(EXTRAS) <= set(records[0])
        status, body = _post(url + "/invocations", {"dataframe_records": records})
        assert status == 200, body
        preds = json.loads(body)["predictions"]
        assert [p["event_id"] for p in preds] == [r["event_id"] for r in records]
        assert all(0.0 <= p["p_ctr"] <= 1.0 for p in preds)
        lacking = [{k: v for k, v in r.items() if k not in ("recency", "channel")} for r in records[:2]]
        status, body = _post(url + "/invocations", {"dataframe_records": lacking})
        assert status == 400, body
        assert "recency" in body and "channel" in body and "Traceback" not in body
    finally:
        _stop(proc)


def test_a_scoring_request_without_a_declared_column_is_a_named_error(hillstrom):
    from pipeline.config import load_config
    from pipeline.errors import DataValidationError
    from pipeline.registry_score import predict_isolated
    from pipeline.serving.score import read_landing_day

    home, landing, dates, sets = hillstrom
    cfg = load_config(overrides=sets[1::2], home=home)
    rows = read_landing_day(landing, dates[-2]).head(5).drop("history").to_pandas()
    with pytest.raises(DataValidationError, match="history"):
        predict_isolated(cfg, MODEL, rows)


def test_the_next_nights_champion_rescore_works_for_such_a_model(hillstrom):
    """Version 1 as champion (moved by hand), then the next day's run: evaluation re-scores it on the new test
    rows, extras and all (last in this file: it adds a version to the shared home)."""
    from pipeline import cli

    home, landing, dates, sets = hillstrom
    assert cli.main(["promote", "--version", "1", "--why", "test: champion re-score", "--home", str(home), *sets]) == 0
    assert cli.main(["run", "--landing", str(landing), "--date", dates[-2], "--home", str(home), *sets]) == 0
    report = json.loads((home / "runs" / dates[-2] / "evaluation.json").read_text())
    assert "champion" in report["models"], report["comparison"]
    champion = pl.read_parquet(home / "runs" / dates[-2] / report["predictions"]["champion"])
    assert champion.height == report["test"]["rows"] and champion["p_ctr"].null_count() == 0
