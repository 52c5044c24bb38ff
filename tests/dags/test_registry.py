"""register/promote/rollback on a real MLflow SQLite store, over real tiny runs of the last two days."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.evaluation import metrics

DATE, PREVIOUS = "2026-01-10", "2026-01-09"  # the last two days of tiny_landing
NAME = "ecommerce-mtl"

pytestmark = pytest.mark.slow



@pytest.fixture
def home(tmp_path, trained_home) -> Path:
    """A private copy of the trained home, with an empty registry."""
    dst = tmp_path / "home"
    shutil.copytree(trained_home, dst)
    return dst


def config(home: Path, fast, *extra: str):
    return load_config(overrides=[*fast, *extra], home=home)


def register_by_hand(cfg, run_id: str) -> dict:
    """Register a run and make it champion with `mtl promote` (what an operator does), whatever the gate says:
    for tests that need a champion, not a gate decision (the trained home's 1-epoch models trail their
    baselines, so the real gate refuses them)."""
    from pipeline.registry import promote
    from pipeline.release import register

    out = register(cfg, run_id=run_id)
    promote(cfg, out["version"], why="test set-up", who="tests")
    return out


def client(home: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home.resolve() / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def aliases(home: Path) -> dict[str, int]:
    return {k: int(v) for k, v in client(home).get_registered_model(NAME).aliases.items()}


@pytest.fixture(scope="module")
def scenario_home(tmp_path_factory, trained_home, tiny_landing, fast_overrides_session) -> Path:
    """The trained home (lake of 2026-01-01..10) with every scenario run trained, nothing registered."""
    from gate_scenarios import CONCURRENT, SCENARIOS, train

    home = tmp_path_factory.mktemp("gate") / "home"
    shutil.copytree(trained_home, home)
    for _, kind, date in SCENARIOS:
        if not (home / "runs" / f"{kind}-{date}").exists():
            train(home, fast_overrides_session, kind, date, tiny_landing)
    for kind, date in CONCURRENT:
        if not (home / "runs" / f"{kind}-{date}").exists():
            train(home, fast_overrides_session, kind, date, tiny_landing)
    return home


def _fails(row: dict, prefix: str) -> list[str]:
    return [r for r in row["reasons"] if r.startswith(prefix) and r.endswith("FAIL")]


def test_gate_scenarios_on_real_models(scenario_home, tmp_path, fast_overrides_session):
    """Weak first version, ctr-only challenger, clearly stronger, backfill, degraded: in that order."""
    from gate_scenarios import SCENARIOS, release

    home = tmp_path / "home"
    shutil.copytree(scenario_home, home)
    fast = fast_overrides_session
    weak, ctr_only, strong, backfill, degraded = (release(home, fast, kind, date) for _, kind, date in SCENARIOS)

    assert (weak["version"], weak["before"], weak["after"]) == (1, None, 1), weak["reasons"]
    assert weak["reasons"][0].startswith("first version")

    assert (ctr_only["version"], ctr_only["after"], ctr_only["moved"]) == (2, 1, False), ctr_only["reasons"]
    (coverage,) = _fails(ctr_only, "coverage: champion v1 serves ctr, cart, ctcvr, cvr")
    assert "lacks cart, ctcvr, cvr" in coverage
    assert not _fails(ctr_only, "ctr vs champion v1")  # better on ctr: coverage alone refuses it

    assert (strong["version"], strong["before"], strong["after"]) == (3, 1, 3), strong["reasons"]
    lines = [r for r in strong["reasons"] if " vs champion v1: " in r]
    assert len(lines) == 4 and all(r.endswith("ok") for r in lines), strong["reasons"]

    assert (backfill["version"], backfill["before"], backfill["after"]) == (4, 3, 3), backfill["reasons"]
    assert _fails(backfill, "data date 2026-01-08 vs champion v3's 2026-01-09: not later")

    assert (degraded["version"], degraded["before"], degraded["after"]) == (5, 3, 3), degraded["reasons"]
    assert len(_fails(degraded, "")) >= 1 and all(" vs champion v3: " in r for r in _fails(degraded, "")), \
        degraded["reasons"]
    assert len([r for r in degraded["reasons"] if " vs champion v3: " in r and r.endswith("FAIL")]) >= 2

    c = client(home)
    assert aliases(home) == {"champion": 3, "challenger": 5}
    tags = {v: c.get_model_version(NAME, str(v)).tags for v in range(1, 6)}
    assert [tags[v]["compared_with"] for v in range(1, 6)] == ["none", "1", "1", "3", "3"]
    assert tags[3]["champion_from_gate"] == "true" and tags[3]["previous_champion"] == "1"
    assert [tags[v]["gate"] for v in range(1, 6)] == ["passed", "failed", "passed", "failed", "failed"]
    card = c.get_model_version(NAME, "3").description
    assert "**passed**; champion moved to this version." in card and "with champion version 1" in card
    assert "challenger - reference" in card
    assert "**failed**; champion not moved." in c.get_model_version(NAME, "5").description
    # The CLI path of the same step: a refusal exits 2 naming the failed lines; nothing moves.
    from pipeline import cli

    argv = ["promote-champion", "--home", str(home), "--run-id", degraded["run"],
            *[a for o in [*fast, "train.baselines=false", "train.gbdt_baselines=false"] for a in ("--set", o)]]
    assert cli.main(argv) == 2 and aliases(home)["champion"] == 3


def test_two_dates_registering_at_once_end_consistent(scenario_home, tmp_path, fast_overrides_session):
    """Two processes evaluate, register and promote 2026-01-09 and 2026-01-10 at the same time over a weak
    champion. Whatever the interleaving: each version's gate lines name the champion it was last judged
    against (`compared_with`), a moved champion replaced exactly that version, and the alias ends on the last."""
    from gate_scenarios import CONCURRENT, release, release_in_processes, rows_of

    home = tmp_path / "home"
    shutil.copytree(scenario_home, home)
    fast = fast_overrides_session
    assert release(home, fast, "weak", "2026-01-08")["after"] == 1
    rows = rows_of(release_in_processes(home, fast, CONCURRENT))
    assert sorted(r["version"] for r in rows) == [2, 3]
    c = client(home)
    moved = []
    for r in rows:
        reg = json.loads((home / "runs" / r["run"] / "registration.json").read_text())
        tags = c.get_model_version(NAME, str(r["version"])).tags
        compared = reg["compared_with"]
        assert tags["compared_with"] == str(compared) and compared in (1, 2, 3)
        named = {m for ln in r["reasons"] for m in re.findall(r"champion v(\d+)", ln)}
        assert named == {str(compared)}, r["reasons"]
        if r["moved"]:
            assert reg["champion"] is True and tags["previous_champion"] == str(compared)
            moved.append(r)
    assert moved, rows  # the 2026-01-10 run is later than the weak champion and clearly stronger: one moves
    final = aliases(home)["champion"]
    chain, v = [], final  # champion history through previous_champion, back to the weak version 1
    while v != 1:
        chain.append(v)
        v = int(c.get_model_version(NAME, str(v)).tags["previous_champion"])
    assert sorted(chain) == sorted(r["version"] for r in moved)
    assert not list((home / "locks").glob("*.lock"))


def test_rescoring_hand_moves_and_a_rerun_of_the_champions_day(home, fast_overrides_session):
    """A champion set by hand is re-scored for the next day; promote/rollback; a rerun of its day never moves it."""
    from pipeline.errors import GateRefusedError
    from pipeline.registry import promote, rollback
    from pipeline.release import promote_champion, register

    cfg = config(home, fast_overrides_session)
    first = register_by_hand(cfg, PREVIOUS)
    assert first["version"] == 1 and aliases(home) == {"champion": 1, "challenger": 1}
    saved = json.loads((home / "runs" / PREVIOUS / "registration.json").read_text())
    assert saved["version"] == 1
    second = register(cfg, run_id=DATE)
    assert second["rerun_of"] is None and second["compared_with"] == 1
    report = json.loads((home / "runs" / DATE / "evaluation.json").read_text())
    assert report["comparison"]["champion"]["version"] == 1  # re-scored: the champion moved since evaluation
    champ = pl.read_parquet(home / "runs" / DATE / report["predictions"]["champion"])
    assert report["comparison"]["tasks"]["ctr"]["champion"] == pytest.approx(
        metrics.auc(champ["clicked"].to_numpy(), champ["p_ctr"].to_numpy()), abs=1e-12)
    card = client(home).get_model_version(NAME, "2").description
    assert "with champion version 1" in card and "## Gate" in card

    # Hand moves: promote needs no gate, rollback returns to the version it replaced.
    moved = promote(cfg, 2, why="hand check", who="tester")
    assert (moved["champion"], moved["previous"]) == (2, 1) and aliases(home)["champion"] == 2
    assert client(home).get_model_version(NAME, "2").tags["promoted_by"] == "tester"
    back = rollback(cfg, why="bad numbers", who="tester")
    assert back["champion"] == 1 and aliases(home)["champion"] == 1
    assert client(home).get_model_version(NAME, "1").tags["rolled_back_why"] == "bad numbers"
    from pipeline.errors import RegistryError

    with pytest.raises(RegistryError, match="no version 99"):
        promote(cfg, 99, why="typo")

    # A rerun of PREVIOUS (the champion's own day): refused by the data-date rule, whatever its AUCs.
    third = register(cfg, run_id=PREVIOUS)
    assert third["rerun_of"] == 1
    with pytest.raises(GateRefusedError, match="not later"):
        promote_champion(cfg, run_id=PREVIOUS)
    assert aliases(home) == {"champion": 1, "challenger": 3}
    tags = client(home).get_model_version(NAME, "3").tags
    assert tags["rerun_of"] == "1" and tags["gate"] == "failed" and tags["data_date"] == PREVIOUS


def test_version_is_worth_browsing(home, fast_overrides_session):
    """Model card, plots, report, Data Docs, signature and input example are all on the version."""
    import mlflow


    out = register_by_hand(config(home, fast_overrides_session), DATE)
    c = client(home)
    version = c.get_model_version(NAME, str(out["version"]))
    card = version.description
    for part in ("# ecommerce-mtl version 1", "## Data", "## Test metrics", "| ctr |", "## Gate", "## Lineage",
                 "dt=2026-01-10", "config hash", "first version", "## Baselines", "`gbdt_ctr`",
                 "## Data Docs", "validation/data_docs/index.html"):
        assert part in card, part
    files = {a.path for a in c.list_artifacts(out["mlflow_run_id"])}
    plots = {a.path for a in c.list_artifacts(out["mlflow_run_id"], "plots")}
    assert {"evaluation.json", "plots", "validation"} <= files
    assert {"plots/roc.png", "plots/calibration.png", "plots/auc_bars.png", "plots/loss_curves.png"} <= plots
    run = c.get_run(out["mlflow_run_id"])
    assert run.data.params["model.name"] == "mmoe" and "test/ctr/auc" in run.data.metrics
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    names = [col.name for col in info.signature.inputs.inputs]
    assert {"event_id", "request_id", "ts", "user_id", "item_id", "surface", "position"} <= set(names)
    assert [col.name for col in info.signature.outputs.inputs] == ["event_id", "p_ctr", "p_cart", "p_ctcvr",
                                                                   "p_cvr", "score"]
    # The version carries its own copy of the code, so it still loads after the code base moves on.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(home / "dl")))
    assert info.flavors["python_function"]["code"] == "code"
    assert (local / "code" / "pipeline" / "serving" / "pyfunc.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    assert (local / "artifacts" / "bundle" / "features" / "state").is_dir()
    assert not list(local.rglob("*.pkl"))  # built from code on load: no pickle to trust


def test_mlflow_runs_as_an_ml_user_expects(home, fast_overrides_session):
    """Experiment kind for MLflow 3's UI, per-epoch histories (step = epoch) from meta.json, grouped metric
    names, and each baseline as a child run with the same names (so the compare view lines them up)."""
    from pipeline.release import register

    out = register(config(home, fast_overrides_session), run_id=DATE)
    c = client(home)
    run = c.get_run(out["mlflow_run_id"])
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    report = json.loads((home / "runs" / DATE / "evaluation.json").read_text())
    meta = json.loads((home / "runs" / DATE / "models" / "mtl" / "meta.json").read_text())
    for name, want in (("valid/ctr/auc", [(e["epoch"], e["valid"]["auc"]["ctr"]) for e in meta["epochs"]]),
                       ("train/cvr/loss", [(e["epoch"], e["train_loss"]["cvr"]) for e in meta["epochs"]])):
        got = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, name))
        assert [s for s, _ in got] == [s for s, _ in want] and want, name
        assert np.allclose([v for _, v in got], [v for _, v in want]), name
    assert run.data.metrics["test/ctr/auc"] == pytest.approx(report["models"]["mtl"]["ctr"]["overall"]["auc"])
    assert not [k for k in run.data.metrics if k.startswith("mtl.")], "flat names are gone"
    reasons = run.data.tags["gate_reasons"]  # one line in the UI, however the gate decided
    assert "\n" not in reasons and (" ok" in reasons or "FAIL" in reasons)
    assert "| ctr |" in run.data.tags["mlflow.note.content"]  # the comparison table is the run's description
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    by_model = {r.data.tags["model"]: r for r in children}
    assert {f"baseline_{t}" for t in ("ctr", "cart", "ctcvr", "cvr")} <= set(by_model)
    child = by_model["baseline_ctr"]
    assert child.data.metrics["test/ctr/auc"] == pytest.approx(
        report["models"]["baseline_ctr"]["ctr"]["overall"]["auc"])
    base_meta = json.loads((home / "runs" / DATE / "models" / "baseline_ctr" / "meta.json").read_text())
    history = c.get_metric_history(child.info.run_id, "valid/ctr/auc")
    assert [m.step for m in history] == [e["epoch"] for e in base_meta["epochs"]]


def test_pyfunc_scores_raw_rows_like_the_trainer(home, fast_overrides_session):
    """Serving rebuilds features from raw rows with its bundle: same probabilities as evaluation's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.evaluation.evaluate import raw_test_rows

    cfg = config(home, fast_overrides_session)
    register_by_hand(cfg, DATE)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    saved = pl.read_parquet(home / "runs" / DATE / "predictions" / "mtl.parquet")
    raw = raw_test_rows(cfg, [DATE], saved)
    out = model.predict(raw.to_pandas())
    assert list(out.columns) == ["event_id", "p_ctr", "p_cart", "p_ctcvr", "p_cvr", "score"]
    assert out["event_id"].tolist() == saved["event_id"].to_list()
    for task in ("ctr", "cart", "ctcvr", "cvr"):
        assert np.allclose(out[f"p_{task}"].to_numpy(), saved[f"p_{task}"].to_numpy(), atol=1e-5)
    # Impressions alone: users and items come from the snapshots in the bundle.
    bare = raw.select(["event_id", "request_id", "ts", "user_id", "item_id", "surface", "query", "position"])
    again = model.predict(bare.head(50).to_pandas())
    assert np.allclose(again["p_ctr"].to_numpy(), out["p_ctr"].to_numpy()[:50], atol=1e-5)
    # Cold start: unknown users and items fall to the reserved index, they still get scores.
    cold = bare.head(5).with_columns(pl.lit("new-user").alias("user_id"), pl.lit("new-item").alias("item_id"))
    probs = model.predict(cold.to_pandas())[["p_ctr", "p_cvr", "score"]].to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    bad = bare.head(3).with_columns(pl.Series("surface", ["recommend", "shop", "ad"]))
    with pytest.raises(MlflowException, match=r"surface.*row 1") as err:
        model.predict(bad.to_pandas())
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    mixed = bare.head(2).to_pandas()
    mixed["position"] = mixed["position"].astype(object)
    mixed.loc[1, "position"] = "second"
    with pytest.raises(MlflowException, match="position") as err:
        model.predict(mixed)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    late = bare.head(2).with_columns(pl.Series("ts", ["2026-01-10T08:00:00Z", "not a time"]))
    with pytest.raises(MlflowException, match=r"ts.*not convertible.*row 1"):
        model.predict(late.to_pandas())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_loses_nothing_and_registers_later(home, fast_overrides_session):
    from pipeline.errors import RegistryError
    from pipeline.release import register

    run_dir = home / "runs" / DATE
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.json")}
    uri = f"http://127.0.0.1:{_closed_port()}"
    down = config(home, fast_overrides_session, f"registry.tracking_uri={uri}", "registry.connect_retries=2",
                  "registry.retry_wait_s=0.05")
    with pytest.raises(RegistryError, match=uri.replace(".", r"\.")):
        register(down, run_id=DATE)
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.json")} == before
    assert not (run_dir / "registration.json").exists()
    assert client(home).search_registered_models() == []

    later = register(config(home, fast_overrides_session), run_dir=run_dir)
    assert later["version"] == 1 and later["run_id"] == DATE
    assert aliases(home)["challenger"] == 1


