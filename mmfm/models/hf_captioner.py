"""Run transformers image-to-text models as mmfm captioners, through one wrapper keyed on the auto classes.

``HFCaptioner("hf:DIR_OR_ID")`` opens a ``save_pretrained`` folder with ``AutoModelForImageTextToText`` and its
own ``AutoProcessor`` (image preprocessing, tokenizer, image-token expansion). Families (``FAMILIES``):

* ``blip``: BlipForConditionalGeneration (text starts with the decoder's bos ``[DEC]``, ends with ``[SEP]``),
* ``git``: GitForCausalLM (``[CLS]`` ... ``[SEP]``, image tokens in front of the text inside the model),
* ``vision-encoder-decoder``: VisionEncoderDecoderModel (``decoder_start_token_id`` ... eos),
* ``vlm``: decoder-only VLMs whose processor expands an image token in the text (LLaVA; the ``head`` is what the
  processor makes of the image token alone).

Every family is driven the same way: a text sequence ``head + prompt + target + eos`` (:class:`HeadLayout`, a
:class:`~mmfm.models.captioner.TextLayout`, so the caption and VQA processors and tasks work unchanged),
``forward`` returns logits where position t predicts t + 1 and, given labels, the library's own loss; and
``generate_ids`` calls the library's ``generate``. Images go through the processor's image processor
(``image_transform``). A checkpoint stores the transformers config, generation config and processor in
``hf_model/`` beside mmfm's weights, so it reloads without the source folder; ``save_transformers`` writes the
folder transformers opens with ``from_pretrained``.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mmfm.config import ConfigError

from .captioner import TextLayout

__all__ = ["HFCaptioner", "HeadLayout", "build_hf_captioner", "is_hf_captioner_folder", "family_of",
           "LIBRARY_DIR", "SUPPORTED"]

LIBRARY_DIR = "hf_model"                   # in a checkpoint: the transformers config + processor (no weights)
CLIP_TYPES = ("clip", "siglip")
SUPPORTED = ("BlipForConditionalGeneration, GitForCausalLM, VisionEncoderDecoderModel and decoder-only VLMs "
             "whose processor has an image token (LlavaForConditionalGeneration)")
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# where each family keeps its towers (the first path present wins): BLIP, GIT, VisionEncoderDecoder, LLaVA-style and
# Idefics3/SmolVLM-style VLMs
_TOWER_CANDIDATES = {
    "vision": ("vision_model", "git.image_encoder", "encoder", "model.vision_tower", "model.vision_model"),
    "decoder": ("text_decoder", "git.encoder", "decoder", "model.language_model", "model.text_model"),
}


def family_of(config, processor=None) -> str | None:
    kind = config.model_type
    if kind in ("blip", "git", "vision-encoder-decoder"):
        return kind
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as names
    if kind in names and (processor is None or getattr(processor, "image_token", None)):
        return "vlm"
    return None


def is_hf_captioner_folder(folder: str | os.PathLike) -> bool:
    """A transformers folder whose config is not a CLIP / SigLIP (which mmfm loads as a CLIP)."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") not in CLIP_TYPES
    except (OSError, json.JSONDecodeError):
        return False


