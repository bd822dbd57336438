"""FSDP2 wraps every block of every tower: the blocks found in the tiny CLIP and the tiny captioner."""
import pytest
import torch

from mmfm.config import ExperimentConfig, from_dict
from mmfm.tasks import build_task
from mmfm.train.fsdp import blocks


@pytest.mark.parametrize("model,task,expected", [
    ("tiny", "contrastive", {"visual.trunk.blocks": 2, "text.transformer.resblocks": 2}),
    ("tiny_captioner", "caption", {"visual.trunk.blocks": 2, "decoder.transformer.h": 2}),
])
def test_blocks_are_each_towers_layers_once(model, task, expected):
    t = build_task(from_dict(ExperimentConfig, {"model": {"name": model}, "task": {"name": task}}))
    names = {id(m): n.rsplit(".", 1)[0] for n, m in t.model.named_modules()}

    class Wrapper(torch.nn.Module):      # reaches the model twice, as the resume test's recorder does
        def __init__(self):
            super().__init__()
            self.inner, self.model = t, t.model

    found = blocks(Wrapper())
    counts = {}
    for b in found:
        counts[names[id(b)]] = counts.get(names[id(b)], 0) + 1
    assert counts == expected
