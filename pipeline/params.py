"""The Airflow trigger form <-> pipeline config, one field per config key.

A form field's name is its config key with '.' replaced by '__' (`model.name` -> `model__name`), the same
convention as Airflow's own `AIRFLOW__SECTION__KEY`, so the mapping is mechanical and one-to-one; dots are
avoided because form libraries read them as nested paths. Four fields are not config keys: `date` (the data
date to process; empty = the run's logical date, so any day re-runs from the form without a new logical
date), `landing` (the landing folder), `landing_wait_hours` (how long a scheduled run waits for the day's
marker) and `overrides` (a list of `key=value` for any config key the form does not show). Optional fields
have type [..., "null"], which is what makes the form show them as not required.

The field types, defaults and enums come from `pipeline.config`, so the form cannot drift from the config.
Values are validated by `load_config` (the same validation as the CLI) before any work starts.
This module imports Airflow only inside `airflow_params()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import MODEL_NAMES, WEIGHTINGS, Config, load_config, parse_override
from pipeline.data.schema import TASKS
from pipeline.errors import ConfigError
from pipeline.paths import parse_date

LANDING = "landing"
OVERRIDES = "overrides"
DATE = "date"
WAIT = "landing_wait_hours"
# A scheduled run waits this long for its landing day unless $MTL_LANDING_WAIT_HOURS says otherwise (the demo
# home sets 0: its catch-up slot for yesterday never lands, and must not sit in the grid for hours).
DEFAULT_WAIT_HOURS = 6.0
MAX_WAIT_HOURS = 12.0


@dataclass(frozen=True)
class Field:
    key: str  # dotted config key
    title: str
    description: str
    enum: tuple[Any, ...] = ()
    minimum: float | None = None


FIELDS: tuple[Field, ...] = (
    Field("model.name", "Model architecture", "Multi-task architecture trained as the challenger.", MODEL_NAMES),
    Field("model.tasks", "Tasks", f"Funnel tasks to learn, any of {', '.join(TASKS)} (cvr: clicked rows only)."),
    Field("train.weighting", "Loss weighting", "How the per-task losses are combined.", WEIGHTINGS),
    Field("train.epochs", "Epochs", "Maximum epochs; early stopping on the valid window may stop sooner.",
          minimum=1),
    Field("train.baselines", "Train baselines", "Also train one single-task baseline per task (the gate needs "
          "them to compare against)."),
    Field("data.train_days", "Train window (days)", "Days before the valid window used for training.", minimum=1),
    Field("data.valid_days", "Valid window (days)", "Days before the test window, for early stopping and "
          "selection.", minimum=1),
    Field("data.test_days", "Test window (days)", "Last days up to the logical date; reported once.", minimum=1),
    Field("text.enabled", "Text tower", "Encode item titles and search queries with the MiniLM transformer."),
    Field("gate.champion_margin", "Gate: champion margin", "Non-inferiority: on every task the champion serves, "
          "the lower bound of the 95% interval of (challenger - champion) test AUC must be >= -this.", minimum=0),
    Field("gate.max_baseline_regression", "Gate: max loss to baselines", "On every task, the lower bound of the "
          "95% interval of (challenger - baseline) test AUC must be >= -this, for each baseline.", minimum=0),
    Field("dry_run", "Dry run", "Stop after evaluation; register nothing."),
)


def param_name(key: str) -> str:
    return key.replace(".", "__")


def config_key(name: str) -> str:
    return name.replace("__", ".")


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "array" if isinstance(value, list) else "string"


def default_config() -> Config:
    """The config the form starts from: defaults <- $MTL_CONFIG (YAML) when set. Reads one small file."""
    return load_config(os.environ.get("MTL_CONFIG") or None)


def airflow_params(defaults: Config | None = None, landing: str = "") -> dict[str, Any]:
    """`{name: airflow.sdk.Param}` for the DAG's `params=`: typed, titled, described, with enums."""
    from airflow.sdk import Param

    cfg = defaults or default_config()
    out: dict[str, Any] = {}
    for f in FIELDS:
        value = _value(cfg, f.key)
        schema: dict[str, Any] = {"type": _json_type(value), "title": f.title,
                                  "description": f"{f.description} Config key `{f.key}`."}
        if f.enum:
            schema["enum"] = list(f.enum)
        if f.minimum is not None:
            schema["minimum"] = f.minimum
        if f.key == "model.tasks":
            # An items.enum renders as a textarea; examples give a multi-select (Airflow 3.3). load_config checks.
            schema.update(examples=list(TASKS), items={"type": "string"}, minItems=1)
        out[param_name(f.key)] = Param(value, **schema)
    out[DATE] = Param(None, type=["null", "string"], format="date", title="Data date (re-run a day)",
                      description="The day D to process, YYYY-MM-DD. Empty = the run's logical date. Set it to "
                                  "re-run a day that already ran: no new logical date needed.")
    out[LANDING] = Param(landing or None, type=["null", "string"], title="Landing folder",
                         description="Folder in the raw data contract; empty = $MTL_LANDING or <home>/landing.")
    out[WAIT] = Param(wait_hours(), type="number", minimum=0, maximum=MAX_WAIT_HOURS,
                      title="Scheduled runs: wait for landing (hours)",
                      description="How long a scheduled run waits for the day's _SUCCESS marker before it is "
                                  "skipped. Manual runs and backfills never wait: a missing day fails at once.")
    out[OVERRIDES] = Param([], type=["null", "array"], items={"type": "string"}, title="Other config overrides",
                           description="key=value lines for any config key not in this form, e.g. "
                                       "model.embedding_dim=32. Applied last.")
    return out


def wait_hours() -> float:
    """The form's default wait: $MTL_LANDING_WAIT_HOURS, else DEFAULT_WAIT_HOURS (ConfigError if not a number)."""
    raw = os.environ.get("MTL_LANDING_WAIT_HOURS", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_WAIT_HOURS
    except ValueError:
        raise ConfigError(f"MTL_LANDING_WAIT_HOURS must be a number of hours, got {raw!r}") from None
    return min(max(value, 0.0), MAX_WAIT_HOURS)


def run_date(params: Mapping[str, Any], logical_ds: str | None) -> str:
    """The data date a run processes: the form's `date`, else the logical date (`ds`); ConfigError naming the
    field when neither gives a YYYY-MM-DD day."""
    value = params.get(DATE) or logical_ds
    if not value:
        raise ConfigError("no data date: set the form field `date` (YYYY-MM-DD) or trigger with a logical date")
    try:
        return parse_date(str(value)).isoformat()
    except ConfigError:
        raise ConfigError(f"form field `date`: not a date (YYYY-MM-DD): {value!r}") from None


def overrides_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Trigger-form values -> dotted config overrides (form fields, then the free `overrides` lines)."""
    names = {param_name(f.key) for f in FIELDS}
    out = {config_key(k): v for k, v in params.items() if k in names}
    for line in params.get(OVERRIDES) or []:
        key, value = parse_override(str(line))
        out[key] = value
    return out


def config_from_params(params: Mapping[str, Any], home: str | None = None) -> Config:
    """The run's frozen config: defaults <- $MTL_CONFIG <- form values; raises ConfigError naming the key."""
    return load_config(os.environ.get("MTL_CONFIG") or None, overrides_from_params(params), home=home)
