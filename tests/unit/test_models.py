"""CLIP model core: every named config builds, padding invariance, locking, logit scale, towers, scripting API."""
import math
from pathlib import Path

import pytest
import torch

from mmfm.config import ConfigError, load_experiment
from mmfm.models import build_model, get_model_config

ROOT = Path(__file__).resolve().parents[2]
MODEL_YAMLS = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))
SMALL = {"tiny", "bench_vit_tiny", "vit_minilm"}


def tiny(**changes):
    data = {"name": "tiny"}
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    torch.manual_seed(0)
    return build_model(data)


@pytest.mark.parametrize("name", MODEL_YAMLS)
def test_every_model_yaml_loads_and_builds(name):
    cfg = load_experiment(data={"model": {"name": name}}).model
    assert cfg.name == name
    model = build_model(cfg)
    size = model.preprocess["input_size"][-1]
    assert model.tokenizer.pad_token_id is not None and model.model_cfg == cfg
    if cfg.kind != "clip":              # captioners: built here, exercised by the caption tests
        return
    assert model.tokenizer.context_length == cfg.text.context_length
    if name in SMALL:
        image = torch.randn(2, 3, size, size)
        tok = model.tokenizer(["a photo", "two words here"])
        out = model(image, tok["text_ids"], tok["attention_mask"])
        assert out["image_features"].shape == out["text_features"].shape == (2, cfg.embed_dim)
        assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)


def test_named_config_merges_under_user_keys_and_unknown_names_suggest():
    cfg = load_experiment(data={"model": {"name": "tiny", "embed_dim": 48, "text": {"layers": 1}}},
                          overrides=["model.vision.image_size=16"]).model
    assert (cfg.embed_dim, cfg.text.layers, cfg.text.width, cfg.vision.image_size) == (48, 1, 32, 16)
    assert cfg.vision.timm_kwargs["patch_size"] == 8
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        load_experiment(data={"model": {"name": "tinny"}})
    with pytest.raises(ConfigError, match="model.vision.timm_modl"):
        load_experiment(data={"model": {"name": "tiny", "vision": {"timm_modl": "x"}}})
    assert get_model_config("tiny") == get_model_config({"name": "tiny"})


def test_text_embedding_and_loss_ignore_padding_openclip_and_hf():
    from mmfm.data.tokenizers import build_tokenizer
    torch.manual_seed(0)
    texts = ["a cat", "a much longer caption about a dog on a red sofa"]
    for name in ("tiny", "vit_minilm"):
        model = build_model(name).eval()
        short = model.tokenizer(texts)
        kind = "hf" if model.model_cfg.text.type == "hf" else "openclip"
        longer = build_tokenizer(kind, model.model_cfg.text.hf_path, context_length=60)(texts)
        assert longer["text_ids"].shape[1] > short["text_ids"].shape[1]
        with torch.no_grad():
            a = model.encode_text(short["text_ids"], short["attention_mask"])
            b = model.encode_text(longer["text_ids"], longer["attention_mask"])
            c = torch.cat([model.encode_text(**{k: v[i:i + 1] for k, v in short.items()}) for i in range(2)])
        assert torch.allclose(a, b, atol=1e-5), name
        assert torch.allclose(a, c, atol=1e-5), name       # batched (padded) == one text at a time


def test_contrastive_loss_same_for_padded_and_unpadded_batch():
    from mmfm.tasks import build_task
    cfg = load_experiment(data={"model": {"name": "tiny", "text": {"context_length": 40}}})
    torch.manual_seed(0)
    task = build_task(cfg).eval()
    tok = task.tokenizer(["a cat", "a dog", "red", "blue square"])
    image = torch.randn(4, 3, 32, 32)
    full = task({"image": image, **tok})["loss"]
    n = int(tok["attention_mask"].sum(1).max())
    trimmed = task({"image": image, "text_ids": tok["text_ids"][:, :n], "attention_mask": tok["attention_mask"][:, :n]})
    assert torch.allclose(full, trimmed["loss"], atol=1e-6)


