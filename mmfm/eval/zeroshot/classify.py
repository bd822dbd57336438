"""Zero-shot classification of an image folder with a CLIP model.

>>> res = zeroshot_classify("runs/clip/checkpoints/latest", "photos/", templates="openai")
>>> res.metrics["top1"], res.predictions[0]["topk"]

The text classifier (``mmfm.eval.zeroshot.classifier``) follows open_clip's ``build_zero_shot_classifier`` and is
cached on disk. Images stream through a DataLoader in batches; files that fail to decode are skipped and reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mmfm.config import ConfigError
from mmfm.data.transforms import eval_transform
from mmfm.data.workers import lower_priority, resolve_priority
from mmfm.models.device import model_device

from ..embedding import (autocast, default_workers, effective_precision, load_clip, logit_scale, long_caption_note,
                         split_transform)
from ..result import EvalResult
from .classifier import build_classifier, checkpoint_identity
from .folder import DEFAULT_MAX_PIXELS, FolderDataset, FolderSpec, collate_skipping, scan_folder
from .metrics import classification_counts, classification_metrics, confusion_matrix, per_class_table
from .templates import build_prompts, load_templates


@dataclass(kw_only=True)
class ZeroShotResult(EvalResult):
    """``metrics``: top1, top5, mean_per_class_recall, macro_f1 (labelled folders); ``meta``: how they were made;
    ``predictions``: one row per evaluated image (path, label, pred, score, topk)."""
    classes: list[str]
    classnames: list[str]
    targets: np.ndarray                 # (N,) class index, -1 when unlabelled
    preds: np.ndarray                   # (N,) predicted class index
    per_class: list[dict] = field(default_factory=list)
    confusion: np.ndarray | None = None  # (C, C) rows = true class, cols = predicted
    skipped: list[dict] = field(default_factory=list)
    root: str = ""


# ----------------------------------------------------------------------------- images
def folder_loader(model, spec: FolderSpec, *, batch_size: int = 64, workers: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False, world: int = 1):
    """``(DataLoader, finish)`` over ``spec``; ``finish`` (or None) completes preprocessing on the device.
    ``world``: how many ranks share the machine's work (the workers' priority, mmfm.data.workers)."""
    from torch.utils.data import DataLoader
    device = model_device(model)
    workers = default_workers(device) if workers is None else workers
    transform, finish = split_transform(eval_transform(model), device)
    draft = None
    if fast_decode:
        from mmfm.data.transforms import decode_size
        draft = decode_size(model.preprocess, train=False)
    loader = DataLoader(FolderDataset(spec, transform, max_pixels, draft), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_skipping, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None,     # on the CPU: decode while the model waits
                        worker_init_fn=lower_priority(resolve_priority("auto", device.type, world)))
    return loader, finish


def encode_batches(model, batches, finish=None, *, precision: str = "auto", progress: bool = True,
                   total: int | None = None, root: str = "", require: bool = True):
    """Image embeddings from ``collate_skipping`` batches: ``(features (N, D), indices, failed)``; with
    ``require=False`` none decoded gives ``(None, [], failed)`` instead of an error."""
    import torch
    from tqdm.auto import tqdm
    device = model_device(model)
    feats, indices, failed = [], [], []
    with torch.inference_mode(), autocast(device, precision):
        for batch in tqdm(batches, desc="zero-shot", unit="batch", total=total, disable=not progress):
            failed += batch["failed"]
            if batch["image"] is None:
                continue
            img = batch["image"].to(device, non_blocking=True)
            if finish is not None:
                img = finish(img)
            feats.append(model.encode_image(img, normalize=True).float().cpu())
            indices += batch["index"]
    if not feats:
        if not require:
            return None, [], failed
        raise ConfigError(f"no image in {root} could be decoded ({len(failed)} failed)")
    return torch.cat(feats), indices, failed


# ----------------------------------------------------------------------------- counts over ranks
def share_counts(model, spec: FolderSpec, weights, *, share=(0, 1), batch_size: int = 64, workers: int = 0,
                 precision: str = "auto") -> dict:
    """``classification_counts`` over the images ``share=(rank, world)`` owns (``rank, rank + world, ...`` of
    ``spec``), with the classifier ``weights`` (D, C); plus ``n_failed`` (images that did not decode)."""
    from dataclasses import replace
    rank, world = share
    part = replace(spec, paths=spec.paths[rank::world], targets=spec.targets[rank::world], skipped=[])
    counts = {"confusion": np.zeros((len(spec.classes),) * 2, dtype=np.int64), "top5_hits": 0, "n_failed": 0}
    if not part.paths:
        return counts
    loader, finish = folder_loader(model, part, batch_size=batch_size, workers=workers, world=world)
    feats, indices, failed = encode_batches(model, loader, finish, precision=precision, progress=False,
                                            total=len(loader), root=spec.root, require=False)
    counts["n_failed"] = len(failed)
    if indices:
        targets = np.asarray([part.targets[i] for i in indices], dtype=np.int64)
        counts.update(classification_counts(feats @ weights.float(), targets, len(spec.classes)))
    return counts


# ----------------------------------------------------------------------------- main entry
def zeroshot_classify(model, folder: str | FolderSpec, *, classnames_file: str | None = None,
                      labels: str | list[str] | None = None, templates: str | list[str] = "openai",
                      batch_size: int = 64, workers: int | None = None, device: str | None = None,
                      precision: str = "auto", topk: int = 5, cache: str | None = None, use_cache: bool = True,
                      max_pixels: int = DEFAULT_MAX_PIXELS, max_samples: int | None = None,
                      fast_decode: bool = False, progress: bool = True) -> ZeroShotResult:
    """Classify every image of ``folder`` (see ``mmfm.eval.zeroshot.folder``) with a CLIP ``model``
    (an nn.Module from ``mmfm.load`` or a checkpoint spec string)."""
    import torch
    t0 = time.perf_counter()
    spec = folder if isinstance(folder, FolderSpec) else scan_folder(
        folder, labels=labels, classnames_file=classnames_file, max_samples=max_samples)
    model, ckpt = load_clip(model, device)
    was_training = model.training
    model.eval()
    tmpl_name, tmpl = load_templates(templates)
    try:
        model_id = checkpoint_identity(ckpt) if use_cache else None
        loader, finish = folder_loader(model, spec, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                                       fast_decode=fast_decode)
        batches = iter(loader)        # loader workers start decoding while the text classifier is built
        weights = build_classifier(model, spec.classnames, tmpl, precision=precision, cache=cache,
                                   model_id=model_id, progress=progress)
        t_text = time.perf_counter()
        feats, indices, failed = encode_batches(model, batches, finish, precision=precision, progress=progress,
                                                total=len(loader), root=spec.root)
    finally:
        model.train(was_training)
    t_img = time.perf_counter() - t_text
    logits = feats @ weights.float()
    probs = torch.softmax(logit_scale(model) * logits, dim=1)
    targets = np.asarray([spec.targets[i] for i in indices], dtype=np.int64)
    meta = _provenance(model, ckpt, spec, tmpl_name, tmpl, precision, len(indices), len(failed))
    meta["decode"] = "jpeg-draft" if fast_decode else "full"
    meta.update(long_caption_note(model, build_prompts(spec.classnames, tmpl)))
    meta["timing"] = {"total_s": round(time.perf_counter() - t0, 3), "images_s": round(t_img, 3),
                      "images_per_s": round(len(indices) / max(t_img, 1e-9), 2)}
    return _assemble(spec, logits, probs, indices, failed, targets, topk, meta)


def _assemble(spec, logits, probs, indices, failed, targets, topk, meta: dict) -> ZeroShotResult:
    n_classes = len(spec.classes)
    k = min(topk, n_classes)
    top_p, top_i = probs.topk(k, dim=1)
    preds = np.asarray(logits.argmax(dim=1))
    rows = []
    for j, idx in enumerate(indices):
        row = {"path": spec.paths[idx], "pred": spec.classes[int(preds[j])], "score": round(float(top_p[j, 0]), 6),
               "topk": [[spec.classes[int(c)], round(float(p), 6)] for c, p in zip(top_i[j], top_p[j])]}
        if spec.labelled:
            row["label"] = spec.classes[int(targets[j])]
            row["correct"] = bool(preds[j] == targets[j])
        rows.append(row)
    skipped = list(spec.skipped) + [{"path": spec.paths[i], "reason": r} for i, r in failed]
    metrics: dict = {}
    cm, table = None, []
    if spec.labelled:
        metrics.update(classification_metrics(logits, targets, n_classes))
        cm = confusion_matrix(targets, preds, n_classes)
        table = per_class_table(cm, spec.classes, spec.classnames)
    return ZeroShotResult(metrics=metrics, meta=meta, predictions=rows, classes=spec.classes,
                          classnames=spec.classnames, targets=targets, preds=preds, per_class=table, confusion=cm,
                          skipped=skipped, root=spec.root)


def _provenance(model, ckpt, spec, tmpl_name, tmpl, precision, n_ok, n_failed) -> dict:
    import torch

    from mmfm.version import __version__
    device = model_device(model)
    return {"task": "zeroshot_classification", "backend": f"mmfm {__version__} (torch {torch.__version__})",
            "model": ckpt or type(model).__name__, "device": str(device),
            "precision": effective_precision(device, precision),
            **spec.describe(), "n_samples": n_ok, "n_failed_decode": n_failed,
            "n_skipped": len(spec.skipped) + n_failed, "labelled": spec.labelled,
            "templates": tmpl_name, "n_templates": len(tmpl), "classnames": list(spec.classnames)}
