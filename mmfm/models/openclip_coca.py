"""open_clip CoCa as an mmfm captioner: ``openclip:coca_ARCH:FILE`` (or an open_clip model-config JSON whose name
starts with ``coca``) through the one loader, with mmfm's captioner API on open_clip's own modules.

* ``image_tokens(image)``: CoCa's ``image_embs`` (the visual tower's attentional-pool tokens), what its
  multimodal text decoder cross-attends to.
* ``forward(image, text_ids, ...)``: CoCa's unimodal text tower, then its ``text_decoder`` -> logits at every
  text position (open_clip's forward with ``output_labels=False``); ``encode_image`` / ``encode_text`` are the
  contrastive embeddings as for any open_clip model.
* ``generate_ids``: greedy or beam search over those logits with open_clip's own rules
  (:mod:`mmfm.models.coca_decoding`). open_clip's ``CoCa.generate`` imports transformers' beam-search classes
  that transformers 5 no longer has; the tokens equal its ``top_k`` generation with ``top_k=1`` and its
  ``beam_search`` generation (checked against open_clip 3.3 + transformers 4.57 in tests). Sampling is refused.
* The weights stay open_clip's (``model.*``), so ``mmfm export --format openclip`` writes them back unchanged.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from mmfm.config import ConfigError

from .captioner import TextLayout
from .coca_decoding import coca_beam_search, coca_greedy, coca_processors
from .openclip import OpenCLIPModel

__all__ = ["OpenCLIPCoCa", "is_coca_name"]


def is_coca_name(name: str) -> bool:
    """``coca_ViT-B-32``, ``/path/coca_tiny.json``: an open_clip CoCa architecture by its name."""
    return os.path.basename(str(name)).lower().startswith("coca")


class OpenCLIPCoCa(OpenCLIPModel):
    """An open_clip ``CoCa`` with the captioner API (layout, image tokens, logits, greedy and beam generation)."""

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

    def _decoding_plan(self, rows: list, kw: dict) -> tuple[int, int]:
        """(beams per open_clip group, 0 for greedy; max new tokens) for ``generate_ids``' settings, checked."""
        beams, groups = int(kw.get("num_beams", 1)), int(kw.get("num_beam_groups", 1))
        if kw.get("do_sample"):
            raise ConfigError("open_clip CoCa decodes greedily or with beam search in mmfm (do_sample: false)")
        if groups < 1 or beams % groups:
            raise ConfigError(f"num_beam_groups: must divide num_beams ({beams}), got {groups}")
        if len({len(r) for r in rows}) > 1:
            raise ValueError("open_clip CoCa counts positions from the start: give every row the same prompt length")
        max_new = int(kw.get("max_new_tokens", 20))
        if len(rows[0]) + max_new > self.max_length:
            raise ValueError(f"prompt ({len(rows[0])} tokens) + max_new_tokens ({max_new}) exceeds CoCa's "
                             f"{self.max_length} positions")
        return (beams // groups if groups > 1 or beams > 1 else 0), max_new

    @torch.no_grad()
    def generate_ids(self, image: torch.Tensor | None, prefix_ids: Sequence[Sequence[int]], *,
                     image_tokens: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """New token ids (B, T) after ``[sot] + prefix``, pad after each row's eos: greedy (``num_beams`` 1) or
        open_clip's beam search (:mod:`mmfm.models.coca_decoding`); ``num_beam_groups`` as open_clip's."""
        rows = [self.sequence(p, None)[0] for p in prefix_ids]
        per, max_new = self._decoding_plan(rows, kw)
        if image_tokens is None:       # open_clip encodes the images repeated once per beam: the same numbers
            image_tokens = self.image_tokens(image if per == 0 else image.repeat_interleave(per, 0))
        elif per:
            image_tokens = image_tokens.repeat_interleave(per, 0)
        seq = torch.tensor(rows, dtype=torch.long, device=image_tokens.device)
        eos, pad = self.layout.eos, self.layout.pad
        procs = coca_processors(seq.shape[1], eos, int(kw.get("min_new_tokens", 0)),
                                float(kw.get("repetition_penalty", 1.0)), int(kw.get("no_repeat_ngram_size", 0)))

        def step(ids: torch.Tensor) -> torch.Tensor:
            return self(image_tokens=image_tokens, text_ids=ids)["logits"][:, -1]
        if not per:
            return coca_greedy(step, seq, max_new, procs, eos, pad)
        return coca_beam_search(step, seq, max_new, procs, beams=per, eos=eos, pad=pad,
                                length_penalty=float(kw.get("length_penalty", 1.0)))
