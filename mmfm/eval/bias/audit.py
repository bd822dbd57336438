"""Bias report: zero-shot accuracy and caption quality per group of a sensitive attribute, with the gap
between the best and the worst group (``mmfm eval bias --model CKPT DATA --attribute FIELD``).

* DATA: shards whose json holds the attribute (e.g. the emoji recipe's ``skin_tone``: ``none`` = the default
  yellow, ``light`` ... ``dark``; ``mixed`` = several people with different tones).
* Groups: ``--groups a,b,...`` or, by default, every value found (for ``skin_tone``: the default + the 5 tones).
* Matched comparison (``--match-by FIELD``, default ``base_name`` when the json has it): only items whose FIELD
  value exists in *every* group are kept, so each group holds the same emoji in its own tone and a gap cannot
  come from different content.
* Zero-shot: each image is classified among the distinct labels (``--label-field``, default ``base_name``
  when present, else the manifest class of ``cls``) with ``--templates``; top-1 per group with a Wilson 95%
  interval, and, when matched, an exact McNemar test of the best against the worst group on the same items.
  The labels carry no tone, so the model is asked the same question for every group.
* Captions: generated with the checkpoint's decoding settings and scored against the json ``captions``
  (else ``txt``); per-image CIDEr-D / BLEU-4 / ROUGE-L are computed once over the whole set (one IDF for
  all groups) and averaged per group.
The group statistics are :mod:`mmfm.eval.bias.metrics`; :mod:`mmfm.eval.bias.output` writes ``bias.json``
(numbers + how they were made), ``bias.md`` (the table), ``bias.png`` (bars with intervals) and
``predictions.jsonl``.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from mmfm.config import ConfigError

from ..embedding import model_kind
from ..records import is_shard_source, references, shard_records
from ..result import EvalResult, backend
from .fairness import (SKIN_TONE_WORDS, attribute_mention, bootstrap_gap, equalized_odds, retrieval_skew,
                       worst_group)
from .metrics import CAPTION_METRICS, caption_scores_per_group, gap, paired_test, top1_per_group

__all__ = ["bias_report", "read_samples", "select_groups", "zero_shot_samples", "zero_shot_scores", "caption_samples", "sample_labels",
           "is_captioner", "SKIN_TONE_ORDER"]

SKIN_TONE_ORDER = ["none", "light", "medium-light", "medium", "medium-dark", "dark"]


# ----------------------------------------------------------------------------- data
def read_samples(data: str, attribute: str, max_samples: int | None = None) -> tuple[list[dict], dict]:
    """Shard samples with their attribute value: ``[{"key", "image", "meta", "txt", "name", "cls", "group"}]``
    and counts of what was left out (no attribute, no image)."""
    if not is_shard_source(data):
        raise ConfigError(f"bias data: {data} is not a shard folder, .tar or brace pattern")
    out, skipped, keys_seen = [], Counter(), set()
    for r in shard_records(str(data)):
        meta = r["meta"]
        keys_seen.update(meta)
        if r["image"] is None:
            skipped["no image"] += 1
            continue
        value = meta.get(attribute)
        if value is None:
            skipped[f"no '{attribute}' in json"] += 1
            continue
        out.append({**r, "group": str(value)})
        if max_samples and len(out) >= max_samples:
            break
    if not out:
        hint = f" (json keys seen: {', '.join(sorted(keys_seen)[:20])})" if keys_seen else " (the samples have no json)"
        raise ConfigError(f"--attribute {attribute}: no sample in {data} has it{hint}")
    return out, dict(skipped)


def _order(values, attribute: str) -> list[str]:
    values = list(dict.fromkeys(values))
    if attribute == "skin_tone":
        known = [v for v in SKIN_TONE_ORDER + ["mixed"] if v in values]
        return known + sorted(v for v in values if v not in known)
    return sorted(values)


def select_groups(samples: list[dict], attribute: str, groups: list[str] | None = None,
                  match_by: str | None = "auto") -> tuple[list[dict], dict]:
    """Keep the chosen groups and, with ``match_by``, only items whose ``match_by`` value is in every group."""
    found = Counter(s["group"] for s in samples)
    if groups is None:
        groups = [g for g in SKIN_TONE_ORDER if g in found] if attribute == "skin_tone" else _order(found, attribute)
    missing = [g for g in groups if g not in found]
    if missing:
        raise ConfigError(f"--groups: {missing} not found in '{attribute}' (values: {dict(found)})")
    if len(groups) < 2:
        raise ConfigError(f"--attribute {attribute}: need at least two groups to compare, found {dict(found)}")
    kept = [s for s in samples if s["group"] in groups]
    info = {"groups": list(groups), "found": dict(found), "match_by": None}
    if match_by == "auto":
        match_by = "base_name" if all("base_name" in s["meta"] for s in kept) else None
    if match_by:
        if not all(match_by in s["meta"] for s in kept):
            raise ConfigError(f"--match-by {match_by}: not every sample's json has it")
        per_value = defaultdict(set)
        for s in kept:
            per_value[s["meta"][match_by]].add(s["group"])
        full = {v for v, gs in per_value.items() if len(gs) == len(groups)}
        if not full:
            raise ConfigError(f"--match-by {match_by}: no {match_by} value appears in all groups {groups}; "
                              f"use --match-by none or fewer --groups")
        seen = set()
        matched = []
        for s in kept:                                   # one item per (value, group): duplicates would weigh more
            k = (s["meta"][match_by], s["group"])
            if s["meta"][match_by] in full and k not in seen:
                seen.add(k)
                matched.append(s)
        info.update({"match_by": match_by, "matched_values": len(full), "unmatched_values": len(per_value) - len(full)})
        kept = matched
    info["n_per_group"] = {g: sum(1 for s in kept if s["group"] == g) for g in groups}
    return kept, info


# ----------------------------------------------------------------------------- models
def _decode_batch(model, samples: list[dict]):
    import torch

    from mmfm.data.transforms import eval_transform

    from mmfm.data.decode import decode_image

    tf = eval_transform(model)
    return torch.stack([tf(decode_image(s["image"])) for s in samples])


def sample_labels(samples: list[dict], label_field: str, data: str) -> tuple[list[str], str]:
    if label_field == "auto":
        label_field = "base_name" if all("base_name" in s["meta"] for s in samples) else "cls"
    if label_field == "cls":
        from mmfm.data.shards import read_manifest
        classes = read_manifest(data).get("classes") if Path(data).is_dir() else None
        if not classes:
            raise ConfigError(f"--label-field cls: {data} has no manifest 'classes'; name a json field instead")
        out = []
        for s in samples:
            c = s.get("cls")
            if c is None:
                raise ConfigError(f"--label-field cls: sample {s['name']} has no class")
            out.append(classes[int(c)])
        return out, "cls"
    missing = [s["name"] for s in samples if label_field not in s["meta"]]
    if missing:
        raise ConfigError(f"--label-field {label_field}: {len(missing)} samples lack it (e.g. {missing[0]})")
    return [str(s["meta"][label_field]) for s in samples], label_field


def zero_shot_samples(model, samples: list[dict], labels: list[str], templates, *, batch_size: int = 64,
                      progress: bool = False) -> list[str]:
    """Predicted label per sample, classifying among the distinct ``labels`` (open_clip's classifier recipe)."""
    classes, scores = zero_shot_scores(model, samples, labels, templates, batch_size=batch_size, progress=progress)
    return [classes[j] for j in scores.argmax(1).tolist()]


def zero_shot_scores(model, samples: list[dict], labels: list[str], templates, *, batch_size: int = 64,
                     progress: bool = False):
    """``(classes, scores)``: the distinct labels, sorted, and the (N, C) image-classifier similarities."""
    import torch
    from tqdm.auto import tqdm

    from ..zeroshot.classifier import build_classifier
    from ..zeroshot.templates import load_templates

    classes = sorted(set(labels))
    _, tmpl = load_templates(templates)
    was_training = model.training
    model.eval()
    out = []
    try:
        weights = build_classifier(model, classes, tmpl, precision="fp32")
        with torch.inference_mode():
            for i in tqdm(range(0, len(samples), batch_size), desc="bias zero-shot", disable=not progress):
                x = _decode_batch(model, samples[i: i + batch_size])
                out.append(model.encode_image(x, normalize=True).float() @ weights.float())
    finally:
        model.train(was_training)
    return classes, torch.cat(out)


def caption_samples(model, samples: list[dict], gen, *, batch_size: int | None = None,
                    progress: bool = False) -> list[str]:
    from mmfm.generate import caption_images

    res = caption_images(model, [s["image"] for s in samples], gen, names=[s["name"] for s in samples],
                         batch_size=batch_size, alt_text=False, progress=progress)
    bad = [r for r in res if r["error"]]
    if bad:
        raise ConfigError(f"{len(bad)} images failed to decode (e.g. {bad[0]['image']}: {bad[0]['error']})")
    return [r["caption"] for r in res]


# ----------------------------------------------------------------------------- report
def _by_group(kept: list[dict], info: dict, values: list[float]) -> dict[str, list[float]]:
    """Values per group; for a matched design in the same item order in every group (by the match value)."""
    by: dict = defaultdict(dict)
    for s, v in zip(kept, values):
        by[s["group"]][s["meta"][info["match_by"]] if info.get("match_by") else len(by[s["group"]])] = v
    if info.get("match_by"):
        items = sorted(set.intersection(*(set(d) for d in by.values())), key=str)
        return {g: [by[g][i] for i in items] for g in info["groups"]}
    return {g: list(by[g].values()) for g in info["groups"]}


def _zero_shot_part(model, spec, kept, info, data, label_field, templates, batch_size, progress) -> tuple[dict, list]:
    from ..zeroshot.templates import load_templates

    tmpl_name, tmpl = load_templates(templates)
    labels, field = sample_labels(kept, label_field, data)
    classes, scores = zero_shot_scores(model, kept, labels, tmpl, batch_size=batch_size, progress=progress)
    preds = [classes[j] for j in scores.argmax(1).tolist()]
    per_group = top1_per_group(info["groups"], kept, preds, labels)
    top1_gap = gap(per_group, "top1")
    if info.get("match_by"):
        top1_gap["paired"] = paired_test(kept, [p == y for p, y in zip(preds, labels)], info["match_by"],
                                         top1_gap["best"], top1_gap["worst"])
    correct = [float(p == y) for p, y in zip(preds, labels)]
    part = {"model": spec, "label_field": field, "n_classes": len(set(labels)),
            "templates": tmpl_name if tmpl_name != "custom" else tmpl,
            "per_group": per_group, "gap": top1_gap, "overall": sum(correct) / len(correct),
            "worst_group": worst_group(per_group, "top1"),
            "gap_bootstrap": bootstrap_gap(_by_group(kept, info, correct), matched=bool(info.get("match_by"))),
            "equalized_odds": equalized_odds(labels, preds, [s["group"] for s in kept]),
            # the class prompts carry no attribute: as retrieval queries over all images, whose groups come back?
            "retrieval_skew": retrieval_skew(scores.T, [s["group"] for s in kept], k=min(10, len(kept)))}
    return part, [{"label": lab, "pred": p, "correct": lab == p} for lab, p in zip(labels, preds)]


def _caption_part(model, spec, kept, info, gen, batch_size, progress,
                  person_attributes=None) -> tuple[dict, list]:
    from mmfm.generate import keep_person_attributes, settings_dict

    from ..captioning.caption_metrics import score_captions

    caps = caption_samples(model, kept, gen, batch_size=batch_size, progress=progress)
    if person_attributes is not None:      # the alt-text setting generate.alt_text.person_attributes
        caps = [keep_person_attributes(c, person_attributes) for c in caps]
    keys = [f"{i}:{s['key']}" for i, s in enumerate(kept)]
    scores = score_captions(dict(zip(keys, caps)), {k: references(s) for k, s in zip(keys, kept)}, per_image=True)
    per_image = scores.pop("per_image")
    per_group = caption_scores_per_group(info["groups"], kept, keys, per_image)
    part = {"model": spec, "decoding": settings_dict(gen, model), "overall": scores,
            "per_group": per_group, "gap": {m: gap(per_group, m) for m in CAPTION_METRICS},
            "person_attributes": None if person_attributes is None else sorted(person_attributes),
            "gap_bootstrap": bootstrap_gap(_by_group(kept, info, [per_image[k]["CIDEr-D"] for k in keys]),
                                           matched=bool(info.get("match_by")))}
    if info.get("attribute") == "skin_tone":
        part["attribute_mention"] = attribute_mention(caps, [s["group"] for s in kept], SKIN_TONE_WORDS)
    return part, [{"caption": c, "references": references(s), "CIDEr-D": per_image[k]["CIDEr-D"]}
                  for c, s, k in zip(caps, kept, keys)]


def bias_report(models: list, data: str, attribute: str, *, groups: list[str] | None = None,
                match_by: str | None = "auto", label_field: str = "auto", templates="{}", gen=None,
                max_samples: int | None = None, batch_size: int = 64, progress: bool = True,
                person_attributes: list[str] | None = None) -> EvalResult:
    """Run the CLIP model(s) (zero-shot) and captioner(s) (caption quality) among ``models`` over DATA and
    report per group of ``attribute``. A model is a checkpoint path or a loaded model. ``person_attributes``
    (a list, possibly empty): captions keep only those person attributes (``limit_person_attributes``, the alt-text
    setting), so the report shows what omitting an attribute the captioner misreads does to each group. ``metrics``: ``zeroshot``
    and/or ``caption`` (per group, the gap); ``meta``: the groups, their sizes, what was left out, the backend."""
    from mmfm.models.checkpoint import load as load_model
    from mmfm.version import __version__

    t0 = time.perf_counter()
    samples, skipped = read_samples(data, attribute, max_samples)
    kept, info = select_groups(samples, attribute, groups, match_by)
    info["attribute"] = attribute
    meta = {"task": "bias", "attribute": attribute, "data": str(data), **info, "n_samples": len(kept),
            "skipped": skipped, "backend": backend(), "mmfm_version": __version__}
    parts: dict = {}
    rows = [{"key": s["key"], "name": s["name"], "group": s["group"]} for s in kept]
    for m in models:
        spec = None if hasattr(m, "parameters") else str(m)
        model = m if spec is None else load_model(spec)
        spec = spec or getattr(model, "checkpoint_path", None) or type(model).__name__
        part = "zeroshot" if model_kind(model) == "clip" else "caption"
        if part in parts:
            raise ConfigError("bias: give at most one CLIP model and one captioner")
        if part == "zeroshot":
            parts[part], extra = _zero_shot_part(model, spec, kept, info, data, label_field, templates, batch_size,
                                                 progress)
        else:
            if gen is None:
                from mmfm.generate import stored_generate
                gen = stored_generate(m)
            parts[part], extra = _caption_part(model, spec, kept, info, gen, None, progress, person_attributes)
        for r, e in zip(rows, extra):
            r.update(e)
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return EvalResult(metrics=parts, meta=meta, predictions=rows)


def is_captioner(spec: str) -> bool:
    from mmfm.models.layout import read_config
    try:
        return read_config(spec).model.kind == "captioner"
    except ConfigError:
        return False
