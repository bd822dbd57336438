"""Compositionality suites: does the image prefer its true caption to a hard negative?

Read from the files their authors released:

* **SugarCrepe** (RAIVNLab/sugar-crepe ``data/*.json``): one JSON per category (``add_att``, ``add_obj``,
  ``replace_att``, ``replace_obj``, ``replace_rel``, ``swap_att``, ``swap_obj``), each
  ``{"0": {"filename": "000000085329.jpg", "caption": ..., "negative_caption": ...}, ...}``; images are COCO
  val2017 files under ``--images``. A test is right when the true caption scores strictly higher.
* **ARO** (mertyg/vision-language-models-are-bows):
  ``visual_genome_relation.json`` / ``visual_genome_attribution.json``: a list of
  ``{"image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption", "relation_name" |
  "attributes"}``, images under ``images/``; the image is cropped to the box. Right when the true caption scores
  strictly higher (the original takes the argmax of [false, true], so a tie counts as wrong).
  COCO / Flickr30k order: the Karpathy test JSON (``[{"image", "caption": [5 captions]}]``); each caption
  (lower-cased and cut to 30 words as the original's ``pre_caption``) competes with word-order permutations of
  itself. The original draws two of its four permutations with spaCy part-of-speech tags; without a tagger
  mmfm uses the two tag-free ones (shuffle within trigrams, shuffle the trigrams) plus shuffling all words,
  seeded, and says so in ``perturbations``. Right when the true caption is the argmax (a tie goes to it, as
  the original's argmax over [true, ...] does).

Scores: ``accuracy`` over all tests, per category for SugarCrepe, and for VG the macro accuracy over relations
(VG-Relation) / attribute pairs with at least 25 tests (VG-Attribution), the figure the ARO paper reports.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field

from mmfm.config import ConfigError

SUGARCREPE = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
ARO_FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
ORDER_FILES = {"coco_order": "coco_karpathy_test.json", "flickr30k_order": "flickr30k_test.json"}
SUITES = ("sugarcrepe", "vg_relation", "vg_attribution", "coco_order", "flickr30k_order")


@dataclass
class CaptionTest:
    image: str                      # path
    options: list[str]              # candidate captions
    answer: int                     # index of the true caption in ``options``
    tie_wins: bool                  # whether a tie with a negative counts as right
    box: tuple | None = None        # (x, y, w, h) crop
    group: str = ""                 # SugarCrepe category, VG relation / attribute pair


@dataclass
class Suite:
    name: str
    tests: list[CaptionTest]
    meta: dict = field(default_factory=dict)


def _load_json(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


def _field(item: dict, key: str, path: str, where) -> object:
    if key not in item:
        raise ConfigError(f"{path} entry {where}: no '{key}' field (has {', '.join(sorted(item))})")
    return item[key]


# ----------------------------------------------------------------------------- readers
def read_sugarcrepe(data: str, images: str, categories=SUGARCREPE) -> Suite:
    """``data``: the folder of SugarCrepe's category JSONs (those present are used); ``images``: COCO val2017."""
    tests = []
    found = [c for c in categories if os.path.isfile(os.path.join(data, f"{c}.json"))]
    if not found:
        raise ConfigError(f"{data}: none of SugarCrepe's files ({', '.join(c + '.json' for c in categories)})")
    for c in found:
        path = os.path.join(data, f"{c}.json")
        for k, item in _load_json(path).items():
            fname = _field(item, "filename", path, k)
            tests.append(CaptionTest(os.path.join(images, fname), [_field(item, "negative_caption", path, k),
                                                            _field(item, "caption", path, k)], 1, False, group=c))
    return Suite("sugarcrepe", tests, {"categories": found})


