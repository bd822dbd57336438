"""Openly licensed image-text sources beyond the emoji fonts, each a recipe in ``data_recipes/``:

* ``openmoji``: OpenMoji's SVGs (npm ``openmoji``, CC BY-SA 4.0) with ``data/openmoji.json``: the caption is the
  Unicode annotation, further captions its tags and OpenMoji's own tags; ``cls`` the CLDR group (same 9 classes
  as ``noto_emoji``/``twemoji``); OpenMoji's extras (no CLDR group) have no label.
* ``country_flags``: npm ``svg-country-flags`` (public domain): ``countries.json`` (ISO code -> English name) and
  ``png250px/CODE.png``; captions ``flag: NAME`` (the CLDR form) and ``flag of NAME``; ``cls`` = Flags.
* ``fashion_mnist``: Zalando's IDX files (Debian ``dataset-fashion-mnist``, MIT): the class name and
  ``a photo of a CLASS`` (they are product photographs); ``cls`` = the 10 classes.
* ``icon_theme``: one size folder of a freedesktop icon theme (Debian ``adwaita-icon-theme``: ``48x48/CONTEXT/
  NAME.png``): the icon name as words (``accessories-calculator`` -> ``accessories calculator``) and ``... icon``;
  symbolic (monochrome mask) icons are not read; no label (contexts are not a shared label space).
* ``openclipart``: the Open Clip Art Library's SVGs (Debian ``openclipart-svg``, public domain): title,
  description and keywords from each file's metadata (``openclipart.py``).
* ``skimage_photos``: scikit-image's photos named by hand in ``photos.yaml``: the label; ``cls`` = its CLDR group.

Images that are not files (SVG, IDX rows, ``skimage.data`` calls) are loaded in the worker by ``load_image`` from
the item's ``load`` tuple; a broken file is skipped as ``decode_error``, a placeholder (one flat colour) as
``placeholder``. Nothing here invents text: every caption is a field of the source or its class name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from mmfm.config import ConfigError

from .imageops import Skip
from .options import SourceOptions
from .source import Source

EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                "Activities", "Objects", "Symbols", "Flags")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
OPENMOJI_SKIPPED_GROUPS = ("component",)   # skin-tone swatches and hair parts, not pictures of a thing


def _group_of(slug: str) -> str | None:
    """'smileys-emotion' -> 'Smileys & Emotion'; None for OpenMoji's own extras."""
    for g in EMOJI_GROUPS:
        if g.lower().replace(" & ", "-") == slug:
            return g
    return None


def _split_tags(text: str) -> str:
    return ", ".join(t.strip() for t in (text or "").split(",") if t.strip())


def _captions(*texts: str) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"source.path: {path} is not a readable {what}: {e}") from None


def _missing(item: dict, path: Path) -> dict:
    return {**item, "error": "missing_image", "error_detail": f"{path} not found"}


# ----------------------------------------------------------------------------- readers
def _require(module: str, extra: str, what: str) -> None:
    """Fail before the build, naming the extra, rather than skip every image in the workers."""
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"source.type: {what} needs {module} (pip install 'mmfm[{extra}]')")


def read_openmoji(path: Path, src: SourceOptions) -> Source:
    _require("cairosvg", "sources", "openmoji (SVG)")
    entries = _load_json(path, "openmoji.json")
    root = Path(src.image_root) if src.image_root else path.parent.parent
    svg_dir = root / "color" / "svg"
    keep = [e for e in entries if e.get("group") not in OPENMOJI_SKIPPED_GROUPS and e.get("hexcode")]

    def items() -> Iterator[dict]:
        for e in keep:
            group = _group_of(e.get("group", ""))
            svg = svg_dir / f"{e['hexcode']}.svg"
            meta = {"name": e.get("annotation", ""), "group": group or e.get("group", ""),
                    "hexcode": e["hexcode"], "tags": _split_tags(e.get("tags", "")),
                    "openmoji_tags": _split_tags(e.get("openmoji_tags", "")), "author": e.get("openmoji_author", ""),
                    "base_name": e.get("skintone_base_emoji") or e.get("annotation", "")}
            item = {"src": "", "load": ("svg", str(svg)), "source": f"openmoji:{e['hexcode']}",
                    "captions": _captions(meta["name"], meta["tags"], meta["openmoji_tags"]),
                    "cls": EMOJI_GROUPS.index(group) if group else None, "meta": meta,
                    "split_key": meta["base_name"]}
            yield item if svg.is_file() else _missing(item, svg)
    return Source(items(), len(keep), list(EMOJI_GROUPS))


def read_country_flags(path: Path, src: SourceOptions) -> Source:
    names = _load_json(path, "countries.json (code -> name)")
    if not isinstance(names, dict):
        raise ConfigError(f"source.path: {path} must map ISO codes to country names")
    png_dir = Path(src.image_root) if src.image_root else path.parent / "png250px"

    def items() -> Iterator[dict]:
        for code, name in sorted(names.items()):
            png = png_dir / f"{code.lower()}.png"
            item = {"src": str(png), "load": ("flat_check", str(png)), "source": f"flag:{code}",
                    "captions": _captions(f"flag: {name}", f"flag of {name}"), "cls": EMOJI_GROUPS.index("Flags"),
                    "meta": {"name": f"flag: {name}", "country": name, "code": code, "group": "Flags"},
                    "split_key": code}
            yield item if png.is_file() else _missing(item, png)
    return Source(items(), len(names), list(EMOJI_GROUPS))


