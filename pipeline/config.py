"""Frozen, typed configuration, built once from defaults + YAML + `key=value` overrides and validated once.

Every section is a frozen dataclass. `load_config()` is the only constructor callers need:

    cfg = load_config("conf.yaml", overrides=["model.name=ple", "train.epochs=2"], home=".mtl")

The same dotted keys are used by the CLI (`--set`), the Airflow trigger form (Params) and MLflow params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

# The rules live in their own module; their names stay importable from here, where callers have always found them.
from pipeline.config_rules import FINETUNE_MODES, MODEL_NAMES, WEIGHTINGS, encoder_layers, validate_config  # noqa: F401
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Time windows ending at the logical date D: test = last `test_days`, valid before, train before that."""

    train_days: int = 7
    valid_days: int = 1
    test_days: int = 1


@dataclass(frozen=True)
class ValidationConfig:
    """Drift checks against the trailing `drift_days` days. Bands are ratios to the trailing mean."""

    drift_days: int = 7
    row_count_band: tuple[float, float] = (0.2, 5.0)
    label_rate_band: tuple[float, float] = (0.2, 5.0)
    drift_action: str = "fail"  # "fail" | "warn"
    # A label rate is compared only when the trailing rate predicts at least this many positives on the day:
    # below it, a zero or doubled count is sampling noise, not drift.
    drift_min_positives: int = 20
    # Great Expectations sees pandas only: a staged day over this many rows is checked in chunks of it, so
    # validation holds about one chunk in pandas whatever the day's size.
    gx_chunk_rows: int = 1_000_000


@dataclass(frozen=True)
class FeatureConfig:
    """Which columns become features. Extra contract columns are used only when declared here."""

    categorical: tuple[str, ...] = (
        "user_id", "item_id", "category", "brand", "shop_id", "surface", "age_bucket", "gender", "city_tier",
    )
    numeric: tuple[str, ...] = ()
    history: bool = True
    history_windows: tuple[int, ...] = (1, 7, 28)
    smoothing: float = 20.0
    min_count: int = 1
    # List context (request size, relative position, price rank in the request): off by default, it did not pay
    # on the generated log (mean test AUC -0.002 with it, bench/quality_bench.py --ablate).
    context: bool = False
    lexical: bool = True  # query-title word overlap, coverage, unmatched words, brand in query (search rows)
    # Behaviour sequence: the user's last N clicked items before the row's day (pipeline.features.sequences),
    # pooled by target attention against the candidate item; 0 = off. Off by default: on the generated log
    # (12 days x 25k, drift) N=10 gave valid mean AUC +0.0016 / +0.0017 over two seeds but test -0.0007..+0.0008,
    # inside the seed-to-seed spread (0.0030); Hillstrom has one row per customer, so no sequence at all.
    sequence_length: int = 0
    sequence_fields: tuple[str, ...] = ("item_id",)  # what describes each click: item columns, each a categorical


