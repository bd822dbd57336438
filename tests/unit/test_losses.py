"""Contrastive losses against their formulas, and the ContrastiveTask / build_task contract."""
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from mmfm.config import ConfigError, load_experiment
from mmfm.tasks import build_task
from mmfm.tasks.losses import ContrastiveLoss


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_clip_loss_is_symmetric_infonce():
    img, txt = _features()
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(ContrastiveLoss("clip")(img, txt, scale), expected, atol=1e-6)
    # a logit bias shifts every logit equally: InfoNCE is unchanged
    assert torch.allclose(ContrastiveLoss("clip")(img, txt, scale, torch.tensor(-3.0)), expected, atol=1e-5)


def test_siglip_loss_is_pairwise_sigmoid_and_needs_a_bias():
    img, txt = _features()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    logits = scale * img @ txt.T + bias
    signs = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 6
    assert torch.allclose(ContrastiveLoss("siglip")(img, txt, scale, bias), expected, atol=1e-5)
    with pytest.raises(ValueError, match="logit bias"):
        ContrastiveLoss("siglip")(img, txt, scale)
    with pytest.raises(ValueError, match="same shape"):
        ContrastiveLoss("clip")(img, txt[:3], scale)


def test_contrastive_task_forward_processor_and_loss_goes_down():
    from PIL import Image
    cfg = load_experiment(data={"model": {"name": "tiny"}, "data": {"text_key": "txt"}})
    torch.manual_seed(0)
    task = build_task(cfg)
    proc = pickle.loads(pickle.dumps(task.processor(train=True)))    # loader workers get a copy
    colors = ["red", "green", "blue", "yellow"]
    samples = [proc({"image": Image.new("RGB", (48, 40), c), "txt": f"a {c} square", "json": {}, "cls": 0,
                     "__key__": f"k{i}"}) for i, c in enumerate(colors)]
    assert samples[0]["image"].shape == (3, 32, 32) and samples[0]["text_ids"].shape == (16,)
    assert samples[0]["key"] == "k0" and samples[0]["attention_mask"].sum() == 5
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "text_ids", "attention_mask")}
    out = task(batch)
    assert set(out) >= {"loss", "logit_scale", "i2t_acc"} and out["loss"].requires_grad
    assert math.isclose(float(out["logit_scale"]), 1 / 0.07, rel_tol=1e-5)
    again = task.compute_loss(task.encode(batch))
    assert torch.allclose(again["loss"], out["loss"])
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    first = float(out["loss"].detach())
    for _ in range(15):
        opt.zero_grad()
        loss = task(batch)["loss"]
        loss.backward()
        opt.step()
    assert float(task(batch)["loss"].detach()) < first * 0.5     # overfits one batch
    with pytest.raises(KeyError, match="k9.*'txt'"):
        proc({"image": Image.new("RGB", (8, 8)), "__key__": "k9"})


def test_build_task_registry_and_siglip_config_check():
    with pytest.raises(ConfigError, match="init_logit_bias"):
        build_task(load_experiment(data={"model": {"name": "tiny"}, "task": {"contrastive": {"loss": "siglip"}}}))
    task = build_task(load_experiment(data={"model": {"name": "tiny", "init_logit_bias": -10.0},
                                            "task": {"contrastive": {"loss": "siglip"}}}))
    assert task.loss.kind == "siglip"
    with pytest.warns(UserWarning, match="has a logit bias .* task.contrastive.loss: siglip"):
        build_task(load_experiment(data={"model": {"name": "tiny", "init_logit_bias": -10.0}}))
    with pytest.raises(ConfigError, match="task.name"):
        from mmfm.tasks import task_class
        task_class("segmentation")
