"""Nightly multi-task retraining: landing day D -> lake -> features -> MTL + baselines -> evaluation -> registry.

This file is a table of contents: every task calls one `pipeline` function and passes paths, dates and run ids.
Parse time does no I/O beyond reading $MTL_CONFIG (when set) and imports nothing heavy: torch, polars, GX and
MLflow are imported inside the tasks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipeline import params as form

log = logging.getLogger(__name__)

DAG_ID = "mtl_retrain"
POOL = "gpu"  # size 1 by default: training tasks take turns instead of oversubscribing a small machine
# Celery queue of the training tasks: "gpu" sends them to the GPU worker of docker/compose.yaml.
TRAIN_QUEUE = os.environ.get("MTL_TRAIN_QUEUE", "default")
# A hard cap only: how long a scheduled run waits is the form's `landing_wait_hours` (manual runs never wait).
SENSOR_TIMEOUT_S = int(form.MAX_WAIT_HOURS * 3600)
# Several runs may be active: a scheduled slot waiting for its landing day must not hold manual runs. Two
# runs of one date never interleave (the per-date lock), and training takes turns in the `gpu` pool.
MAX_ACTIVE_RUNS = 3
# The lake partition this DAG publishes; downstream DAGs can schedule on it.
LAKE = Asset(name="mtl_lake_impressions", uri="mtl://lake/impressions", group="mtl")

DAG_DOC = """
### Nightly multi-task retraining

