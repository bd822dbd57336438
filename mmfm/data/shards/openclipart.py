"""``openclipart``: the Open Clip Art Library's SVGs as Debian packages them (``openclipart-svg``, public domain):
``/usr/share/openclipart/svg/CATEGORY/.../NAME.svg``, each with Dublin Core metadata in ``<metadata>``
(``dc:title``, ``dc:description``, keywords in ``dc:subject``, the author in ``dc:creator``).

The captions are those fields, as written, with the ones that do not describe the picture left out (nothing is
added):

* a title shared by more than ``SHARED`` files (a collection's name: ``gramastar``, ``Lemon SVG theme``,
  ``Part of the Flat Icon Collection (...)``), a ``Clipart by AUTHOR - ...`` title (a template its author reused
  across files: ``Clipart by ... - piggybank`` on a die), or one that is only the author's name; ``_`` in a
  title reads as a space (``arki_arrow_down``);
* a description shared by more than ``SHARED`` files (``EPS converted from http://aiga.org``), holding an e-mail
  address or a URL, a tool credit (``Made with Sodipodi``), or longer than ``MAX_DESCRIPTION`` characters;
* keywords that tag the package rather than the picture (``hash``, ``unsorted``, ``theme``, ``..._theme_...``,
  hexadecimal ids, the author's name); ``_`` in a keyword reads as a space.

``KEY.txt`` is the title, else the description, else the keywords (comma-separated); ``KEY.json["captions"]`` all
three. A file with none of them is skipped as ``missing_caption``, one whose XML does not parse as
``decode_error`` (as one cairosvg cannot draw), a drawing of one flat colour as ``placeholder``; symbolic links
(the package's second names for a file) are not read. Items come in a fixed order mixed over the categories (by a hash of the relative path), so
``source.limit`` takes a sample of every category rather than the first folders. Drawings are rasterised by
cairosvg into the square at their own aspect ratio (it letterboxes, transparent, then composited on white).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError

from .extra_sources import _captions, _require
from .options import SourceOptions
from .source import Source

SHARED = 5                     # a title or description on more files than this names a collection
MAX_DESCRIPTION = 200
DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
CC = "{http://web.resource.org/cc/}"
_PACKAGE_TAGS = {"hash", "unsorted", "theme", "themes"}
_HEX = re.compile(r"^0x[0-9a-f]+$", re.I)
_CREDIT = re.compile(r"^(made|created|drawn|converted) (with|in|by|from)\b", re.I)
_CONTACT = re.compile(r"@|https?://|www\.", re.I)


def _text(el) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def read_metadata(svg: Path) -> dict:
    """The Dublin Core fields of one SVG, read up to the end of its ``<metadata>`` (not the drawing);
    ``{"error": ...}`` where the XML does not parse that far. defusedxml (cairosvg's own parser, so installed
    with it) refuses entity declarations, as cairosvg does when it draws the file."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    fields: dict = {"title": "", "description": "", "keywords": [], "creator": ""}
    try:
        for _, el in iterparse(svg, events=("end",)):
            if el.tag == f"{CC}Work":
                fields["title"] = _text(el.find(f"{DC}title"))
                fields["description"] = _text(el.find(f"{DC}description"))
                fields["keywords"] = [_text(li) for li in el.iterfind(f"{DC}subject/{RDF}Bag/{RDF}li")]
                fields["creator"] = _text(el.find(f"{DC}creator/{CC}Agent/{DC}title"))
            if el.tag.endswith("}metadata"):
                break
    except (ParseError, DefusedXmlException, OSError, UnicodeDecodeError) as e:
        return {**fields, "error": f"{type(e).__name__}: {e}"}
    return fields


def _keep_title(raw: str, creator: str, counts: Counter) -> str:
    title = " ".join(raw.replace("_", " ").split())        # file-name titles: arki_arrow_down
    if not title or counts[raw] > SHARED or title.lower().startswith("clipart by "):
        return ""
    return "" if creator and title.lower() == creator.lower() else title


def _keep_description(desc: str, title: str, counts: Counter) -> str:
    if (not desc or counts[desc] > SHARED or len(desc) > MAX_DESCRIPTION or _CONTACT.search(desc)
            or _CREDIT.match(desc) or desc.lower() == title.lower()):
        return ""
    return desc


def _keep_keywords(words: list[str], creator: str) -> list[str]:
    out = []
    for w in words:
        w = " ".join(w.replace("_", " ").split())
        low = w.lower()
        if (not w or low in _PACKAGE_TAGS or "theme" in low.split() or _HEX.match(w)
                or (creator and low == creator.lower())):
            continue
        out.append(w)
    return list(dict.fromkeys(out))


def openclipart_text(meta: dict, titles: Counter, descriptions: Counter) -> dict:
    """One file's kept fields and captions (``captions`` empty: nothing that describes the picture)."""
    creator = meta.get("creator", "")
    title = _keep_title(meta.get("title", ""), creator, titles)
    desc = _keep_description(meta.get("description", ""), title, descriptions)
    words = _keep_keywords(meta.get("keywords") or [], creator)
    return {"title": title, "description": desc, "keywords": words,
            "captions": _captions(title, desc, ", ".join(words))}


def _order(rel: str) -> str:
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()


def read_openclipart(path: Path, src: SourceOptions) -> Source:
    """``path``: the package's ``svg`` folder (``/usr/share/openclipart/svg``) or any folder below it."""
    _require("cairosvg", "sources", "openclipart (SVG)")
    if not path.is_dir():
        raise ConfigError(f"source.path: {path} is not a folder of SVGs (Debian openclipart-svg: "
                          f"/usr/share/openclipart/svg)")
    files = sorted((p for p in path.rglob("*.svg") if not p.is_symlink()),
                   key=lambda p: _order(p.relative_to(path).as_posix()))
    if not files:
        raise ConfigError(f"source.path: {path} holds no SVG files")
    metas = {p: read_metadata(p) for p in files}
    titles = Counter(m["title"] for m in metas.values() if m["title"])
    descriptions = Counter(m["description"] for m in metas.values() if m["description"])

    def items() -> Iterator[dict]:
        for svg in files:
            rel = svg.relative_to(path).as_posix()
            meta = metas[svg]
            text = openclipart_text(meta, titles, descriptions)
            item = {"src": "", "load": ("svg", str(svg)), "source": f"openclipart:{rel}",
                    "captions": text["captions"], "split_key": rel,
                    "meta": {"name": text["captions"][0] if text["captions"] else "", "file": rel,
                             "category": svg.parent.relative_to(path).as_posix(), "title": text["title"],
                             "description": text["description"], "keywords": text["keywords"],
                             "creator": meta.get("creator", "")}}
            if "error" in meta:
                yield {**item, "error": "decode_error", "error_detail": f"{svg}: {meta['error']}"}
            elif not text["captions"]:
                yield {**item, "error": "missing_caption", "error_detail": f"{svg}: no title, description or keyword "
                                                                   f"that describes the picture"}
            else:
                yield item
    return Source(items(), len(files), [])
