"""The emoji sources: Unicode's emoji-test.txt with one image per emoji.

* ``noto_emoji``: each glyph rendered with Debian's Noto Color Emoji font (``source.font``).
* ``emoji_images``: another artist's PNGs from an emoji-datasource package folder (``source.image_root``:
  ``emoji.json`` + ``img/SET/64/*.png``, e.g. npm ``emoji-datasource-twitter``, Twemoji), looked up by code
  points; an emoji the set has no image for is skipped as ``missing_image``.

Every fully-qualified emoji outside the ``Component`` group becomes one sample: the caption is its CLDR
name, ``cls`` the index of its group (9 groups, in file order: the same classes for both sources), and the
JSON holds name, group, subgroup, codepoints, skin_tone and is_flag.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError

from .options import SourceOptions
from .source import Source

FONT_SIZE = 109   # the only size the CBDT bitmap font renders at
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark",
              "1F3FF": "dark"}
EXCLUDED_GROUPS = ("Component",)
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*([a-z-]+)\s*#\s*(\S+)\s+E(\d+\.\d+)\s+(.+)$")


def parse_emoji_test(path: str | Path) -> list[dict]:
    """Fully-qualified emoji in file order with name, group, subgroup, codepoints, skin tone."""
    group = subgroup = ""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line and not line.startswith("#"):
                m = _LINE.match(line)
                if not m or m.group(2) != "fully-qualified" or group in EXCLUDED_GROUPS:
                    continue
                cps = m.group(1).split()
                tones = [SKIN_TONES[c] for c in cps if c in SKIN_TONES]
                tone = "none" if not tones else (tones[0] if len(set(tones)) == 1 else "mixed")
                out.append({"emoji": "".join(chr(int(c, 16)) for c in cps), "codepoints": " ".join(cps),
                            "name": m.group(5).strip(), "group": group, "subgroup": subgroup,
                            "version": m.group(4), "skin_tone": tone, "is_flag": group == "Flags"})
    return out


def line_name(line: str) -> str | None:
    """The CLDR name on one emoji line of emoji-test.txt ('1F44B 1F3FD ; fully-qualified # ... waving hand:
    medium skin tone' -> 'waving hand: medium skin tone'); None for headers, comments and other lines."""
    m = _LINE.match(line.rstrip("\n"))
    return m.group(5).strip() if m else None


def base_name(name: str) -> str:
    """The name without skin-tone parts: 'waving hand: medium skin tone' -> 'waving hand'.

    Used to keep every skin-tone variant of one emoji on the same side of a held-out split."""
    if ": " not in name:
        return name
    head, tail = name.split(": ", 1)
    parts = [p for p in tail.split(", ") if not p.endswith("skin tone")]
    return f"{head}: {', '.join(parts)}" if parts else head


def _parse(path: Path) -> tuple[list[dict], list[str]]:
    emoji = parse_emoji_test(path)
    if not emoji:
        raise ConfigError(f"{path}: no fully-qualified emoji found (is this Unicode's emoji-test.txt?)")
    return emoji, list(dict.fromkeys(e["group"] for e in emoji))


def _item(e: dict, groups: list[str], **image) -> dict:
    meta = {k: e[k] for k in ("name", "group", "subgroup", "codepoints", "skin_tone", "is_flag", "version",
                              "emoji")}
    meta["base_name"] = base_name(e["name"])
    return {"src": "", **image, "source": f"emoji:{e['codepoints']}", "captions": [e["name"]],
            "cls": groups.index(e["group"]), "meta": meta, "split_key": meta["base_name"]}


def read_emoji(path: Path, src: SourceOptions) -> Source:
    if not Path(src.font).is_file():
        raise ConfigError(f"source.font: {src.font} not found (install Debian's fonts-noto-color-emoji)")
    emoji, groups = _parse(path)
    return Source((_item(e, groups, emoji=e["emoji"], font=src.font) for e in emoji), len(emoji), groups)


def datasource_images(root: Path) -> dict[str, Path]:
    """Code points ('1F44B 1F3FD') -> PNG of an emoji-datasource package folder (``emoji.json`` and one
    ``img/SET/64`` folder), skin-tone variants and non-qualified forms included."""
    index_file = root / "emoji.json"
    if not index_file.is_file():
        raise ConfigError(f"source.image_root: {root} has no emoji.json (an emoji-datasource package folder, e.g. "
                          f"npm emoji-datasource-twitter; `make twemoji` fetches it)")
    sets = sorted(p for p in (root / "img").glob("*/64") if p.is_dir())
    if len(sets) != 1:
        raise ConfigError(f"source.image_root: {root} needs exactly one img/SET/64 folder, found "
                          f"{[str(p.relative_to(root)) for p in sets]}")
    import json

    try:
        entries = json.loads(index_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"source.image_root: {index_file} is not valid JSON: {e}") from None
    out: dict[str, Path] = {}
    for entry in entries:
        for e in [entry, *(entry.get("skin_variations") or {}).values()]:
            if not e.get("image"):
                continue
            png = sets[0] / e["image"]
            for key in (e.get("unified"), e.get("non_qualified")):
                if key:
                    out.setdefault(key.upper().replace("-", " "), png)
    return out


def read_emoji_images(path: Path, src: SourceOptions) -> Source:
    emoji, groups = _parse(path)
    images = datasource_images(Path(src.image_root or path.parent))

    def items() -> Iterator[dict]:
        for e in emoji:
            png = images.get(e["codepoints"]) or images.get(e["codepoints"].replace(" FE0F", ""))
            if png is None or not png.is_file():
                yield dict(_item(e, groups), error="missing_image",
                           error_detail=f"no image for {e['codepoints']} in {src.image_root}")
            else:
                item = _item(e, groups, src=str(png))
                item["meta"]["image"] = png.name          # the artist's file, for attribution
                yield item
    return Source(items(), len(emoji), groups)


_FONTS: dict = {}


def render(emoji: str, font_path: str):
    """One emoji -> RGBA image (136x128 for Noto Color Emoji), transparent background.

    A colour bitmap font draws every glyph in the same cell, so the cell is measured once per font."""
    from PIL import Image, ImageDraw, ImageFont

    cached = _FONTS.get(font_path)
    if cached is None:
        font = ImageFont.truetype(font_path, FONT_SIZE)
        left, top, right, bottom = font.getbbox("\U0001F600")
        cached = _FONTS[font_path] = (font, (-left, -top), (max(1, right - left), max(1, bottom - top)))
    font, origin, cell = cached
    img = Image.new("RGBA", cell, (0, 0, 0, 0))
    ImageDraw.Draw(img).text(origin, emoji, font=font, embedded_color=True)
    return img
