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


def _key(table: str, r) -> tuple[str, str, str]:
    """(table, column, rule) of one expectation result, as its RuleFailure would name it."""
    cfg = r.expectation_config
    return table, str(cfg.kwargs.get("column", "*")), (cfg.meta or {}).get("rule", cfg.type)


def _key(table: str, r) -> tuple[str, str, str]:
    """(table, column, rule) of one expectation result, as its RuleFailure would name it."""
    cfg = r.expectation_config
    return table, str(cfg.kwargs.get("column", "*")), (cfg.meta or {}).get("rule", cfg.type)


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


class SuiteRunner:
    """Great Expectations over batches given one at a time, so that only one batch is in pandas at once.

    Batches that share a label (the chunks of the staged days) are merged into one result: an expectation is
    successful when it passed on every batch of the label; failures of one (table, column, rule) add their
    counts and keep the first examples. Each batch is still its own validation result in the Data Docs.
    """

    def __init__(self, docs_dir: str | Path):
        import great_expectations as gx

        self.gx = gx
        self.ctx = _context(Path(docs_dir))
        self.source = self.ctx.data_sources.add_pandas("landing")
        self.suites: dict = {}
        self.n = 0
        # "table[label]" -> {"failures": {(table, column, rule): RuleFailure}, "ok": positions passed everywhere}
        self.merged: dict[str, dict] = {}

    def _suite(self, table: str):
        if table not in self.suites:
            self.suites[table] = self.ctx.suites.add(self.gx.ExpectationSuite(**load_suite_dict(table)))
        return self.suites[table]

    def check(self, table: str, label: str, data, skip: set = frozenset()) -> None:
        """Validate one batch (a pyarrow Table or pandas frame) of `table` under the report label `label`.

        `skip`: (table, column, rule) keys whose result on this batch is left out of the merged result (the
        caller checks them on more than the batch and gives the outcome to `add`)."""
        gx = self.gx
        i, self.n = self.n, self.n + 1
        asset = self.source.add_dataframe_asset(f"{table}_{i}")
        definition = self.ctx.validation_definitions.add(gx.ValidationDefinition(
            name=f"{table} {label} #{i}", data=asset.add_batch_definition_whole_dataframe("all"),
            suite=self._suite(table)))
        checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
            name=f"check {table} {label} #{i}", validation_definitions=[definition],
            result_format={"result_format": "SUMMARY",
                           "unexpected_index_column_names": _index_columns(table, data)}))
        frame = data.to_pandas() if hasattr(data, "to_pandas") else data
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        del frame
        self._drop_batches()
        entry = self.merged.setdefault(f"{table}[{label}]", {"failures": {}, "ok": None, "evaluated": 0})
        for run_result in result.run_results.values():
            found, _ = _failures(table, label, run_result)
            keys = [_key(table, r) for r in run_result.results]  # the suite's order is fixed
            entry["keys"] = keys
            ok = {j for j, r in enumerate(run_result.results) if r.success or keys[j] in skip}
            entry["evaluated"] = max(entry["evaluated"], len(run_result.results))
            entry["ok"] = ok if entry["ok"] is None else entry["ok"] & ok
            self._merge(entry, [f for f in found if (f.table, f.column, f.rule) not in skip])

    def _drop_batches(self) -> None:
        """Let go of the batches GX caches in the data source's execution engine: it keeps every batch's
        dataframe for the life of the context (about a day of rows per staged day otherwise)."""
        manager = self.source.get_execution_engine().batch_manager
        manager.reset_batch_cache()
        manager.batch_data_cache.clear()

    def add(self, table: str, label: str, failures: list[RuleFailure]) -> None:
        """Merge failures found outside GX into the result of an expectation already run under `label`."""
        entry = self.merged[f"{table}[{label}]"]
        bad = {(f.table, f.column, f.rule) for f in failures}
        entry["ok"] = {j for j in entry["ok"] if entry["keys"][j] not in bad}
        self._merge(entry, failures)

    @staticmethod
    def _merge(entry: dict, failures: list[RuleFailure]) -> None:
        for f in failures:
            key = (f.table, f.column, f.rule)
            old = entry["failures"].get(key)
            entry["failures"][key] = f if old is None else RuleFailure(
                f.table, f.column, f.rule, old.count + f.count, (old.examples + f.examples)[:3])

    def finish(self) -> tuple[list[RuleFailure], dict]:
        """Build the Data Docs once (over every stored result) -> (failures, {"table[label]": counts})."""
        self.ctx.build_data_docs(site_names=[SITE])
        failures = [f for e in self.merged.values() for f in e["failures"].values()]
        stats = {k: {"evaluated": e["evaluated"], "successful": len(e["ok"] or ())} for k, e in self.merged.items()}
        return failures, stats


def run_suites(batches, docs_dir: str | Path) -> tuple[list, dict]:
    """Validate each (table, label, pyarrow Table) against its suite; build Data Docs into `docs_dir`.

    Returns (failures, stats) where stats maps "table[label]" -> {"evaluated", "successful"}.
    """
    runner = SuiteRunner(docs_dir)
    for table, label, data in batches:
        runner.check(table, label, data)
    return runner.finish()


def _index_columns(table: str, data) -> list[str]:
    """Columns that identify an offending row in examples: the table's key, plus `dt` when present."""
    names = list(getattr(data, "column_names", None) or getattr(data, "columns", []))
    return [KEYS[table]] + (["dt"] if "dt" in names else [])
