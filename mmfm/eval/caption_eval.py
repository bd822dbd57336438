"""Evaluation runners behind ``mmfm eval caption|vqa``: generate over a dataset, score, report degenerate output.

DATA is a shard folder (``manifest.json`` + tars), a ``.tar`` or a brace pattern, or a JSONL/CSV file:
* captions: shard json ``captions`` (else ``txt``); table rows ``image`` + ``captions``/``caption``.
* VQA: shard json ``question``, ``answers``, ``answer_type`` (``question_id``, ``question_type`` if present);
  JSONL rows with the same fields and ``image`` (a path, relative to the file's folder).
Every result records the backend, the split, the sample count, the decoding settings and the checkpoint.
Images that fail to decode are left out of the score, counted beside it (``skipped``) and listed
(``failures``); above ``max_skipped`` (default 1%) of the samples the run fails with :class:`TooManySkipped`,
so that a partial evaluation cannot pass for a full one.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from mmfm.config import ConfigError

from .records import references, shard_records

__all__ = ["read_caption_data", "read_vqa_data", "degenerate_report", "evaluate_captions", "evaluate_vqa_model",
           "write_eval", "CAPTION_BACKEND", "VQA_BACKEND", "MAX_SKIPPED", "TooManySkipped"]

CAPTION_BACKEND = ("mmfm.eval.caption_metrics: pure-Python BLEU-1..4 / ROUGE-L / CIDEr-D equal to pycocoevalcap 1.2 "
                   "(PTB tokenization reproduced in Python)")
VQA_BACKEND = "mmfm.eval.vqa_metrics: port of the official VQAv2 vqaEval.py (GT-Vision-Lab/VQA master)"
MAX_SKIPPED = 0.01      # default: at most 1% of the samples may be left out of a score


class TooManySkipped(RuntimeError):
    """More samples failed to decode than ``max_skipped`` allows. ``result`` holds the partial evaluation."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _check_max_skipped(max_skipped: float) -> float:
    if not 0.0 <= float(max_skipped) <= 1.0:
        raise ConfigError(f"max_skipped: must be a share in [0, 1], got {max_skipped}")
    return float(max_skipped)


def _account_skipped(result: dict, total: int, max_skipped: float, data: str, noun: str) -> dict:
    """Put ``skipped`` beside the score; raise :class:`TooManySkipped` when its share is above the limit."""
    n = len(result["failures"])
    result["skipped"] = {"count": n, "of": total, "frac": n / total, "max_frac": max_skipped}
    if n / total > max_skipped:
        examples = "; ".join(f"{f['image']}: {f['error']}" for f in result["failures"][:3])
        raise TooManySkipped(f"{data}: {n} of {total} {noun} ({n / total:.1%}) failed to decode and were left out "
                             f"of the score, more than the allowed {max_skipped:.1%} (max_skipped / --max-skipped); "
                             f"e.g. {examples}", result)
    return result


# ---------------------------------------------------------------- reading
def _jsonl_rows(path: Path) -> list[dict]:
    from .retrieval import _read_rows
    return _read_rows(path)


def _is_shards(data: str) -> bool:
    from .retrieval import is_shard_source
    return is_shard_source(str(data)) and not str(data).endswith((".jsonl", ".csv", ".json"))


def read_caption_data(data: str, max_samples: int | None = None) -> list[dict]:
    """``[{"key", "image" (bytes or path), "references": [str, ...], "name"}]``."""
    items = []
    if _is_shards(data):
        for r in shard_records(data):
            refs = references(r)
            if not refs:
                raise ConfigError(f"{data}: sample {r['name']} has no reference caption (json captions or txt)")
            items.append({"key": r["key"], "image": r["image"], "references": refs, "name": r["name"]})
            if max_samples and len(items) >= max_samples:
                break
    else:
        from .retrieval import read_table
        table = read_table(data)
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


