"""Decode, normalise (EXIF, colour modes), filter, resize and encode one image, deterministically.

Every problem raises ``Skip(reason)``; the builder counts reasons in ``manifest.json``.
"""
from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .options import ImageOptions
from .writer import encode_image

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}


class Skip(Exception):
    """A sample is skipped; ``reason`` is the manifest failure key (``not_an_image``, ``http_404``...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(data: bytes, opts: ImageOptions) -> Image.Image:
    """Bytes -> PIL image (not yet loaded), with the bomb and size/aspect filters applied."""
    if not data:
        raise Skip("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Skip("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        raise Skip("not_an_image") from None
    except Exception as e:  # noqa: BLE001 - a broken header can raise anything
        raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
    check_size(img.size, opts)
    return img


def check_size(size: tuple[int, int], opts: ImageOptions) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise Skip("decode_error", f"size {w}x{h}")
    if w * h > opts.max_pixels:
        raise Skip("too_many_pixels", f"{w}x{h} > {opts.max_pixels} pixels")
    if opts.min_size and min(w, h) < opts.min_size:
        raise Skip("too_small", f"{w}x{h}")
    if opts.max_size and max(w, h) > opts.max_size:
        raise Skip("too_big", f"{w}x{h}")
    if opts.max_aspect_ratio and max(w, h) / min(w, h) > opts.max_aspect_ratio:
        raise Skip("bad_aspect", f"{w}x{h}")


def target_scale(w: int, h: int, opts: ImageOptions) -> float | None:
    """Scale factor the resize mode will apply, or None when the image keeps its size."""
    if opts.resize_mode == "no":
        return None
    shortest = opts.resize_mode == "center_crop" or (opts.resize_mode == "keep_ratio"
                                                      and opts.resize_side == "shortest")
    side = min(w, h) if shortest else max(w, h)
    if side == opts.size or (opts.resize_only_if_bigger and side <= opts.size):
        return None
    return opts.size / side


def load_image(img: Image.Image, opts: ImageOptions) -> Image.Image:
    """Decode pixels (JPEG at a reduced DCT scale when we will downscale anyway)."""
    scale = target_scale(*img.size, opts)
    if opts.draft and img.format == "JPEG" and scale is not None and scale < 0.5:
        w, h = img.size
        img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else "RGB",
                  (math.ceil(w * scale), math.ceil(h * scale)))
    try:
        img.load()
    except OSError as e:
        msg = str(e)
        reason = "truncated_image" if "truncated" in msg or "premature" in msg.lower() else "decode_error"
        raise Skip(reason, msg) from None
    except Exception as e:  # noqa: BLE001
        raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB, deterministically: 16/32-bit scaled to 8 bit, alpha composited on ``background``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img)
        if mode == "F":
            arr8 = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        else:
            top = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
            arr8 = (arr.astype(np.int64) * 255 // top).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK (Adobe-inverted handled by PIL), YCbCr, LAB, HSV


def resize(img: Image.Image, opts: ImageOptions) -> Image.Image:
    mode, size = opts.resize_mode, opts.size
    w, h = img.size
    scale = target_scale(w, h, opts)
    if scale is not None:
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if mode == "center_crop":  # the short side must be exactly `size`
            nw, nh = (size, max(size, nh)) if w <= h else (max(size, nw), size)
        if opts.resample == "auto":  # antialiased bilinear (torchvision's default) down, bicubic up
            method = _RESAMPLE["bilinear" if nw * nh <= w * h else "bicubic"]
        else:
            method = _RESAMPLE[opts.resample]
        img = img.resize((nw, nh), method, reducing_gap=None)
    if mode == "center_crop" and img.size != (size, size):
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        if w >= size and h >= size:
            img = img.crop((left, top, left + size, top + size))
    elif mode == "border" and img.size != (size, size):
        w, h = img.size
        if w <= size and h <= size:
            canvas = Image.new("RGB", (size, size), tuple(opts.background))
            canvas.paste(img, ((size - w) // 2, (size - h) // 2))
            img = canvas
    return img


def prepare(img: Image.Image, opts: ImageOptions) -> Image.Image:
    """Loaded-or-lazy PIL image -> final RGB image: EXIF orientation applied, mode normalised, resized."""
    img = load_image(img, opts)
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the image
        pass
    img = to_rgb(img, tuple(opts.background))
    return resize(img, opts)


def process_bytes(data: bytes, opts: ImageOptions) -> tuple[bytes, tuple[int, int]]:
    """Encoded source image -> (encoded output image, original (w, h) after EXIF orientation)."""
    img = open_image(data, opts)
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "TIFF", "WEBP", "PNG") else 1
    orig = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return encode_image(prepare(img, opts), opts.format, opts.quality), orig


def process_pil(img: Image.Image, opts: ImageOptions) -> tuple[bytes, tuple[int, int]]:
    """An in-memory (rendered) image -> (encoded output, original size)."""
    check_size(img.size, opts)
    orig = img.size
    return encode_image(resize(to_rgb(img, tuple(opts.background)), opts), opts.format, opts.quality), orig
