"""Image transforms from a timm data config (``model.preprocess``).

``build_transform(preprocess, train)`` wraps ``timm.data.create_transform``. ``preprocess`` is the dict a
model carries (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``) plus
optional training keys: ``scale``, ``ratio``, ``hflip``, ``color_jitter``, ``auto_augment``, ``re_prob``.

Training defaults follow CLIP practice (open_clip): random-resized crop with ``scale=(0.9, 1.0)``, no
horizontal flip (captions say "left"/"right"), no colour jitter. Evaluation is timm's resize + centre crop.

``decode_size(preprocess, train)`` is the smallest image side the decoder must keep so that the transform
never upsamples what it would otherwise have had: the loader uses it for JPEG draft decoding, which
decodes a 512-px JPEG straight to 1/2, 1/4 or 1/8 scale (several times faster than decoding in full).
"""
from __future__ import annotations

import math
from typing import Any

DEFAULT_PREPROCESS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": (0.48145466, 0.4578275, 0.40821073),   # OpenAI CLIP
    "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
}
TRAIN_DEFAULTS: dict[str, Any] = {"scale": (0.9, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.0,
                                  "color_jitter": None, "auto_augment": None, "re_prob": 0.0}
_KNOWN = set(DEFAULT_PREPROCESS) | set(TRAIN_DEFAULTS)


def resolve_preprocess(preprocess: dict | None) -> dict:
    """Fill defaults and normalise types (``input_size`` as a 3-tuple); reject unknown keys."""
    pre = dict(DEFAULT_PREPROCESS)
    for key, value in (preprocess or {}).items():
        if key not in _KNOWN:
            import difflib
            close = difflib.get_close_matches(key, sorted(_KNOWN), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(_KNOWN))}."
            from mmfm.config import ConfigError
            raise ConfigError(f"preprocess: unknown key '{key}'.{hint}")
        pre[key] = value
    size = pre["input_size"]
    if isinstance(size, int):
        size = (3, size, size)
    elif len(size) == 2:
        size = (3, *size)
    pre["input_size"] = tuple(int(s) for s in size)
    pre["mean"] = tuple(float(m) for m in pre["mean"])
    pre["std"] = tuple(float(s) for s in pre["std"])
    return pre


class ToNormalizedTensor:
    """``ToTensor`` + ``Normalize`` fused: RGB PIL (or uint8 HWC array) -> float32 (3, H, W) in one
    conversion and two in-place passes (torchvision's pair makes five full passes and four allocations)."""

    def __init__(self, mean, std):
        import torch
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(-1, 1, 1)
        self.offset = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(-1, 1, 1)

    def __call__(self, img):
        import numpy as np
        import torch
        if isinstance(img, torch.Tensor):   # already a tensor (after e.g. RandomErasing): just normalise
            return (img - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        hwc = torch.from_numpy(arr.copy() if not arr.flags.writeable else arr)
        out = torch.empty((hwc.shape[2], hwc.shape[0], hwc.shape[1]), dtype=torch.float32)
        out.copy_(hwc.permute(2, 0, 1))
        return out.mul_(self.scale).add_(self.offset)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


def _fuse_to_tensor(transform, mean, std):
    """Replace a trailing ``(Maybe)ToTensor, Normalize`` pair of a timm Compose with ToNormalizedTensor."""
    ts = getattr(transform, "transforms", None)
    if not ts or len(ts) < 2:
        return transform
    to_tensor, norm = ts[-2], ts[-1]
    if type(to_tensor).__name__ in ("MaybeToTensor", "ToTensor") and type(norm).__name__ == "Normalize":
        transform.transforms = list(ts[:-2]) + [ToNormalizedTensor(mean, std)]
    return transform


def build_transform(preprocess: dict | None, train: bool):
    """A torchvision-style callable: RGB ``PIL.Image`` -> float tensor (3, H, W), normalised."""
    from timm.data import create_transform

    pre = resolve_preprocess(preprocess)
    common = dict(input_size=pre["input_size"], mean=pre["mean"], std=pre["std"],
                  interpolation=pre["interpolation"] or "bicubic")
    if not train:
        tf = create_transform(is_training=False, crop_pct=pre["crop_pct"], crop_mode=pre["crop_mode"], **common)
        return _fuse_to_tensor(tf, pre["mean"], pre["std"])
    aug = {k: pre.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    tf = create_transform(is_training=True, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]),
                          hflip=float(aug["hflip"]), color_jitter=aug["color_jitter"],
                          auto_augment=aug["auto_augment"], re_prob=float(aug["re_prob"]), **common)
    return _fuse_to_tensor(tf, pre["mean"], pre["std"])


def decode_size(preprocess: dict | None, train: bool) -> int:
    """Smallest short side (px) a decoded image needs so the transform loses no resolution."""
    pre = resolve_preprocess(preprocess)
    side = max(pre["input_size"][1:])
    if train:
        scale = TRAIN_DEFAULTS["scale"] if pre.get("scale") is None else pre["scale"]
        # the smallest (square) crop still covers `side` pixels; extreme aspect crops upsample a few %
        return int(math.ceil(side / math.sqrt(max(float(scale[0]), 1e-3))))
    crop_pct = pre.get("crop_pct") or 1.0
    return int(math.ceil(side / crop_pct))


def eval_transform(source) -> Any:
    """The one eval transform: a model's (anything with ``.preprocess``) or a preprocess dict's resize + centre
    crop + normalise, as a callable RGB ``PIL.Image`` -> float tensor."""
    return model_transform(source, train=False)


def model_transform(source, train: bool) -> Any:
    """A model's own image transform (``image_transform(train)``: a library processor's) or its preprocess dict's."""
    own = getattr(source, "image_transform", None)
    if callable(own):
        return own(train)
    preprocess = source if isinstance(source, dict) or source is None else source.preprocess
    return build_transform(preprocess, train=train)