def read_vqa_data(data: str, max_samples: int | None = None) -> list[dict]:
    """``[{"key", "image", "question", "answers", "answer_type", "question_type", "name"}]``."""
    items = []
    if _is_shards(data):
        rows = ({**r["meta"], "_image": r["image"], "_key": str(r["meta"].get("question_id", r["key"])),
                 "_name": r["name"], "question": r["meta"].get("question") or r["txt"]} for r in shard_records(data))
    else:
        p = Path(data)
        rows = []
        for n, row in enumerate(_jsonl_rows(p), start=1):
            img = row.get("image") or row.get("image_path")
            if not img:
                raise ConfigError(f"{p} row {n}: no 'image'")
            full = img if os.path.isabs(img) else str(p.parent / img)
            rows.append({**row, "_image": full, "_key": str(row.get("question_id", n)), "_name": full})
    for row in rows:
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


# ---------------------------------------------------------------- degenerate output
from mmfm.generate import repetition_loop as _loop      # noqa: E402 - one loop detector (mmfm.generate)


def degenerate_report(captions: dict[str, str], examples: int = 5) -> dict:
    """Empty captions, repetition loops and collapse onto one caption for every image."""
    texts = {k: " ".join((v or "").split()) for k, v in captions.items()}
    n = len(texts)
    empty = [k for k, v in texts.items() if not v]
    loops = [k for k, v in texts.items() if v and _loop(v.lower().split())]
    counts = Counter(texts.values())
    top, top_n = counts.most_common(1)[0] if counts else ("", 0)
    words = [len(v.split()) for v in texts.values()]
    return {
        "samples": n,
        "empty": len(empty), "empty_frac": len(empty) / n if n else 0.0,
        "repetition_loops": len(loops), "repetition_frac": len(loops) / n if n else 0.0,
        "distinct_captions": len(counts), "distinct_frac": len(counts) / n if n else 0.0,
        "most_common": {"caption": top, "count": top_n, "frac": top_n / n if n else 0.0},
        "one_caption_for_every_image": n >= 2 and len(counts) == 1,
        "collapsed": n >= 5 and top_n / n > 0.5,
        "mean_words": sum(words) / n if n else 0.0,
        "examples": {"empty": empty[:examples], "repetition_loops": [[k, texts[k]] for k in loops[:examples]]},
    }


