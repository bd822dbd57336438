"""ONNX export parity: every exported graph, run in onnxruntime, matches PyTorch on inputs it never saw
(other batch sizes, padded texts, longer decoder prefixes), and greedy decoding through the ONNX captioner
gives the same tokens as transformers' generate."""
import json

import numpy as np
import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.export import export
from mmfm.export.onnx import OnnxCaptioner, OnnxCLIP
from mmfm.models import build_model, save_pretrained

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clip") / "ckpt"
    save_pretrained(build_model("tiny"), None, d)
    return d


@pytest.fixture(scope="module")
def captioner_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cap") / "ckpt"
    save_pretrained(build_model("tiny_captioner"), None, d)
    return d


def test_clip_towers_match_pytorch_in_onnxruntime(clip_ckpt, tmp_path):
    out = tmp_path / "onnx"
    info = export(clip_ckpt, "onnx", out, exporter="torchscript")
    assert sorted(p.name for p in out.iterdir()) == ["image_encoder.onnx", "onnx_config.json", "text_encoder.onnx"]
    cfg = json.loads((out / "onnx_config.json").read_text())
    assert cfg["kind"] == "clip" and cfg["tokenizer"] == "openclip-bpe" and cfg["preprocess"]["input_size"] == [3, 32, 32]
    assert max(info["parity"].values()) < 1e-5
    model, runtime = mmfm.load(clip_ckpt), OnnxCLIP(out)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(5, 3, 32, 32, generator=g)                 # batch 5: export saw 2
    texts = ["a", "a red circle on a white ground", "two blue squares", "", "x " * 40]
    tok = model.tokenizer(texts)
    with torch.no_grad():
        ref_i = model.encode_image(images, normalize=True)
        ref_t = model.encode_text(tok["text_ids"], tok["attention_mask"], normalize=True)
    np.testing.assert_allclose(runtime.embed_images(images), ref_i.numpy(), atol=1e-5)
    np.testing.assert_allclose(runtime.embed_texts(tok["text_ids"], tok["attention_mask"]), ref_t.numpy(), atol=1e-5)
    # the scores a user computes from the exported graphs equal mmfm's classify
    probs = torch.from_numpy(cfg["logit_scale"] * runtime.embed_images(images[:2]) @ runtime.embed_texts(
        tok["text_ids"][:3], tok["attention_mask"][:3]).T).softmax(-1)
    expected = [r["score"] for r in model.classify(images[:2], texts[:3], templates="{}")]
    assert np.allclose(probs.max(-1).values.numpy(), expected, atol=1e-4)


def test_captioner_graphs_match_and_greedy_decoding_equals_generate(captioner_ckpt, tmp_path):
    out = tmp_path / "onnx"
    info = export(captioner_ckpt, "onnx", out, exporter="torchscript")
    assert {p.name for p in out.iterdir()} == {"vision_encoder.onnx", "decoder.onnx", "onnx_config.json"}
    assert max(info["parity"].values()) < 1e-4
    model, runtime = mmfm.load(captioner_ckpt), OnnxCaptioner(out)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(4, 3, 32, 32, generator=g)
    ids = torch.randint(3, 40000, (4, 11), generator=g)           # 11 tokens: export saw 5
    with torch.no_grad():
        tokens = model.image_tokens(images)
        logits = model(text_ids=ids, attention_mask=torch.ones_like(ids), image_tokens=tokens)["logits"]
    np.testing.assert_allclose(runtime.image_tokens(images), tokens.numpy(), atol=1e-5)
    np.testing.assert_allclose(runtime.logits(ids, torch.ones_like(ids), tokens), logits.numpy(), atol=1e-4)
    ref = model.generate_ids(images, [[]] * 4, max_new_tokens=6, min_new_tokens=6)
    assert np.array_equal(runtime.greedy(images, max_new_tokens=6), ref.numpy())


def test_bad_exporter_and_format_are_named(clip_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="exporter"):
        export(clip_ckpt, "onnx", tmp_path / "x", exporter="jit")
    with pytest.raises(ConfigError, match="Did you mean 'onnx'"):
        export(clip_ckpt, "onxx", tmp_path / "x")
    with pytest.raises(ConfigError, match="not an mmfm ONNX export"):
        OnnxCLIP(tmp_path)
    assert not (tmp_path / "x").exists()
