"""VQA accuracy over a dataset: overall, per answer type and per question type, as the official VQAv2
evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``) reports it. The per-answer rules (normalisation, leave-one-out
accuracy, soft targets) live in :mod:`mmfm.data.vqa_answers`.
"""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Mapping, Sequence

from mmfm.data.vqa_answers import (ANSWER_TYPES, answer_weights, normalize_answer, process_digit_article,
                                   process_punctuation, vqa_accuracy)

__all__ = ["ANSWER_TYPES", "answer_weights", "normalize_answer", "process_digit_article", "process_punctuation",
           "vqa_accuracy", "evaluate_vqa", "squad_normalize", "token_f1", "max_token_f1"]

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's ``normalize_answer``: lower case, drop ASCII punctuation, drop the articles a/an/the,
    collapse white space (in that order)."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of two answers after :func:`squad_normalize` (SQuAD v1.1 ``f1_score``): the common
    tokens are counted with multiplicity; no common token (or an empty side) gives 0."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_token_f1(prediction: str, references: Sequence[str]) -> float:
    """The best :func:`token_f1` over the references (SQuAD's ``metric_max_over_ground_truths``)."""
    if not references:
        raise ValueError("token F1 needs at least one reference answer")
    return max(token_f1(prediction, r) for r in references)


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
