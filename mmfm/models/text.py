"""Text towers. Each maps ``(text_ids, attention_mask) -> (B, embed_dim)`` (projection included).

* ``OpenCLIPTextTower``: open_clip's ``TextTransformer`` (causal, eos/argmax pooling, same parameter names as
  open_clip, so open_clip text weights load as-is). It trims trailing padding columns before running, which
  is exact under the causal mask and saves work on short captions. Its blocks run self-attention as one
  batch-first ``F.scaled_dot_product_attention`` call on the same ``attn.in_proj_*`` / ``attn.out_proj``
  parameters (``nn.MultiheadAttention``'s training path transposes to sequence-first and copies q, k, v).
* ``HFTextTower``: any ``transformers.AutoModel`` from a local folder, pooled by ``cls``, ``mean`` or ``eos``
  (the last attended token), then a linear projection.

``group_matcher()`` gives timm's layer grouping (embeddings, one group per block, then the top), which
layer-wise lr decay reads (``mmfm.models.towers.layer_ids``). ``lock(unlocked_layers)`` freezes the tower
except its last N layers; the projection into the joint embedding space always stays trainable (LiT trains
it). The frozen part stays in eval mode (no dropout) through every later ``train()``.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, TextTransformer
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.tokenizers import resolve_path

from .towers import KeepLockedEval

__all__ = ["OpenCLIPTextTower", "FusedAttentionBlock", "HFTextTower", "trim_padding"]


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def trim_padding(text_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Drop trailing columns that are padding in every row (a no-op under torch.compile)."""
    if attention_mask is None or _compiling() or text_ids.shape[1] == 0:
        return text_ids, attention_mask
    length = int(attention_mask.sum(1).max().item())
    if 0 < length < text_ids.shape[1]:
        return text_ids[:, :length], attention_mask[:, :length]
    return text_ids, attention_mask