class ProcessorImageTransform:
    """PIL image -> the processor's ``pixel_values`` (3, H, W). Picklable (loader workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, img) -> torch.Tensor:
        return self.image_processor(images=img, return_tensors="pt")["pixel_values"][0]


class HeadLayout(TextLayout):
    """``head + prefix + target + eos``: ``head`` is the family's start (bos, decoder start, image tokens)."""

    def __init__(self, tokenizer, max_length: int, head: Sequence[int], eos: int, pad: int):
        self.tokenizer, self.head = tokenizer, [int(i) for i in head]
        self.max_length = int(max_length) + len(self.head) - 1       # max_length counts the head as one token
        self.bos, self.eos, self.pad = self.head[0], int(eos), int(pad)

    def sequence(self, prefix_ids, target, max_length=None):
        ids = self.head + [int(i) for i in prefix_ids]
        n_prefix = len(ids)
        if target is None:
            return ids, n_prefix
        room = int(max_length or self.max_length) - n_prefix - 1
        if room < 1:
            raise ValueError(f"the prompt takes {n_prefix} of {self.max_length} tokens: no room for a target")
        return ids + self.encode_plain(target)[:room] + [self.eos], n_prefix


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _load_processor(source: str, folder: Path):
    from transformers import AutoProcessor

    if not any((folder / f).is_file() for f in _PROCESSOR_FILES):
        raise ConfigError(f"{source}: no processor beside the weights in {folder} ({' or '.join(_PROCESSOR_FILES)} "
                          f"missing); save it there with processor.save_pretrained(FOLDER)")
    try:
        proc = AutoProcessor.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - name the folder
        raise ConfigError(f"{source}: cannot load the processor in {folder}: {e}") from e
    if getattr(proc, "image_processor", None) is None or getattr(proc, "tokenizer", None) is None:
        raise ConfigError(f"{source}: the processor in {folder} ({type(proc).__name__}) lacks an image processor "
                          f"or a tokenizer; save the model's full processor with processor.save_pretrained(FOLDER)")
    return proc


