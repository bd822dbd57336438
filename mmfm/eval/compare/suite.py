"""``mmfm eval compare MODEL [MODEL ...] --data ...``: several models on the same data in one run, with the
difference to the first model and a paired bootstrap 95% interval for every metric.

What is measured depends on the models' kind (all models must be of one kind) and on each data set:

* CLIP, an image folder (one subfolder per class): zero-shot top-1, top-5 (5+ classes), mean per-class recall
  and macro-F1; with ``probe_train`` (a folder with the same classes) a linear probe on frozen image features
  and k-shot probes (``mmfm.eval.zeroshot.probe``, CLIP_benchmark's protocol), scored on the data folder.
  ``probe_train`` entries ``NAME=FOLDER`` pair a train folder with the data set of that name (the new domain's
  and the old domain's probes train on their own images); a bare ``FOLDER`` serves every image folder without its
  own.
* CLIP, shards / CSV / JSONL of image-caption pairs: retrieval R@1/5/10 both ways.
* Captioner, captions (shards, CSV, JSONL): BLEU-4, CIDEr-D, ROUGE-L of generated captions and perplexity per
  token of the references (``mmfm.eval.captioning.perplexity``).
* Captioner (VQA), questions (JSONL or shards whose rows have ``question`` and ``answers``): VQAv2 accuracy and
  SQuAD token F1 (max over the reference answers).

Every metric keeps its per-sample parts (:class:`mmfm.eval.compare.bootstrap.SampleMetric`), so deltas are paired
over the samples both models scored. Give the new domain and an old one to see what continued pre-training gained
and what it forgot.
"""
from __future__ import annotations

import dataclasses
import time

from mmfm.config import ConfigError

from ..embedding import load_clip, model_kind
from ..result import EvalResult, backend
from .bootstrap import SampleMetric, paired_delta
from .data import data_kind, parse_data, probe_folders

__all__ = ["compare_suite", "FEWSHOT"]

FEWSHOT = (1, 5, 10)


# ----------------------------------------------------------------------------- one model on one data set
def _zeroshot(model, path: str, templates, max_samples, probe, fewshot, progress) -> tuple[dict, list]:
    from ..zeroshot.classify import zeroshot_classify
    from ..zeroshot.folder import scan_folder
    spec = scan_folder(path, max_samples=max_samples)
    if not spec.labelled:
        raise ConfigError(f"--data {path}: a flat folder has no labels; give one subfolder per class")
    res = zeroshot_classify(model, spec, templates=templates, workers=0, use_cache=False, progress=progress)
    keys = [r["path"] for r in res.predictions]
    cls = {"target": res.targets, "pred": res.preds, "n_classes": [len(spec.classes)]}
    out = {f"zero-shot {m}": SampleMetric(keys, cls, m) for m in ("top1", "mean_per_class_recall", "macro_f1")}
    if len(spec.classes) >= 5:
        hits = [r["label"] in [c for c, _ in r["topk"][:5]] for r in res.predictions]
        out["zero-shot top5"] = SampleMetric(keys, {"value": hits}, "mean")
    notes = []
    if probe:
        more, notes = _probes(model, spec, probe, fewshot, progress)
        out.update(more)
    return out, notes


def _probes(model, test_spec, train_folder: str, fewshot, progress) -> tuple[dict, list]:
    from ..zeroshot.folder import scan_folder
    from ..zeroshot.probe import folder_features, linear_probe
    train_spec = scan_folder(train_folder)
    if list(train_spec.classes) != list(test_spec.classes):
        raise ConfigError(f"--probe-train {train_folder}: its classes {train_spec.classes} differ from those of "
                          f"{test_spec.root} {test_spec.classes}")
    tx, ty, _ = folder_features(model, train_spec, progress=progress)
    ex, ey, epos = folder_features(model, test_spec, progress=progress)
    keys = [test_spec.paths[i] for i in epos]
    out, notes = {}, []
    for k in [None, *fewshot]:
        name = "linear probe top1" if k is None else f"{k}-shot probe top1"
        try:
            r = linear_probe(tx, ty, ex, ey, len(test_spec.classes), k=k, classnames=test_spec.classnames)
        except ConfigError as e:
            notes.append(f"{name} left out: {e}")
            continue
        out[name] = SampleMetric(keys, {"target": ey, "pred": r["pred"], "n_classes": [len(test_spec.classes)]},
                                 "top1")
    return out, notes


