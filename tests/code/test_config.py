"""Config: defaults <- YAML <- overrides, validated once; the trigger form maps one-to-one onto config keys."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline import params as form
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("model:\n  name: ple\n  tasks: [ctr, cvr]\ntrain:\n  epochs: 5\n")
    cfg = load_config(conf, ["train.epochs=2", "text.enabled=false"], home=tmp_path)
    assert cfg.model.name == "ple"  # from YAML
    assert cfg.model.tasks == ("ctr", "cvr")  # YAML list -> tuple
    assert cfg.train.epochs == 2  # override beats YAML
    assert cfg.text.enabled is False
    assert cfg.data.train_days == Config().data.train_days  # untouched default
    assert cfg.home == str(tmp_path)


def test_config_is_frozen_and_hash_ignores_home(tmp_path):
    a = load_config(home=tmp_path / "a")
    b = load_config(home=tmp_path / "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.train.epochs = 9  # type: ignore[misc]
    assert a.hash() == b.hash()
    assert load_config(overrides=["train.epochs=9"], home=tmp_path).hash() != a.hash()


def test_home_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MTL_HOME", str(tmp_path / "h"))
    assert load_config().home == str(tmp_path / "h")
    monkeypatch.delenv("MTL_HOME")
    assert load_config().home == ".mtl"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model.nme=ple"], "model.nme"),
        (["nosection.x=1"], "nosection"),
        (["train.epochs=two"], "train.epochs"),
        (["train.epochs=1.5"], "train.epochs"),
        (["text.enabled=maybe"], "text.enabled"),
        (["model.name=transformer"], "model.name"),
        (["model.tasks=[ctr, clicks]"], "clicks"),
        (["model.tasks=[ctr, ctr]"], "duplicates"),
        (["train.weighting=magic"], "train.weighting"),
        (["data.test_days=0"], "data.test_days"),
        (["model.name=single_task"], "single_task"),
        (["train.early_stop_metric=auc:nope"], "early_stop_metric"),
        (["model=3"], "model"),
        (["train.epochs"], "key=value"),
        (["text.finetune=true"], "text.finetune=true is ambiguous"),
        (["text.finetune=yes"], "text.finetune=true is ambiguous"),
        (["text.finetune=sometimes"], "text.finetune must be one of"),
        (["text.finetune=joint", "text.enabled=false"], "text.enabled=true"),
        (["text.max_length=0"], "text.max_length"),
        (["text.max_length=1000"], "text.max_length"),
        (["text.max_chars=0"], "text.max_chars"),
        (["text.batch_size=0"], "text.batch_size"),
        (["text.proj_dim=0"], "text.proj_dim"),
        (["text.model= "], "text.model"),
        (["text.finetune_pairs=10"], "text.finetune_pairs"),
        (["text.finetune_batch_size=1"], "text.finetune_batch_size"),
        (["text.finetune_every_days=-1"], "text.finetune_every_days"),
        (["text.finetune_lr=0"], "text.finetune_lr"),
        (["text.finetune_layers=0"], "text.finetune_layers"),
        (["text.finetune=joint", "text.finetune_layers=7"], "text.finetune_layers=7 exceeds the 6 transformer"),
        (["text.finetune_heldout=0.9"], "text.finetune_heldout"),
        (["text.finetune_recall_k=0"], "text.finetune_recall_k"),
        (["text.finetune_epochs=0"], "text.finetune_epochs"),
        (["features.sequence_length=-1"], "features.sequence_length"),
        (["features.sequence_length=101"], "features.sequence_length"),
        (["features.sequence_length=5", "features.categorical=[user_id, category]"], "must also be in"),
        (["features.sequence_fields=[item_id, title]"], "features.sequence_fields"),
        (["features.sequence_fields=[]"], "features.sequence_fields"),
        (["text.finetune_coclick_share=1.5"], "text.finetune_coclick_share"),
    ],
)
def test_bad_overrides_raise_config_error_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(overrides=overrides)


def test_finetune_layers_are_checked_against_the_encoder_folder_without_transformers(tmp_path):
    """The layer count comes from the folder's config.json (checked at config time, no transformers import); a
    hub name that does not resolve locally is left to the trainer, which loads the encoder."""
    import subprocess
    import sys

    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text('{"num_hidden_layers": 3, "hidden_size": 8}')
    load_config(overrides=["text.finetune=joint", f"text.model={enc}", "text.finetune_layers=3"])
    with pytest.raises(ConfigError, match=r"text.finetune_layers=4 exceeds the 3 transformer layers"):
        load_config(overrides=["text.finetune=joint", f"text.model={enc}", "text.finetune_layers=4"])
    load_config(overrides=["text.finetune=joint", "text.model=some-org/not-here", "text.finetune_layers=40"])
    load_config(overrides=["text.finetune_layers=40"])  # frozen: the key does not apply
    code = ("import sys; from pipeline.config import load_config; load_config(overrides=['text.finetune=joint']); "
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_every_form_field_is_a_config_key_one_to_one():
    flat = Config().flat()
    names = [form.param_name(f.key) for f in form.FIELDS]
    assert len(set(names)) == len(names)
    for f in form.FIELDS:
        assert f.key in flat, f.key
        assert form.config_key(form.param_name(f.key)) == f.key
    assert not {form.LANDING, form.OVERRIDES} & set(names)


def test_form_values_become_the_run_config(monkeypatch, tmp_path):
    monkeypatch.delenv("MTL_CONFIG", raising=False)
    values = {"model__name": "ple", "model__tasks": ["ctr", "cvr"], "train__epochs": 4, "dry_run": True,
              "gate__max_baseline_regression": 0.02, "landing": "/somewhere",
              "overrides": ["model.embedding_dim=32", "train.lr=0.01"]}
    cfg = form.config_from_params(values, home=str(tmp_path))
    assert (cfg.model.name, cfg.model.tasks, cfg.train.epochs, cfg.dry_run) == ("ple", ("ctr", "cvr"), 4, True)
    assert cfg.gate.max_baseline_regression == 0.02
    assert cfg.model.embedding_dim == 32 and cfg.train.lr == 0.01
    with pytest.raises(ConfigError, match="model.tasks"):
        form.config_from_params({"model__tasks": ["ctr", "views"]})
    with pytest.raises(ConfigError, match="model.dimension"):
        form.config_from_params({"overrides": ["model.dimension=3"]})


def test_form_defaults_follow_mtl_config(monkeypatch, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("model: {name: esmm, tasks: [ctr, cvr]}\n")
    monkeypatch.setenv("MTL_CONFIG", str(conf))
    p = form.airflow_params()
    assert p["model__name"].value == "esmm"
    assert p["model__tasks"].value == ["ctr", "cvr"]
    assert p["model__name"].schema["enum"] == list(form.MODEL_NAMES)
    assert p["train__epochs"].schema["type"] == "integer" and p["dry_run"].schema["type"] == "boolean"
    assert all(p[n].schema.get("title") and p[n].description for n in p)


@pytest.mark.parametrize("value, mode", [("false", "false"), ("no", "false"), ("contrastive", "contrastive"),
                                         ("joint", "joint")])
def test_text_finetune_modes(value, mode):
    assert load_config(overrides=[f"text.finetune={value}"]).text.finetune == mode


def test_run_date_is_the_form_date_else_the_logical_date(monkeypatch):
    assert form.run_date({"date": "2026-01-15"}, "2026-12-01") == "2026-01-15"
    assert form.run_date({"date": None}, "2026-12-01") == "2026-12-01"
    with pytest.raises(ConfigError, match="`date`.*2026-13-01"):
        form.run_date({"date": "2026-13-01"}, None)
    with pytest.raises(ConfigError, match="no data date"):
        form.run_date({}, None)
    monkeypatch.setenv("MTL_LANDING_WAIT_HOURS", "0")
    assert form.airflow_params()[form.WAIT].value == 0
    monkeypatch.setenv("MTL_LANDING_WAIT_HOURS", "soon")
    with pytest.raises(ConfigError, match="MTL_LANDING_WAIT_HOURS"):
        form.wait_hours()


def test_readme_documents_every_config_key():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    text = readme[readme.index("## Configuration"):readme.index("## Layout")]
    bullets = {b.split("`")[1]: b for b in text.split("\n- ")[1:]}
    missing = []
    for key in Config().flat():
        section, _, name = key.rpartition(".")
        where = bullets.get(section or "home", "")  # top-level keys share the `home` bullet
        if f"`{name}`" not in where:
            missing.append(key)
    assert not missing, f"README 'Configuration' lacks {missing}"


def test_saved_config_reads_back_equal(tmp_path):
    """The DAG writes the run's resolved config once; every later task must get exactly that config back."""
    from pipeline.config import load_config, save_config

    cfg = load_config(overrides=["model.name=ple", "model.tasks=[ctr, cvr]", "serving.score_exponents={ctr: 2}",
                                 "features.numeric=[recency]", "gate.bootstrap=7"], home=tmp_path / "h")
    digest = save_config(cfg, tmp_path / "run" / "config.json")
    back = load_config(tmp_path / "run" / "config.json", home=tmp_path / "h")
    assert back == cfg and back.hash() == digest