def test_vision_lock_and_unlock_last_groups():
    model = tiny(vision__lock=True)
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.image_proj.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    # timm groups of this 2-block ViT: 0 = stem, 1 = block 0, 2 = block 1 + final norm
    model = tiny(vision__lock=True, vision__unlock_last_groups=1)
    trunk = model.visual.trunk
    assert not trunk.blocks[0].mlp.fc1.weight.requires_grad and not trunk.patch_embed.proj.weight.requires_grad
    assert trunk.blocks[1].mlp.fc1.weight.requires_grad and trunk.norm.weight.requires_grad
    model = tiny(vision__lock=True, vision__unlock_last_groups=2)
    trunk = model.visual.trunk
    assert trunk.blocks[0].mlp.fc1.weight.requires_grad and not trunk.patch_embed.proj.weight.requires_grad
    with pytest.raises(ConfigError, match="only meaningful with model.vision.lock"):
        tiny(vision__unlock_last_groups=1)


def test_text_lock_keeps_projection_trainable():
    model = tiny(text__lock=True)
    frozen = [n for n, p in model.text.named_parameters() if not p.requires_grad]
    assert "token_embedding.weight" in frozen and "transformer.resblocks.1.attn.in_proj_weight" in frozen
    assert model.text.text_projection.requires_grad
    model = tiny(text__lock=True, text__unlock_last_groups=1)
    assert model.text.transformer.resblocks[1].attn.in_proj_weight.requires_grad
    assert not model.text.transformer.resblocks[0].attn.in_proj_weight.requires_grad
    hf = build_model({"name": "vit_minilm", "text": {"lock": True, "unlock_last_groups": 1}})
    layers = hf.text.transformer.encoder.layer
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not hf.text.transformer.embeddings.word_embeddings.weight.requires_grad
    assert hf.text.proj.weight.requires_grad


def test_locked_towers_stay_in_eval_mode_through_train():
    """lock() freezes a tower for good: after model.train() its frozen part runs without dropout / drop-path, so
    two training-mode passes agree (the LiT demo's locked MiniLM has dropout 0.1); unlocked layers still train."""
    hf = build_model({"name": "vit_minilm", "text": {"lock": True}}).train()
    assert hf.text.transformer.config.hidden_dropout_prob > 0
    tok = hf.tokenizer(["a red emoji", "two cats on a sofa"])
    assert torch.equal(hf.encode_text(**tok), hf.encode_text(**tok))
    assert not hf.text.transformer.training and hf.text.proj.training and hf.visual.training
    hf.eval().train()                                        # every later train() keeps it so
    assert not hf.text.transformer.training
    part = build_model({"name": "vit_minilm", "text": {"lock": True, "unlock_last_groups": 1}}).train()
    layers = part.text.transformer.encoder.layer
    assert layers[-1].training and not layers[0].training and not part.text.transformer.embeddings.training

    drop = {"proj_drop_rate": 0.5, "drop_path_rate": 0.5}
    x = torch.randn(2, 3, 32, 32)
    free = tiny(vision__timm_kwargs=drop).train()
    assert not torch.equal(free.encode_image(x), free.encode_image(x))      # dropout is on: the check has teeth
    locked = tiny(vision__lock=True, vision__timm_kwargs=drop, text__lock=True).train()
    assert torch.equal(locked.encode_image(x), locked.encode_image(x))
    assert not locked.visual.trunk.training and locked.image_proj.training and not locked.text.transformer.training
    trunk = tiny(vision__lock=True, vision__unlock_last_groups=1, vision__timm_kwargs=drop).train().visual.trunk
    assert not trunk.blocks[0].training and not trunk.patch_embed.training and trunk.blocks[1].training


def test_grad_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = tiny(vision__grad_checkpointing=ckpt, text__grad_checkpointing=ckpt)
        tok = model.tokenizer(["a b c", "d"])
        torch.manual_seed(1)
        out = model(torch.randn(2, 3, 32, 32), tok["text_ids"], tok["attention_mask"])
        (out["image_features"] @ out["text_features"].T).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].numel() == grads[1].numel() and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_logit_scale_clamped_at_100_and_optional_bias():
    model = tiny()
    assert math.isclose(float(model()["logit_scale"].detach()), 1 / 0.07, rel_tol=1e-5)
    assert model()["logit_bias"] is None
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(float(model()["logit_scale"].detach()), 100.0, rel_tol=1e-6)
    biased = tiny(init_logit_bias=-10.0, init_logit_scale=math.log(10))
    assert float(biased()["logit_bias"].detach()) == -10.0


