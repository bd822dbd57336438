"""Transfer: zero-shot on images the demo never trains on, and the from-scratch CLIP it is compared with.

Three evaluation sets, each classified over all 9 CLDR groups (``scan_folder(classes=...)``: a set that holds
no image of some group is still scored against every group):

* ``noto``    -- the held-out Noto emoji (new emoji, the training artist);
* ``twemoji`` -- another artist's emoji (``data_recipes/twemoji``: npm ``emoji-datasource-twitter``, fetched by
  ``make twemoji``; ``--quick`` reads the recipe's fixture), every emoji, never trained on;
* ``photos``  -- real photographs (``data_recipes/skimage_photos``: scikit-image's bundled data, hand-named).

Every set reports top-1, mean per-class recall, macro-F1 and the majority-class baseline (always answering the
set's most frequent group).
"""
from __future__ import annotations

from pathlib import Path

from mmfm.config.resources import resource_dir

from . import data as D

SETS = {"noto": "held-out Noto emoji", "twemoji": "Twemoji (another artist, never trained on)",
        "photos": "real photos (scikit-image)"}
TWEMOJI_FIXTURE = ("fixture/emoji-test.txt", "fixture/emoji-datasource-twitter")


def _group_folder(samples: list[dict], root: Path) -> Path:
    images = root / "images"
    D.export_images(samples, images, by_group=True)
    return images


def build_twemoji(ctx) -> Path:
    """``mmfm shards build --recipe twemoji`` (the fixture with ``--quick``), exported as group folders."""
    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options

    out = ctx.out / "twemoji"
    data: dict = {"image": {"size": ctx.settings.shards.image_size}, "workers": ctx.settings.shards.workers}
    if ctx.quick:
        recipe = resource_dir("data_recipes", "twemoji")
        data["source"] = {"path": str(recipe / TWEMOJI_FIXTURE[0]), "image_root": str(recipe / TWEMOJI_FIXTURE[1])}
    opts = resolve_options("twemoji", None, data)
    if not (out / "shards" / "manifest.json").is_file():
        resume = (out / "shards").is_dir()
        build(opts, out / "shards", resume=resume, overwrite=False, progress=ctx.progress)
    return _group_folder(D.load_split(out / "shards"), out)


def build_photos(ctx) -> Path:
    from .photos import write_photo_folder

    images, _ = write_photo_folder(ctx.out / "photos", ctx.results["shards"]["classes"])
    return images


def eval_folders(ctx) -> dict[str, Path]:
    """The three evaluation sets as group-folder trees (built once; reused by every model)."""
    return {"noto": ctx.shards / "heldout_by_group" / "images", "twemoji": build_twemoji(ctx),
            "photos": build_photos(ctx)}


def score_set(model, images: Path, classes: list[str], templates: list[str], *, progress: bool) -> dict:
    """Zero-shot over all ``classes`` (CLDR groups) on the group-folder tree ``images``."""
    from mmfm.eval.zeroshot.classify import zeroshot_classify
    from mmfm.eval.zeroshot.folder import scan_folder

    spec = scan_folder(images, classes=[D.slug(c) for c in classes])
    spec.classnames = list(classes)
    res = zeroshot_classify(model, spec, templates=list(templates), batch_size=128, workers=0, use_cache=False,
                            progress=progress)
    return {**set_summary(res.metrics, res.confusion.sum(axis=1), classes),
            "predictions": {p["path"]: classes[spec.classes.index(p["pred"])] for p in res.predictions}}


def set_summary(metrics: dict, support, classes: list[str]) -> dict:
    """A set's zero-shot figures with its majority-class baseline; ``support``: images per class (C,)."""
    import numpy as np

    majority = int(np.argmax(support))
    return {"top1": metrics["top1"], "mean_per_class_recall": metrics["mean_per_class_recall"],
            "macro_f1": metrics["macro_f1"], "images": int(support.sum()),
            "groups_present": int((support > 0).sum()), "majority_class": classes[majority],
            "majority_top1": float(support[majority] / support.sum())}


def score_sets(ctx, run: Path) -> dict:
    from mmfm.models.checkpoint import load

    model = load(str(run), expect="clip")
    classes = ctx.results["shards"]["classes"]
    templates = ctx.settings.zeroshot.templates
    out = {name: score_set(model, folder, classes, templates, progress=ctx.progress)
           for name, folder in eval_folders(ctx).items()}
    for name in ("noto", "twemoji"):       # thousands of images: the per-image list stays out of the summary
        out[name].pop("predictions")
    return out