@dataclass(frozen=True)
class TextConfig:
    """The transformer text tower. `model`: the offline MiniLM name, a local folder or a hub name.

    `finetune`: "false" (frozen encoder), "contrastive" (fine-tune on the train window's click pairs before
    features are embedded, pipeline.features.finetune) or "joint" (the top `finetune_layers` layers train with
    the multi-task loss). The `finetune_*` keys size both modes."""

    enabled: bool = True
    model: str = "all-MiniLM-L6-v2"
    finetune: str = "false"
    max_length: int = 32
    max_chars: int = 512
    batch_size: int = 128
    proj_dim: int = 16
    finetune_pairs: int = 6000  # contrastive: most pairs used, held-out part included (~10 min on 2 cores)
    finetune_every_days: int = 7  # contrastive: reuse the last fine-tuned encoder while it is younger than this
    finetune_epochs: int = 1
    finetune_batch_size: int = 64  # contrastive: pairs per step (in-batch negatives = batch - 1)
    finetune_lr: float = 2e-5  # both modes: the encoder's own learning rate
    finetune_layers: int = 2  # both modes: top transformer layers that train (the rest stay frozen)
    finetune_heldout: float = 0.1  # contrastive: share of pairs held out for recall@k
    finetune_recall_k: int = 10
    finetune_coclick_share: float = 0.25  # contrastive: most share of the pairs that are co-clicks (rest: queries)
    finetune_hard_negatives: bool = True  # contrastive: a query pair's unclicked title shown above joins the batch


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mmoe"
    tasks: tuple[str, ...] = ("ctr", "cart", "ctcvr", "cvr")
    embedding_dim: int = 16
    num_experts: int = 4
    expert_hidden: tuple[int, ...] = (64,)
    tower_hidden: tuple[int, ...] = (32,)
    bottom_hidden: tuple[int, ...] = (128, 64)
    ple_levels: int = 2
    shared_experts: int = 2
    task_experts: int = 1
    dropout: float = 0.1
    calibrator_weight: float = 0.6  # AITM behavioural calibrator (Xi et al. use 0.6)
    id_dropout: float = 0.05  # training: share of id-like ids replaced by the unknown index, so that row learns
    # DCN-v2 cross layers on the shared input (0 = none); they feed every architecture, the single-task DNN
    # baselines too. 2 by default (issue 11, measured, bench/seesaw_bench.py on the 14 days x 150k drifting log,
    # test 2026-03-12, MMoE with tower_skip, seed 42 / 43, test AUC ctr / cart / ctcvr / cvr): 0 -> 2 gave
    # .7589 / .7668 / .8044 / .7626 -> .7588 / .7693 / .8084 / .7661 and .7587 / .7665 / .8046 / .7620 -> .7587 /
    # .7696 / .8080 / .7657; 1.5x the MTL training CPU. Hillstrom (test 2008-03-14) seed 42 / 43: ctr .6463 -> .6480
    # / .6461 -> .6471, cvr .6044 -> .6053 / .6010 -> .6259, cart .7384 -> .7310 / .7338 -> .7395. The small demo
    # log loses ctr (.7525 -> .7507 / .7533 -> .7484) and gains the other three tasks.
    cross_layers: int = 2
    # MMoE: each task's tower also reads the shared input x beside its expert mix (pipeline/models/mmoe.py), a
    # path of its own past the shared experts. On (issue 11, measured, bench/seesaw_bench.py, train seeds 42 / 43,
    # test AUC of MTL minus its DNN baseline, off -> on): demo log (make demo's, test 2026-01-14) ctr -0.0088 ->
    # -0.0004 / -0.0003 -> +0.0013, cart -0.0081 -> -0.0005 / +0.0101 -> +0.0105, ctcvr +0.0015 -> +0.0057 /
    # +0.0015 -> +0.0009, cvr +0.0058 -> +0.0073 / -0.0054 -> -0.0037; Hillstrom (test 2008-03-14) ctr -0.0082 ->
    # -0.0002 / -0.0032 -> +0.0008, cart -0.0229 -> 0.0000 / +0.0032 -> +0.0106, ctcvr -0.0253 -> -0.0015 /
    # +0.0056 -> +0.0104, but cvr +0.0291 -> +0.0044 / +0.0352 -> -0.0018 (49 valid conversions: noise-level
    # selection). Generated 12 days x 25k (seed 11, test 2026-03-10), the cost: cart +0.0070 -> +0.0035 /
    # +0.0033 -> -0.0012, cvr -0.0027 -> -0.0034 / -0.0004 -> -0.0026, ctr -0.0013 -> -0.0028 / +0.0005 ->
    # +0.0015. CPU per epoch 1.14x; on Hillstrom a run takes 1.5-1.8x, as valid now selects epoch 9, not 3-4.
    tower_skip: bool = True
    # BatchNorm after every hidden Linear and on the gate logits, as torch-rechub's MLPs: on in
    # bench/train_bench.py --peer-config (MMoE, 600k rows: ctr 0.7000 -> 0.7042, ~20% more time per step). Off by
    # default (measured, MMoE, generated 14 days x 12k with history, 2 epochs, 2 seeds): ctr 0.7460 -> 0.7444,
    # cart 0.7418 -> 0.7424, ctcvr 0.7659 -> 0.7688, cvr 0.7390 -> 0.7443: no clear gain, and ctr falls.
    batch_norm: bool = False


