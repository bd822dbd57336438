"""What the service runs: loaded models, image decoding under limits, and the two batch functions
(caption, classify) the dynamic batcher calls in its worker thread."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from mmfm.config import ConfigError, check_config

log = logging.getLogger("mmfm.serve")

__all__ = ["Engine", "ImageError", "CaptionOptions", "load_engine", "OPTION_FIELDS"]

# decoding settings a request may set, with their types and bounds (checked before anything is queued)
OPTION_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    "num_beams": (int, 1, 8), "max_new_tokens": (int, 1, 128), "min_new_tokens": (int, 0, 128),
    "do_sample": (bool, None, None), "temperature": (float, 1e-3, 10.0), "top_p": (float, 1e-3, 1.0),
    "top_k": (int, 0, 1000), "no_repeat_ngram_size": (int, 0, 10), "repetition_penalty": (float, 0.1, 10.0),
    "length_penalty": (float, -10.0, 10.0), "seed": (int, 0, 2 ** 31 - 1),
}


class ImageError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CaptionOptions:
    """The per-request decoding settings (hashable: requests with equal options share a batch)."""
    settings: tuple
    prompt: str | None
    alt_text: bool


class Engine:
    """Holds a captioner and/or a CLIP model (float or int8) and runs batches on them."""

    def __init__(self, captioner=None, clip=None, generate=None, *, max_pixels: int = 40_000_000,
                 classifier_cache: int = 128, names: dict | None = None):
        if captioner is None and clip is None:
            raise ConfigError("mmfm serve: no model loaded (give --model with a captioner and/or CLIP checkpoint)")
        from mmfm.config.caption import GenerateConfig

        self.captioner, self.clip = captioner, clip
        self.generate = generate or GenerateConfig()
        self.max_pixels = int(max_pixels)
        self.names = names or {}
        self._transforms = {}
        self._classifiers: OrderedDict = OrderedDict()
        self._cache_size = int(classifier_cache)
        self._lock = threading.Lock()           # the worker thread is the only user; tests may call directly

    # ------------------------------------------------------------------ images
    def transform(self, role: str):
        model = self.captioner if role == "caption" else self.clip
        if role not in self._transforms:
            from mmfm.data.transforms import eval_transform
            self._transforms[role] = eval_transform(model)
        return self._transforms[role]

    def decode(self, data: bytes, role: str) -> torch.Tensor:
        """Upload bytes -> the model's input tensor (3, H, W); ImageError (with its status) when unusable."""
        from PIL import Image, UnidentifiedImageError

        from mmfm.data.decode import ImageTooLarge, decode_image

        if not data:
            raise ImageError("the upload is empty", 400)
        model = self.captioner if role == "caption" else self.clip
        side = int(max(model.preprocess.get("input_size", (3, 224, 224))[1:]))
        try:
            img = decode_image(bytes(data), self.max_pixels, draft_size=side)
        except ImageTooLarge as e:
            raise ImageError(f"image too large: {e}", 413) from None
        except UnidentifiedImageError:
            raise ImageError("not an image: the upload is not in a format Pillow can read "
                             "(JPEG, PNG, WebP, GIF, BMP, ...)", 415) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"corrupt or truncated image: {e}", 400) from None
        return self.transform(role)(img)

    # ------------------------------------------------------------------ caption
    def caption_options(self, fields: dict[str, Any]) -> CaptionOptions:
        """Validate request fields into hashable options (ConfigError naming the field when wrong)."""
        gen = self.generate
        changes = {}
        for name, raw in fields.items():
            if name in ("prompt", "alt_text") or raw is None or raw == "":
                continue
            if name not in OPTION_FIELDS:
                import difflib
                close = difflib.get_close_matches(name, list(OPTION_FIELDS) + ["prompt", "alt_text"], n=1)
                raise ConfigError(f"unknown option '{name}'." + (f" Did you mean '{close[0]}'?" if close else
                                                               f" Options: {', '.join(OPTION_FIELDS)}, prompt, alt_text"))
            changes[name] = _parse(name, raw)
        try:
            new = check_config(dataclasses.replace(gen, **changes))
        except ConfigError as e:
            raise ConfigError(f"decoding options: {e}") from None
        prompt = fields.get("prompt")
        if prompt is not None and len(str(prompt)) > 200:
            raise ConfigError("prompt: at most 200 characters")
        limit = getattr(self.captioner, "max_positions", None)
        if limit:
            text = self.captioner.prompt if prompt in (None, "") else str(prompt)
            used = 1 + (len(self.captioner.encode_plain(text)) if text else 0)
            if used + new.max_new_tokens > limit:
                raise ConfigError(f"max_new_tokens: {new.max_new_tokens} + the prompt's {used} tokens exceed this "
                                  f"decoder's {limit} positions; use at most {limit - used}")
        alt = fields.get("alt_text")
        alt_text = True if alt in (None, "") else _parse("alt_text", alt)
        settings = tuple(sorted((k, getattr(new, k)) for k in OPTION_FIELDS if hasattr(new, k)))
        return CaptionOptions(settings, None if prompt in (None, "") else str(prompt), bool(alt_text))

    def run_captions(self, options: CaptionOptions, images: list[torch.Tensor]) -> list[dict]:
        from mmfm.generate import caption_tensors, degenerate_reason, resolve_prompt, to_alt_text

        gen = dataclasses.replace(self.generate, **dict(options.settings))
        scores: list[float] = []
        with self._lock, torch.inference_mode():
            raw = caption_tensors(self.captioner, torch.stack(images), gen, prompt=options.prompt, scores=scores)
        n, alt = len(images), gen.alt_text
        prompt = options.prompt if options.prompt is not None else resolve_prompt(self.captioner, gen)
        out = []
        for c, conf in zip(raw, scores):        # confidence and degenerate output, as in mmfm caption's JSONL
            reason = degenerate_reason(c, prompt, conf, alt.min_confidence)
            text = alt.fallback if reason and alt.fallback is not None and options.alt_text else \
                (to_alt_text(c, alt) if options.alt_text else c)
            out.append({"caption": c, "alt_text": text, "confidence": round(conf, 4), "degenerate": reason,
                        "batch_size": n})
        return out

    # ------------------------------------------------------------------ classify
    def _classifier(self, labels: tuple[str, ...], template: str) -> torch.Tensor:
        key = (labels, template)
        w = self._classifiers.get(key)
        if w is None:
            w = self.clip.zero_shot_classifier(list(labels), [template])
            self._classifiers[key] = w
            if len(self._classifiers) > self._cache_size:
                self._classifiers.popitem(last=False)
        else:
            self._classifiers.move_to_end(key)
        return w

    def run_classify(self, key: tuple, images: list[torch.Tensor]) -> list[dict]:
        from mmfm.eval.embedding import logit_scale

        labels, template, top_k = key
        with self._lock, torch.inference_mode():
            w = self._classifier(labels, template)
            feats = self.clip.encode_image(torch.stack(images), normalize=True).float()
            probs = (logit_scale(self.clip) * feats @ w).softmax(dim=-1)
        out = []
        k = min(int(top_k), len(labels))
        for row in probs:
            p, idx = row.topk(k)
            scores = [{"label": labels[i], "score": round(float(s), 6)} for s, i in zip(p.tolist(), idx.tolist())]
            out.append({"label": scores[0]["label"], "score": scores[0]["score"], "scores": scores,
                        "batch_size": len(images)})
        return out

    # ------------------------------------------------------------------ info
    def describe(self) -> dict:
        def one(m, role):
            if m is None:
                return None
            return {"checkpoint": self.names.get(role) or getattr(m, "checkpoint_path", None),
                    "class": type(m).__name__, "int8": bool(getattr(m, "quantization", None)),
                    "input_size": list(m.preprocess.get("input_size", [])),
                    "parameters": sum(p.numel() for p in m.parameters())}
        return {"captioner": one(self.captioner, "caption"), "clip": one(self.clip, "classify")}


