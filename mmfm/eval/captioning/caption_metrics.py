"""BLEU-1..4, ROUGE-L and CIDEr-D in pure Python, equal to pycocoevalcap's (no Java, no numpy).

These are line-by-line ports of pycocoevalcap 1.2 (``bleu_scorer.py``, ``rouge.py``, ``cider_scorer.py``),
quirks included, so that numbers are comparable with published COCO results:

* BLEU: corpus-level, "closest" reference length (ties go to the shorter reference), the ``1e-9``/``1e-15``
  smoothing constants, brevity penalty on the corpus ratio.
* ROUGE-L: LCS-based F-measure with beta = 1.2, max precision and max recall over references taken
  independently; sentences are split on a single space (so an empty candidate is one empty token).
* CIDEr-D (pycocoevalcap calls it ``CIDEr``): TF-IDF n-grams n = 1..4 with document frequencies over the
  references of the whole corpus, clipped hypothesis weights, Gaussian length penalty sigma = 6, times 10.
  As in the reference code, the "length" used by the penalty is the number of *bigrams*.

Text is first put through :func:`mmfm.eval.captioning.ptb_tokenize.tokenize_corpus` (what pycocoevalcap's Java
PTB tokenizer produces, references and predictions each tokenized as one stream in key order, as COCOEvalCap
does); pass ``tokenize=False`` for already tokenized text. Results match the goldens that
``tests/fixtures/metrics/make_goldens.py`` computes with pycocoevalcap to 1e-12.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from .ptb_tokenize import tokenize_corpus

COCO_NAMES = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
              "ROUGE-L": "ROUGE_L", "CIDEr-D": "CIDEr"}


def _ngrams(words: Sequence[str], n: int = 4) -> dict[tuple, int]:
    counts: dict[tuple, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


# ---------------------------------------------------------------- BLEU (bleu_scorer.py, option="closest")
def _sentence_stats(hyp: str, rs: Sequence[str], n: int) -> list[int]:
    """``[testlen, reflen, guess_1..n, correct_1..n]`` of one hypothesis: its length, the closest reference
    length (ties to the shorter), the n-gram counts and the clipped n-gram matches."""
    reflens, maxcounts = [], {}
    for ref in rs:
        words = ref.split()
        reflens.append(len(words))
        for ng, c in _ngrams(words, n).items():
            maxcounts[ng] = max(maxcounts.get(ng, 0), c)
    words = hyp.split()
    testlen = len(words)
    guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
    correct = [0] * n
    for ng, c in _ngrams(words, n).items():
        correct[len(ng) - 1] += min(maxcounts.get(ng, 0), c)
    reflen = min((abs(rl - testlen), rl) for rl in reflens)[1]
    return [testlen, reflen, *guess, *correct]


def bleu_stats(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4) -> list[list[int]]:
    """One row of counts per sentence (see ``_sentence_stats``); corpus BLEU of any subset of the rows, a
    bootstrap draw included, is :func:`bleu_from_stats` of those rows."""
    return [_sentence_stats(h, rs, n) for h, rs in zip(hyps, refs)]


def bleu_from_stats(stats, n: int = 4) -> list[float]:
    """Corpus BLEU-1..n from :func:`bleu_stats` rows (summed counts, brevity penalty on the corpus ratio)."""
    small, tiny = 1e-9, 1e-15
    import numpy as np
    total = [int(x) for x in np.asarray(stats, dtype=np.int64).reshape(-1, 2 + 2 * n).sum(axis=0)]
    corpus, score = [], 1.0
    for k in range(n):
        score *= float(total[2 + n + k] + tiny) / (total[2 + k] + small)
        corpus.append(score ** (1.0 / (k + 1)))
    ratio = (total[0] + tiny) / (total[1] + small)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and the per-sentence BLEU lists, as pycocoevalcap's ``Bleu.compute_score``."""
    small, tiny = 1e-9, 1e-15
    stats = bleu_stats(hyps, refs, n)
    per_sentence: list[list[float]] = [[] for _ in range(n)]
    for testlen, reflen, *counts in stats:
        guess, correct = counts[:n], counts[n:]
        score = 1.0
        for k in range(n):
            score *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
            per_sentence[k].append(score ** (1.0 / (k + 1)))
        ratio = (testlen + tiny) / (reflen + small)
        if ratio < 1:
            for k in range(n):
                per_sentence[k][-1] *= math.exp(1 - 1 / ratio)
    return bleu_from_stats(stats, n), per_sentence


