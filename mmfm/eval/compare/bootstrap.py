"""Per-sample metric records and paired bootstrap intervals for differences between models.

A :class:`SampleMetric` keeps what a metric is made of, one row per evaluated sample (a correct flag, an
NLL sum and a token count, BLEU n-gram counts, ...), together with a reducer that turns any subset of rows into
the metric. The point value is the reducer over every row; a bootstrap draws rows with replacement.

:func:`paired_delta` compares two models on the *same* samples: each of ``n_boot`` draws picks one set of
sample keys (a fixed seed) and evaluates both models on it, so the interval is the one of the difference,
not of two independent scores (the paired bootstrap of Koehn 2004 / Dror et al. 2018). The 95% interval is the
2.5th and 97.5th percentile of the drawn differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["SampleMetric", "paired_delta", "REDUCERS"]


def _mean(a: dict, idx) -> float:
    return float(a["value"][idx].mean())


def _ratio(a: dict, idx) -> float:
    return float(a["num"][idx].sum() / max(a["den"][idx].sum(), 1e-12))


def _perplexity(a: dict, idx) -> float:
    return math.exp(_ratio(a, idx))


def _class_counts(a: dict, idx) -> np.ndarray:
    c = int(a["n_classes"][0])
    return np.bincount(a["target"][idx] * c + a["pred"][idx], minlength=c * c).reshape(c, c)


def _top1(a: dict, idx) -> float:
    return float((a["target"][idx] == a["pred"][idx]).mean())


def _mean_per_class_recall(a: dict, idx) -> float:
    cm = _class_counts(a, idx)
    support = cm.sum(1)
    return float((np.diag(cm)[support > 0] / support[support > 0]).mean())


def _macro_f1(a: dict, idx) -> float:
    from ..zeroshot.metrics import macro_f1
    return macro_f1(_class_counts(a, idx))


def _corpus_bleu4(a: dict, idx) -> float:
    from ..captioning.caption_metrics import bleu_from_stats
    return bleu_from_stats(a["stats"][idx])[3]


REDUCERS: dict[str, Callable[[dict, object], float]] = {
    "mean": _mean, "ratio": _ratio, "perplexity": _perplexity, "top1": _top1,
    "mean_per_class_recall": _mean_per_class_recall, "macro_f1": _macro_f1, "bleu4": _corpus_bleu4}


@dataclass
class SampleMetric:
    """A metric over samples: ``keys`` (one per row, to pair models), ``arrays`` (the per-row data, all of
    length ``len(keys)``, except ``n_classes``) and the name of a reducer in :data:`REDUCERS`.
    ``higher_is_better`` says which sign of a difference is an improvement (False for perplexity)."""

    keys: list
    arrays: dict
    reducer: str
    higher_is_better: bool = True

    def __post_init__(self):
        if self.reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {self.reducer!r}; one of {sorted(REDUCERS)}")
        self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
        if not self.keys:
            raise ValueError("a metric needs at least one sample")

    def value(self, idx=None) -> float:
        return REDUCERS[self.reducer](self.arrays, slice(None) if idx is None else idx)

    def rows_for(self, keys: list) -> np.ndarray:
        pos = {k: i for i, k in enumerate(self.keys)}
        return np.asarray([pos[k] for k in keys], dtype=np.int64)


RESOLUTION = 5e-5     # half the last printed digit: the reports print deltas and intervals with 4 decimals


def paired_delta(base: SampleMetric, other: SampleMetric, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, resolution: float = RESOLUTION) -> dict:
    """``other - base`` on the samples both scored, with a paired bootstrap interval.

    Returns ``{"delta", "ci95": [lo, hi], "n", "n_boot", "seed", "improved": True/False/None}`` where
    ``improved`` is None unless the interval excludes 0 by more than ``resolution`` (so an interval printed as
    ``[+0.0000, +0.0461]`` is never "better": its true lower bound may be 4.8e-10), and otherwise says whether the
    change is for the better (taking ``higher_is_better`` into account)."""
    shared = [k for k in base.keys if k in set(other.keys)]
    if not shared:
        raise ValueError("the two models have no scored sample in common")
    ib, io = base.rows_for(shared), other.rows_for(shared)
    delta = other.value(io) - base.value(ib)
    rng = np.random.default_rng(seed)
    n = len(shared)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        draws[b] = other.value(io[pick]) - base.value(ib[pick])
    tail = (1 - level) / 2 * 100
    lo, hi = (float(x) for x in np.percentile(draws, [tail, 100 - tail]))
    improved = None
    if lo > resolution or hi < -resolution:
        improved = (lo > resolution) == base.higher_is_better
    return {"delta": float(delta), "ci95": [lo, hi], "n": n, "n_boot": n_boot, "seed": seed, "improved": improved}