@dataclass(frozen=True)
class TrainConfig:
    # Up to 10 epochs, patience 2, stop on weighted_auc, per-task best towers (issue 11, measured): on Hillstrom
    # (test 2008-03-14) MTL test AUC ctr 0.638 -> 0.647, cart 0.716 -> 0.745 (vs 3 / 1 / mean_auc, where the 49
    # valid conversions of cart/ctcvr/cvr stopped it at epoch 3 while ctr still improved); on a generated log
    # (14 days x 12k) every model still stops at its best epoch 2, same AUC, one more epoch of time.
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    weighting: str = "fixed"
    task_weights: tuple[float, ...] = ()  # empty = 1.0 for every task
    # sqrt: each task's loss weight is also multiplied by the square root of its sample space's share of the train
    # rows (cvr: the click rate), so a task averaged over few rows cannot push the shared layers as hard as one
    # averaged over all; none: task_weights only. The id table learns at lr x embedding_lr_scale: SparseAdam moves a
    # row only in a batch that has its id (each user ~9 times an epoch at 1.8M rows / 200k users).
    # Measured (issue 11): bench/train_bench.py --peer-config, seeds 0-2, test ctr 0.7526 -> 0.7542 (cart, ctcvr
    # +0.002, cvr the same; torch-rechub 0.7535); quality_bench generated 14 x 150k, MTL mean AUC 0.7755 -> 0.7764.
    sample_space_weighting: str = "sqrt"
    embedding_lr_scale: float = 5.0
    patience: int = 2
    early_stop_metric: str = "weighted_auc"  # or "mean_auc" or "auc:<task>"; weighted: by sqrt of valid positives
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    compile: bool = False
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 (also on CPU) | fp32
    adversarial: str = "none"  # none | fgm
    fgm_epsilon: float = 0.5
    baselines: bool = True
    gbdt_baselines: bool = True  # also one LightGBM per task (gbdt_<task>), compared like the DNN baselines
    # Distributed training (pipeline.training.launch): processes per host, hosts, this host's rank, and the
    # rendezvous host:port when nnodes > 1. 1 x 1 = train in the calling process.
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    # Gradients of the large id table: sparse (SparseAdam, only the batch's rows move) or dense (Adam);
    # auto = sparse in one process, dense under DDP (NCCL has no sparse all-reduce).
    embedding_grad: str = "auto"
    # Each task's tower from its own best valid epoch (an epoch that improves any task also resets the patience),
    # kept only when that composite is no worse on the valid stop metric (pipeline.training.fitting.fit).
    per_task_best: bool = True
    # Select the epoch count on valid, then train again from scratch on train + valid for that many epochs: the
    # refit model is the one registered and served; the selected one is kept as models/mtl_selected for the report.
    # Off by default (measured): on Hillstrom the refit MTL model's test AUC was 0.637 vs 0.638 selected (ctr),
    # 0.712 vs 0.716 (cart); on a generated log (14 days x 12k) ctr 0.746 vs 0.747, cart 0.741 vs 0.742, cvr
    # 0.744 vs 0.733: one more valid day on 12 train days buys no clear gain, and it costs a second training.
    refit: bool = False


@dataclass(frozen=True)
class GbdtConfig:
    """The LightGBM baseline per task (pipeline.training.gbdt): early stopping on the valid window's AUC."""

    # Small, well-filled leaves: on a 12-day x 25k log, 15 leaves x >= 500 rows beat 63 x 50 by ~0.01 AUC.
    num_leaves: int = 15
    learning_rate: float = 0.05
    max_rounds: int = 1000
    early_stopping_rounds: int = 30
    min_data_in_leaf: int = 500
    max_cardinality: int = 1000  # categoricals with more ids are left to their history features
    feature_fraction: float = 0.8
    lambda_l2: float = 1.0
    cat_smoothing: float = 10.0
    n_jobs: int = 2  # LightGBM otherwise takes every core of the machine
    seed: int = 42


@dataclass(frozen=True)
class GateConfig:
    """Per-task thresholds on paired request-level bootstrap intervals of (challenger - reference) test AUC."""

    # Non-inferiority to the champion: the interval's lower bound must be >= -champion_margin on every task it serves.
    champion_margin: float = 0.01
    # At least one task significantly better than the champion (lower bound > 0), on top of non-inferiority.
    require_improvement: bool = False
    # Vs every baseline (baseline_<task>, gbdt_<task>): the interval's lower bound must be >= -this.
    max_baseline_regression: float = 0.02
    bootstrap: int = 200  # request resamples for the 95% intervals; 0 = point estimates only


