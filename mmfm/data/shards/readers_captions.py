"""Caption formats accessibility datasets ship in, as shard sources (``source.type``):

* ``vizwiz``: VizWiz-Captions annotations JSON (``images`` with ``file_name``, ``id``, ``text_detected``;
  ``annotations`` with ``caption``, ``image_id``, ``is_rejected``, ``is_precanned``). Every caption is kept, in
  annotation order but usable ones first (neither rejected nor pre-canned: KEY.txt is a usable one when there is
  one); KEY.json keeps ``text_detected`` and, per caption, ``is_rejected`` / ``is_precanned`` (``caption_flags``,
  aligned with ``captions``). Test-split images (no annotations) have no caption: the build skips and counts them.
* ``karpathy``: Karpathy's split files, ``dataset_coco.json`` / ``dataset_flickr30k.json`` / ``dataset_flickr8k.json``
  (``images`` with ``filepath`` (COCO only), ``filename``, ``split``, ``sentences[].raw``); KEY.json keeps
  ``karpathy_split``, ``imgid`` and ``cocoid``; ``source.karpathy_split`` keeps one split (``restval`` counts as
  ``train`` when asked for ``train+restval``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mmfm.config import ConfigError

from .options import SourceOptions
from .source import Source

__all__ = ["read_vizwiz", "read_karpathy", "is_vizwiz", "is_karpathy"]


def is_vizwiz(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return False
    anns, images = data.get("annotations") or [], data["images"]
    return bool(images and "text_detected" in images[0]) or bool(anns and "is_rejected" in anns[0])


def is_karpathy(data: Any) -> bool:
    images = data.get("images") if isinstance(data, dict) else None
    return bool(isinstance(images, list) and images and "sentences" in images[0] and "filename" in images[0])


def read_vizwiz(path: Path, src: SourceOptions, data: dict, base, resolve) -> Source:
    images, anns = data.get("images"), data.get("annotations", [])
    if not isinstance(images, list):
        raise ConfigError(f"{path}: missing field 'images' (a VizWiz-Captions annotations JSON)")
    by_image: dict[Any, list[dict]] = {}
    for a in sorted(anns, key=lambda a: a.get("id", 0)):
        by_image.setdefault(a.get("image_id"), []).append(a)

    def items() -> Iterator[dict]:
        for im in images:
            name = im.get("file_name") or im.get("vizwiz_url") or ""
            caps = sorted(by_image.get(im.get("id"), []),
                          key=lambda a: bool(a.get("is_rejected")) or bool(a.get("is_precanned")))
            meta = {"image_id": im.get("id"), "text_detected": im.get("text_detected"),
                    "caption_flags": [{"is_rejected": bool(a.get("is_rejected")),
                                       "is_precanned": bool(a.get("is_precanned"))} for a in caps]}
            yield {"src": resolve(name, base), "source": name, "captions": [a.get("caption") for a in caps] or [None],
                   "cls": None, "meta": meta, "split_key": str(im.get("id"))}
    return Source(items(), len(images))


def read_karpathy(path: Path, src: SourceOptions, data: dict, base, resolve) -> Source:
    wanted = {s for s in (src.karpathy_split or "").split("+") if s}
    images = [im for im in data["images"] if not wanted or im.get("split") in wanted]
    if wanted and not images:
        found = sorted({im.get("split") for im in data["images"]})
        raise ConfigError(f"source.karpathy_split: no image of {path} is in split {src.karpathy_split!r} "
                          f"(its splits: {', '.join(map(str, found))})")

    def items() -> Iterator[dict]:
        for im in images:
            name = "/".join(p for p in (im.get("filepath"), im.get("filename")) if p)
            caps = [s.get("raw", " ".join(s.get("tokens", []))).strip() for s in im.get("sentences", [])]
            meta = {"karpathy_split": im.get("split"), "imgid": im.get("imgid"),
                    **({"cocoid": im["cocoid"]} if "cocoid" in im else {})}
            yield {"src": resolve(name, base), "source": name, "captions": caps or [None], "cls": None,
                   "meta": meta, "split_key": str(im.get("cocoid", im.get("imgid", name)))}
    return Source(items(), len(images))