def _parse(name: str, raw):
    typ, lo, hi = OPTION_FIELDS.get(name, (bool, None, None))
    try:
        if typ is bool:
            if isinstance(raw, bool):
                val = raw
            elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
                val = True
            elif str(raw).strip().lower() in ("0", "false", "no", "off"):
                val = False
            else:
                raise ValueError(raw)
        elif typ is int:
            val = int(str(raw).strip())
        else:
            val = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected {'true/false' if typ is bool else typ.__name__}, got {raw!r}") from None
    if lo is not None and val < lo or hi is not None and val > hi:
        raise ConfigError(f"{name}: {val} is outside [{lo}, {hi}]")
    return val


def load_engine(models: list[str], *, quantize: bool = False, threads: int | None = None,
                max_pixels: int = 40_000_000) -> Engine:
    """Load each checkpoint (float or int8 folder); the kind in its config decides its role."""
    from mmfm.models.checkpoint import load as load_model
    from mmfm.models.quantized import quantize_model
    from mmfm.generate import stored_generate

    if threads:
        torch.set_num_threads(int(threads))
    captioner = clip = gen = None
    names = {}
    for spec in models:
        t0 = time.perf_counter()
        model = load_model(spec, device="cpu")
        if quantize and not getattr(model, "quantization", None):
            model = quantize_model(model)
        kind = getattr(getattr(model, "model_cfg", None), "kind", "clip")
        role = "caption" if kind == "captioner" else "classify"
        if (captioner if role == "caption" else clip) is not None:
            raise ConfigError(f"mmfm serve: two {kind} checkpoints given ({spec}); give one captioner and/or one CLIP")
        if role == "caption":
            captioner, gen = model, stored_generate(spec)
        else:
            clip = model
        names[role] = str(spec)
        log.info("loaded %s %s in %.1fs", kind, spec, time.perf_counter() - t0)
    return Engine(captioner, clip, gen, max_pixels=max_pixels, names=names)


