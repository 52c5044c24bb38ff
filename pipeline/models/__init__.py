"""The model zoo: name -> class, one module per architecture (see docs/architecture.md).

Importing this package imports no torch; `build()` imports the one architecture asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.config import MODEL_NAMES
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.dataset import InputSpec

# Registry: model.name -> module in this package that defines `Model`. Names come from pipeline.config.
REGISTRY: dict[str, str] = {name: f"pipeline.models.{name}" for name in MODEL_NAMES}


def model_class(name: str) -> Any:
    if name not in REGISTRY:
        raise ConfigError(f"unknown model '{name}'; known: {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).Model


def build(name: str, inputs: InputSpec, cfg: ModelConfig, tasks: tuple[str, ...]) -> Any:
    """Model(inputs, cfg, tasks) of architecture `name`; forward(batch) -> {task: logits [B]}."""
    return model_class(name)(inputs, cfg, tuple(tasks))
