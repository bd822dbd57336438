"""Decode, normalise (EXIF, colour modes), filter, resize and encode one image, deterministically.

Every problem raises ``Skip(reason)``; the builder counts reasons in ``manifest.json``.

The common case, an upright RGB JPEG that still needs a shrink to no less than ``FAST_MIN_SCALE`` after the
DCT-scaled decode (e.g. a 512 px photo to 224: decoded at 1/2, then 256 -> 224), takes a faster path with the same
pixels to ~1/255 (``fast_resized``): libjpeg-turbo's scaled decode through ``simplejpeg`` at exactly the scale
Pillow's ``draft`` picks (identical pixels), then OpenCV's bilinear resize after a light 3-tap blur that widens
its kernel towards Pillow's antialiased triangle (~0.25 vs ~0.75 ms at 256 -> 224). Everything else, and any
libjpeg warning or error, takes the Pillow path; ``resample: bilinear`` gives Pillow's pixels for every image.
"""
from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

try:      # the JPEG fast path (dependencies of mmfm; without them every image takes the Pillow path)
    import cv2
    import numpy as np
    import simplejpeg
except ImportError:  # pragma: no cover
    cv2 = simplejpeg = None

from .options import ImageOptions
from .writer import encode_image

FAST_MIN_SCALE = 0.8   # the fast path's bilinear resize stays within ~1/255 of Pillow's down to this scale
FAST_MIN_SIDE = 64     # ... and for outputs at least this large
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


def draft_factor(w: int, h: int, scale: float | None, opts: ImageOptions) -> int:
    """The DCT scale 1/N (N in 1, 2, 4, 8) a JPEG is decoded at: Pillow's ``draft`` choice for the size we need."""
    if not opts.draft or scale is None or scale >= 0.5:
        return 1
    n = min(w // math.ceil(w * scale), h // math.ceil(h * scale))
    return next(a for a in (8, 4, 2, 1) if n >= a)


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


def resize_target(w: int, h: int, opts: ImageOptions) -> tuple[int, int] | None:
    """The (w, h) an image of this size is resized to, or None when it keeps its size."""
    scale = target_scale(w, h, opts)
    if scale is None:
        return None
    size = opts.size
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if opts.resize_mode == "center_crop":  # the short side must be exactly `size`
        nw, nh = (size, max(size, nh)) if w <= h else (max(size, nw), size)
    return nw, nh


def resize(img: Image.Image, opts: ImageOptions) -> Image.Image:
    w, h = img.size
    target = resize_target(w, h, opts)
    if target is not None:
        nw, nh = target
        if opts.resample == "auto":  # antialiased bilinear (torchvision's default) down, bicubic up
            method = _RESAMPLE["bilinear" if nw * nh <= w * h else "bicubic"]
        else:
            method = _RESAMPLE[opts.resample]
        img = img.resize((nw, nh), method, reducing_gap=None)
    return fit(img, opts)


def fit(img: Image.Image, opts: ImageOptions) -> Image.Image:
    """After the resize: the centre crop or the letterbox border of those modes."""
    mode, size = opts.resize_mode, opts.size
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


def fast_resized(img: Image.Image, data: bytes, opts: ImageOptions) -> Image.Image | None:
    """The resized RGB image of an upright RGB JPEG by the fast path, or None where the Pillow path must run
    (another format or mode, no downscale, a resample other than auto (``bilinear`` is Pillow's), a shrink below
    ``FAST_MIN_SCALE`` after the DCT scaling, an output side under ``FAST_MIN_SIDE``, a libjpeg warning or error)."""
    if simplejpeg is None or img.format != "JPEG" or img.mode != "RGB" or opts.resample != "auto":
        return None
    if img.getexif().get(0x0112, 1) != 1:      # EXIF-rotated: Pillow's exif_transpose
        return None
    w, h = img.size
    a = draft_factor(w, h, target_scale(w, h, opts), opts)
    dw, dh = -(-w // a), -(-h // a)
    target = resize_target(dw, dh, opts)
    if target is None or min(target[0] / dw, target[1] / dh) < FAST_MIN_SCALE or target[0] * target[1] > dw * dh:
        return None
    if min(target) < FAST_MIN_SIDE:      # small outputs: the edges weigh more, and Pillow is cheap there
        return None
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=dw, min_height=dh)
    except Exception:  # noqa: BLE001 - truncated or odd JPEGs: the Pillow path names the reason
        return None
    if arr.shape != (dh, dw, 3):
        return None
    if target != (dw, dh):
        blur = (max(dw / target[0], dh / target[1]) - 1.0) * 0.35
        kernel = np.array([blur, 1.0 - 2.0 * blur, blur], np.float32)
        arr = cv2.sepFilter2D(arr, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)   # in float:
        arr = cv2.convertScaleAbs(cv2.resize(arr, target, interpolation=cv2.INTER_LINEAR))  # one rounding
    return fit(Image.fromarray(arr, "RGB"), opts)


def process_bytes(data: bytes, opts: ImageOptions) -> tuple[bytes, tuple[int, int]]:
    """Encoded source image -> (encoded output image, original (w, h) after EXIF orientation)."""
    img = open_image(data, opts)
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "TIFF", "WEBP", "PNG") else 1
    orig = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    out = fast_resized(img, data, opts)
    return encode_image(out if out is not None else prepare(img, opts), opts.format, opts.quality), orig


def single_threaded_codecs() -> None:
    """One OpenCV thread per worker process: the build runs one worker per core."""
    if cv2 is not None:
        cv2.setNumThreads(1)


def process_pil(img: Image.Image, opts: ImageOptions) -> tuple[bytes, tuple[int, int]]:
    """An in-memory (rendered) image -> (encoded output, original size)."""
    check_size(img.size, opts)
    orig = img.size
    return encode_image(resize(to_rgb(img, tuple(opts.background)), opts), opts.format, opts.quality), orig
