"""Group metrics of a bias report: the Wilson interval of a group's accuracy, the exact McNemar test of two groups on
the same items, the best-worst gap, and per-group top-1 and caption scores."""
from __future__ import annotations

import math
from collections import defaultdict

from mmfm.data.shards.audit import wilson   # the one Wilson interval (the data audit uses it too)

__all__ = ["CAPTION_METRICS", "wilson", "mcnemar_exact", "paired_test", "gap", "top1_per_group",
           "caption_scores_per_group"]

CAPTION_METRICS = ("CIDEr-D", "BLEU-4", "ROUGE-L")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_test(kept: list[dict], correct: list[bool], match_by: str, best: str, worst: str) -> dict:
    """Best vs worst group on the same items (matched by ``match_by``): exact McNemar test."""
    by = defaultdict(dict)
    for s, ok in zip(kept, correct):
        by[s["meta"][match_by]][s["group"]] = ok
    pairs = [(v[best], v[worst]) for v in by.values() if best in v and worst in v]
    b = sum(1 for x, y in pairs if x and not y)
    c = sum(1 for x, y in pairs if y and not x)
    return {"test": f"exact McNemar, best vs worst group paired by {match_by} (the pair is chosen after looking, "
                    f"so treat p as optimistic)", "pairs": len(pairs),
            "best_only_correct": b, "worst_only_correct": c, "p_value": round(mcnemar_exact(b, c), 6)}


def gap(per_group: dict, key: str) -> dict:
    vals = {g: v[key] for g, v in per_group.items() if v.get(key) is not None}
    best = max(vals, key=vals.get)
    worst = min(vals, key=vals.get)
    return {"best": best, "worst": worst, "best_value": vals[best], "worst_value": vals[worst],
            "gap": vals[best] - vals[worst], "ratio": vals[worst] / vals[best] if vals[best] else None}


def top1_per_group(groups: list[str], samples: list[dict], preds: list[str], labels: list[str]) -> dict:
    """``{group: {"n", "top1", "ci95"}}`` (Wilson 95% interval) of predictions against labels."""
    per_group = {}
    for g in groups:
        idx = [i for i, s in enumerate(samples) if s["group"] == g]
        k = sum(preds[i] == labels[i] for i in idx)
        per_group[g] = {"n": len(idx), "top1": k / len(idx) if idx else None, "ci95": wilson(k, len(idx))}
    return per_group


def caption_scores_per_group(groups: list[str], samples: list[dict], keys: list[str], per_image: dict) -> dict:
    """``{group: {"n", "CIDEr-D", "BLEU-4", "ROUGE-L"}}``: the mean of the per-image scores in each group."""
    per_group = {}
    for g in groups:
        ks = [k for k, s in zip(keys, samples) if s["group"] == g]
        per_group[g] = {"n": len(ks), **{m: sum(per_image[k][m] for k in ks) / len(ks) if ks else None
                                         for m in CAPTION_METRICS}}
    return per_group