def test_incomplete_run_folder_is_refused_before_mlflow_is_touched(home, fast_overrides_session):
    from pipeline.errors import RegistryError
    from pipeline.release import register

    shutil.rmtree(home / "runs" / DATE / "models" / "mtl")
    with pytest.raises(RegistryError, match=r"missing .*models/mtl/meta\.json"):
        register(config(home, fast_overrides_session), run_id=DATE)
    assert client(home).search_registered_models() == []
    assert client(home).search_runs([e.experiment_id for e in client(home).search_experiments()]) == []
    with pytest.raises(RegistryError, match="evaluation.json is missing"):
        register(config(home, fast_overrides_session), run_dir=home / "runs" / "nothing-here")


def test_a_champion_that_cannot_be_rescored_blocks_the_gate(home, fast_overrides_session):
    """Its artifacts are gone: evaluation still reports the run, the gate fails saying why, nothing moves."""
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.release import register

    cfg = config(home, fast_overrides_session)
    assert register_by_hand(cfg, PREVIOUS)["version"] == 1
    shutil.rmtree(home / "mlartifacts" / "models")  # the logged model's files
    report = json.loads(Path(evaluate(cfg, DATE)["report"]).read_text())
    assert "cannot load model" in report["comparison"]["champion_error"]
    assert report["models"]["mtl"]["ctr"]["overall"]["rows"] > 0 and "champion" not in report["models"]
    assert report["gate"]["passed"] is False and "could not be re-scored" in report["gate"]["reasons"][0]
    out = register(cfg, run_id=DATE)
    assert (out["gate"], out["eligible"]) == ("failed", False)
    from pipeline.errors import GateRefusedError
    from pipeline.release import promote_champion

    with pytest.raises(GateRefusedError, match="could not be re-scored"):
        promote_champion(cfg, run_id=DATE)
    assert aliases(home) == {"champion": 1, "challenger": 2}