def read_vg(data: str, which: str, images: str | None = None) -> Suite:
    """ARO's VG-Relation / VG-Attribution: ``data`` holds its JSON; images under ``images`` (default data/images)."""
    path = os.path.join(data, ARO_FILES[which])
    images = images or os.path.join(data, "images")
    tests = []
    for n, item in enumerate(_load_json(path)):
        box = tuple(float(_field(item, k, path, n)) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        if which == "vg_relation":
            group = str(_field(item, "relation_name", path, n))
        else:
            a = _field(item, "attributes", path, n)
            group = f"{a[0]}_{a[1]}"
        opts = [_field(item, "false_caption", path, n), _field(item, "true_caption", path, n)]
        tests.append(CaptionTest(os.path.join(images, _field(item, "image_path", path, n)), opts, 1, False, box, group))
    return Suite(which, tests)


def pre_caption(caption: str, max_words: int = 30) -> str:
    """The ARO/BLIP caption normalisation: lower case, punctuation ``.!"()*#:;~`` to spaces, cut to max_words."""
    caption = re.sub(r"\s{2,}", " ", re.sub(r"([.!\"()*#:;~])", " ", caption.lower())).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def shuffle_within_trigrams(text: str, rng: random.Random) -> str:
    groups = _trigrams(re.findall(r"\w+|[^\w\s]", text))
    for g in groups:
        rng.shuffle(g)
    return " ".join(" ".join(g) for g in groups)


def shuffle_trigrams(text: str, rng: random.Random) -> str:
    groups = _trigrams(re.findall(r"\w+|[^\w\s]", text))
    rng.shuffle(groups)
    return " ".join(" ".join(g) for g in groups)


def shuffle_all_words(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    rng.shuffle(words)
    return " ".join(words)


PERTURBATIONS = {"shuffle_within_trigrams": shuffle_within_trigrams, "shuffle_trigrams": shuffle_trigrams,
                 "shuffle_all_words": shuffle_all_words}


def read_order(data: str, which: str, images: str | None = None, *, seed: int = 1, max_words: int = 30) -> Suite:
    """COCO / Flickr30k order from the Karpathy test JSON in ``data`` (images under ``images``, default ``data``).
    An entry may carry ``caption_options`` (the true caption first) to use fixed negatives instead."""
    path = os.path.join(data, ORDER_FILES[which])
    images = images or data
    rng = random.Random(seed)
    tests = []
    for n, ann in enumerate(_load_json(path)):
        img = os.path.join(images, _field(ann, "image", path, n))
        if "caption_options" in ann:
            tests.append(CaptionTest(img, [str(c) for c in ann["caption_options"]], 0, True))
            continue
        caps = _field(ann, "caption", path, n)
        for cap in [caps] if isinstance(caps, str) else caps:
            opts = [pre_caption(cap, max_words)] + [pre_caption(fn(cap, rng), max_words)
                                                    for fn in PERTURBATIONS.values()]
            tests.append(CaptionTest(img, opts, 0, True))
    return Suite(which, tests, {"perturbations": list(PERTURBATIONS), "seed": seed})


def read_suite(suite: str, data: str, images: str | None = None, **kw) -> Suite:
    if suite == "sugarcrepe":
        if images is None:
            raise ConfigError("sugarcrepe: give --images (the COCO val2017 folder its filenames refer to)")
        return read_sugarcrepe(data, images)
    if suite in ARO_FILES:
        return read_vg(data, suite, images)
    if suite in ORDER_FILES:
        return read_order(data, suite, images, **kw)
    raise ConfigError(f"compositionality suite {suite!r}: expected one of {', '.join(SUITES)}")


# ----------------------------------------------------------------------------- scoring
def is_right(scores, answer: int, tie_wins: bool) -> bool:
    """The true caption beats every negative (strictly, unless ``tie_wins``)."""
    true = float(scores[answer])
    others = [float(s) for i, s in enumerate(scores) if i != answer]
    return all(true >= o if tie_wins else true > o for o in others)


SCORE_KEYS = ("accuracy", "macro_accuracy", "per_category", "per_group")


def summarize(suite: Suite, right: list[bool]) -> dict:
    """accuracy overall, per group, and (VG) the macro accuracy over groups as the ARO paper reports it."""
    by: dict[str, list[bool]] = {}
    for t, r in zip(suite.tests, right):
        by.setdefault(t.group, []).append(r)
    out = {"suite": suite.name, "accuracy": sum(right) / len(right), "n_tests": len(right), **suite.meta}
    if suite.name == "sugarcrepe":
        out["per_category"] = {g: sum(v) / len(v) for g, v in by.items()}
    elif suite.name in ARO_FILES:
        min_n = 25 if suite.name == "vg_attribution" else 1
        kept = {g: sum(v) / len(v) for g, v in by.items() if len(v) >= min_n}
        out["macro_accuracy"] = sum(kept.values()) / len(kept) if kept else None
        out["macro_min_tests"] = min_n
        out["per_group"] = {g: {"accuracy": sum(v) / len(v), "n": len(v)} for g, v in sorted(by.items())}
    return out


def _image(test: CaptionTest, transform, max_pixels):
    from mmfm.data.decode import decode_image
    img = decode_image(test.image, max_pixels)
    if test.box is not None:
        x, y, w, h = test.box
        img = img.crop((x, y, x + w, y + h))
    return transform(img)


def evaluate_compositionality(model, suite: Suite, *, batch_size: int = 64, device=None, precision="auto",
                              max_samples: int | None = None, progress: bool = True):
    """Score every test of ``suite`` with a CLIP model: image-caption cosine similarity of each option. An
    ``EvalResult``: the accuracies in ``metrics``, the suite, test count and model in ``meta``."""
    import torch
    from tqdm.auto import tqdm

    from mmfm.data.decode import DEFAULT_MAX_PIXELS
    from mmfm.data.transforms import eval_transform

    from mmfm.models.device import model_device

    from ..embedding import autocast, effective_precision, encode_texts, load_clip
    from ..result import EvalResult
    model, ckpt = load_clip(model, device)
    tests = suite.tests[:max_samples] if max_samples else suite.tests
    if not tests:
        raise ConfigError(f"{suite.name}: no tests")
    missing = next((t.image for t in tests if not os.path.isfile(t.image)), None)
    if missing:
        raise ConfigError(f"{suite.name}: image {missing} is missing")
    transform, dev = eval_transform(model), model_device(model)
    was_training = model.training
    model.eval()
    right = []
    try:
        for s in tqdm(range(0, len(tests), batch_size), desc=suite.name, disable=not progress):
            part = tests[s:s + batch_size]
            with torch.inference_mode(), autocast(dev, precision):
                x = torch.stack([_image(t, transform, DEFAULT_MAX_PIXELS) for t in part]).to(dev)
                img = model.encode_image(x, normalize=True).float().cpu()
            texts = encode_texts(model, [o for t in part for o in t.options], precision=precision)
            at = 0
            for i, t in enumerate(part):
                right.append(is_right(texts[at:at + len(t.options)] @ img[i], t.answer, t.tie_wins))
                at += len(t.options)
    finally:
        model.train(was_training)
    out = summarize(Suite(suite.name, tests, suite.meta), right)
    scores = {k: out.pop(k) for k in SCORE_KEYS if k in out}
    out.update({"model": ckpt or type(model).__name__, "precision": effective_precision(dev, precision),
                "device": str(dev)})
    return EvalResult(metrics=scores, meta=out)
