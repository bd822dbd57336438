"""Several recipes built as one shard folder: one build, so the builder's exact dedup (``digests.py``) runs across
sources, and one label space (the union of the sources' classes, first seen first).

Each part is a recipe with its own overrides (``source.path``, ``source.limit``...); its items are read in turn, each
tagged with ``KEY.json["collection"]`` = the part's name. The image, shard and split options are the mix's own
(``opts``). After the build every split's ``manifest.json`` gets ``sources``: per part, the inputs it gave, the
samples written and the skipped inputs by reason (``duplicate`` counts an image an earlier source already gave).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError

from .manifest import FAILURES, atomic_write_json, read_manifest
from .options import BuildOptions
from .source import Source


@dataclass
class MixPart:
    name: str                                   # KEY.json["collection"], the name in the per-source counts
    recipe: str                                 # a data_recipes/ name or a recipe path
    overrides: list[str] = field(default_factory=list)   # --set style "key=value"


def _open_parts(parts: list[MixPart]) -> tuple[list[tuple[MixPart, Source]], list[str]]:
    from .readers import open_source
    from .recipes import resolve_options

    if len({p.name for p in parts}) != len(parts):
        raise ConfigError(f"mix: part names must be unique, got {[p.name for p in parts]}")
    opened, classes = [], []
    for p in parts:
        src = open_source(resolve_options(p.recipe, list(p.overrides)))
        opened.append((p, src))
        classes += [c for c in src.classes if c not in classes]
    return opened, classes


def _tagged(part: MixPart, src: Source, classes: list[str]) -> Iterator[dict]:
    for item in src.items:
        cls = item.get("cls")
        meta = {**item.get("meta", {}), "collection": part.name}
        if cls is not None and src.classes:
            meta["label"] = src.classes[int(cls)]
            cls = classes.index(src.classes[int(cls)])
        yield {**item, "cls": cls, "meta": meta}


def open_mix(parts: list[MixPart]) -> tuple[Source, list[tuple[str, int]]]:
    """-> the chained source and each part's (name, first input index), from the parts' item counts."""
    opened, classes = _open_parts(parts)
    starts, n = [], 0
    for p, src in opened:
        if src.total is None:
            raise ConfigError(f"mix: part {p.name} ({p.recipe}) does not know its item count; give source.limit")
        starts.append((p.name, n))
        n += src.total
    items = itertools.chain.from_iterable(_tagged(p, s, classes) for p, s in opened)
    return Source(items, n, classes), starts


def build_mix(parts: list[MixPart], opts: BuildOptions, out_dir: str | os.PathLike, *, resume: bool = False,
              overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Build ``parts`` into ``out_dir`` (local) with ``opts``' image/shard/split options -> ``{split: manifest}``
    with ``manifest["sources"]`` filled in."""
    from .executor_local import build_local
    from .store import Store

    if not parts:
        raise ConfigError("mix: no parts to build")
    source, starts = open_mix(parts)
    # the parts are part of what --resume compares: a changed list stops it with the changed option
    opts = dataclasses.replace(opts, description=json.dumps([[p.name, p.recipe, list(p.overrides)] for p in parts]))
    manifests = build_local(opts, Store(str(out_dir)), source, resume, overwrite, progress)
    out = {}
    for split in manifests:
        folder = Path(out_dir) / split if split else Path(out_dir)
        out[split] = record_source_counts(folder, starts)
    return out


def _part_of(index: int, starts: list[tuple[str, int]]) -> str:
    return [name for name, first in starts if first <= index][-1]


def source_counts(folder: Path, starts: list[tuple[str, int]]) -> dict[str, dict]:
    """Per part in one built folder: samples written (from KEY.json) and skipped inputs by reason (a failure
    line's input index says which part it came from)."""
    import tarfile

    from .manifest import shard_paths

    written: Counter = Counter()
    for tar in shard_paths(folder):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    written[json.loads(tf.extractfile(m).read()).get("collection", "?")] += 1
    failed: dict[str, Counter] = {name: Counter() for name, _ in starts}
    path = folder / FAILURES
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            failed[_part_of(int(rec["index"]), starts)][rec["reason"]] += 1
    return {name: {"written": written.get(name, 0), "skipped": dict(sorted(failed[name].items()))}
            for name, _ in starts}


def record_source_counts(folder: Path, starts: list[tuple[str, int]]) -> dict:
    """Adds ``sources`` to the folder's ``manifest.json`` (rewritten atomically) and returns the manifest."""
    read_manifest(folder)                       # a missing or broken manifest fails here, naming the folder
    raw = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    raw["sources"] = source_counts(folder, starts)
    atomic_write_json(folder / "manifest.json", raw)
    return raw
