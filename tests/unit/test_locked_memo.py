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
    with torch.no_grad():
        cached.encode_image(images)
    assert image_calls[-1] == 3 and len(image_calls) == calls + 1


def test_memo_needs_a_fully_locked_tower():
    with pytest.raises(ConfigError, match="cache_locked_features: needs a locked tower"):
        build_model({"name": "vit_minilm", "vision": {"lock": True, "unlock_last_groups": 1,
                                                      "cache_locked_features": True,
                                                      "timm_kwargs": {"patch_size": 8, "depth": 1}}})
    with pytest.raises(ConfigError, match="cache_locked_features: only for text.type: hf"):
        build_model({"name": "tiny", "text": {"lock": True, "cache_locked_features": True}})
