"""Sample decoding (raw tar members -> Python objects) and corrupt-sample accounting.

``Decoder`` is a picklable, module-level callable: ``{"__key__", "jpg": bytes, "txt": bytes, ...}`` ->
``{"__key__", "__url__", "image": RGB PIL, "txt": str, "json": dict, "cls": int, other: bytes}``.
Images go through :func:`decode_image`, the one image decoder of the package: a max-pixels guard (checked from
the header, before any pixel is decoded; an oversized JPEG is decoded at a reduced DCT scale, anything else is
refused), JPEG draft decoding down to ``decode_size`` (DCT scaling: 2-8x less work on big JPEGs) and the EXIF
transpose.
A bad sample raises ``CorruptSample``; the pipeline skips it and counts it in ``CorruptCounter``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import threading
import time
from collections import Counter

from mmfm.config.data import DEFAULT_MAX_PIXELS

log = logging.getLogger("mmfm.data")


class ImageTooLarge(ValueError):
    """An image over the max-pixels limit that cannot be decoded at a reduced scale."""


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_pil_bomb_check():
    """Our own guard replaces PIL's global one while a header is read (restored afterwards).

    PIL's limit is process-global: the lock keeps concurrent decodes (loader threads, the service's
    worker pool) from saving each other's ``None`` and leaving the limit off for good."""
    from PIL import Image
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def decode_image(src, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None):
    """Open ``src`` (path, bytes or a PIL image) as an RGB PIL image, EXIF-transposed, under the max-pixels guard.

    The one oversize rule (training, evaluation, generation and the service alike): a JPEG above
    ``max_pixels`` is decoded at the mildest DCT scale (1/2, 1/4, 1/8) that fits, any other image above it
    raises ``ImageTooLarge``.

    ``draft_size`` (opt-in, "fast decode"): a JPEG whose short side exceeds twice this is decoded at a
    reduced DCT scale that keeps both sides >= ``draft_size``. Faster, but the pixels are not bit-identical
    to a full decode + resize, so it is off by default (results then match open_clip / CLIP_benchmark).
    """
    from PIL import Image, ImageOps
    if isinstance(src, Image.Image):
        return src if src.mode == "RGB" else src.convert("RGB")
    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    with _no_pil_bomb_check():
        img = Image.open(fp)
        w, h = img.size
        if max_pixels and w * h > max_pixels:
            if img.format != "JPEG":
                raise ImageTooLarge(f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}")
            # JPEG can decode at 1/2, 1/4 or 1/8 scale (DCT scaling): pick the mildest that fits.
            d = next((d for d in (2, 4, 8) if math.ceil(w / d) * math.ceil(h / d) <= max_pixels), None)
            if d is None:
                raise ImageTooLarge(f"{w}x{h} exceeds max_pixels={max_pixels} even at 1/8 scale")
            img.draft("RGB", (max(1, w // d), max(1, h // d)))
        elif draft_size and img.format == "JPEG" and min(w, h) > 2 * draft_size:
            img.draft("RGB", (draft_size, draft_size))
        if w == 0 or h == 0:
            raise ValueError("zero-sized image")
        img.load()
    ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no orientation tag
    return img if img.mode == "RGB" else img.convert("RGB")


class CorruptSample(ValueError):
    """A sample that cannot be decoded. ``reason`` is a short category used for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Decoder:
    def __init__(self, image_keys: str = "jpg;jpeg;png;webp", max_pixels: int = DEFAULT_MAX_PIXELS,
                 decode_size: int | None = None):
        self.image_keys = [k.strip().lower() for k in image_keys.split(";") if k.strip()]
        self.max_pixels = int(max_pixels)
        self.decode_size = decode_size

    def image(self, data: bytes, where: str):
        from PIL import Image, UnidentifiedImageError

        try:
            return decode_image(data, self.max_pixels, self.decode_size)
        except (ImageTooLarge, Image.DecompressionBombError) as e:
            raise CorruptSample("too_many_pixels", f"{where}: {e} (data.max_pixels)") from None
        except UnidentifiedImageError as e:
            raise CorruptSample("not_an_image", f"{where}: {type(e).__name__}: {e}") from None
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
