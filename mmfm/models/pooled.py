"""Pooled outputs computed from only what the pooling reads.

Class-token ViTs: the last block computed for the class token only.

A ViT pooled from its class token (timm ``global_pool="token"``, open_clip ``pool_type="tok"``) reads one row
of the last block's output. That row needs the last block's keys and values for every token, but its query,
attention output, output projection and MLP only for the class token: for the other N - 1 tokens those are
thrown away. Skipping them is the same arithmetic on the row that is kept (the same GEMMs, fewer rows), so
the embedding and, in training, every gradient are unchanged up to float rounding
(``tests/unit/test_pooled_vit.py``). For ViT-B/32 at 224 px that is ~7 % of the forward's FLOPs; for the
4-block benchmark ViT ~20 % of its tower's.

open_clip text towers (causal attention, pooled at the end-of-text token): the tokens after the last
end-of-text token of a batch cannot reach any pooled row, so the batch runs trimmed to that length (a
zero-shot prompt is ~15 of CLIP's 77 positions).

Each function returns None when the model is not the plain shape it knows (attention pooling, average
pooling, LoRA- or int8-wrapped projections, dropout that would draw different random
numbers in training...): the caller then runs the library's own forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _call(fn, *args):
    return fn(*args)


def _checkpointed(fn, *args):
    from torch.utils.checkpoint import checkpoint
    return checkpoint(fn, *args, use_reentrant=False)


def _no_dropout(*modules: nn.Module) -> bool:
    return all(not isinstance(m, nn.Dropout) or m.p == 0 for mod in modules for m in mod.modules())


# ----------------------------------------------------------------------------------------------- timm
def _timm_block_ok(trunk: nn.Module) -> bool:
    from timm.models.vision_transformer import Attention, Block, VisionTransformer
    if type(trunk) is not VisionTransformer or trunk.global_pool != "token" or trunk.attn_pool is not None:
        return False
    if trunk.cls_token is None or not len(trunk.blocks):
        return False
    blk = trunk.blocks[-1]
    attn = getattr(blk, "attn", None)
    if type(blk) is not Block or type(attn) is not Attention or type(attn.qkv) is not nn.Linear:
        return False
    if getattr(attn, "gate", None) is not None or getattr(attn, "rope", None) is not None:
        return False
    # training draws dropout masks whose shape would change with the rows kept: only without dropout
    return not trunk.training or (attn.attn_drop.p == 0 and _no_dropout(attn.proj_drop, blk.mlp))


def _timm_last_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` on ``x`` (B, N, C), returning only row 0 (B, 1, C)."""
    attn = blk.attn
    B, N, _ = x.shape
    H, D = attn.num_heads, attn.head_dim
    inner = H * D
    xn = blk.norm1(x)
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(xn[:, :1], w[:inner], None if b is None else b[:inner]).view(B, 1, H, D).transpose(1, 2)
    kv = F.linear(xn, w[inner:], None if b is None else b[inner:]).view(B, N, 2, H, D).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(B, 1, inner))))
    x = x[:, :1] + blk.drop_path1(blk.ls1(o))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def timm_vit_pooled(trunk: nn.Module, image: torch.Tensor) -> torch.Tensor | None:
    """``trunk(image)`` for a class-token timm ``VisionTransformer`` (None if it is not one)."""
    if not _timm_block_ok(trunk):
        return None
    x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(image))))
    run = _checkpointed if getattr(trunk, "grad_checkpointing", False) and torch.is_grad_enabled() else _call
    for blk in trunk.blocks[:-1]:
        x = run(blk, x)
    x = trunk.norm(run(_timm_last_block, trunk.blocks[-1], x))
    return trunk.forward_head(x)


# ------------------------------------------------------------------------------------------ open_clip
def _openclip_ok(visual: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    if type(visual) is not VisionTransformer or visual.attn_pool is not None or visual.pool_type != "tok":
        return False
    tr = visual.transformer
    if getattr(visual, "output_tokens", False) or not len(tr.resblocks):
        return False
    blk = tr.resblocks[-1]
    if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
        return False
    attn = blk.attn
    if type(attn) is not nn.MultiheadAttention or not attn._qkv_same_embed_dim or not tr.batch_first:
        return False
    return not visual.training or (attn.dropout == 0 and _no_dropout(blk.mlp))


def _openclip_last_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` on ``x`` (B, N, C), returning only row 0 (B, 1, C)."""
    xn = blk.ln_1(x)
    x = x[:, :1] + blk.ls_1(blk.attention(q_x=xn[:, :1], k_x=xn, v_x=xn))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def openclip_vit_pooled(visual: nn.Module, image: torch.Tensor) -> torch.Tensor | None:
    """``visual(image)`` for a class-token open_clip ``VisionTransformer`` (None if it is not one)."""
    if not _openclip_ok(visual):
        return None
    x = visual._embeds(image)
    run = _checkpointed if visual.transformer.grad_checkpointing and torch.is_grad_enabled() else _call
    for blk in visual.transformer.resblocks[:-1]:
        x = run(blk, x)
    pooled, _ = visual._pool(run(_openclip_last_block, visual.transformer.resblocks[-1], x))
    return pooled @ visual.proj if visual.proj is not None else pooled


def openclip_text_pooled(model: nn.Module, text: torch.Tensor) -> torch.Tensor | None:
    """``model.encode_text(text)`` for an open_clip ``CLIP`` with a causal, argmax-pooled text tower, run on
    the columns up to the batch's last end-of-text token (None if it is not that model)."""
    import open_clip
    if type(model) is not open_clip.CLIP or model.text_pool_type != "argmax" or model.attn_mask is None:
        return None
    mask = model.attn_mask
    if not bool(torch.equal(torch.isinf(mask), torch.ones_like(mask, dtype=torch.bool).triu(1))):
        return None                       # not the causal mask: later tokens could reach earlier ones
    if not model.transformer.batch_first or text.ndim != 2 or not text.numel():
        return None
    eot = text.argmax(dim=-1)
    n = int(eot.max()) + 1
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text[:, :n]).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
