"""Sample decoding (raw tar members -> Python objects) and corrupt-sample accounting.

``Decoder`` is a picklable, module-level callable: ``{"__key__", "jpg": bytes, "txt": bytes, ...}`` ->
``{"__key__", "__url__", "image": RGB PIL, "txt": str, "json": dict, "cls": int, other: bytes}``.
Images get a max-pixels guard (checked from the header, before any pixel is decoded), JPEG draft
decoding down to ``decode_size`` (DCT scaling: 2-8x less work on big JPEGs) and the EXIF transpose.
A bad sample raises ``CorruptSample``; the pipeline skips it and counts it in ``CorruptCounter``.
"""
from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter

log = logging.getLogger("mmfm.data")


class CorruptSample(ValueError):
    """A sample that cannot be decoded. ``reason`` is a short category used for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Decoder:
    def __init__(self, image_keys: str = "jpg;jpeg;png;webp", max_pixels: int = 89_478_485,
                 decode_size: int | None = None):
        self.image_keys = [k.strip().lower() for k in image_keys.split(";") if k.strip()]
        self.max_pixels = int(max_pixels)
        self.decode_size = decode_size

    def image(self, data: bytes, where: str):
        from PIL import Image, ImageOps

        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise CorruptSample("too_many_pixels", f"{where}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any PIL failure means the bytes are not an image
            raise CorruptSample("not_an_image", f"{where}: {type(e).__name__}: {e}") from None
        w, h = img.size
        if w * h > self.max_pixels:
            raise CorruptSample("too_many_pixels", f"{where}: {w}x{h} = {w * h} pixels > data.max_pixels "
                                f"({self.max_pixels})")
        if w == 0 or h == 0:
            raise CorruptSample("not_an_image", f"{where}: zero-sized image")
        try:
            if self.decode_size and img.format == "JPEG" and min(w, h) > 2 * self.decode_size:
                img.draft("RGB", (self.decode_size, self.decode_size))
            img.load()                                   # decode here, so a truncated file counts as corrupt
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no orientation tag
            return img if img.mode == "RGB" else img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - truncated / corrupt pixel data
            raise CorruptSample("corrupt_image", f"{where}: {type(e).__name__}: {e}") from None

    def __call__(self, raw: dict) -> dict:
        key = raw.get("__key__", "?")
        url = raw.get("__url__", "?")
        where = f"{url}:{key}"
        out: dict = {"__key__": key, "__url__": url}
        for ext, value in raw.items():
            if ext.startswith("__"):
                continue
            try:
                if ext in ("txt", "text"):
                    out[ext] = value.decode("utf-8").strip()
                elif ext == "json":
                    out[ext] = json.loads(value.decode("utf-8"))
                elif ext == "cls":
                    out[ext] = int(value.decode("ascii").strip())
                elif ext not in self.image_keys:
                    out[ext] = value
            except (UnicodeDecodeError, ValueError) as e:
                raise CorruptSample(f"bad_{ext}", f"{where}.{ext}: {type(e).__name__}: {e}") from None
        for ext in self.image_keys:
            if ext in raw:
                out["image"] = self.image(raw[ext], f"{where}.{ext}")
                break
        return out


class CorruptCounter:
    """Counts skipped samples by reason and warns at a bounded rate (first few, then a summary per period)."""

    def __init__(self, first: int = 3, period_s: float = 60.0, where: str = ""):
        self.counts: Counter = Counter()
        self.first = first
        self.period_s = period_s
        self.where = where
        self._last = 0.0
        self._since = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        self._since += 1
        now = time.monotonic()
        if self.total <= self.first:
            log.warning("skipping a corrupt sample%s: %s", self.where, message)
            self._last, self._since = now, 0
        elif now - self._last >= self.period_s:
            log.warning("skipped %d more corrupt samples%s (totals: %s); latest: %s", self._since, self.where,
                        dict(self.counts), message)
            self._last, self._since = now, 0
