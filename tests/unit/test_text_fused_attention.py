"""OpenCLIPTextTower's blocks run self-attention as one batch-first scaled_dot_product_attention call on
open_clip's own parameters: the same function (outputs and gradients) as open_clip's nn.MultiheadAttention
path, the same state-dict keys, and nn.MultiheadAttention.forward no longer runs."""
import copy

import torch
from open_clip.transformer import ResidualAttentionBlock

from mmfm.models.text import OpenCLIPTextTower


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 400, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[1, 10:] = 0
    ids = ids * mask
    ids[0, 6], ids[1, 9], ids[2, 11] = 499, 499, 499      # eos (argmax pooling)
    return ids, mask


def test_fused_text_attention_matches_open_clip_and_skips_multihead_attention():
    torch.manual_seed(0)
    tower = OpenCLIPTextTower(context_length=12, vocab_size=500, width=32, heads=4, layers=2, output_dim=16)
    reference = copy.deepcopy(tower)
    for block in reference.transformer.resblocks:
        block.__class__ = ResidualAttentionBlock          # open_clip's own attention path
    assert tower.state_dict().keys() == reference.state_dict().keys()

    mha_calls = []
    for block in tower.transformer.resblocks:
        block.attn.register_forward_hook(lambda *a: mha_calls.append(1))
    ids, mask = _batch()
    out, ref = tower(ids, mask), reference(ids, mask)
    assert mha_calls == [], "nn.MultiheadAttention.forward ran: the text blocks' attention is not fused"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (out ** 2).sum().backward()
    (ref ** 2).sum().backward()
    for (name, p), q in zip(tower.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
