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


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", r"data\.batch_size: must be >= 1, got 0"),
    ("data.workers=-1", r"data\.workers: must be >= 0, got -1"),
    ("data.shuffle_buffer=-5", r"data\.shuffle_buffer: must be >= 0"),
    ("data.samples_per_epoch=0", r"data\.samples_per_epoch: must be >= 1"),
    ("data.timeout_s=0", r"data\.timeout_s: must be > 0"),
    ("data.train=[{path: a, weight: 0}]", r"data\.train\[0\]\.weight: must be > 0, got 0"),
    ("train.epochs=0", r"train\.epochs: must be >= 1"),
    ("train.max_steps=0", r"train\.max_steps: must be >= 1"),
    ("train.lr=-0.1", r"train\.lr: must be >= 0, got -0\.1"),
    ("train.warmup_steps=-1", r"train\.warmup_steps: must be >= 0"),
    ("train.grad_accum=0", r"train\.grad_accum: must be >= 1"),
    ("train.betas=[0.9, 1.0]", r"train\.betas\[1\]: must be >= 0 and < 1, got 1\.0"),
    ("train.eps=0", r"train\.eps: must be > 0"),
    ("train.log_every=0", r"train\.log_every: must be >= 1"),
    ("train.keep_last=0", r"train\.keep_last: must be >= 1"),
    ("train.min_lr_ratio=1.5", r"train\.min_lr_ratio: must be >= 0 and <= 1"),
    ("eval.batch_size=0", r"eval\.batch_size: must be >= 1"),
    ("eval.every_steps=0", r"eval\.every_steps: must be >= 1"),
    ("task.caption.label_smoothing=1", r"task\.caption\.label_smoothing: must be >= 0 and < 1"),
    ("task.caption.caption_weight=-1", r"task\.caption\.caption_weight: must be >= 0"),
    ("task.caption.caption_weight=0", r"task\.caption\.contrastive_weight, caption_weight: at least one"),
    ("task.vqa.max_answers=0", r"task\.vqa\.max_answers: must be >= 1"),
    ("task.distill.kd_weight=-1", r"task\.distill\.kd_weight: must be >= 0"),
    ("model.text.heads=0", r"model\.text\.heads: must be >= 1, got 0"),
    ("model.text.layers=0", r"model\.text\.layers: must be >= 1"),
    ("model.embed_dim=0", r"model\.embed_dim: must be >= 1"),
    ("generate.num_beams=0", r"generate\.num_beams: must be >= 1"),
    ("generate.top_p=0", r"generate\.top_p: must be > 0 and <= 1"),
    ("generate.batch_size=0", r"generate\.batch_size: must be >= 1"),
])
def test_sizes_counts_and_ratios_are_checked_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(data={}, overrides=[override])


def test_shard_build_and_demo_settings_ranges_are_checked():
    from mmfm.data.shards.options import BuildOptions
    from mmfm.demo.settings import DemoSettings

    for data, message in (({"holdout": 1.0}, r"^holdout: must be >= 0 and < 1"),
                          ({"image": {"quality": 0}}, r"image\.quality: must be >= 1 and <= 100"),
                          ({"download": {"threads": 0}}, r"download\.threads: must be >= 1"),
                          ({"text": {"max_answers": 0}}, r"text\.max_answers: must be >= 1"),
                          ({"distributor": {"partition_rows": 0}}, r"distributor\.partition_rows: must be >= 1"),
                          ({"distributor": {"address": "h:1"}}, r"distributor\.address: 'h:1' is a Ray cluster; "
                                                                r"it needs kind ray")):
        with pytest.raises(ConfigError, match=message):
            from_dict(BuildOptions, data)
    with pytest.raises(ConfigError, match=r"shards\.subsample: must be >= 1"):
        from_dict(DemoSettings, {"shards": {"subsample": 0}})


def test_cli_batch_size_zero_is_a_config_error_not_a_traceback(tmp_path):
    """`mmfm train --set data.batch_size=0` on real shards: exit 2 and the key named, not a ZeroDivisionError."""
    from tests.integration.train_helpers import PY, make_shards, run, write_config

    cfg = write_config(tmp_path / "exp.yaml", make_shards(tmp_path / "shards", 4, 4), tmp_path / "run")
    proc = run([PY, "-m", "mmfm", "train", str(cfg), "--set", "data.batch_size=0"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.batch_size: must be >= 1, got 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("spec, model", [
    ("openclip:ViT-B-32:/data/epoch_32.pt", {"kind": "clip", "openclip": "ViT-B-32"}),
    ("openclip:ViT-B-32@laion2b_s34b_b79k", {"kind": "clip", "openclip": "ViT-B-32"}),
    ("openclip:hf-hub:org/repo", {"kind": "clip", "openclip": "hf-hub:org/repo"}),
    ("hf:/models/siglip", {"kind": "clip", "source": "hf:/models/siglip"}),
    ("runs/clip", None)])
def test_init_from_spec_gives_the_missing_model_section(spec, model):
    from mmfm.config.model import ModelConfig
    cfg = load_experiment(data={"train": {"init_from": spec}})
    assert cfg.model == from_dict(ModelConfig, model or {})      # an mmfm folder gives none: the default stays
    given = load_experiment(data={"model": {"name": "tiny"}, "train": {"init_from": spec}})
    assert given.model.openclip is None and given.model.source is None          # a given section wins


@pytest.mark.parametrize("model", [
    {"lora": {"r": 4}},
    {"vision": {"lock": True, "unlock_last_groups": 2}},
    {"kind": "clip", "text": {"lock": True, "grad_checkpointing": True}, "lora": {"towers": ["visual"]}},
    {"name": None, "lora": {}}])                   # a recipe's model.name cleared with --set model.name=null
def test_a_training_only_model_section_merges_with_the_init_from_spec(model):
    """A model section that only says how to train (lora, lock, ...) beside an architecture-defining init_from
    spec used to replace the spec's section: the model was then mmfm's default CLIP, and init_from refused it."""
    cfg = load_experiment(data={"model": model, "train": {"init_from": "openclip:ViT-B-32:/data/epoch_32.pt"}})
    assert cfg.model.openclip == "ViT-B-32" and cfg.model.kind == "clip"
    assert (cfg.model.lora is not None) == ("lora" in model)
    assert cfg.model.vision.lock == model.get("vision", {}).get("lock", False)
    assert cfg.model.text.lock == model.get("text", {}).get("lock", False)
    cfg = load_experiment(data={"model": model, "train": {"init_from": "hf:/models/siglip"}})
    assert cfg.model.source == "hf:/models/siglip" and cfg.model.openclip is None
    # an mmfm folder defines no section: the given one stays as it is; an architecture key keeps the section whole
    assert load_experiment(data={"model": model, "train": {"init_from": "runs/clip"}}).model.openclip is None
    arch = load_experiment(data={"model": {**model, "vision": {"timm_model": "resnet18"}},
                                 "train": {"init_from": "openclip:ViT-B-32"}})
    assert arch.model.openclip is None and arch.model.vision.timm_model == "resnet18"


def test_model_source_is_checked():
    with pytest.raises(ConfigError, match=r"model.source: expected hf:DIR_OR_ID"):
        load_experiment(data={"model": {"source": "/models/clip"}})
    with pytest.raises(ConfigError, match=r"model.source: set either model.source .* or model.openclip"):
        load_experiment(data={"model": {"source": "hf:x", "openclip": "ViT-B-32"}})
