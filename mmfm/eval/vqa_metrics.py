"""VQA accuracy over a dataset: overall, per answer type and per question type, as the official VQAv2
evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``) reports it. The per-answer rules (normalisation, leave-one-out
accuracy, soft targets) live in :mod:`mmfm.data.vqa_answers`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

from mmfm.data.vqa_answers import (ANSWER_TYPES, answer_weights, normalize_answer, process_digit_article,
                                   process_punctuation, vqa_accuracy)

__all__ = ["ANSWER_TYPES", "answer_weights", "normalize_answer", "process_digit_article", "process_punctuation",
           "vqa_accuracy", "evaluate_vqa"]


def evaluate_vqa(predictions: Mapping[str, str], annotations: Mapping[str, Mapping]) -> dict:
    """``predictions``: ``{question_id: answer}``; ``annotations``: ``{question_id: {"answers": [...],
    "answer_type": "yes/no"|"number"|"other", "question_type": optional str}}``.
    Returns accuracies in percent, overall and broken down by answer type and question type."""
    missing = [q for q in annotations if q not in predictions]
    unknown = [q for q in predictions if q not in annotations]
    if missing or unknown:
        raise ValueError(f"predictions and annotations differ: {len(missing)} questions without a prediction "
                         f"(e.g. {missing[:3]}), {len(unknown)} predictions for unknown questions "
                         f"(e.g. {unknown[:3]})")
    if not annotations:
        raise ValueError("no questions to evaluate")
    per_q: dict[str, float] = {}
    by_atype: dict[str, list[float]] = defaultdict(list)
    by_qtype: dict[str, list[float]] = defaultdict(list)
    for qid, ann in annotations.items():
        acc = vqa_accuracy(predictions[qid], ann["answers"])
        per_q[qid] = acc
        by_atype[ann.get("answer_type") or "other"].append(acc)
        if ann.get("question_type"):
            by_qtype[ann["question_type"]].append(acc)

    def pct(xs):
        return 100.0 * float(sum(xs)) / len(xs)

    out = {"overall": pct(list(per_q.values())),
           "per_answer_type": {k: pct(v) for k, v in by_atype.items()},
           "per_question_type": {k: pct(v) for k, v in by_qtype.items()},
           "counts": {"questions": len(per_q), **{f"answer_type/{k}": len(v) for k, v in by_atype.items()}}}
    out["overall_rounded"] = round(out["overall"], 2)
    out["per_answer_type_rounded"] = {k: round(v, 2) for k, v in out["per_answer_type"].items()}
    out["per_question"] = per_q
    return out
