"""The contrastive task's fairness options: per-sample weights (data.balance mode weight) and the group-loss-gap
regulariser (task.contrastive.fairness_weight), checked against hand computations and the library loss."""
import pytest
import torch
import torch.nn.functional as F

from mmfm.config import ConfigError, load_experiment
from mmfm.tasks import build_task
from mmfm.tasks.contrastive import group_loss_gap, row_losses
from mmfm.tasks.losses import ContrastiveLoss


def _feats(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_row_losses_average_to_the_library_loss():
    img, txt = _feats()
    scale = torch.tensor(10.0)
    assert row_losses(img, txt, scale).mean() == pytest.approx(float(ContrastiveLoss("clip")(img, txt, scale)), 1e-5)
    bias = torch.tensor(-3.0)
    sig = ContrastiveLoss("siglip")(img, txt, scale, bias)
    assert row_losses(img, txt, scale, bias, "siglip").sum() / 6 == pytest.approx(float(sig), 1e-5)


def test_group_loss_gap_by_hand():
    rows = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert float(group_loss_gap(rows, torch.tensor([0, 0, 1, 1]))) == pytest.approx(4.0 - 1.5)
    assert float(group_loss_gap(rows, torch.tensor([2, 2, 2, 2]))) == 0.0


def _task(fair=0.0):
    cfg = load_experiment(data={"model": {"name": "tiny"}, "task": {"contrastive": {"fairness_weight": fair}}})
    torch.manual_seed(0)
    return build_task(cfg).train()


def _batch(task, n=4):
    tok = task.tokenizer([f"a photo number {i}" for i in range(n)])
    size = task.model.preprocess.get("input_size", 32) if hasattr(task.model, "preprocess") else 32
    size = size[-1] if isinstance(size, (list, tuple)) else size
    torch.manual_seed(1)
    return {"image": torch.randn(n, 3, size, size), "text_ids": tok["text_ids"], "attention_mask": tok["attention_mask"]}


def test_task_weights_and_fairness_term():
    task = _task()
    batch = _batch(task)
    plain = task(batch)["loss"]
    ones = task({**batch, "weight": torch.ones(4)})["loss"]
    assert float(ones) == pytest.approx(float(plain), 1e-5)          # equal weights = the (one-rank) loss
    out = task.encode({**batch, "weight": torch.tensor([3.0, 1.0, 1.0, 1.0])})
    rows = row_losses(out["image_features"], out["text_features"], out["logit_scale"])
    assert float(task.compute_loss(out)["loss"]) == pytest.approx(float((rows * out["weight"]).sum() / 6), 1e-5)
    fair = _task(0.5)
    group = torch.tensor([0, 0, 1, 1])
    res = fair({**batch, "group": group})
    feats = fair.encode(batch)
    rows = row_losses(feats["image_features"], feats["text_features"], feats["logit_scale"])
    gap = rows[2:].mean() - rows[:2].mean()
    assert float(res["group_loss_gap"]) == pytest.approx(abs(float(gap)), 1e-5)
    assert float(res["loss"]) == pytest.approx(float(plain) + 0.5 * abs(float(gap)), 1e-5)
    res["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fair.parameters())
    with pytest.raises(ConfigError, match="needs each sample's group"):
        fair(batch)
