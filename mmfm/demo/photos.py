"""Real photos for evaluation: scikit-image's bundled sample photos, named by hand with a CLDR emoji group.

``data_recipes/skimage_photos/photos.yaml`` lists each photo (a ``skimage.data`` function) with ``label``
(what it shows), ``group`` (the CLDR group of an emoji of that thing) and ``license``.
:func:`write_photo_folder` writes them as the zero-shot folder tree ``mmfm zeroshot`` reads. scikit-image is
an optional dependency (the ``demo`` extra), imported only here. Data for the demo, so it lives in ``mmfm.demo``,
not in the core ``mmfm.data``.
"""
from __future__ import annotations

import re
from pathlib import Path

from mmfm.config import ConfigError, atomic_write, atomic_write_text, read_yaml

__all__ = ["EMOJI_GROUPS", "read_photo_list", "write_photo_folder"]

EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                "Activities", "Objects", "Symbols", "Flags")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def read_photo_list(path: str | Path | None = None) -> list[dict]:
    """The photo list (default: the shipped ``data_recipes/skimage_photos/photos.yaml``), checked."""
    if path is None:
        from mmfm.config.resources import resource_dir
        path = resource_dir("data_recipes", "skimage_photos") / "photos.yaml"
    photos = read_yaml(Path(path)).get("photos")
    if not isinstance(photos, list) or not photos:
        raise ConfigError(f"{path}: expected a non-empty 'photos:' list")
    for i, p in enumerate(photos):
        missing = [k for k in ("name", "label", "group") if not (isinstance(p, dict) and p.get(k))]
        if missing:
            raise ConfigError(f"{path}: photos[{i}] has no {', '.join(missing)}")
    return photos


def _photo(name: str):
    """``skimage.data.<name>()`` as an RGB PIL image (grey and boolean images expanded)."""
    import numpy as np
    from PIL import Image

    try:
        import skimage.data as skdata
    except ImportError as e:
        raise ConfigError(f"real photos need scikit-image (pip install 'mmfm[demo]'): {e}") from None
    fn = getattr(skdata, name, None)
    if not callable(fn):
        raise ConfigError(f"photos: skimage.data has no photo '{name}'")
    arr = np.asarray(fn())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")


def write_photo_folder(root: str | Path, classes: list[str] | tuple[str, ...] = EMOJI_GROUPS,
                       photos: list[dict] | None = None) -> tuple[Path, Path]:
    """Write ``root/images/<group>/<name>.png`` for each photo and ``root/classnames.txt`` (the folder names'
    sorted order). Every group must be one of ``classes``; only groups that hold a photo get a folder
    (``mmfm zeroshot`` refuses empty class folders), so a zero-shot run predicts over those groups.
    Returns (images folder, classnames file)."""
    photos = read_photo_list() if photos is None else photos
    unknown = sorted({p["group"] for p in photos} - set(classes))
    if unknown:
        raise ConfigError(f"photos: group(s) {unknown} are not among the classes {list(classes)}")
    root = Path(root)
    images = root / "images"
    for p in photos:
        path = images / _slug(p["group"]) / f"{p['name']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            import io
            buf = io.BytesIO()
            _photo(p["name"]).save(buf, format="PNG")
            atomic_write(path, buf.getvalue())
    present = {p["group"] for p in photos}
    order = sorted((g for g in classes if g in present), key=_slug)   # scan_folder sorts class folders by name
    names = root / "classnames.txt"
    atomic_write_text(names, "".join(f"{g}\n" for g in order))
    return images, names
