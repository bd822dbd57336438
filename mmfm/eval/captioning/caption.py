"""``mmfm eval caption``: caption every image of a dataset, score against its references (BLEU-1..4, ROUGE-L,
CIDEr-D, as pycocoevalcap computes them) and report degenerate output (empty captions, repetition loops, one
caption for every image).

DATA is a shard folder (``manifest.json`` + tars), a ``.tar`` or a brace pattern, or a JSONL/CSV file
(``mmfm.eval.captioning.data``). Every result records the backend, the split, the sample count, the decoding
settings and the checkpoint; images that fail to decode are handled as :mod:`mmfm.eval.captioning.runner` says.
"""
from __future__ import annotations

import time
from collections import Counter

from mmfm.config import ConfigError
from mmfm.generate import repetition_loop

from ..result import EvalResult
from .data import read_caption_data
from .runner import MAX_SKIPPED, account_skipped, batches, check_max_skipped, provenance

__all__ = ["degenerate_report", "evaluate_captions", "CAPTION_BACKEND"]

CAPTION_BACKEND = ("mmfm.eval.captioning.caption_metrics: pure-Python BLEU-1..4 / ROUGE-L / CIDEr-D equal to "
                   "pycocoevalcap 1.2 (PTB tokenization reproduced in Python)")


# ---------------------------------------------------------------- degenerate output
def degenerate_report(captions: dict[str, str], examples: int = 5) -> dict:
    """Empty captions, repetition loops and collapse onto one caption for every image."""
    texts = {k: " ".join((v or "").split()) for k, v in captions.items()}
    n = len(texts)
    empty = [k for k, v in texts.items() if not v]
    loops = [k for k, v in texts.items() if v and repetition_loop(v.lower().split())]
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
def evaluate_captions(model, data: str, gen=None, *, split: str | None = None, batch_size: int | None = None,
                      max_samples: int | None = None, alt_text: bool = False, progress: bool = True,
                      max_skipped: float = MAX_SKIPPED, clipscore=None) -> EvalResult:
    """Caption every image of DATA and score against its references. ``alt_text``: score the post-processed
    alt text instead of the raw caption. ``max_skipped``: the largest share of images that may fail to decode
    (:class:`~mmfm.eval.captioning.runner.TooManySkipped` above it). ``metrics``: the corpus scores; ``meta``
    holds the degenerate-output report, the failures and the skipped count beside the provenance. ``clipscore``: a
    CLIP model or spec (:mod:`mmfm.eval.captioning.clipscore`): CLIPScore and RefCLIPScore join the metrics."""
    from tqdm import tqdm

    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images

    from .caption_metrics import score_captions

    gen = gen or GenerateConfig()
    max_skipped = check_max_skipped(max_skipped)
    items = read_caption_data(data, max_samples)
    t0 = time.time()
    preds, failed = [], []
    bar = tqdm(total=len(items), desc="eval caption", unit="img", disable=not progress)
    for chunk in batches(items, int(batch_size or gen.batch_size)):
        res = caption_images(model, [c["image"] for c in chunk], gen, names=[c["name"] for c in chunk],
                             batch_size=len(chunk), alt_text=True)
        for item, r in zip(chunk, res):
            if r["error"]:
                failed.append({"key": item["key"], "image": item["name"], "error": r["error"]})
                continue
            preds.append({"key": item["key"], "image": item["name"], "caption": r["caption"],
                          "alt_text": r["alt_text"], "references": item["references"], "_source": item["image"]})
        bar.update(len(chunk))
    bar.close()
    seconds = time.time() - t0
    if not preds:
        raise ConfigError(f"{data}: every image failed to decode ({failed[:3]})")
    field = "alt_text" if alt_text else "caption"
    scores = score_captions({p["key"]: p[field] for p in preds}, {p["key"]: p["references"] for p in preds},
                            per_image=True)
    per_image = scores.pop("per_image")
    sources = [p.pop("_source") for p in preds]
    for p in preds:
        p["scores"] = per_image[p["key"]]
    clip_meta = _add_clip_scores(clipscore, preds, sources, field, scores) if clipscore is not None else {}
    meta = {"task": "caption", "backend": CAPTION_BACKEND, "samples": len(preds), "failed": len(failed),
            "degenerate": degenerate_report({p["key"]: p[field] for p in preds}),
            **provenance(model, data, split, gen, {"scored_text": field, "seconds": seconds,
                                                   "captions_per_s": len(preds) / seconds if seconds else None}),
            "failures": failed, **clip_meta}
    return account_skipped(EvalResult(metrics=scores, meta=meta, predictions=preds, nested=True), len(items),
                           max_skipped, data, "images")


def _add_clip_scores(clip, preds: list[dict], sources: list, field: str, scores: dict) -> dict:
    """CLIPScore / RefCLIPScore of each prediction (into its ``scores``) and of the corpus (into ``scores``)."""
    from ..embedding import load_clip
    from .clipscore import CLIPSCORE_PREFIX, CLIPSCORE_W, clip_scores, corpus_clip_scores

    model, spec = load_clip(clip)
    rows = clip_scores(model, sources, [p[field] for p in preds], [p["references"] for p in preds])
    for p, row in zip(preds, rows):
        p["scores"].update({k: row[k] for k in ("clipscore", "refclipscore")})
    scores.update(corpus_clip_scores(rows))
    return {"clipscore": {"model": spec or type(model).__name__, "w": CLIPSCORE_W, "prefix": CLIPSCORE_PREFIX,
                          "backend": "mmfm.eval.captioning.clipscore (Hessel et al. 2021)"}}
