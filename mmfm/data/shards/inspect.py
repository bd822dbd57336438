"""``mmfm shards inspect DIR``: counts and schema; ``--verify`` reads every tar through (sha256, sample
counts, tar structure, optional image decode); ``--sheet out.png`` draws a contact sheet with captions."""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mmfm.config import atomic_write

from .manifest import IMAGE_EXTS, MANIFEST, ShardError, read_manifest, sha256_file


def list_shards(path: str | os.PathLike) -> tuple[list[Path], dict | None]:
    """A shard folder with manifest.json, a folder of tars, or one tar -> (tars, manifest or None)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".tar":
        return [path], None
    if not path.is_dir():
        raise ShardError(f"{path}: not a shard folder or .tar file")
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        return [path / s["name"] for s in manifest["shards"]], manifest
    tars = sorted(path.glob("*.tar"))
    if not tars:
        raise ShardError(f"{path}: no manifest.json and no .tar files")
    return tars, None


def iter_samples(tar_path: Path, end: dict | None = None) -> Iterator[dict]:
    """Group tar members into samples by key (the WebDataset convention), in tar order.

    When ``end`` is given, ``end["offset"]`` is set to where the archive's members stopped."""
    current: dict | None = None
    with tarfile.open(tar_path, "r:*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            name = member.name
            base = os.path.basename(name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = os.path.join(os.path.dirname(name), stem)
            data = tf.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {name} is truncated")
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
        if end is not None:
            end["offset"] = tf.offset
    if current is not None:
        yield current


def _check_end(tar_path: Path, offset: int) -> str | None:
    """A complete tar ends with two zero blocks; tarfile silently stops at a truncated header."""
    with open(tar_path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return None  # gzip: the gzip CRC already guards the tail
        f.seek(offset)
        tail = f.read(1024)
    if len(tail) < 1024 or tail.strip(b"\0"):
        return f"truncated or garbage at byte {offset} (no end-of-archive marker)"
    return None


def _describe(ext: str, value: bytes) -> str:
    if ext in IMAGE_EXTS:
        from PIL import Image
        with Image.open(io.BytesIO(value)) as im:
            return f"image {im.format} {im.mode} {im.size[0]}x{im.size[1]}"
    if ext == "json":
        return "json {" + ", ".join(sorted(json.loads(value))) + "}"
    if ext == "cls":
        return f"int ({value.decode()})"
    text = value.decode("utf-8", errors="replace")
    return f"text ({text[:60]!r})"


def summary(path: str | os.PathLike) -> str:
    tars, manifest = list_shards(path)
    lines = [f"{path}"]
    if manifest:
        total_bytes = sum(s["bytes"] for s in manifest["shards"])
        lines.append(f"  shards: {len(tars)}   samples: {manifest['total_samples']}   "
                     f"size: {total_bytes / 1e6:.1f} MB   format: {manifest['format']}")
        if manifest.get("split"):
            lines.append(f"  split: {manifest['split']} (holdout {manifest.get('holdout')})")
        fails = manifest.get("failures") or {}
        lines.append(f"  skipped: {sum(fails.values())}" + (
            "  (" + ", ".join(f"{k}={v}" for k, v in sorted(fails.items(), key=lambda kv: -kv[1])) + ")"
            if fails else ""))
        classes = manifest.get("classes") or []
        if classes:
            shown = ", ".join(f"{i}={c}" for i, c in enumerate(classes[:12]))
            lines.append(f"  classes: {len(classes)} ({shown}{', ...' if len(classes) > 12 else ''})")
        lines.append("  keys: " + ", ".join(f"{k} ({v})" for k, v in manifest["keys"].items()))
    else:
        lines.append(f"  shards: {len(tars)} (no manifest.json)")
    first = next((s for t in tars[:1] for s in iter_samples(t)), None)
    if first is not None:
        lines.append(f"  first sample '{first['__key__']}':")
        for ext in sorted(k for k in first if k != "__key__"):
            lines.append(f"    .{ext:<5} {_describe(ext, first[ext])}")
    return "\n".join(lines)


def verify_tar(tar_path: Path, expected: dict | None = None, decode: bool = False) -> tuple[int, str | None]:
    """Read one tar through. -> (samples, None) or (samples_so_far, error message)."""
    if not tar_path.is_file():
        return 0, "file is missing"
    if expected is not None:
        if sha256_file(tar_path) != expected["sha256"]:
            return 0, "sha256 does not match manifest.json"
    n, end = 0, {}
    try:
        for sample in iter_samples(tar_path, end):
            n += 1
            if decode:
                _decode_check(sample)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        return n, f"unreadable after {n} samples: {type(e).__name__}: {e}"
    problem = _check_end(tar_path, end.get("offset", 0))
    if problem:
        return n, f"unreadable after {n} samples: {problem}"
    if expected is not None and n != expected["samples"]:
        return n, f"{n} samples, manifest.json says {expected['samples']}"
    return n, None


def _decode_check(sample: dict) -> None:
    from PIL import Image
    for ext in IMAGE_EXTS:
        if ext in sample:
            with Image.open(io.BytesIO(sample[ext])) as im:
                im.load()
    if "json" in sample:
        json.loads(sample["json"])
    if "txt" in sample:
        sample["txt"].decode("utf-8")


def verify(path: str | os.PathLike, decode: bool = False, progress: bool = True) -> list[tuple[str, str]]:
    """-> list of (tar name, problem); empty when every tar reads through."""
    from tqdm import tqdm

    tars, manifest = list_shards(path)
    expected = {s["name"]: s for s in manifest["shards"]} if manifest else {}
    problems = []
    for tar in tqdm(tars, unit="shard", desc="verify", disable=not progress):
        _, err = verify_tar(tar, expected.get(tar.name), decode=decode)
        if err:
            problems.append((str(tar), err))
    return problems


@dataclass
class ContactSheet:
    """A written contact sheet: ``shown`` of the ``total`` samples with an image that the shards hold."""
    path: Path
    shown: int
    total: int

    @property
    def title(self) -> str | None:
        """``"24 of 26 shown"`` when the sheet holds fewer samples than the shards; None when it holds them all."""
        return f"{self.shown} of {self.total} shown" if self.shown < self.total else None


def contact_sheet(path: str | os.PathLike, out_png: str | os.PathLike, n: int = 24, cols: int = 6,
                  cell: int = 160) -> ContactSheet:
    """A grid of the first ``n`` samples with their captions (and labels when present). When the shards hold more,
    the sheet says so in a title line (drawn, and as the PNG's ``Title``)."""
    tars, manifest = list_shards(path)
    samples = _first_samples(tars, n)
    if not samples:
        raise ShardError(f"{path}: no samples with an image")
    total = len(samples) if len(samples) < n else _image_samples(tars, manifest)
    sheet = ContactSheet(Path(out_png), len(samples), max(total, len(samples)))
    png = _draw(samples, (manifest or {}).get("classes") or [], cols, cell, sheet.title)
    atomic_write(out_png, png)
    return sheet


def _first_samples(tars: list[Path], n: int) -> list[dict]:
    samples = []
    for tar in tars:
        for s in iter_samples(tar):
            if any(e in s for e in IMAGE_EXTS):
                samples.append(s)
            if len(samples) >= n:
                return samples
    return samples


def _image_samples(tars: list[Path], manifest: dict | None) -> int:
    """How many samples with an image the shards hold: the manifest's count, or the tars' member names counted."""
    if manifest and "image" in manifest["keys"].values():
        return manifest["total_samples"]
    count = 0
    for tar in tars:
        keys = set()
        with tarfile.open(tar, "r:*") as tf:
            for m in tf:
                stem, _, ext = os.path.basename(m.name).partition(".")
                if m.isfile() and ext in IMAGE_EXTS:      # grouped by key as iter_samples groups them
                    keys.add(os.path.join(os.path.dirname(m.name), stem))
        count += len(keys)
    return count


TITLE_H = 22   # the title line's height, when the sheet has one


def _draw(samples: list[dict], classes: list[str], cols: int, cell: int, title: str | None) -> bytes:
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    font = ImageFont.load_default(size=11)
    text_h, top = 44, TITLE_H if title else 0
    rows = (len(samples) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, top + rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black", font=ImageFont.load_default(size=13))
    for i, s in enumerate(samples):
        x, y = (i % cols) * cell, top + (i // cols) * (cell + text_h)
        ext = next(e for e in IMAGE_EXTS if e in s)
        with Image.open(io.BytesIO(s[ext])) as im:
            im = im.convert("RGB")
            scale = (cell - 8) / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
        caption = s.get("txt", b"").decode("utf-8", errors="replace")
        if "cls" in s:
            label = int(s["cls"])
            caption += f" [{classes[label] if label < len(classes) else label}]"
        draw.multiline_text((x + 4, y + cell), _wrap(draw, caption, font, cell - 8), fill="black", font=font,
                            spacing=1)
    info = PngInfo()
    if title:
        info.add_text("Title", title)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _wrap(draw, text: str, font, width: int, max_lines: int = 3) -> str:
    lines, line = [], ""
    for word in text.split():
        cand = f"{line} {word}".strip()
        if draw.textlength(cand, font=font) <= width or not line:
            line = cand
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return "\n".join(lines)