# ---------------------------------------------------------------- running
def _batches(items: list[dict], size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _provenance(model, data: str, split: str | None, gen, extra: dict) -> dict:
    from mmfm.version import __version__
    from mmfm.generate import settings_dict
    return {"mmfm_version": __version__, "checkpoint": getattr(model, "checkpoint_path", None), "data": str(data),
            "split": split or Path(str(data).rstrip("/")).stem, "decoding": settings_dict(gen, model), **extra}


def evaluate_captions(model, data: str, gen=None, *, split: str | None = None, batch_size: int | None = None,
                      max_samples: int | None = None, alt_text: bool = False, progress: bool = True,
                      max_skipped: float = MAX_SKIPPED) -> dict:
    """Caption every image of DATA and score against its references. ``alt_text``: score the post-processed
    alt text instead of the raw caption. ``max_skipped``: the largest share of images that may fail to decode
    (:class:`TooManySkipped` above it)."""
    from tqdm import tqdm

    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images

    from .caption_metrics import score_captions

    gen = gen or GenerateConfig()
    max_skipped = _check_max_skipped(max_skipped)
    items = read_caption_data(data, max_samples)
    t0 = time.time()
    preds, failed = [], []
    bar = tqdm(total=len(items), desc="eval caption", unit="img", disable=not progress)
    for chunk in _batches(items, int(batch_size or gen.batch_size)):
        res = caption_images(model, [c["image"] for c in chunk], gen, names=[c["name"] for c in chunk],
                             batch_size=len(chunk), alt_text=True)
        for item, r in zip(chunk, res):
            if r["error"]:
                failed.append({"key": item["key"], "image": item["name"], "error": r["error"]})
                continue
            preds.append({"key": item["key"], "image": item["name"], "caption": r["caption"],
                          "alt_text": r["alt_text"], "references": item["references"]})
        bar.update(len(chunk))
    bar.close()
    seconds = time.time() - t0
    if not preds:
        raise ConfigError(f"{data}: every image failed to decode ({failed[:3]})")
    field = "alt_text" if alt_text else "caption"
    scores = score_captions({p["key"]: p[field] for p in preds}, {p["key"]: p["references"] for p in preds},
                            per_image=True)
    per_image = scores.pop("per_image")
    for p in preds:
        p["scores"] = per_image[p["key"]]
    return _account_skipped({
        "task": "caption", "backend": CAPTION_BACKEND, "samples": len(preds), "failed": len(failed),
        "metrics": scores, "degenerate": degenerate_report({p["key"]: p[field] for p in preds}),
        **_provenance(model, data, split, gen, {"scored_text": field, "seconds": seconds,
                                                "captions_per_s": len(preds) / seconds if seconds else None}),
        "failures": failed, "predictions": preds}, len(items), max_skipped, data, "images")


def evaluate_vqa_model(model, data: str, gen=None, vqa_cfg=None, *, split: str | None = None,
                       batch_size: int | None = None, max_samples: int | None = None, mode: str = "generate",
                       candidates: list[str] | None = None, progress: bool = True,
                       max_skipped: float = MAX_SKIPPED) -> dict:
    """Answer every question of DATA (``mode``: ``generate``, or ``rank`` over ``candidates``) and score with
    the official VQAv2 accuracy, broken down by answer type (yes/no, number, other) and question type.
    ``max_skipped``: the largest share of questions whose image may fail to decode."""
    from tqdm import tqdm

    from mmfm.config.caption import GenerateConfig
    from mmfm.config.task import VQALossConfig
    from mmfm.data.transforms import eval_transform
    from mmfm.generate import answer_questions, decode_images, rank_answers

    from .vqa_metrics import evaluate_vqa

    gen = gen or GenerateConfig()
    vqa_cfg = vqa_cfg or VQALossConfig()
    max_skipped = _check_max_skipped(max_skipped)
    if mode == "rank" and not candidates:
        raise ConfigError("rank mode needs an answer list (--answers or --answer-list)")
    items = read_vqa_data(data, max_samples)
    transform = eval_transform(model)
    model.eval()
    t0 = time.time()
    preds, failed = {}, []
    rows = []
    bar = tqdm(total=len(items), desc="eval vqa", unit="q", disable=not progress)
    import torch
    for chunk in _batches(items, int(batch_size or gen.batch_size)):
        tensors, errors = decode_images([c["image"] for c in chunk], transform)
        ok = [i for i, t in enumerate(tensors) if t is not None]
        for i, err in enumerate(errors):
            if err:
                failed.append({"key": chunk[i]["key"], "image": chunk[i]["name"], "error": err})
        if ok:
            images = torch.stack([tensors[i] for i in ok])
            questions = [chunk[i]["question"] for i in ok]
            if mode == "rank":
                answers = [r[0]["answer"] for r in rank_answers(model, images, questions, candidates, vqa_cfg)]
            else:
                answers = answer_questions(model, images, questions, gen, vqa_cfg)
            for i, a in zip(ok, answers):
                preds[chunk[i]["key"]] = a
                rows.append({"question_id": chunk[i]["key"], "image": chunk[i]["name"],
                             "question": chunk[i]["question"], "answer": a, "answers": chunk[i]["answers"],
                             "answer_type": chunk[i]["answer_type"]})
        bar.update(len(chunk))
    bar.close()
    seconds = time.time() - t0
    if not preds:
        raise ConfigError(f"{data}: every image failed to decode ({failed[:3]})")
    ann = {i["key"]: {"answers": i["answers"], "answer_type": i["answer_type"], "question_type": i["question_type"]}
           for i in items if i["key"] in preds}
    scores = evaluate_vqa(preds, ann)
    per_q = scores.pop("per_question")
    for r in rows:
        r["accuracy"] = per_q[r["question_id"]]
    extra = {"mode": mode, "template": vqa_cfg.template, "seconds": seconds}
    if mode == "rank":
        extra["candidates"] = len(candidates)
    return _account_skipped({
        "task": "vqa", "backend": VQA_BACKEND, "samples": len(preds), "failed": len(failed), "metrics": scores,
        **_provenance(model, data, split, gen, extra), "failures": failed, "predictions": rows},
        len(items), max_skipped, data, "questions")


def write_eval(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``OUT/metrics.json`` (everything but the predictions) and ``OUT/predictions.jsonl``, written atomically."""
    from .common import atomic_write, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "predictions"}
    paths = {"metrics": write_json(out / "metrics.json", summary)}
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result["predictions"])
    paths["predictions"] = atomic_write(out / "predictions.jsonl", lines)
    return paths