# Keys that were removed, with what replaced them: an old config naming one gets a ConfigError that says so.
REMOVED_KEYS = {
    "gate.min_champion_delta": "gate.champion_margin (non-inferiority: the lower bound of challenger - champion "
                               "must be >= -champion_margin)",
    "gate.require_significance": "gate.require_improvement (every gate rule now reads the bootstrap interval; "
                                 "require_improvement asks for one task significantly better than the champion)",
}


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "ecommerce-mtl"
    experiment: str = "ecommerce-mtl"
    tracking_uri: str = ""  # empty = MLFLOW_TRACKING_URI or sqlite:///<home>/mlflow.db
    connect_retries: int = 3  # attempts to reach the tracking server before RegistryError
    retry_wait_s: float = 2.0  # wait between attempts (doubles each time)


@dataclass(frozen=True)
class ServingConfig:
    """Fused ranking score = p_ctr^a * p_cvr^b * price^c (exponents per name; absent = 0)."""

    score_exponents: tuple[tuple[str, float], ...] = (("ctr", 1.0), ("cvr", 1.0), ("price", 0.0))
    # A home whose lake holds published days: serving computes history features from its newest days and joins
    # missing user/item columns from its newest snapshots ("" = the history snapshot bundled with the model).
    history_from: str = ""
    # Where serving caches the encoder vectors of texts not in the model's table ("" = <home>/text_cache).
    text_cache: str = ""


@dataclass(frozen=True)
class Config:
    home: str = ".mtl"
    dry_run: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gbdt: GbdtConfig = field(default_factory=GbdtConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (e.g. {'model.name': 'mmoe'}), for MLflow params and the trigger form."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            if isinstance(v, dict):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                out[k] = v
        return out

    def hash(self) -> str:
        """Stable hash of everything except `home` (where it runs does not change what it computes)."""
        d = self.to_dict()
        d.pop("home")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise ConfigError naming the key."""
    origin = get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise TypeError(f"expected true/false, got {value!r}")
        if typ is str and isinstance(value, bool):  # YAML reads `false`/`true` as booleans
            return "true" if value else "false"
        if typ in (int, float, str):
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise TypeError(f"expected an integer, got {value!r}")
            if typ is not str and isinstance(value, bool):
                raise TypeError(f"expected a number, got {value!r}")
            return typ(value)
        if origin is tuple:
            args = get_args(typ)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, dict):
                value = list(value.items())
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) != len(args):
                raise TypeError(f"expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None
    raise ConfigError(f"config key '{key}': unsupported type {typ}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    removed = sorted(prefix + u for u in unknown if prefix + u in REMOVED_KEYS)
    if removed:
        raise ConfigError("; ".join(f"config key '{k}' was removed: use {REMOVED_KEYS[k]}" for k in removed))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(prefix + u for u in unknown))}")
    kwargs = {}
    for name, value in values.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{prefix}{name}' must be a mapping")
            kwargs[name] = _build(typ, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, typ, prefix + name)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'model.name=ple' -> ('model.name', 'ple'); the value is read as YAML ('[ctr, cvr]' -> list)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    home: str | os.PathLike | None = None,
) -> Config:
    """Defaults <- YAML file <- overrides (list of 'k=v' or dict of dotted keys) <- home; validated once."""
    tree: dict[str, Any] = {}
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree = loaded
    pairs = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in pairs:
        _set_dotted(tree, key, value)
    if home is not None:
        tree["home"] = str(home)
    elif "home" not in tree:
        tree["home"] = os.environ.get("MTL_HOME", ".mtl")
    cfg = _build(Config, tree)
    validate_config(cfg)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> str:
    """Write `cfg` as JSON (which `load_config` reads back to an equal Config) atomically; returns `cfg.hash()`.

    The DAG writes the run's resolved config once, and every later task reads that file: a config file edited
    while a run is under way does not change the run halfway."""
    from pipeline.io import write_json

    write_json(Path(path), cfg.to_dict())
    return cfg.hash()
