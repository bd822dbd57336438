"""``mmfm eval vqa``: answer every question of a dataset (generate, or rank a candidate list) and score with the
official VQAv2 accuracy, overall and by answer type (yes/no, number, other) and question type.

DATA is shards or a JSONL/CSV file of questions (``mmfm.eval.captioning.data``); images that fail to decode are
handled as :mod:`mmfm.eval.captioning.runner` says.
"""
from __future__ import annotations

import time

from mmfm.config import ConfigError

from ..result import EvalResult
from .data import read_vqa_data
from .runner import MAX_SKIPPED, account_skipped, batches, check_max_skipped, provenance

__all__ = ["evaluate_vqa_model", "VQA_BACKEND"]

VQA_BACKEND = "mmfm.eval.captioning.vqa_metrics: port of the official VQAv2 vqaEval.py (GT-Vision-Lab/VQA master)"


def evaluate_vqa_model(model, data: str, gen=None, vqa_cfg=None, *, split: str | None = None,
                       batch_size: int | None = None, max_samples: int | None = None, mode: str = "generate",
                       candidates: list[str] | None = None, progress: bool = True,
                       max_skipped: float = MAX_SKIPPED) -> EvalResult:
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
    max_skipped = check_max_skipped(max_skipped)
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
    for chunk in batches(items, int(batch_size or gen.batch_size)):
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
    meta = {"task": "vqa", "backend": VQA_BACKEND, "samples": len(preds), "failed": len(failed),
            **provenance(model, data, split, gen, extra), "failures": failed}
    return account_skipped(EvalResult(metrics=scores, meta=meta, predictions=rows, nested=True), len(items),
                           max_skipped, data, "questions")
