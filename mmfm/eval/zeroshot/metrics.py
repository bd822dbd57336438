"""Classification metrics of zero-shot and probe predictions: the confusion matrix, the per-class table, top-1,
top-5, mean per-class recall (balanced accuracy) and macro-F1, also from counts summed over ranks."""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "per_class_table", "classification_metrics", "classification_counts",
           "counts_metrics", "macro_f1"]

def confusion_matrix(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (targets, preds), 1)
    return cm


def per_class_table(cm: np.ndarray, classes: list[str], classnames: list[str]) -> list[dict]:
    rows = []
    for i, cls in enumerate(classes):
        n, tp, predicted = int(cm[i].sum()), int(cm[i, i]), int(cm[:, i].sum())
        rows.append({"class": cls, "classname": classnames[i], "n": n, "correct": tp,
                     "recall": tp / n if n else None, "precision": tp / predicted if predicted else None})
    return rows


def classification_metrics(logits, targets: np.ndarray, n_classes: int) -> dict:
    """top-1, top-5 (None with fewer than 5 classes), mean per-class recall (balanced accuracy), macro-F1."""
    return counts_metrics(classification_counts(logits, targets, n_classes))


def classification_counts(logits, targets: np.ndarray, n_classes: int) -> dict:
    """What the metrics are made of, as counts that add up over parts of a dataset (ranks): the confusion
    matrix (C, C) and the number of top-5 hits."""
    import torch
    logits = torch.as_tensor(logits)
    cm = confusion_matrix(np.asarray(targets), np.asarray(logits.argmax(dim=1)), n_classes)
    top = logits.topk(min(5, n_classes), dim=1).indices
    top5 = int((top == torch.as_tensor(targets).view(-1, 1)).any(dim=1).sum())
    return {"confusion": cm, "top5_hits": top5}


def counts_metrics(counts: dict) -> dict:
    """``classification_counts`` (or their sum over ranks) -> top-1, top-5, mean per-class recall (over the
    classes that have images) and macro-F1 (over the classes that have images or predictions, as
    scikit-learn's ``f1_score(average="macro")``: a class predicted but absent scores 0)."""
    cm = counts["confusion"]
    n, support = int(cm.sum()), cm.sum(axis=1)
    recalls = np.diag(cm)[support > 0] / support[support > 0]
    return {"top1": float(np.trace(cm)) / n, "top5": counts["top5_hits"] / n if len(cm) >= 5 else None,
            "mean_per_class_recall": float(recalls.mean()), "macro_f1": macro_f1(cm)}


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur (as true or predicted labels), as
    scikit-learn's ``f1_score(average="macro")`` with ``zero_division=0`` and the labels present."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = (support + predicted)[present]
    return float((2 * tp[present] / denom).mean())