def _retrieval(model, path: str, max_samples, progress) -> tuple[dict, list]:
    import torch

    from ..retrieval import embed_pairs, retrieval_ranks, retrieval_source
    source = retrieval_source(path)
    img, txt, owner, skipped = embed_pairs(model, source, workers=0, max_samples=max_samples, progress=progress)
    i2t, t2i = retrieval_ranks(img, txt, owner, 10)
    keys = list(range(len(img)))
    n_caps = torch.bincount(owner, minlength=len(img)).double().numpy()
    out = {}
    for k in (1, 5, 10):
        out[f"image_to_text R@{k}"] = SampleMetric(keys, {"value": (i2t < k).double().numpy()}, "mean")
        hits = torch.zeros(len(img), dtype=torch.float64).index_add_(0, owner, (t2i < k).double()).numpy()
        out[f"text_to_image R@{k}"] = SampleMetric(keys, {"num": hits, "den": n_caps}, "ratio")
    return out, [f"{len(skipped)} images skipped"] if skipped else []


def _captions(model, path: str, gen, max_samples, progress, clipscore=None) -> tuple[dict, list]:
    from ..captioning.caption import evaluate_captions
    from ..captioning.caption_metrics import bleu_stats
    from ..captioning.data import read_caption_data
    from ..captioning.perplexity import caption_nll
    from ..captioning.ptb_tokenize import tokenize_corpus
    res = evaluate_captions(model, path, gen, max_samples=max_samples, progress=progress,
                           clipscore=clipscore)
    preds, degenerate = res.predictions, res.meta["degenerate"]
    keys = [p["key"] for p in preds]
    hyps = [h for [h] in tokenize_corpus({p["key"]: [p["caption"]] for p in preds}).values()]
    refs = list(tokenize_corpus({p["key"]: p["references"] for p in preds}).values())
    out = {"BLEU-4": SampleMetric(keys, {"stats": bleu_stats(hyps, refs)}, "bleu4")}
    for m in ("CIDEr-D", "ROUGE-L") + (("clipscore", "refclipscore") if clipscore is not None else ()):
        out[m] = SampleMetric(keys, {"value": [p["scores"][m] for p in preds]}, "mean")
    nll = caption_nll(model, read_caption_data(path, max_samples))
    out["perplexity"] = SampleMetric(nll["keys"], {"num": nll["nll"], "den": nll["tokens"]}, "perplexity",
                                     higher_is_better=False)
    out.update(_degenerate_metrics(preds, keys))
    return out, [f"degenerate: {degenerate['repetition_loops']} repetition loops, {degenerate['empty']} empty, "
                 f"{degenerate['distinct_captions']} distinct captions of {degenerate['samples']}"
                 + (" (COLLAPSED)" if degenerate["collapsed"] else "")]


def _degenerate_metrics(preds: list[dict], keys: list) -> dict:
    """``mmfm eval caption``'s degenerate-output counts as shares per sample (lower is better), so a model that
    loops or says nothing is seen beside its BLEU/CIDEr."""
    from ..captioning.caption import degenerate_report
    flags = {"repetition loops": [], "empty captions": []}
    for p in preds:
        d = degenerate_report({p["key"]: p["caption"]})
        flags["repetition loops"].append(float(d["repetition_loops"]))
        flags["empty captions"].append(float(d["empty"]))
    return {name: SampleMetric(keys, {"value": v}, "mean", higher_is_better=False) for name, v in flags.items()}


def _vqa(model, spec: str, path: str, gen, max_samples, progress) -> tuple[dict, list]:
    from mmfm.models.layout import read_config

    from ..captioning.vqa import evaluate_vqa_model
    from ..captioning.vqa_metrics import max_token_f1
    try:
        vqa_cfg = read_config(spec).task.vqa
    except Exception:  # noqa: BLE001 - a model without a stored task config answers with the defaults
        vqa_cfg = None
    rows = evaluate_vqa_model(model, path, gen, vqa_cfg, max_samples=max_samples, progress=progress).predictions
    keys = [r["question_id"] for r in rows]
    return {"VQA accuracy": SampleMetric(keys, {"value": [r["accuracy"] for r in rows]}, "mean"),
            "token F1": SampleMetric(keys, {"value": [max_token_f1(r["answer"], r["answers"]) for r in rows]},
                                     "mean")}, []


def _evaluate(model, spec, kind, name, path, opts) -> tuple[dict, list]:
    if kind == "folder":
        return _zeroshot(model, path, opts["templates"], opts["max_samples"], opts["probe_train"].get(name),
                         opts["fewshot"], opts["progress"])
    if kind == "pairs":
        return _retrieval(model, path, opts["max_samples"], opts["progress"])
    if kind == "vqa":
        return _vqa(model, spec, path, opts["gen"], opts["max_samples"], opts["progress"])
    return _captions(model, path, opts["gen"], opts["max_samples"], opts["progress"], opts.get("clipscore"))