Runs at 02:00 UTC for the previous day (the logical date D, `ds`, or the form's **date**). Steps:

1. **check_config**: builds the run's config from the form (validated like `mtl --set`; bad values fail at once).
2. **take_lock**: per-date lease in `<home>/locks/`, so this date never runs twice at once (CLI or Airflow).
3. **wait_for_landing**: checks for `<landing>/impressions/dt=D/_SUCCESS`. A scheduled run waits for it (reschedule
   mode, `landing_wait_hours`) and is then *skipped*; a manual run or backfill fails at once when it is missing.
4. **ingest** -> **validate** (Great Expectations + contract rules; publishes the day into the lake, Asset
   `mtl_lake_impressions`) -> **aggregate** (one mapped task per lake day the features read: its history
   count tables, built once) -> **features** -> **train_mtl** and **train_baseline** (one mapped task per task,
   pool `gpu`) -> **evaluate** -> **register** (MLflow version + `challenger`; skipped on dry run) -> **promote**
   (moves `champion` when the gate passes; skipped, with the gate's reasons in its log, when it refuses).
5. **release_lock** (teardown) always runs.

**Re-run a day**: Trigger, set **date** (e.g. 2026-01-15), keep the logical date the form offers. Each run of a
date replaces that date's run folder and registers a new version (tag `rerun_of`); the champion moves at most
once per date. The evaluate task's log shows the comparison table; register's log shows MLflow links.

Data errors fail fast without retries; the failed task writes `<home>/runs/<D>/run_summary.json`.
Same functions as the CLI: `mtl run --landing DIR --date D`.
"""


def _home() -> str:
    return str(os.path.abspath(os.environ.get("MTL_HOME", ".mtl")))


CONFIG_FILE = "config.json"


def _cfg(info: dict[str, Any]):
    """The run's config as `check_config` resolved it (runs/<run_id>/config.json), never re-read from the form or
    $MTL_CONFIG: a config file edited mid-run must not change the run halfway. The file's hash is checked."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    cfg = load_config(info["config"], home=info["home"])
    if cfg.hash() != info["config_hash"]:
        raise ConfigError(f"{info['config']} changed since check_config (hash {cfg.hash()}, the run started with "
                          f"{info['config_hash']}); re-run the day to use the new config")
    return cfg


def _stage(fn, info: dict[str, Any], *args, **kwargs):
    """Call `fn(cfg, *args, **kwargs)` with the run's config. Errors that the same inputs would raise again (bad
    config, bad data: every MTLError but registry outages and a busy lock) fail at once, without retries."""
    from pipeline.errors import ConcurrentRunError, MTLError, RegistryError

    # MLflow's own handler writes INFO to stderr, which Airflow shows as [error]; without it, its records
    # reach Airflow's log handler with their real level. Read when mlflow is first imported, in this task.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar is noise in a log file

    try:
        return fn(_cfg(info), *args, **kwargs)
    except MTLError as exc:
        if isinstance(exc, (RegistryError, ConcurrentRunError)):
            raise
        log.error("%s (not retried):\n%s", type(exc).__name__, exc)
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def write_summary(context: dict[str, Any]) -> None:
    """on_failure_callback: a short JSON run summary under the run folder (what failed, where, why)."""
    from pipeline.io import write_json
    from pipeline.paths import Layout

    ti, run = context.get("ti"), context.get("dag_run")
    ds = (context.get("params") or {}).get(form.DATE) or context.get("ds") or "unknown-date"
    exc = context.get("exception")
    summary = {
        "dag_id": DAG_ID, "dag_run": getattr(run, "run_id", None), "date": ds,
        "failed_task": getattr(ti, "task_id", None), "map_index": getattr(ti, "map_index", None),
        "try_number": getattr(ti, "try_number", None), "error_type": type(exc).__name__ if exc else None,
        "error": str(exc)[:4000] if exc else None, "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    path = Layout.of(_home()).run_dir(ds) / "run_summary.json"
    write_json(path, summary)
    log.error("run summary written to %s: %s failed: %s", path, summary["failed_task"], summary["error"])


DEFAULT_ARGS = {
    "owner": "mtl",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "on_failure_callback": write_summary,
}


@task(retries=0, multiple_outputs=False)
def check_config() -> dict:
    """Validate the trigger form into the run's config (same rules as `mtl --set`), write it once to
    runs/<D>/config.json for every later task; no retries."""
    from pipeline.config import save_config
    from pipeline.errors import ConfigError
    from pipeline.paths import Layout
    from pipeline.run import model_names

    ctx = get_current_context()
    home = _home()
    try:
        cfg = form.config_from_params(ctx["params"], home=home)
    except ConfigError as exc:
        raise AirflowFailException(f"invalid trigger parameters: {exc}") from exc
    try:  # the form's `date`, else the logical date; a REST trigger with logical_date null needs `date`
        ds = form.run_date(ctx["params"], ctx.get("ds"))
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc
    landing = ctx["params"].get(form.LANDING) or os.environ.get("MTL_LANDING") or os.path.join(home, "landing")
    path = Layout.of(home).run_dir(ds) / CONFIG_FILE
    digest = save_config(cfg, path)
    log.info("run config %s written to %s", digest, path)
    return {
        "home": home, "date": ds, "run_id": ds, "landing": os.path.abspath(landing),
        "config": str(path), "config_hash": digest,
        "owner": f"airflow:{DAG_ID}:{ctx['dag_run'].run_id}", "dry_run": cfg.dry_run,
        "baselines": [n.removeprefix("baseline_") for n in model_names(cfg) if n.startswith("baseline_")],
        "gbdts": [n.removeprefix("gbdt_") for n in model_names(cfg) if n.startswith("gbdt_")],
    }


@task(retries=0)
def baseline_tasks(info: dict) -> list[str]:
    """The tasks that get a single-task baseline (none when `train.baselines` is off)."""
    return info["baselines"]


@task(retries=0)
def gbdt_tasks(info: dict) -> list[str]:
    """The tasks that get a LightGBM baseline (none when `train.gbdt_baselines` is off)."""
    return info.get("gbdts", [])


@task(retries=3, retry_delay=dt.timedelta(minutes=1))
def take_lock(info: dict) -> str:
    """Take the per-date lease (`pipeline.lock`); another live run of this date makes this task retry."""
    from pipeline.lock import acquire

    return str(acquire(info["home"], info["date"], info["owner"]))


@task.sensor(poke_interval=60, timeout=SENSOR_TIMEOUT_S, mode="reschedule")
def wait_for_landing(info: dict) -> bool:
    """Is day D complete (`<landing>/impressions/dt=D/_SUCCESS`)? A scheduled run waits up to the form's
    `landing_wait_hours` from its start, then is skipped (the producer never delivered: nothing to train on);
    a manual run or backfill does not wait: a missing marker fails it at once, naming the file."""
    ctx = get_current_context()
    marker = os.path.join(info["landing"], "impressions", f"dt={info['date']}", "_SUCCESS")
    if os.path.exists(marker):
        return True
    run = ctx["dag_run"]
    if str(getattr(run, "run_type", "")).lower().removeprefix("dagruntype.") != "scheduled":
        raise AirflowFailException(f"landing day {info['date']} is not complete: {marker} does not exist "
                                   "(manual runs and backfills do not wait; set the form's `date` to a landed day)")
    hours = float(ctx["params"].get(form.WAIT) or 0)
    started = getattr(run, "start_date", None) or dt.datetime.now(dt.UTC)
    if dt.datetime.now(dt.UTC) - started >= dt.timedelta(hours=hours):
        raise AirflowSkipException(f"landing day {info['date']} never came: no {marker} after {hours:g} h "
                                   f"(form field `{form.WAIT}`); this slot is skipped")
    log.info("waiting for %s (up to %g h from the run's start)", marker, hours)
    return False


@task
def ingest(info: dict) -> dict:
    """Stage landing day D (and unseen earlier days) with contract types; nothing reaches the lake yet."""
    from pipeline.data.ingest import ingest as run

    return _stage(run, info, info["landing"], info["date"], info["run_id"])


@task(retries=0, outlets=[LAKE])
def validate(info: dict) -> dict:
    """Great Expectations + contract rules on the staged days; on pass, publish them into the lake."""
    from pipeline.data.validate import validate as run

    out = _stage(run, info, info["date"], info["run_id"])
    log.info("published %s; Data Docs (render offline): file://%s", out.get("published"), out.get("data_docs"))
    get_current_context()["outlet_events"][LAKE].extra = {"published": out.get("published"),
                                                          "home": info["home"]}
    return out


@task(retries=0)
def aggregate_days(info: dict) -> list[str]:
    """The lake days whose per-day history aggregates the features of D read (the split days with history off)."""
    from pipeline.features.aggregates import aggregate_days as days

    return _stage(days, info, info["date"])


# Mapped tasks do not take their docstring as doc_md.
aggregate_doc = ("Write one lake day's history count tables under `lake/_aggregates/dt=D/` (one mapped task "
                 "instance per day the features read; a no-op for a day already built from the same data).")


@task(doc_md=aggregate_doc)
def aggregate(info: dict, day: str) -> dict:
    from pipeline.features.aggregates import build_day_aggregates

    return _stage(build_day_aggregates, info, day)


# All upstream must succeed (the default): a skipped night (no landing day) skips this too. The aggregate list
# is never empty (pipeline.features.aggregates.aggregate_days), so its mapped task is never skipped for that.
@task
def features(info: dict) -> dict:
    """Time-split feature files (train / valid / test windows ending at D) and the feature spec."""
    from pipeline.features.build import build_features

    return _stage(build_features, info, info["date"], info["run_id"])


def _train(info: dict, name: str) -> dict:
    """In this process, or torchrun over `train.nproc_per_node` x `train.nnodes` processes
    (pipeline.training.launch); torch threads come from `train.threads`."""
    from pipeline.training.launch import launch

    return _stage(launch, info, info["run_id"], name=name, resume=True)


@task(pool=POOL, queue=TRAIN_QUEUE)
def train_mtl(info: dict) -> dict:
    """Train the multi-task model (early stopping on the valid window); resumes from its last checkpoint."""
    return _train(info, "mtl")


# Mapped tasks do not take their docstring as doc_md.
baseline_doc = "Train the single-task baseline for one task (one mapped task instance per task)."


@task(pool=POOL, queue=TRAIN_QUEUE, doc_md=baseline_doc)
def train_baseline(info: dict, task_name: str) -> dict:
    return _train(info, f"baseline_{task_name}")


gbdt_doc = ("Train the LightGBM baseline for one task (one mapped task instance per task; CPU only, "
            "threads from `gbdt.n_jobs`, so no `gpu` pool).")


@task(doc_md=gbdt_doc)
def train_gbdt(info: dict, task_name: str) -> dict:
    return _train(info, f"gbdt_{task_name}")


# none_failed: a baseline list that is empty skips the mapped task (check_config, also upstream, succeeded, so a
# skipped train_mtl is checked in the task itself).
@task(trigger_rule="none_failed")
def evaluate(info: dict) -> dict:
    """Test-window AUC / logloss per task for the MTL model and every baseline -> evaluation.json."""
    from pipeline.evaluation.evaluate import evaluate as run
    from pipeline.results import report_summary

    if get_current_context()["ti"].xcom_pull(task_ids="train_mtl") is None:
        raise AirflowSkipException("train_mtl did not run (e.g. the landing day never came): nothing to evaluate")
    out = _stage(run, info, info["run_id"])
    log.info("results of run %s:\n%s", info["run_id"], report_summary(out["report"]))
    return out


class _InfoLines(io.TextIOBase):
    """A text stream whose lines go to this module's log at INFO."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.info("%s", line)
        return len(text)


@task
def register(info: dict) -> dict:
    """Log to MLflow, register as `challenger`, record the gate (`champion` moves in `promote`). Skipped on dry
    run."""
    from pipeline.release import register as run
    from pipeline.results import registration_links

    if info["dry_run"]:
        raise AirflowSkipException("dry run: nothing registered")
    # MLflow prints "Successfully registered model ..." to stderr (print, not logging): log it as INFO.
    with contextlib.redirect_stderr(_InfoLines()):
        out = _stage(run, info, run_id=info["run_id"])
    log.info("where to look:\n%s", registration_links(out, os.environ.get("MTL_MLFLOW_UI", "")))
    return out


def _promote_or_skip(cfg, run_id: str) -> dict:
    """promote_champion; a gate refusal becomes a skip (not green, not red) with the gate lines in the log."""
    from pipeline.errors import GateRefusedError
    from pipeline.release import promote_champion

    try:
        return promote_champion(cfg, run_id=run_id)
    except GateRefusedError as exc:
        log.info("gate refused version %s; champion not moved. Gate lines:\n%s", exc.version,
                 "\n".join(f"  {r}" for r in exc.reasons))
        raise AirflowSkipException(str(exc)) from exc


@task
def promote(info: dict) -> dict:
    """Move `champion` to the registered version if the gate passes against the champion as it is now;
    skipped, with the gate's reasons in the log, when it refuses."""
    return _stage(_promote_or_skip, info, info["run_id"])


@task(trigger_rule="all_done", retries=1)
def release_lock(info: dict) -> bool:
    """Give the per-date lease back, whatever happened upstream."""
    from pipeline.lock import release

    return release(info["home"], info["date"], info["owner"])


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    default_args=DEFAULT_ARGS,
    params=form.airflow_params(landing=os.environ.get("MTL_LANDING", "")),
    doc_md=DAG_DOC,
    tags=["mtl", "training"],
)
def mtl_retrain():
    """Wiring only: each task above calls one pipeline function."""
    info = check_config()
    lock = take_lock(info)
    mtl = train_mtl(info)
    baselines = train_baseline.partial(info=info).expand(task_name=baseline_tasks(info))
    gbdts = train_gbdt.partial(info=info).expand(task_name=gbdt_tasks(info))
    done = promote(info)
    published = validate(info)
    days = aggregate_days(info)
    aggregates = aggregate.partial(info=info).expand(day=days)
    feats = features(info)
    chain(info, lock, wait_for_landing(info), ingest(info), published, days, aggregates, feats,
          [mtl, baselines, gbdts], evaluate(info), register(info), done)
    published >> feats
    done >> release_lock(info).as_teardown(setups=lock)


mtl_retrain()
