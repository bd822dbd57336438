"""Sources -> a deterministic stream of items (plain dicts, cheap: no image is opened here).

An item: ``{"src": path-or-URL, "captions": [...], "cls": int|None, "meta": {...}, "split_key": str}``
plus ``question``/``answers``/``answer_type`` (VQA), ``emoji`` (rendered sources) or ``error``
(a row that cannot become a sample; counted by that reason).
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import glob
import gzip
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from mmfm.config import ConfigError
from mmfm.data import fs

from .download import is_url
from .options import BuildOptions, SourceOptions
from .source import Source

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TABLE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TABLE_KINDS = ("csv", "tsv", "jsonl", "parquet")


def table_kind(name: str) -> str | None:
    """``a.csv`` -> csv, ``a.jsonl.gz`` -> jsonl (gzip-compressed text tables), anything else -> None."""
    name = name.lower()
    if name.endswith(".gz"):
        kind = TABLE_TYPES.get(os.path.splitext(name[:-3])[1])
        return kind if kind != "parquet" else None     # Parquet compresses its own columns
    return TABLE_TYPES.get(os.path.splitext(name)[1])


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def list_tables(path: str, kind: str = "auto") -> list[str] | None:
    """A folder (its files, not subfolders), a glob or an fsspec prefix of table files -> their paths or URLs,
    sorted (the input order); None when ``path`` is none of these (one file, or an image folder: a folder with
    no table file in it). A folder with both table files and class folders of images needs ``kind``."""
    if fs.is_remote(path):
        filesystem, p = fs.url_fs(path, "source.path")
        if _is_glob(p):
            found = filesystem.glob(p)
        elif filesystem.isdir(p):
            found = filesystem.ls(p, detail=False)
        else:
            return None
        tables = sorted(f for f in found if table_kind(f) and filesystem.isfile(f))
        if not tables:
            raise ConfigError(f"source.path: {path} holds no table files ({_TABLE_NAMES})")
        return [filesystem.unstrip_protocol(f) for f in tables]
    local = fs.local_path(path)
    if _is_glob(str(local)) and not local.exists():
        tables = sorted(f for f in glob.glob(str(local)) if table_kind(f) and os.path.isfile(f))
        if not tables:
            raise ConfigError(f"source.path: {path} matches no table files ({_TABLE_NAMES})")
        return tables
    if local.is_dir():
        tables = sorted(str(f) for f in local.iterdir() if f.is_file() and table_kind(f.name))
        if tables and kind == "auto" and _has_class_folders(local):
            raise ConfigError(f"source.path: {path} holds table files ({os.path.basename(tables[0])}, ...) and class "
                              "folders of images; say which it is: --type image_folder, or --type "
                              f"{table_kind(tables[0])} for its tables")
        return tables or None
    return None


def _has_class_folders(folder: Path) -> bool:
    return any(sub.is_dir() and not sub.name.startswith(".") and
               any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()) for sub in folder.iterdir())


_TABLE_NAMES = ".csv, .tsv, .jsonl, .parquet, .csv.gz, .tsv.gz, .jsonl.gz"


def detect_type(path: Path) -> str:
    if path.is_dir():
        return "image_folder"
    if path.name == "emoji-test.txt":
        return "noto_emoji"
    suffix = path.suffix.lower()
    if table_kind(path.name):
        return table_kind(path.name)
    if suffix == ".json":
        data = _load_json(path)
        from .readers_captions import is_karpathy, is_vizwiz
        if is_vizwiz(data):
            return "vizwiz"
        if is_karpathy(data):
            return "karpathy"
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            return "coco"
        return "vqa"
    raise ConfigError(f"source.path: cannot tell the source type of {path}; set --type "
                      "(image_folder, csv, tsv, jsonl, parquet, coco, vqa, vizwiz, karpathy, noto_emoji, emoji_images)")


def _fetch_input(url: str):
    """An input file on an fsspec filesystem -> (a local copy in a temporary folder, that folder). Its images,
    named relative to it, are read from next to the URL (``image_root`` defaults to the URL's folder)."""
    import tempfile

    filesystem, p = fs.url_fs(url, "source.path")
    if not filesystem.exists(p):
        raise ConfigError(f"source.path: {url} does not exist")
    if filesystem.isdir(p):
        raise ConfigError(f"source.path: {url} is a folder; remote inputs are table, COCO/VQA JSON or emoji files "
                          "(list a remote image folder in a CSV/JSONL table)")
    stage = tempfile.TemporaryDirectory(prefix="mmfm-input-")
    return fs.download(url, Path(stage.name) / url.rstrip("/").rsplit("/", 1)[-1], "source.path"), stage


def open_source(opts: BuildOptions) -> Source:
    src = opts.source
    if not src.path:
        raise ConfigError("source.path: give an input (folder, table, COCO/VQA JSON or emoji-test.txt)")
    fs.check_url(src.path, "source.path")
    stage = None
    tables = list_tables(src.path, src.type) if src.type in ("auto", *TABLE_KINDS) else None
    if tables is not None:
        return _finish_source(read_tables(tables, src), opts, "table")
    if fs.is_remote(src.path):
        path, stage = _fetch_input(src.path)
        src = dataclasses.replace(src, image_root=src.image_root or src.path.rstrip("/").rsplit("/", 1)[0])
    else:
        path = fs.local_path(src.path)
    if not path.exists():
        raise ConfigError(f"source.path: {path} does not exist")
    kind = detect_type(path) if src.type == "auto" else src.type
    if kind == "image_folder":
        source = read_image_folder(path, src)
    elif kind in ("csv", "tsv", "jsonl", "parquet"):
        source = read_table(path, kind, src)
    elif kind == "coco":
        source = read_coco(path, src)
    elif kind == "vqa":
        source = read_vqa(path, src, opts.text.max_answers)
    elif kind in ("vizwiz", "karpathy"):
        from .readers_captions import read_karpathy, read_vizwiz
        source = (read_vizwiz if kind == "vizwiz" else read_karpathy)(path, src, _load_json(path), _base(path, src),
                                                                      _resolve)
    elif kind in ("openmoji", "country_flags", "fashion_mnist", "skimage_photos", "icon_theme"):
        from .extra_sources import READERS
        source = READERS[kind](path, src)
    elif kind == "openclipart":
        from .openclipart import read_openclipart
        source = read_openclipart(path, src)
    elif kind == "emoji_images":
        from .emoji import read_emoji_images
        source = read_emoji_images(path, src)
    else:
        from .emoji import read_emoji
        source = read_emoji(path, src)
    source.stage = stage      # keeps a remote input's local copy while the items are read
    return _finish_source(source, opts, kind)


def _finish_source(source: Source, opts: BuildOptions, kind: str) -> Source:
    src = opts.source
    if opts.shuffle or (opts.shuffle is None and kind == "image_folder"):
        _shuffle(source, opts.shuffle_seed)
    if src.limit is not None:
        import itertools
        source.items = itertools.islice(source.items, src.limit)
        source.total = min(source.total, src.limit) if source.total is not None else src.limit
    return source


def _shuffle(source: Source, seed: int) -> None:
    """A seeded permutation of the input order. An image folder is listed class by class; written in
    that order, every shard (and so every loader batch) would hold one or two classes."""
    import random

    items = list(source.items)
    random.Random(seed).shuffle(items)
    source.items, source.total, source.shuffle_seed = iter(items), len(items), seed


def _base(path: Path, src: SourceOptions) -> Path | str:
    if src.image_root and fs.is_remote(src.image_root):
        return src.image_root                # images in a bucket: joined as URLs
    return Path(src.image_root) if src.image_root else path.parent


def _resolve(value: str, base: Path | str) -> str:
    if is_url(value) or "://" in value or os.path.isabs(value):
        return value
    return fs.join(base, value) if isinstance(base, str) else str(base / value)


def _is_http(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(("http://", "https://"))


def _is_local(value: str) -> bool:
    return "://" not in value or value.lower().startswith("file://")


LOCAL_IN_URL_TABLE = ("a local path or file:// URL in a table of http(s) URLs is not read unless you say so "
                      "(--allow-local-files / source.allow_local_files)")


def _refuse_local(item: dict) -> dict:
    """A table of URLs comes from the web: its rows must not pull this machine's files into the shards."""
    return dict(item, error="local_file", error_detail=LOCAL_IN_URL_TABLE)


# --- image folder -------------------------------------------------------------------------------

def read_image_folder(root: Path, src: SourceOptions) -> Source:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"source.path: {root} has no class subfolders (expected ROOT/CLASS/IMAGE)")
    files = []
    for ci, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and not f.is_dir():
                files.append((ci, name, f))

    def items() -> Iterator[dict]:
        for ci, name, f in files:
            rel = f.relative_to(root).as_posix()
            caption = src.template.format(name.replace("_", " ")) if src.template else name
            yield {"src": str(f), "source": rel, "captions": [caption], "cls": ci,
                   "meta": {"class": name}, "split_key": rel}
    return Source(items(), len(files), classes)


# --- tables -------------------------------------------------------------------------------------

def _check_columns(path: Path, have: list[str], need: list[str]) -> None:
    for col in need:
        if col not in have:
            close = difflib.get_close_matches(col, have, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: no column '{col}' (columns: {', '.join(have)}).{hint} "
                              "Set --image-column / --caption-column.")


def _row_item(row: dict, src: SourceOptions, base: Path, lineno: int, url_table: bool = False) -> dict:
    image = row.get(src.image_column)
    item: dict[str, Any] = {"captions": [row.get(src.caption_column)], "cls": None, "row": lineno,
                            "meta": {c: row.get(c) for c in src.extra_columns}}
    if image is None or (isinstance(image, float) and math.isnan(image)) or not str(image).strip():
        item["error"] = "missing_image"
        item["src"] = item["source"] = ""
    else:
        image = str(image).strip()
        item["src"], item["source"] = _resolve(image, base), image
    item["split_key"] = item["source"]
    if url_table and item["src"] and _is_local(image):
        return _refuse_local(item)
    return item


def _open(path: Path, mode: str, **kwargs):
    """A table file; ``.gz`` ones are decompressed while read."""
    return gzip.open(path, mode + ("t" if "b" not in mode else ""), **kwargs) if path.name.lower().endswith(".gz") \
        else open(path, mode, **kwargs)


def _iter_csv(path: Path, kind: str, src: SourceOptions) -> Iterator[dict]:
    with _open(path, "r", newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
        _check_columns(path, list(reader.fieldnames or []),
                       [src.image_column, src.caption_column, *src.extra_columns])
        for lineno, row in enumerate(reader, start=2):
            yield row, lineno


def _iter_jsonl(path: Path, src: SourceOptions) -> Iterator[dict]:
    checked = False
    with _open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                yield {"__error__": "bad_row"}, lineno
                continue
            if not checked:
                _check_columns(path, list(row), [src.image_column])
                checked = True
            yield row, lineno


def _iter_parquet(path: Path, src: SourceOptions) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = [src.image_column, src.caption_column, *src.extra_columns]
    _check_columns(path, pf.schema_arrow.names, cols)
    lineno = 0
    for batch in pf.iter_batches(columns=list(dict.fromkeys(cols)), batch_size=4096):
        for row in batch.to_pylist():
            lineno += 1
            if isinstance(row.get(src.caption_column), bytes):  # binary column: decode like text files
                row[src.caption_column] = row[src.caption_column].decode("utf-8", errors="surrogateescape")
            yield row, lineno


def count_rows(path: Path, kind: str) -> int | None:
    if kind == "parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    if path.stat().st_size > (64 if path.name.lower().endswith(".gz") else 512) * 2**20:
        return None
    with _open(path, "rb") as f:
        n = sum(1 for line in f if line.strip())
    return max(0, n - 1) if kind in ("csv", "tsv") else n


def _rows(path: Path, kind: str, src: SourceOptions) -> Iterator[tuple[dict, int]]:
    if kind in ("csv", "tsv"):
        return _iter_csv(path, kind, src)
    return _iter_jsonl(path, src) if kind == "jsonl" else _iter_parquet(path, src)


def read_table(path: Path, kind: str, src: SourceOptions) -> Source:
    base = _base(path, src)
    it = _rows(path, kind, src)
    first = next(it, None)  # raise column errors now, not inside the build loop
    # one cheap pass (it stops at the first URL): does this table name http(s) URLs?
    url_table = not src.allow_local_files and any(_is_http(row.get(src.image_column))
                                                  for row, _ in _rows(path, kind, src))

    def items() -> Iterator[dict]:
        if first is None:
            return
        yield _table_item(*first)
        for row, lineno in it:
            yield _table_item(row, lineno)

    def _table_item(row: dict, lineno: int) -> dict:
        if "__error__" in row:
            return {"src": "", "source": f"line {lineno}", "captions": [], "cls": None, "meta": {},
                    "error": row["__error__"], "split_key": str(lineno), "row": lineno}
        return _row_item(row, src, base, lineno, url_table)
    total = count_rows(path, kind)
    return Source(items(), total)


def read_tables(files: list[str], src: SourceOptions) -> Source:
    """Several table files (paths or URLs), one after another in the given order; each may be CSV, TSV, JSONL
    (plain or .gz) or Parquet, and its relative image paths are relative to its own folder. A remote file is
    copied to a temporary folder only while it is read."""
    import tempfile

    stage = tempfile.TemporaryDirectory(prefix="mmfm-input-") if any(map(fs.is_remote, files)) else None

    def open_one(i: int, name: str) -> Source:
        kind = src.type if src.type in TABLE_KINDS else table_kind(name)
        if not fs.is_remote(name):
            return read_table(Path(name), kind, src)
        local = fs.download(name, Path(stage.name) / f"{i:06d}-{name.rsplit('/', 1)[-1]}", "source.path")
        one = dataclasses.replace(src, image_root=src.image_root or name.rsplit("/", 1)[0])
        return read_table(local, kind, one)

    first = open_one(0, files[0])       # its column errors surface now, not inside the build loop

    def items() -> Iterator[dict]:
        for i, name in enumerate(files):
            source = first if i == 0 else open_one(i, name)
            yield from source.items
            if stage is not None:
                for p in Path(stage.name).iterdir():
                    p.unlink()
    totals = [first.total] + [None if fs.is_remote(f) else count_rows(Path(f), src.type if src.type in TABLE_KINDS
                                                                        else table_kind(f)) for f in files[1:]]
    source = Source(items(), None if None in totals else sum(totals))
    source.stage = stage
    return source


# --- COCO captions and VQA ----------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _require(data: Any, field: str, path: Path) -> Any:
    if not isinstance(data, dict) or field not in data:
        raise ConfigError(f"{path}: missing field '{field}'")
    return data[field]


def read_coco(path: Path, src: SourceOptions) -> Source:
    data = _load_json(path)
    images, anns = _require(data, "images", path), _require(data, "annotations", path)
    caps: dict[Any, list] = defaultdict(list)
    for a in sorted(anns, key=lambda a: (a.get("image_id"), a.get("id", 0))):
        caps[a.get("image_id")].append(a.get("caption"))
    base = _base(path, src)
    names = [im.get("file_name") or im.get("coco_url") or "" for im in images]
    url_table = not src.allow_local_files and any(map(_is_http, names))

    def items() -> Iterator[dict]:
        for im, name in zip(images, names):
            item = {"src": _resolve(name, base), "source": name, "captions": caps.get(im.get("id")) or [None],
                    "cls": None, "meta": {"image_id": im.get("id")}, "split_key": str(im.get("id"))}
            yield _refuse_local(item) if url_table and name and _is_local(name) else item
    return Source(items(), len(images))


def _answers(raw: Any, limit: int) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    out = [a.get("answer") if isinstance(a, dict) else a for a in raw]
    return [str(a) for a in out if a is not None][:limit]


def read_vqa(path: Path, src: SourceOptions, max_answers: int) -> Source:
    """VQAv2 (annotations JSON + ``source.questions``) or a list of {image, question, answers}."""
    data = _load_json(path)
    base = _base(path, src)
    if src.questions:
        qpath = Path(src.questions)
        if not qpath.is_file():
            raise ConfigError(f"source.questions: {qpath} does not exist")
        qdata = _load_json(qpath)
        questions = {q["question_id"]: q for q in _require(qdata, "questions", qpath)}
        subtype = qdata.get("data_subtype", data.get("data_subtype", ""))
        records = []
        for a in _require(data, "annotations", path):
            q = questions.get(a.get("question_id"), {})
            image = src.image_pattern.format(image_id=a.get("image_id"), subtype=subtype)
            records.append({"image": image, "question": q.get("question"), "answers": a.get("answers"),
                            "answer_type": a.get("answer_type"), "question_id": a.get("question_id"),
                            "image_id": a.get("image_id")})
    else:
        records = data if isinstance(data, list) else _require(data, "annotations", path)
        if not isinstance(records, list):
            raise ConfigError(f"{path}: expected a list of {{image, question, answers}} records")

    images = [str(r.get("image") or r.get("image_path") or "") for r in records]
    url_table = not src.allow_local_files and any(map(_is_http, images))

    def items() -> Iterator[dict]:
        for i, (r, image) in enumerate(zip(records, images)):
            answers = _answers(r.get("answers", r.get("answer")), max_answers)
            meta = {k: r[k] for k in ("question_id", "image_id") if r.get(k) is not None}
            item = {"src": _resolve(image, base) if image else "", "source": image, "captions": [r.get("question")],
                    "question": r.get("question"), "answers": answers, "answer_type": r.get("answer_type"),
                    "cls": None, "meta": meta, "split_key": image or str(i),
                    **({} if image else {"error": "missing_image"})}
            yield _refuse_local(item) if url_table and image and _is_local(image) else item
    return Source(items(), len(records))