def _overlap_note(spec: str, name: str, path: str, kind: str, metrics: dict) -> list[str]:
    """The warning when ``path`` overlaps ``spec``'s training data (by shard, or by the scored samples' keys)."""
    from ..overlap import overlap_warning, train_overlap
    keys = next(iter(metrics.values())).keys if metrics and kind in ("folder", "captions") else None
    ov = train_overlap(spec, path, keys)
    return [overlap_warning(ov, name)] if ov else []


# ----------------------------------------------------------------------------- the run
def _named_sets(models: list[str], data: list[str]) -> list[tuple[str, str]]:
    if not models:
        raise ConfigError("compare: give at least one model")
    if not data:
        raise ConfigError("compare: give at least one --data")
    twice = sorted({m for m in models if list(models).count(m) > 1})
    if twice:
        raise ConfigError(f"compare: model {twice[0]} is given twice")
    sets = [parse_data(d) for d in data]
    if len({n for n, _ in sets}) != len(sets):
        raise ConfigError(f"--data: two data sets share a name ({[n for n, _ in sets]}); name them NAME=PATH")
    return sets


def compare_suite(models: list[str], data: list[str], *, probe_train: str | list[str] | None = None,
                  fewshot=FEWSHOT, templates="simple", max_samples: int | None = None, gen=None,
                  n_boot: int = 1000, seed: int = 0, device: str | None = None, progress: bool = True,
                  clipscore=None) -> EvalResult:
    """Evaluate every model on every data set (``NAME=PATH`` or ``PATH``). ``metrics``: ``{"rows": [{"model",
    "data", "metric", "value", "n", "delta", "ci95", "improved"}]}``; ``meta``: the models, data sets, notes,
    bootstrap and probe settings; the first model is the reference of the deltas. ``clipscore``: a CLIP (spec or
    model) that adds CLIPScore and RefCLIPScore to the captioners' rows."""
    from mmfm.models.checkpoint import load as load_model
    t0 = time.perf_counter()
    sets = _named_sets(models, data)
    probes = probe_folders(probe_train, [n for n, _ in sets])
    opts = {"templates": templates, "max_samples": max_samples, "probe_train": probes,
            "fewshot": tuple(fewshot or ()), "gen": gen, "progress": progress,
            "clipscore": None if clipscore is None else load_clip(clipscore, device)[0]}
    scores: dict = {}        # (data, metric) -> [SampleMetric per model]
    notes, kind = [], None
    for spec in models:
        model = load_model(spec, device=device)
        if kind is None:
            kind = model_kind(model)
            kinds = {name: data_kind(path, kind) for name, path in sets}
        elif model_kind(model) != kind:
            raise ConfigError(f"model {spec} is a {model_kind(model)}, the first model is a {kind}")
        for name, path in sets:
            if progress:
                print(f"evaluating {spec} on {name} ({kinds[name]}) ...", flush=True)
            metrics, more = _evaluate(model, spec, kinds[name], name, path, opts)
            more += _overlap_note(spec, name, path, kinds[name], metrics)
            notes += [f"{spec} on {name}: {n}" for n in more]
            for metric, sm in metrics.items():
                scores.setdefault((name, metric), {})[spec] = sm
        del model
    meta = {"task": "compare_models", "kind": kind, "models": list(models),
            "data": [{"name": n, "path": p, "kind": kinds[n]} for n, p in sets], "reference": models[0],
            "notes": notes, "bootstrap": {"n_boot": n_boot, "seed": seed, "paired": True},
            "probe": {"train": probes, "fewshot": list(opts["fewshot"])} if probes else None,
            "templates": templates if kind == "clip" else None, "max_samples": max_samples,
            "clipscore": None if clipscore is None else str(clipscore),
            "decoding": None if gen is None else dataclasses.asdict(gen), "backend": backend(),
            "seconds": round(time.perf_counter() - t0, 3)}
    return EvalResult(metrics={"rows": _rows(models, scores, n_boot, seed)}, meta=meta)


def _rows(models: list[str], scores: dict, n_boot: int, seed: int) -> list[dict]:
    rows = []
    for (name, metric), per_model in scores.items():
        base = per_model.get(models[0])
        for spec in models:
            sm = per_model.get(spec)
            if sm is None:
                continue
            row = {"model": spec, "data": name, "metric": metric, "value": sm.value(), "n": len(sm.keys),
                   "higher_is_better": sm.higher_is_better, "delta": None, "ci95": None, "improved": None}
            if spec != models[0] and base is not None:
                d = paired_delta(base, sm, n_boot=n_boot, seed=seed)
                row.update(delta=d["delta"], ci95=d["ci95"], improved=d["improved"], n_paired=d["n"])
            rows.append(row)
    return rows
