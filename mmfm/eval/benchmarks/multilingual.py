"""Multilingual retrieval: per-language R@k of a CLIP model on XM3600- and Multi30k-style data.

* **XM3600** (Crossmodal-3600, Thapliyal et al. 2022), its released ``captions.jsonl``: one image a line,
  ``{"image/key": KEY, "en": {"caption": [...], ...}, "de": {"caption": [...]}, ...}``, images ``IMAGES/KEY.jpg``.
  The flatter ``{"image_key": KEY, "captions": {"en": [...], ...}}`` is read too.
* **Multi30k** (Elliott et al. 2016), its ``data/task1`` layout: ``image_splits/SPLIT.txt`` (an image file name a
  line) and ``raw/SPLIT.LANG`` (or ``SPLIT.LANG.gz``), one caption a line, parallel to the image list; the files
  may also sit side by side in one folder.

Images are embedded once; each language's captions are then ranked against them: ``metrics[LANG]`` holds
``image_to_text_R@k`` (an image finds one of its captions in that language among the top k), ``text_to_image_R@k``
(a caption finds its image) and their mean, as ``mmfm retrieval`` computes them (``mmfm.eval.retrieval``). Any
text tower mmfm loads serves; a multilingual one (``text.type: hf`` with a multilingual ``hf_path``, an open_clip
XLM-R model) makes the non-English numbers meaningful.
"""
from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import dataclass, field

from mmfm.config import ConfigError

__all__ = ["MultilingualSet", "read_xm3600", "read_multi30k", "evaluate_multilingual"]


@dataclass
class MultilingualSet:
    name: str
    images: list[str]                                             # image files, in order
    captions: dict[str, list[list[str]]] = field(default_factory=dict)   # lang -> per image, its captions


def _xm3600_captions(row: dict, path: str, n: int) -> dict[str, list[str]]:
    if isinstance(row.get("captions"), dict):                         # the flat variant
        return {lang: [c] if isinstance(c, str) else list(c) for lang, c in row["captions"].items()}
    out = {}
    for lang, v in row.items():
        if lang in ("image/key", "image_key"):
            continue
        if not isinstance(v, dict) or "caption" not in v:
            raise ConfigError(f"{path} line {n}: language {lang!r} has no 'caption' list")
        out[lang] = list(v["caption"])
    return out


def read_xm3600(path: str, images: str, langs: list[str] | None = None) -> MultilingualSet:
    """XM3600's ``captions.jsonl`` with its image folder (``KEY.jpg``)."""
    if not os.path.isfile(path):
        raise ConfigError(f"XM3600 captions file not found: {path}")
    files, captions = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            key = row.get("image/key", row.get("image_key"))
            if key is None:
                raise ConfigError(f"{path} line {n}: no 'image/key' (or 'image_key')")
            img = next((os.path.join(images, f"{key}{ext}") for ext in (".jpg", ".jpeg", ".png", "")
                        if os.path.isfile(os.path.join(images, f"{key}{ext}"))), None)
            if img is None:
                raise ConfigError(f"{path} line {n}: image {os.path.join(images, str(key))}.jpg is missing")
            caps = _xm3600_captions(row, path, n)
            for lang in list(dict.fromkeys([*captions, *caps])):        # first-seen order
                captions.setdefault(lang, [[] for _ in files]).append(caps.get(lang, []))
            files.append(img)
    return _select(MultilingualSet(os.path.basename(os.path.dirname(os.path.abspath(path))) or "xm3600", files,
                                   captions), langs, path)


def _first(folder: str, names: list[str]) -> str | None:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)


def _lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f]