class HFCaptioner(nn.Module):
    """A transformers image-to-text model behind mmfm's captioner API (see the module docstring)."""

    library_loss = True        # CaptionTask takes the library's own loss from forward(labels=...)
    has_contrastive_head = False

    def __init__(self, source: str, model_cfg=None, load_weights: bool = True):
        super().__init__()
        import transformers

        from mmfm.data.tokenizers import HFTokenizer

        from .hf_clip import resolve_hf_source

        folder = resolve_hf_source(source)
        config = transformers.AutoConfig.from_pretrained(str(folder))
        cls_name = (config.architectures or [type(config).__name__])[0]
        if family_of(config) is None:
            raise ConfigError(f"{source}: {cls_name} (model_type {config.model_type!r}) is not a captioner mmfm "
                              f"runs; supported: {SUPPORTED}")
        self.processor = _load_processor(source, folder)
        self.family = family_of(config, self.processor)
        if self.family is None:
            raise ConfigError(f"{source}: {type(self.processor).__name__} has no image token, so {cls_name} is not "
                              f"a decoder-only VLM mmfm runs; supported: {SUPPORTED}")
        auto = transformers.AutoModelForImageTextToText
        try:
            self.hf = (auto.from_pretrained(str(folder), dtype=torch.float32) if load_weights
                       else auto.from_config(config).float())
        except Exception as e:  # noqa: BLE001 - name the folder
            raise ConfigError(f"{source}: cannot load {cls_name} from {folder}: {e}") from e
        if model_cfg is None:
            from mmfm.config.caption import DecoderConfig
            from mmfm.config.model import ModelConfig
            model_cfg = ModelConfig(kind="captioner", source=source, decoder=DecoderConfig())
        self.source, self.folder, self.model_cfg = source, folder, model_cfg
        dcfg = model_cfg.decoder
        self.tokenizer = HFTokenizer(str(folder), context_length=dcfg.max_length)
        self.prompt, self.max_length = dcfg.prompt, dcfg.max_length
        head, eos, pad = self._special_ids()
        self.layout = HeadLayout(self.tokenizer, dcfg.max_length, head, eos, pad)
        self.preprocess = self._preprocess()
        self.embed_dim = int(model_cfg.embed_dim)

    # ------------------------------------------------------------ family glue
    def _special_ids(self) -> tuple[list[int], int, int]:
        c, tok = self.hf.config, self.tokenizer
        if self.family == "blip":
            t = c.text_config
            return [t.bos_token_id], t.sep_token_id, t.pad_token_id
        if self.family == "git":
            return [c.bos_token_id], c.eos_token_id, c.pad_token_id
        gen = self.hf.generation_config
        eos = _first(gen.eos_token_id) if gen.eos_token_id is not None else tok.eos_token_id
        pad = next((p for p in (gen.pad_token_id, tok.tokenizer.pad_token_id, eos) if p is not None))
        if self.family == "vision-encoder-decoder":
            return [c.decoder_start_token_id], eos, pad
        return self._image_head(eos), eos, pad

    def _image_head(self, eos: int) -> list[int]:
        """What the processor makes of the image token alone (bos, the expanded image tokens), trailing eos cut."""
        from PIL import Image

        size = self.hf.config.vision_config.image_size
        out = self.processor(text=self.processor.image_token, images=Image.new("RGB", (size, size)),
                             return_tensors="pt")
        ids = [int(i) for i in out["input_ids"][0]]
        while ids and ids[-1] == eos:
            ids.pop()
        return ids

    def _preprocess(self) -> dict:
        """The image processor's size and normalisation as a timm-style dict (recorded in meta.json)."""
        from PIL import Image

        ip = self.processor.image_processor
        px = self.image_transform()(Image.new("RGB", (64, 48)))
        return {"input_size": list(px.shape), "mean": list(getattr(ip, "image_mean", None) or [0.5] * 3),
                "std": list(getattr(ip, "image_std", None) or [0.5] * 3), "interpolation": "bicubic",
                "crop_pct": 1.0, "crop_mode": "squash", "processor": type(self.processor).__name__}

    def image_transform(self, train: bool = False) -> ProcessorImageTransform:
        return ProcessorImageTransform(self.processor.image_processor)

    # ------------------------------------------------------------ captioner API
    def encode_plain(self, text: str) -> list[int]:
        return self.layout.encode_plain(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def sequence(self, prefix_ids, target, max_length=None):
        return self.layout.sequence(prefix_ids, target, max_length)

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """The image input the library model takes (its ``pixel_values``): the vision tower runs in forward."""
        return image

    def forward(self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict:
        pv = image if image_tokens is None else image_tokens
        ids, mask = text_ids, attention_mask
        if self.family == "vision-encoder-decoder":
            lib = None if labels is None else torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
            out = self.hf(pixel_values=pv, decoder_input_ids=ids, decoder_attention_mask=mask, labels=lib)
        elif self.family == "blip":
            out = self.hf(pixel_values=pv, input_ids=ids, attention_mask=mask, labels=labels)
        else:
            out = self.hf(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels)
        result = {"logits": out.logits[:, -ids.shape[1]:], "image_tokens": pv}
        if labels is not None:
            result["loss"] = out.loss
        return result

    @torch.no_grad()
    def generate_ids(self, image: torch.Tensor | None, prefix_ids: Sequence[Sequence[int]], *,
                     image_tokens: torch.Tensor | None = None, step_logits: list | None = None,
                     **generate_kwargs) -> torch.Tensor:
        """New token ids (B, T) after ``head + prefix`` for each image, via the library's ``generate``.
        ``step_logits`` (a list, one sequence per row, no beams): receives the raw logits (B, T, V) of each new
        token, so the caption's confidence needs no second, teacher-forced pass through the vision tower."""
        pv = image if image_tokens is None else image_tokens
        rows = [self.sequence(p, None)[0] for p in prefix_ids]
        if len(rows) != pv.shape[0]:
            raise ValueError(f"{pv.shape[0]} images but {len(rows)} prompts")
        ids, mask = self.layout.left_pad(rows, pv.device)
        gen = copy.deepcopy(self.hf.generation_config)
        gen.update(**{"use_cache": True, **generate_kwargs}, eos_token_id=self.layout.eos,
                   pad_token_id=self.layout.pad)
        gen.max_length = None
        if self.family == "blip":            # BLIP's generate drops the processor's trailing [SEP]: give it one
            ones = torch.ones_like(ids[:, :1])
            kw = {"pixel_values": pv, "input_ids": torch.cat([ids, ones * self.layout.eos], 1),
                  "attention_mask": torch.cat([mask, ones], 1)}
        elif self.family == "vision-encoder-decoder":
            kw = {"pixel_values": pv, "decoder_input_ids": ids, "decoder_attention_mask": mask}
        else:
            kw = {"pixel_values": pv, "input_ids": ids, "attention_mask": mask}
        from .captioner import _quiet_transformers
        scored = step_logits is not None and (gen.num_beams or 1) == 1
        with _quiet_transformers():
            out = self.hf.generate(**kw, generation_config=gen, output_logits=scored, return_dict_in_generate=scored)
        if scored:
            step_logits.append(torch.stack(out.logits, 1))
            out = out.sequences
        return out[:, ids.shape[1]:]

    @property
    def tower_paths(self) -> dict[str, tuple[str, ...]]:
        """The tower names (``mmfm.models.tower_setup``) inside the library model: ``vision`` (the image encoder)
        and ``decoder`` (the text stack, without its output head), so ``lora.towers: [decoder]``, ``lr_groups`` and
        ``vision.lock`` mean the same modules for BLIP, GIT, VisionEncoderDecoder and VLMs as for mmfm's own."""
        def first(candidates):
            for path in candidates:
                try:
                    self.hf.get_submodule(path)
                except AttributeError:
                    continue
                return (f"hf.{path}",)
            return ()
        return {name: first(cands) for name, cands in _TOWER_CANDIDATES.items()}

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        paths = self.tower_paths["vision"]
        if not paths:
            raise ConfigError(f"model.vision.lock: no vision tower found in {type(self.hf).__name__}")
        for path in paths:
            for p in self.get_submodule(path).parameters():
                p.requires_grad = False

    # ------------------------------------------------------------ saving
    def save_library_files(self, directory: str | os.PathLike) -> None:
        """Beside mmfm's weights: the transformers config, generation config and processor (``hf_model/``)."""
        d = Path(directory) / LIBRARY_DIR
        d.mkdir(parents=True, exist_ok=True)
        self.hf.config.save_pretrained(str(d))
        self.hf.generation_config.save_pretrained(str(d))
        self.processor.save_pretrained(str(d))

    def save_transformers(self, directory: str | os.PathLike) -> None:
        """The folder transformers opens: weights + config (``save_pretrained``) and the processor."""
        self.hf.save_pretrained(str(directory))
        self.processor.save_pretrained(str(directory))


def build_hf_captioner(cfg, init_weights: bool = True) -> HFCaptioner:
    """``ModelConfig(kind="captioner", source="hf:...")`` -> HFCaptioner (``vision.lock`` honoured)."""
    from mmfm.config.caption import DecoderConfig

    if cfg.decoder is None:
        cfg.decoder = DecoderConfig()
    model = HFCaptioner(cfg.source, model_cfg=cfg, load_weights=init_weights)
    if cfg.vision.lock:
        model.lock_image_tower()
    return model


def load_hf_spec(spec: str) -> nn.Module:
    """``hf:DIR_OR_ID`` -> a transformers CLIPModel / SiglipModel (HFCLIPModel) or an image-to-text captioner."""
    from .hf_clip import HFCLIPModel, resolve_hf_source

    folder = resolve_hf_source(spec)
    model = HFCaptioner(spec) if is_hf_captioner_folder(folder) else HFCLIPModel(spec)
    model.checkpoint_path, model.checkpoint_meta, model.generate_config = spec, {"source": spec}, None
    return model


def use_stored_library_files(model_cfg, checkpoint: Path) -> None:
    """A checkpoint of a transformers captioner rebuilds from its own ``hf_model/`` (config + processor), not from
    the folder it was first loaded from (which may be gone)."""
    d = Path(checkpoint) / LIBRARY_DIR
    if model_cfg.kind == "captioner" and model_cfg.source and d.is_dir():
        model_cfg.source = f"hf:{d}"
