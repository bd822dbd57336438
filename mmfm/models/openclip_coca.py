"""open_clip CoCa as an mmfm captioner: ``openclip:coca_ARCH:FILE`` (or an open_clip model-config JSON whose name
starts with ``coca``) through the one loader, with mmfm's captioner API on open_clip's own modules.

* ``image_tokens(image)``: CoCa's ``image_embs`` (the visual tower's attentional-pool tokens), what its
  multimodal text decoder cross-attends to.
* ``forward(image, text_ids, ...)``: CoCa's unimodal text tower, then its ``text_decoder`` -> logits at every
  text position (open_clip's forward with ``output_labels=False``); ``encode_image`` / ``encode_text`` are the
  contrastive embeddings as for any open_clip model.
* ``generate_ids``: mmfm's own greedy loop over those logits. open_clip's ``CoCa.generate`` imports transformers'
  beam-search classes that transformers 5 no longer has; the loop gives the tokens of its ``top_k`` generation
  with ``top_k=1`` (checked against open_clip 3.3 + transformers 4.57 in tests). Beam search and sampling are
  refused with that reason.
* The weights stay open_clip's (``model.*``), so ``mmfm export --format openclip`` writes them back unchanged.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from mmfm.config import ConfigError

from .captioner import TextLayout
from .openclip import OpenCLIPModel

__all__ = ["OpenCLIPCoCa", "is_coca_name"]


def is_coca_name(name: str) -> bool:
    """``coca_ViT-B-32``, ``/path/coca_tiny.json``: an open_clip CoCa architecture by its name."""
    return os.path.basename(str(name)).lower().startswith("coca")


class OpenCLIPCoCa(OpenCLIPModel):
    """An open_clip ``CoCa`` with the captioner API (layout, image tokens, logits, greedy generation)."""

    def __init__(self, model_name: str, pretrained: str | None = None, model_cfg=None):
        super().__init__(model_name, pretrained=pretrained, model_cfg=model_cfg)
        import open_clip
        if not isinstance(self.model, open_clip.CoCa):
            raise ConfigError(f"openclip:{model_name}: {type(self.model).__name__} is not an open_clip CoCa model; "
                              f"captioning needs a coca_* architecture")
        if model_cfg is None:
            self.model_cfg.kind = "captioner"
        self.prompt = ""
        self.max_length = int(self.tokenizer.context_length)
        self.layout = TextLayout(self.tokenizer, self.max_length)
        self.has_contrastive_head = False      # no CoCa contrastive term in CaptionTask (yet)

    @property
    def tower_paths(self) -> dict[str, tuple[str, ...]]:
        return {"vision": ("model.visual",), "text": ("model.text",), "decoder": ("model.text_decoder",)}

    def encode_plain(self, text: str) -> list[int]:
        return self.layout.encode_plain(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def sequence(self, prefix_ids: Sequence[int], target: str | None, max_length: int | None = None):
        return self.layout.sequence(prefix_ids, target, max_length)

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.model._encode_image(image)[1]

    def forward(self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None) -> dict:
        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        _, token_embs = self.model._encode_text(text_ids)       # causal: right padding leaves real tokens alone
        return {"logits": self.model.text_decoder(image_tokens, token_embs), "image_tokens": image_tokens}

    @torch.no_grad()
    def generate_ids(self, image: torch.Tensor | None, prefix_ids: Sequence[Sequence[int]], *,
                     image_tokens: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """Greedy new token ids (B, T) after ``[sot] + prefix``; pad after each row's eos."""
        if int(kw.get("num_beams", 1)) != 1 or kw.get("do_sample"):
            raise ConfigError("open_clip CoCa captions with greedy decoding in mmfm (num_beams 1, no sampling): "
                              "open_clip's own beam search needs transformers < 5")
        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        rows = [self.sequence(p, None)[0] for p in prefix_ids]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("open_clip CoCa counts positions from the start: give every row the same prompt length")
        seq = torch.tensor(rows, dtype=torch.long, device=image_tokens.device)
        max_new, min_new = int(kw.get("max_new_tokens", 20)), int(kw.get("min_new_tokens", 0))
        if seq.shape[1] + max_new > self.max_length:
            raise ValueError(f"prompt ({seq.shape[1]} tokens) + max_new_tokens ({max_new}) exceeds CoCa's "
                             f"{self.max_length} positions")
        eos, pad = self.layout.eos, self.layout.pad
        done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        new = []
        for step in range(max_new):
            logits = self(image_tokens=image_tokens, text_ids=seq)["logits"][:, -1].float()
            if step < min_new:
                logits[:, eos] = -float("inf")
            token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
            new.append(token)
            seq = torch.cat([seq, token[:, None]], 1)
            done |= token == eos
            if done.all():
                break
        return torch.stack(new, 1)
