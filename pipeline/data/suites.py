"""Great Expectations 1.x: the suites kept as JSON package data (`pipeline/data/expectations/`, also reachable as
the top-level `expectations/` link), run on pandas frames, with Data Docs.

Each expectation's `meta.rule` names the CONTRACT.md rule it enforces; failures come back as RuleFailures.
GX takes pandas only (it has no polars backend): tables are converted through Arrow. The context is ephemeral; the only thing
written is the Data Docs site, into a folder the caller chooses.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from pipeline.data.schema import KEYS
from pipeline.errors import RuleFailure

SITE = "run_site"


def load_suite_dict(table: str) -> dict:
    """The JSON suite for `table` ('impressions', 'users', 'items'), read as package data so that an installed
    wheel (not only a source checkout) finds it."""
    return json.loads(resources.files("pipeline.data").joinpath("expectations", f"{table}.json").read_text())


def _context(docs_dir: Path):
    # Silence GX's import-time registration chatter (~200 INFO lines a task) before the first import.
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(site_name=SITE, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return ctx


def _failures(table: str, label: str, result) -> tuple[list[RuleFailure], dict]:
    """RuleFailures of one GX suite result (rule = each expectation's `meta.rule`) and the counts.

    An expectation that raised (GX could not compute it) fails too, with the exception message as its example.
    """
    failures, n_ok = [], 0
    for r in result.results:
        cfg = r.expectation_config
        if r.success:
            n_ok += 1
            continue
        res = r.result or {}
        found = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
        examples = tuple(({"partition": label} | x if "dt" not in x else x) if isinstance(x, dict) else x
                         for x in found[:3])
        error = _exception_message(r.exception_info)
        if error:
            examples = (error[:200],)
        rule = (cfg.meta or {}).get("rule", cfg.type)
        count = int(res.get("unexpected_count") or 0)
        failures.append(RuleFailure(table, str(cfg.kwargs.get("column", "*")), rule, count,
                                    tuple(_plain(e) for e in examples)))
    return failures, {"evaluated": len(result.results), "successful": n_ok}


def _exception_message(info) -> str | None:
    """The message of a raised exception in GX's `exception_info` (flat, or keyed by metric id), else None."""
    if not isinstance(info, dict):
        return None
    for entry in [info, *[v for v in info.values() if isinstance(v, dict)]]:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _plain(x):
    """Example rows as JSON-friendly values (numpy scalars -> Python)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x.item() if hasattr(x, "item") and callable(x.item) else x


def run_suites(batches: list[tuple[str, str, object]], docs_dir: str | Path) -> tuple[list, dict]:
    """Validate each (table, label, pyarrow Table) against its suite; build Data Docs into `docs_dir`.

    Returns (failures, stats) where stats maps "table[label]" -> {"evaluated", "successful"}.
    """
    import great_expectations as gx

    ctx = _context(Path(docs_dir))
    source = ctx.data_sources.add_pandas("landing")
    suites = {t: ctx.suites.add(gx.ExpectationSuite(**load_suite_dict(t))) for t in {b[0] for b in batches}}
    failures: list[RuleFailure] = []
    stats: dict = {}
    for i, (table, label, data) in enumerate(batches):
        asset = source.add_dataframe_asset(f"{table}_{i}")
        definition = ctx.validation_definitions.add(gx.ValidationDefinition(
            name=f"{table} {label}", data=asset.add_batch_definition_whole_dataframe("all"),
            suite=suites[table]))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"check {table} {label}", validation_definitions=[definition],
            result_format={"result_format": "SUMMARY",
                           "unexpected_index_column_names": _index_columns(table, data)}))
        frame = data.to_pandas() if hasattr(data, "to_pandas") else data
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run_result in result.run_results.values():
            found, stats[f"{table}[{label}]"] = _failures(table, label, run_result)
            failures += found
    ctx.build_data_docs(site_names=[SITE])  # once, over every stored validation result
    return failures, stats


def _index_columns(table: str, data) -> list[str]:
    """Columns that identify an offending row in examples: the table's key, plus `dt` when present."""
    names = list(getattr(data, "column_names", None) or getattr(data, "columns", []))
    return [KEYS[table]] + (["dt"] if "dt" in names else [])
