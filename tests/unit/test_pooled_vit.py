"""The class-token-only last block (mmfm.models.pooled) gives the library's own embedding and gradients."""
from __future__ import annotations

import pytest
import torch

from mmfm.models import pooled


def _timm_vit(**kw):
    import timm
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args)


def _grads(model, fn, x):
    model.zero_grad(set_to_none=True)
    out = fn(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "init_values": 0.1}, {"reg_tokens": 2},
                                {"drop_path_rate": 0.2}, {"checkpointing": True}])
def test_timm_vit_pooled_equals_timm_forward_and_gradients(kw):
    torch.manual_seed(0)
    checkpointing = kw.pop("checkpointing", False)
    model = _timm_vit(**kw).double()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(3, 3, 32, 32, dtype=torch.double)
    model.eval()
    with torch.no_grad():
        fast = pooled.timm_vit_pooled(model, x)
        assert fast is not None
        torch.testing.assert_close(fast, model(x), rtol=0, atol=1e-10)
    model.train()                       # drop path draws one number per sample: the same on both paths
    torch.manual_seed(1)
    ref_out, ref = _grads(model, model, x)
    torch.manual_seed(1)
    out, got = _grads(model, lambda t: pooled.timm_vit_pooled(model, t), x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-10, msg=name)


def test_timm_vit_pooled_declines_what_it_does_not_know():
    x = torch.randn(2, 3, 32, 32)
    assert pooled.timm_vit_pooled(_timm_vit(global_pool="avg"), x) is None       # every token is pooled
    assert pooled.timm_vit_pooled(_timm_vit(global_pool="map"), x) is None       # attention pooling
    assert pooled.timm_vit_pooled(_timm_vit(proj_drop_rate=0.1).train(), x) is None   # different dropout draws
    assert pooled.timm_vit_pooled(_timm_vit(proj_drop_rate=0.1).eval(), x) is not None
    m = _timm_vit()
    m.blocks[-1].attn.qkv = torch.nn.Sequential(m.blocks[-1].attn.qkv)   # a wrapped projection (LoRA, int8)
    assert pooled.timm_vit_pooled(m, x) is None
    import timm
    assert pooled.timm_vit_pooled(timm.create_model("resnet10t", num_classes=0), x) is None


def test_vision_tower_uses_it_and_keeps_its_output():
    from mmfm.models.towers import TimmVisionTower
    torch.manual_seed(0)
    tower = TimmVisionTower("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 48, "depth": 2,
                                                     "num_heads": 3}, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    tower.trunk.blocks[-1].mlp.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    with torch.no_grad():
        out = tower(x)
        assert calls == [(2, 1, 48)]          # the last MLP ran on the class token only
        torch.testing.assert_close(out, tower.trunk(x), rtol=1e-5, atol=1e-6)
        assert calls[-1] == (2, 17, 48)       # the library's forward: all 16 patches + the class token


def _openclip_visual():
    from open_clip.transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=4.0,
                             output_dim=16)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_openclip_vit_pooled_equals_open_clip_forward_and_gradients(checkpointing):
    torch.manual_seed(0)
    visual = _openclip_visual().double()
    visual.set_grad_checkpointing(checkpointing)
    x = torch.randn(3, 3, 32, 32, dtype=torch.double)
    visual.eval()
    with torch.no_grad():
        torch.testing.assert_close(pooled.openclip_vit_pooled(visual, x), visual(x), rtol=0, atol=1e-10)
    visual.train()
    ref_out, ref = _grads(visual, visual, x)
    out, got = _grads(visual, lambda t: pooled.openclip_vit_pooled(visual, t), x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-10, msg=name)
    from open_clip.transformer import VisionTransformer
    avg = VisionTransformer(image_size=32, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=4.0,
                            output_dim=16, pool_type="avg")
    assert pooled.openclip_vit_pooled(avg, x.float()) is None


def test_openclip_model_encode_image_takes_the_short_path(tmp_path):
    import json

    from mmfm.models.openclip import OpenCLIPModel
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "mmfm-pooled-test.json").write_text(json.dumps(cfg))
    import open_clip
    open_clip.add_model_config(str(tmp_path))
    torch.manual_seed(0)
    m = OpenCLIPModel("mmfm-pooled-test").eval()
    calls = []
    m.model.visual.transformer.resblocks[-1].mlp.register_forward_hook(lambda *a: calls.append(a[1][0].shape[1]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = m.encode_image(x, normalize=True)
        ref = m.model.encode_image(x, normalize=True)
    assert calls == [1, 17]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_openclip_text_runs_trimmed_to_the_last_end_of_text_token(tmp_path):
    import json

    import open_clip

    from mmfm.models.openclip import OpenCLIPModel
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "mmfm-pooled-text.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path))
    torch.manual_seed(0)
    m = OpenCLIPModel("mmfm-pooled-text").double().eval()
    text = m.tokenizer(["a cat", "a photo of a small dog on a red mat"])["text_ids"]
    assert text.shape == (2, 20) and int(text.argmax(-1).max()) < 12
    lengths = []
    m.model.transformer.resblocks[0].register_forward_pre_hook(lambda mod, a: lengths.append(a[0].shape[1]))
    with torch.no_grad():
        got = m.encode_text(text, normalize=True)
        ref = m.model.encode_text(text, normalize=True)
    assert lengths == [int(text.argmax(-1).max()) + 1, 20]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    m.model.attn_mask = None                          # bidirectional: every position counts, no trimming
    assert pooled.openclip_text_pooled(m.model, text) is None