class FusedAttentionBlock(ResidualAttentionBlock):
    """open_clip's ``ResidualAttentionBlock`` (same parameters, same function) whose self-attention is one
    batch-first ``scaled_dot_product_attention`` call: no sequence-first transposes, no q/k/v copies.
    Cross-attention (``k_x``/``v_x``) and a wrapped ``attn`` (peft's LoRA ``ParamWrapper``, which applies the
    adapter inside the wrapped module's forward) keep ``nn.MultiheadAttention``'s path."""

    def attention(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                  attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attn
        if (k_x is not None or v_x is not None or type(attn) is not nn.MultiheadAttention or not attn.batch_first
                or attn.in_proj_weight is None):      # cross-attention, a peft LoRA wrapper, separate q/k/v
            return super().attention(q_x, k_x, v_x, attn_mask)
        b, n, d = q_x.shape
        heads = attn.num_heads
        qkv = F.linear(q_x, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout if self.training else 0.0)
        out = attn.out_proj     # read as nn.MultiheadAttention does (never called: LoRA / quantization skip it)
        return F.linear(x.transpose(1, 2).reshape(b, n, d), out.weight, out.bias)


class OpenCLIPTextTower(KeepLockedEval, TextTransformer):
    """open_clip's text transformer with mmfm's call signature; state-dict keys match open_clip's."""

    def __init__(self, context_length: int = 77, vocab_size: int = 49408, width: int = 512, heads: int = 8,
                 layers: int = 12, output_dim: int = 512, mlp_ratio: float = 4.0):
        super().__init__(context_length=context_length, vocab_size=vocab_size, width=width, heads=heads,
                         layers=layers, mlp_ratio=mlp_ratio, output_dim=output_dim, pool_type="argmax")
        for block in self.transformer.resblocks:       # same modules and parameters; fused self-attention
            if type(block) is ResidualAttentionBlock:
                block.__class__ = FusedAttentionBlock

    def _embeds(self, text):
        x, attn_mask = super()._embeds(text)
        seq = x.shape[1]
        if attn_mask is not None and attn_mask.shape[-1] != seq:   # open_clip keeps the full causal mask
            attn_mask = attn_mask[..., :seq, :seq]
        return x, attn_mask

    def forward(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        text_ids, _ = trim_padding(text_ids, attention_mask)
        if text_ids.shape[1] > self.context_length:
            raise ValueError(f"text_ids has {text_ids.shape[1]} tokens; this text tower's context_length is "
                             f"{self.context_length}")
        return super().forward(text_ids)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer groups: embeddings, each residual block, then ln_final and the projection."""
        return {"stem": r"^token_embedding|^positional_embedding",
                "blocks": [(r"^transformer\.resblocks\.(\d+)", None), (r"^ln_final|^text_projection", (99999,))]}

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        blocks = list(self.transformer.resblocks)
        keep = blocks[len(blocks) - unlocked_layers:] if unlocked_layers else []
        for p in self.parameters():
            p.requires_grad = False
        for block in keep:
            for p in block.parameters():
                p.requires_grad = True
        if unlocked_layers:
            for p in self.ln_final.parameters():
                p.requires_grad = True
        proj = self.text_projection
        if proj is not None:
            for p in (proj.parameters() if isinstance(proj, nn.Module) else [proj]):
                p.requires_grad = True
        self.keep_locked_eval()


def _layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList | None]:
    """The longest ModuleList in a transformers model (its stack of layers) and its name."""
    best, best_name = None, ""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and (best is None or len(m) > len(best)):
            best, best_name = m, name
    return best_name, best


class HFTextTower(KeepLockedEval, nn.Module):
    """A transformers ``AutoModel`` from a local folder, pooled (cls / mean / eos) and projected."""

    def __init__(self, path: str, output_dim: int, pooling: str = "mean", load_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if pooling not in ("cls", "mean", "eos"):
            raise ConfigError(f"model.text.pooling: '{pooling}' is not one of cls, mean, eos")
        self.path = str(path)
        local = resolve_path(path)
        if not os.path.isdir(local) and (os.path.sep in self.path or self.path.startswith((".", "~", "pkg:"))):
            raise ConfigError(f"model.text.hf_path: folder not found: {local}")
        try:
            if load_weights:
                self.transformer = AutoModel.from_pretrained(local, dtype=torch.float32)
            else:
                self.transformer = AutoModel.from_config(AutoConfig.from_pretrained(local), dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - name the folder, keep the cause
            raise ConfigError(f"model.text.hf_path: cannot load a transformers model from '{local}': {e}") from e
        if getattr(self.transformer, "pooler", None) is not None:
            self.transformer.pooler = None          # unused: mmfm pools itself (and DDP wants no unused params)
        self.pooling = pooling
        self.width = int(self.transformer.config.hidden_size)
        self.proj = nn.Linear(self.width, output_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.width ** -0.5)

    def forward_tokens(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.transformer(input_ids=text_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    def forward(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(text_ids)
        text_ids, attention_mask = trim_padding(text_ids, attention_mask)
        if self.memo is not None and self.training:
            # key: the row up to its last attended token (trailing padding, which varies by batch, left out)
            ends = [int(m.nonzero().max()) + 1 if m.any() else 0 for m in attention_mask]
            keys = [self.memo.key(torch.stack([i[:e], m[:e].to(i.dtype)])) for i, m, e in
                    zip(text_ids, attention_mask, ends)]
            pooled = self.memo(keys, lambda idx: self._pool(text_ids[idx], attention_mask[idx]), text_ids.device)
        else:
            pooled = self._pool(text_ids, attention_mask)
        return self.proj(pooled)

    def _pool(self, text_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.forward_tokens(text_ids, attention_mask)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        last = attention_mask.long().sum(1).clamp(min=1) - 1       # eos: the last attended token
        return h[torch.arange(h.shape[0], device=h.device), last]

    memo = None                                     # cache_locked_features: a RowMemo of the pooled output

    def cache_locked_features(self, memo_dir: str | None = None) -> None:
        """Training encodes each distinct caption once with the locked transformer (``mmfm.models.memo``);
        ``memo_dir``: the memo persists there (read on first use, written by the trainer)."""
        from .memo import RowMemo
        if any(p.requires_grad for p in self.transformer.parameters()):
            raise ConfigError("model.text.cache_locked_features: needs a locked text tower with nothing "
                              "unlocked (lock: true, unlock_last_groups: 0)")
        self.memo = RowMemo(name="text-pooled", directory=memo_dir, identity=self._memo_identity)

    def _memo_identity(self) -> str:
        import transformers

        from .memo import state_fingerprint
        modes = [m.training for m in self.transformer.modules()]
        return state_fingerprint(self.transformer.state_dict().items(), "pooled", self.pooling,
                                 type(self.transformer).__name__, modes, transformers.__version__)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer groups: the embeddings, each layer of the stack, then the rest (final norm, proj)."""
        import re
        name, layers = _layer_stack(self.transformer)
        if layers is None:
            raise ConfigError(f"train.layer_decay: no layer stack found in {self.path}")
        return {"stem": r"^transformer\.embeddings", "blocks": [(rf"^transformer\.{re.escape(name)}\.(\d+)", None)]}

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        for p in self.transformer.parameters():
            p.requires_grad = False
        if unlocked_layers:
            _, layers = _layer_stack(self.transformer)
            if layers is None:
                raise ConfigError(f"model.text.unlock_last_groups: no layer stack found in {self.path}")
            for block in list(layers)[-unlocked_layers:]:
                for p in block.parameters():
                    p.requires_grad = True
        self.keep_locked_eval()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.transformer.gradient_checkpointing_disable()
