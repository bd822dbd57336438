"""Caption and VQA evaluation data, from shards or a table (``mmfm.eval.records``).

* captions: shard json ``captions`` (else ``txt``); table rows ``image`` + ``captions``/``caption``.
* VQA: shard json ``question``, ``answers``, ``answer_type`` (``question_id``, ``question_type`` if present);
  JSONL rows with the same fields and ``image`` (a path, relative to the file's folder).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from mmfm.config import ConfigError

from ..records import is_shard_source, read_rows, read_table, references, shard_records

__all__ = ["read_caption_data", "read_vqa_data"]


def read_caption_data(data: str, max_samples: int | None = None) -> list[dict]:
    """``[{"key", "image" (bytes or path), "references": [str, ...], "name"}]``."""
    items = []
    if is_shard_source(data):
        for r in shard_records(data):
            refs = references(r)
            if not refs:
                raise ConfigError(f"{data}: sample {r['name']} has no reference caption (json captions or txt)")
            items.append({"key": r["key"], "image": r["image"], "references": refs, "name": r["name"]})
            if max_samples and len(items) >= max_samples:
                break
    else:
        table = read_table(data, what="caption data")
        for path, caps in zip(table.paths, table.captions):
            items.append({"key": path, "image": path, "references": caps, "name": path})
            if max_samples and len(items) >= max_samples:
                break
    if not items:
        raise ConfigError(f"{data}: no samples to evaluate")
    return items


def _answers(raw) -> list[str]:
    out = [a.get("answer") if isinstance(a, dict) else a for a in raw or []]
    return [str(a) for a in out if a is not None]


def _vqa_rows(data: str):
    if is_shard_source(data):
        return ({**r["meta"], "_image": r["image"], "_key": str(r["meta"].get("question_id", r["key"])),
                 "_name": r["name"], "question": r["meta"].get("question") or r["txt"]} for r in shard_records(data))
    p = Path(data)
    rows = []
    for n, row in enumerate(read_rows(p, "VQA data"), start=1):
        img = row.get("image") or row.get("image_path")
        if not img:
            raise ConfigError(f"{p} row {n}: no 'image'")
        full = img if os.path.isabs(img) else str(p.parent / img)
        rows.append({**row, "_image": full, "_key": str(row.get("question_id", n)), "_name": full})
    return rows


def read_vqa_data(data: str, max_samples: int | None = None) -> list[dict]:
    """``[{"key", "image", "question", "answers", "answer_type", "question_type", "name"}]``."""
    items = []
    for row in _vqa_rows(data):
        answers = _answers(row.get("answers") or ([row["answer"]] if row.get("answer") else []))
        if not answers:
            raise ConfigError(f"{data}: question {row['_key']} ({row['_name']}) has no answers")
        items.append({"key": row["_key"], "image": row["_image"], "question": row.get("question") or "",
                      "answers": answers, "answer_type": row.get("answer_type") or "other",
                      "question_type": row.get("question_type"), "name": row["_name"]})
        if max_samples and len(items) >= max_samples:
            break
    if not items:
        raise ConfigError(f"{data}: no questions to evaluate")
    keys = Counter(i["key"] for i in items)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ConfigError(f"{data}: question ids repeat ({dup[:3]}); every question needs its own question_id")
    return items