def read_fashion_mnist(path: Path, src: SourceOptions) -> Source:
    """``path``: an images IDX file (``t10k-images-idx3-ubyte.gz``); its labels file sits beside it."""
    from mmfm.data.idx import read_idx

    labels_file = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    labels = read_idx(labels_file)
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        raise ConfigError(f"{labels_file}: label {int(labels.max())} is outside the {len(FASHION_CLASSES)} classes")

    def items() -> Iterator[dict]:
        for i, label in enumerate(labels.tolist()):
            name = FASHION_CLASSES[label]
            yield {"src": "", "load": ("idx", str(path), i), "source": f"fashion_mnist:{path.name}:{i}",
                   "captions": [name, f"a photo of a {name}"], "cls": label,
                   "meta": {"name": name, "label": name, "index": i}, "split_key": str(i)}
    return Source(items(), int(labels.size), list(FASHION_CLASSES))


def read_skimage_photos(path: Path, src: SourceOptions) -> Source:
    from mmfm.config import read_yaml

    _require("skimage", "demo", "skimage_photos")
    photos = (read_yaml(path) or {}).get("photos") or []
    if not photos:
        raise ConfigError(f"source.path: {path} lists no photos (expected photos: [{{name, label, group}}])")

    def items() -> Iterator[dict]:
        for p in photos:
            if p.get("group") not in EMOJI_GROUPS:
                raise ConfigError(f"{path}: photo {p.get('name')}: group {p.get('group')!r} is not a CLDR group")
            yield {"src": "", "load": ("skimage", p["name"]), "source": f"skimage:{p['name']}",
                   "captions": [p["label"]], "cls": EMOJI_GROUPS.index(p["group"]),
                   "meta": {"name": p["label"], "group": p["group"], "license": p.get("license", "")},
                   "split_key": p["name"]}
    return Source(items(), len(photos), list(EMOJI_GROUPS))


def read_icon_theme(path: Path, src: SourceOptions) -> Source:
    """``path``: a size folder (``/usr/share/icons/Adwaita/48x48``) holding context folders of PNG icons."""
    if not path.is_dir():
        raise ConfigError(f"source.path: {path} is not an icon theme size folder (e.g. /usr/share/icons/Adwaita/48x48)")
    files = sorted(p for p in path.glob("*/*.png") if "symbolic" not in p.name)
    if not files:
        raise ConfigError(f"source.path: {path} holds no CONTEXT/NAME.png icons")
    theme = path.parent.name

    def items() -> Iterator[dict]:
        for png in files:
            name = png.stem
            words = " ".join(name.replace("_", "-").split("-"))
            yield {"src": str(png), "load": ("flat_check", str(png)), "source": f"icon:{theme}:{name}",
                   "captions": _captions(words, f"{words} icon"),
                   "meta": {"name": name, "context": png.parent.name, "theme": theme}, "split_key": name}
    return Source(items(), len(files), [])


READERS: dict[str, Callable[[Path, SourceOptions], Source]] = {
    "openmoji": read_openmoji, "country_flags": read_country_flags, "fashion_mnist": read_fashion_mnist,
    "skimage_photos": read_skimage_photos, "icon_theme": read_icon_theme}


# ----------------------------------------------------------------------------- loading, in the worker
_IDX: dict[str, Any] = {}


def _flat(img) -> bool:
    """One colour everywhere (alpha included): a placeholder, not a picture."""
    return all(lo == hi for lo, hi in img.convert("RGBA").getextrema())


def _svg(path: str, size: int):
    from PIL import Image
    import io

    try:
        import cairosvg
    except ImportError as e:
        raise ConfigError(f"SVG sources need cairosvg (pip install 'mmfm[sources]'): {e}") from None
    try:
        png = cairosvg.svg2png(url=path, output_width=max(size, 32), output_height=max(size, 32))
    except Exception as e:  # noqa: BLE001 - a broken SVG is one skipped input
        raise Skip("decode_error", f"{path}: {type(e).__name__}: {e}") from None
    return Image.open(io.BytesIO(png))


def load_image(spec: tuple, size: int):
    """``item['load']`` -> a PIL image (or None: use the item's ``src`` bytes after the placeholder check)."""
    from PIL import Image

    kind = spec[0]
    if kind == "svg":
        img = _svg(spec[1], size)
    elif kind == "flat_check":
        try:
            img = Image.open(spec[1])
            img.load()
        except Exception as e:  # noqa: BLE001
            raise Skip("decode_error", f"{spec[1]}: {type(e).__name__}: {e}") from None
    elif kind == "idx":
        from mmfm.data.idx import read_idx
        if spec[1] not in _IDX:
            _IDX[spec[1]] = read_idx(spec[1])
        img = Image.fromarray(_IDX[spec[1]][spec[2]]).convert("RGB")
    elif kind == "skimage":
        img = _skimage(spec[1])
    else:
        raise ConfigError(f"load: unknown image loader {kind!r}")
    if _flat(img):
        raise Skip("placeholder", f"{spec[1]}: one flat colour")
    return None if kind == "flat_check" else img


def _skimage(name: str):
    import numpy as np
    from PIL import Image

    try:
        import skimage.data as skdata
    except ImportError as e:
        raise ConfigError(f"skimage_photos needs scikit-image (pip install 'mmfm[demo]'): {e}") from None
    fn = getattr(skdata, name, None)
    if not callable(fn):
        raise ConfigError(f"skimage_photos: skimage.data has no photo '{name}'")
    arr = np.asarray(fn())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")