def read_multi30k(folder: str, split: str, images: str, langs: list[str]) -> MultilingualSet:
    """Multi30k's ``image_splits/SPLIT.txt`` and ``raw/SPLIT.LANG[.gz]`` (or both in ``folder``)."""
    if not langs:
        raise ConfigError("multi30k: name the languages (--langs en,de,fr,cs)")
    listing = _first(folder, [f"image_splits/{split}.txt", f"{split}.txt"])
    if listing is None:
        raise ConfigError(f"multi30k: {os.path.join(folder, 'image_splits', split + '.txt')} is missing")
    files = [os.path.join(images, n.strip()) for n in _lines(listing) if n.strip()]
    missing = next((p for p in files if not os.path.isfile(p)), None)
    if missing:
        raise ConfigError(f"multi30k: image {missing} (listed in {listing}) is missing")
    captions = {}
    for lang in langs:
        names = [f"raw/{split}.{lang}", f"raw/{split}.{lang}.gz", f"{split}.{lang}", f"{split}.{lang}.gz"]
        text = _first(folder, names)
        if text is None:
            raise ConfigError(f"multi30k: {os.path.join(folder, 'raw', f'{split}.{lang}')} is missing")
        lines = _lines(text)
        if len(lines) != len(files):
            raise ConfigError(f"multi30k: {text} has {len(lines)} lines, {listing} lists {len(files)} images")
        captions[lang] = [[c] for c in lines]
    return MultilingualSet(split, files, captions)


def _select(data: MultilingualSet, langs, source: str) -> MultilingualSet:
    if langs:
        absent = [lang for lang in langs if lang not in data.captions]
        if absent:
            raise ConfigError(f"{source}: no captions in {', '.join(absent)} "
                              f"(it has {', '.join(sorted(data.captions))})")
        data.captions = {lang: data.captions[lang] for lang in langs}
    return data


def _embed_images(model, files: list[str], batch_size: int, precision: str):
    import torch

    from mmfm.data.decode import DEFAULT_MAX_PIXELS, decode_image
    from mmfm.data.transforms import eval_transform
    from mmfm.models.device import model_device

    from ..embedding import autocast
    transform, dev = eval_transform(model), model_device(model)
    out = []
    with torch.inference_mode(), autocast(dev, precision):
        for s in range(0, len(files), batch_size):
            x = torch.stack([transform(decode_image(p, DEFAULT_MAX_PIXELS)) for p in files[s:s + batch_size]])
            out.append(model.encode_image(x.to(dev), normalize=True).float().cpu())
    return torch.cat(out)


def evaluate_multilingual(model, data: MultilingualSet, *, ks=(1, 5, 10), batch_size: int = 64, device=None,
                          precision: str = "auto", progress: bool = True):
    """Per-language R@k (``metrics[LANG]``) and their mean over languages (``metrics["mean"]``)."""
    import torch

    from mmfm.models.device import model_device

    from ..embedding import effective_precision, encode_texts, load_clip, long_caption_note
    from ..result import EvalResult, backend
    from ..retrieval import recall_at_k
    t0 = time.perf_counter()
    model, ckpt = load_clip(model, device)
    model.eval()
    img = _embed_images(model, data.images, batch_size, precision)
    metrics, counts, cut = {}, {}, {}
    for lang, per_image in data.captions.items():
        texts = [c for caps in per_image for c in caps]
        owner = torch.tensor([i for i, caps in enumerate(per_image) for _ in caps], dtype=torch.long)
        if not texts:
            raise ConfigError(f"{data.name}: no {lang} caption")
        txt = encode_texts(model, texts, precision=precision, progress=progress, desc=f"{lang} captions")
        metrics[lang] = recall_at_k(img, txt, owner, ks)
        counts[lang], cut[lang] = len(texts), long_caption_note(model, texts)["texts_cut"]
    keys = list(next(iter(metrics.values())))
    metrics["mean"] = {k: sum(m[k] for m in metrics.values()) / len(metrics) for k in keys}
    dev = model_device(model)
    meta = {"task": "multilingual_retrieval", "dataset": data.name, "languages": list(data.captions),
            "n_images": len(data.images), "n_captions": counts, "texts_cut": cut, "backend": backend(),
            "model": ckpt or type(model).__name__, "device": str(dev),
            "precision": effective_precision(dev, precision), "seconds": round(time.perf_counter() - t0, 3)}
    return EvalResult(metrics=metrics, meta=meta)