# ---------------------------------------------------------------- ROUGE-L (rouge.py)
def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: str, refs: Sequence[str], beta: float = 1.2) -> float:
    cand = hyp.split(" ")
    prec, rec = [], []
    for ref in refs:
        toks = ref.split(" ")
        lcs = _lcs(toks, cand)
        prec.append(lcs / float(len(cand)))
        rec.append(lcs / float(len(toks)))
    p, r = max(prec), max(rec)
    if p != 0 and r != 0:
        return ((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p)
    return 0.0


# ---------------------------------------------------------------- CIDEr-D (cider_scorer.py)
def cider_d(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-image CIDEr-D scores (their mean is the corpus score)."""
    crefs = [[_ngrams(r.split(), n) for r in rs] for rs in refs]
    ctest = [_ngrams(h.split(), n) for h in hyps]
    df: dict[tuple, float] = defaultdict(float)
    for rs in crefs:
        for ng in {ng for r in rs for ng in r}:
            df[ng] += 1
    ref_len = math.log(float(len(crefs)))

    def vec(counts):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ng, tf in counts.items():
            k = len(ng) - 1
            v[k][ng] = float(tf) * (ref_len - math.log(max(1.0, df.get(ng, 0.0))))
            norm[k] += v[k][ng] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr):
        delta = float(lh - lr)
        val = [0.0] * n
        for k in range(n):
            for ng, w in vh[k].items():
                wr = vr[k].get(ng, 0.0)
                val[k] += min(w, wr) * wr
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for test, rs in zip(ctest, crefs):
        vh, nh, lh = vec(test)
        acc = [0.0] * n
        for r in rs:
            vr, nr, lr = vec(r)
            acc = [a + s for a, s in zip(acc, sim(vh, nh, lh, vr, nr, lr))]
        scores.append(sum(acc) / n / len(rs) * 10.0)
    return scores


# ---------------------------------------------------------------- the whole COCO caption evaluation
def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def score_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
                   tokenize: bool = True, per_image: bool = False) -> dict:
    """Score ``{key: caption}`` against ``{key: [reference, ...]}`` like pycocoevalcap's COCOEvalCap
    (Bleu, Rouge, Cider). Every prediction key needs references; references without a prediction are
    an error too, so that a partial run cannot pass for a full one."""
    missing = [k for k in predictions if k not in references]
    extra = [k for k in references if k not in predictions]
    if missing or extra:
        raise ValueError(f"predictions and references must have the same keys: "
                         f"{len(missing)} predictions without references (e.g. {missing[:3]}), "
                         f"{len(extra)} references without a prediction (e.g. {extra[:3]})")
    keys = list(references)
    if not keys:
        raise ValueError("no captions to score")
    for k in keys:
        if not references[k]:
            raise ValueError(f"image {k!r} has no reference captions")
    hyps = [predictions[k] for k in keys]
    refs = [list(references[k]) for k in keys]
    if tokenize:    # as COCOEvalCap: all references in one tokenizer call, all predictions in another
        hyps = [h for [h] in tokenize_corpus({k: [h] for k, h in zip(keys, hyps)}).values()]
        refs = list(tokenize_corpus(dict(zip(keys, refs))).values())
    corpus_bleu, sentence_bleu = bleu(hyps, refs)
    rouge = [rouge_l(h, r) for h, r in zip(hyps, refs)]
    cider = cider_d(hyps, refs)
    out = {f"BLEU-{i + 1}": corpus_bleu[i] for i in range(4)}
    out["ROUGE-L"] = _mean(rouge)
    out["CIDEr-D"] = _mean(cider)
    if per_image:
        out["per_image"] = {k: {"BLEU-4": sentence_bleu[3][i], "ROUGE-L": rouge[i], "CIDEr-D": cider[i]}
                            for i, k in enumerate(keys)}
    return out
