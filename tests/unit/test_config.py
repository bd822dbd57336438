import textwrap

import pytest

from mmfm.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_experiment, read_yaml, save_config


def test_defaults_build():
    cfg = from_dict(ExperimentConfig, {})
    assert cfg.task.name == "contrastive"
    assert cfg.train.lr > 0


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"train\.lrr.*Did you mean 'lr'"):
        from_dict(ExperimentConfig, {"train": {"lrr": 1.0}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        from_dict(ExperimentConfig, {"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"task\.name"):
        from_dict(ExperimentConfig, {"task": {"name": "contrastiv"}})


def test_overrides_parse_yaml_values():
    d = apply_overrides({}, ["train.lr=1e-4", "train.compile=true", "data.train=[{path: a}]"])
    cfg = from_dict(ExperimentConfig, d)
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.compile is True
    assert cfg.data.train[0].path == "a"


def test_base_inheritance_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\n")
    (tmp_path / "exp.yaml").write_text(textwrap.dedent("""
        _base_: base.yaml
        train:
          epochs: 5
    """))
    cfg = load_experiment(tmp_path / "exp.yaml", ["train.seed=7"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.seed) == (0.1, 5, 7)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_experiment(tmp_path / "out" / "config.yaml")
    assert again == cfg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_yaml(tmp_path / "bad.yaml")
