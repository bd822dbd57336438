"""Fairness measures beside the per-group accuracy of :mod:`mmfm.eval.bias.metrics`:

* ``worst_group``: the lowest group accuracy and its group.
* ``bootstrap_gap``: the best-worst gap with a percentile bootstrap interval. Items are resampled with replacement
  within each group (or, for a matched design, the matched items are resampled and carry all their groups), and
  best and worst are chosen again in every resample, so the interval covers the statistic as reported.
* ``equalized_odds``: for zero-shot (multi-class, one-vs-rest per class y): TPR_g(y) = P(pred=y | label=y, g) and
  FPR_g(y) = P(pred=y | label!=y, g); the gap of a class is max_g - min_g over groups where it is defined; reported
  as the max and the mean over classes (Hardt et al. 2016's equalised odds, as in DataComp's fairness tables).
* ``max_skew`` / ``ndkl``: retrieval skew (Geyik et al. 2019; Berg et al. 2022; Chuang et al. 2023). For a ranked
  list tau of attribute values and a desired distribution D (default: the pool's distribution),
  ``Skew_a@k = ln(p_(tau^k, a) / p_(D, a))`` and ``MaxSkew@k = max_a Skew_a@k``;
  ``NDKL = 1/Z sum_(i=1..k) 1/log2(i+1) KL(D_(tau^i) || D)`` with ``Z = sum_(i=1..k) 1/log2(i+1)``.
* ``attribute_mention``: the rate at which a caption names an attribute value the image does not have.
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from mmfm.data.shards.audit import phrase_patterns

SKIN_TONE_WORDS = {t: [f"{t} skin tone", f"{t}-skinned", f"{t} skin"]
                   for t in ("light", "medium-light", "medium", "medium-dark", "dark")}

__all__ = ["SKIN_TONE_WORDS", "worst_group", "bootstrap_gap", "equalized_odds", "skew", "max_skew", "ndkl", "retrieval_skew",
           "attribute_mention"]


def worst_group(per_group: dict, key: str = "top1") -> dict:
    vals = {g: v[key] for g, v in per_group.items() if v.get(key) is not None}
    g = min(vals, key=vals.get)
    return {"group": g, "value": vals[g]}


def _gap(values_by_group: dict[str, list[float]]) -> float:
    means = [sum(v) / len(v) for v in values_by_group.values() if v]
    return max(means) - min(means)


def bootstrap_gap(values_by_group: dict[str, list[float]], *, n_boot: int = 1000, seed: int = 0,
                  matched: bool = False, level: float = 0.95) -> dict:
    """The best-worst gap of group means and a percentile bootstrap interval. ``matched``: list i of every group
    is the same item (resampled together)."""
    groups = {g: list(v) for g, v in values_by_group.items() if v}
    point = _gap(groups)
    rng = random.Random(seed)
    stats = []
    n = min(len(v) for v in groups.values())
    for _ in range(n_boot):
        if matched:
            idx = [rng.randrange(n) for _ in range(n)]
            stats.append(_gap({g: [v[i] for i in idx] for g, v in groups.items()}))
        else:
            stats.append(_gap({g: [v[rng.randrange(len(v))] for _ in v] for g, v in groups.items()}))
    stats.sort()
    lo = stats[int(math.floor((1 - level) / 2 * n_boot))]
    hi = stats[min(n_boot - 1, int(math.ceil((1 + level) / 2 * n_boot)) - 1)]
    return {"gap": point, "ci": [lo, hi], "n_boot": n_boot, "seed": seed, "matched": matched}


def equalized_odds(labels: list, preds: list, groups: list) -> dict:
    """Per class, the spread over groups of TPR and FPR (one-vs-rest); max and mean over classes."""
    per_class = {}
    for y in sorted(set(labels)):
        tpr, fpr = {}, {}
        for g in sorted(set(groups)):
            pos = [p for lab, p, gg in zip(labels, preds, groups) if gg == g and lab == y]
            neg = [p for lab, p, gg in zip(labels, preds, groups) if gg == g and lab != y]
            if pos:
                tpr[g] = sum(p == y for p in pos) / len(pos)
            if neg:
                fpr[g] = sum(p == y for p in neg) / len(neg)
        per_class[y] = {"tpr_gap": max(tpr.values()) - min(tpr.values()) if len(tpr) > 1 else None,
                        "fpr_gap": max(fpr.values()) - min(fpr.values()) if len(fpr) > 1 else None}
    out = {}
    for k in ("tpr_gap", "fpr_gap"):
        v = [c[k] for c in per_class.values() if c[k] is not None]
        out[f"{k}_max"] = max(v) if v else None
        out[f"{k}_mean"] = sum(v) / len(v) if v else None
    out["equalized_odds_gap"] = max(x for x in (out["tpr_gap_max"], out["fpr_gap_max"], 0.0) if x is not None)
    out["per_class"] = per_class
    return out


def _dist(values: list, support: list) -> list[float]:
    c = Counter(values)
    return [c[a] / len(values) for a in support]


def skew(ranked: list, k: int, desired: dict) -> dict:
    """``{a: ln(p_(top k, a) / p_(D, a))}``; -inf where the top k holds no ``a``."""
    top = _dist(ranked[:k], list(desired))
    return {a: (math.log(p / desired[a]) if p > 0 else -math.inf) for a, p in zip(desired, top)}


def max_skew(ranked: list, k: int, desired: dict) -> float:
    return max(skew(ranked, k, desired).values())


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ndkl(ranked: list, desired: dict, k: int | None = None) -> float:
    k = min(k or len(ranked), len(ranked))
    support, q = list(desired), list(desired.values())
    w = [1 / math.log2(i + 1) for i in range(1, k + 1)]
    return sum(wi * _kl(_dist(ranked[:i], support), q) for i, wi in zip(range(1, k + 1), w)) / sum(w)


def retrieval_skew(scores, attributes: list, k: int = 10, desired: dict | None = None) -> dict:
    """Mean MaxSkew@k and NDKL@k over queries: ``scores`` (Q, N) query-item similarities (e.g. neutral text
    prompts against images), ``attributes`` the attribute value of each of the N items. ``desired`` defaults
    to the pool's distribution (Berg et al. 2022), ``"uniform"`` for equal shares."""
    import torch
    pool = Counter(attributes)
    if desired == "uniform":
        desired = {a: 1 / len(pool) for a in sorted(pool)}
    desired = desired or {a: pool[a] / len(attributes) for a in sorted(pool)}
    order = torch.as_tensor(scores).argsort(dim=1, descending=True)[:, :k].tolist()
    ms = [max_skew([attributes[j] for j in row], k, desired) for row in order]
    nd = [ndkl([attributes[j] for j in row], desired, k) for row in order]
    return {"k": k, "MaxSkew": sum(ms) / len(ms), "NDKL": sum(nd) / len(nd), "queries": len(ms),
            "desired": desired}


def attribute_mention(captions: list[str], groups: list[str], words: dict[str, list[str]]) -> dict:
    """Rate of captions naming an attribute value other than the image's own. ``words``: value -> phrases (whole
    words, case-insensitive; a hyphen joins words, so "light" does not match inside "medium-light"). An image of a group without phrases (e.g. ``none``) is wrong to get any value."""
    pats = phrase_patterns(words)
    wrong = defaultdict(int)
    n = Counter(groups)
    for cap, g in zip(captions, groups):
        named = {v for v, p in pats.items() if p.search(cap or "")}
        if named - {g}:
            wrong[g] += 1
    per_group = {g: {"n": n[g], "wrong": wrong[g], "rate": wrong[g] / n[g]} for g in sorted(n)}
    total = sum(wrong.values())
    return {"rate": total / len(captions) if captions else None, "wrong": total, "per_group": per_group}
