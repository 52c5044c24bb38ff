"""Named errors. Each carries enough context to say what is wrong and where."""

from __future__ import annotations

from dataclasses import dataclass, field


class MTLError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MTLError):
    """A configuration value is missing, unknown or out of range."""


class IngestError(MTLError):
    """A landing file cannot be read or does not fit the contract's types."""


@dataclass(frozen=True)
class RuleFailure:
    """One broken data rule: where, what, how many rows, and a few offending rows."""

    table: str
    column: str
    rule: str
    count: int
    examples: tuple = field(default_factory=tuple)

    def __str__(self) -> str:
        ex = "; ".join(str(e) for e in self.examples[:3])
        return f"{self.table}.{self.column}: {self.rule} ({self.count} rows){' e.g. ' + ex if ex else ''}"


class DataValidationError(MTLError):
    """The data broke one or more contract rules. Not retryable: the same data fails again."""

    def __init__(self, failures: list[RuleFailure], where: str = "", docs: str | None = None):
        self.failures = list(failures)
        self.where = where
        self.docs = docs
        lines = [f"{len(self.failures)} data rule(s) failed{' in ' + where if where else ''}:"]
        lines += [f"  - {f}" for f in self.failures]
        if docs:
            lines.append(f"  Data Docs: {docs}")
        super().__init__("\n".join(lines))


class FeatureError(MTLError):
    """Features cannot be built (e.g. an empty train window)."""


class TrainingError(MTLError):
    """Training cannot proceed (no data for a task, diverged loss...)."""


class RegistryError(MTLError):
    """The model registry cannot be reached or refused an operation."""


class ConcurrentRunError(MTLError):
    """Another run for the same home and date holds the lock."""


class ChampionMovedError(RegistryError):
    """`champion` moved between the gate's judgement and the alias move, by a writer that does not take the
    registry lease (another home on the same tracking server, the MLflow UI). Retrying judges again."""


class GateRefusedError(MTLError):
    """The gate (or the rerun rule) refused to move `champion` to a version; `reasons` are the gate lines."""

    def __init__(self, version: int, reasons: list[str]):
        self.version = version
        self.reasons = list(reasons)
        failed = [r for r in self.reasons if r.endswith("FAIL") or "not moved again" in r] or self.reasons
        super().__init__(f"version {version} does not become champion:\n" + "\n".join(f"  - {r}" for r in failed))