def test_vision_tower_tokens_and_local_pretrained_weights(tmp_path):
    from safetensors.torch import save_file
    from mmfm.models import TimmVisionTower
    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(0)
    tower = TimmVisionTower("vit_tiny_patch16_224", kwargs, image_size=32)
    assert tower.forward_tokens(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 16, 32)
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, tower.width) and tower.width == 32
    save_file({k: v.contiguous() for k, v in tower.trunk.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = TimmVisionTower("vit_tiny_patch16_224", kwargs, pretrained=str(tmp_path / "w.safetensors"), image_size=32)
    for k, v in tower.trunk.state_dict().items():
        assert torch.equal(v, loaded.trunk.state_dict()[k]), k
    clip_style = TimmVisionTower("vit_tiny_patch16_224", kwargs, image_size=32,
                                 preprocess={"crop_pct": 1.0, "mean": [0.1, 0.2, 0.3], "scale": [0.5, 1.0]})
    assert clip_style.preprocess["crop_pct"] == 1.0 and clip_style.preprocess["mean"] == [0.1, 0.2, 0.3]
    assert clip_style.preprocess["input_size"] == [3, 32, 32] and clip_style.preprocess["scale"] == [0.5, 1.0]
    cnn = TimmVisionTower("resnet18", {}, image_size=64)
    assert cnn.preprocess["input_size"] == [3, 64, 64]
    assert cnn.forward_tokens(torch.randn(1, 3, 64, 64)).shape == (1, 4, 512)
    with pytest.raises(ConfigError, match="not found"):
        TimmVisionTower("resnet18", {}, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="not a timm model"):
        TimmVisionTower("vit_tinny_patch16_224")


def test_token_id_hygiene_checks_vocab_size():
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model({"name": "tiny", "text": {"vocab_size": 1000}})
    with pytest.raises(ConfigError, match="hf_path"):
        load_experiment(data={"model": {"name": "tiny", "text": {"type": "hf"}}})


def test_scripting_api_embed_and_classify(tmp_path):
    from PIL import Image
    model = tiny()
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    images[2].save(tmp_path / "g.png")
    feats = model.embed_images([images[0], images[1], str(tmp_path / "g.png")])
    assert feats.shape == (3, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.embed_images(images[2]), feats[2:], atol=1e-6)
    texts = model.embed_texts(["red", "blue"])
    assert texts.shape == (2, 32)
    res = model.classify(images, ["red", "blue", "green"], templates=["a {} square.", "{}"])
    assert len(res) == 3 and {r["label"] for r in res} <= {"red", "blue", "green"}
    assert all(abs(sum(p for _, p in r["top"]) - 1) < 1e-5 for r in res)
    assert model.training                                    # restored after inference
    with pytest.raises(ValueError, match="placeholder"):
        model.classify(images, ["a", "b"], templates=["no slot"])


def test_inference_runs_big_vision_batches_in_chunks_with_the_same_result(monkeypatch):
    """A big inference batch goes through the vision trunk in chunks (the demo's 256-image val batch of a CNN at
    128 px held ~0.5 GB more otherwise); the result equals one pass, and training still runs one pass."""
    from mmfm.models import towers
    monkeypatch.setattr(towers, "EVAL_CHUNK", 4)
    torch.manual_seed(0)
    visual = build_model("tiny").visual.eval()
    calls = []       # the patch embedding: the ViT's pooled path (mmfm.models.pooled) bypasses trunk.forward
    visual.trunk.patch_embed.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    image = torch.randn(10, 3, *visual.preprocess["input_size"][1:])
    with torch.no_grad():
        whole = visual.trunk(image)
        calls.clear()
        chunked = visual(image)
    assert calls == [4, 4, 2] and torch.allclose(chunked, whole, atol=1e-6)
    calls.clear()
    visual.train()
    visual(image).sum().backward()
    assert calls == [10]
