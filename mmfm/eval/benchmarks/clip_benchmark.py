"""Evaluate a CLIP model on CLIP_benchmark's datasets with mmfm's zero-shot and retrieval code, and write
CLIP_benchmark's result layout.

>>> bench = open_benchmark("benchmarks/wds_cifar10")
>>> res = evaluate_benchmark("openclip:ViT-B-32:weights.pt", bench)
>>> res.metrics["acc1"], res.metrics["mean_per_class_recall"]

The numbers are CLIP_benchmark's: zero-shot top-1/top-5 and mean per-class recall (its
``balanced_accuracy_score``, over the classes that have images), and retrieval recall@k counted as in CLIP papers
(``image_retrieval_recall@k``: a caption finds its image among the top k; ``text_retrieval_recall@k``: an image
finds any of its captions). Every result carries both CLIP_benchmark's keys and mmfm's (``top1``,
``text_to_image_R@k`` ...), the data it was made on, and how.

``run_suite`` evaluates a list of datasets (a CLIP_benchmark ``--dataset`` file: one per line) and
``write_csv`` writes one CSV with CLIP_benchmark's columns (those of ``clip_benchmark build``).
"""
from __future__ import annotations

import csv
import io
import time

import numpy as np

from mmfm.config import ConfigError, atomic_write
from mmfm.data.decode import DEFAULT_MAX_PIXELS, decode_image
from mmfm.data.transforms import eval_transform

from mmfm.models.device import model_device

from ..embedding import (autocast, default_workers, effective_precision, encode_texts, load_clip, long_caption_note,
                         split_transform)
from ..result import EvalResult, backend
from ..retrieval import ShardPairs, collate_list, recall_at_k
from ..zeroshot.classifier import build_classifier
from ..zeroshot.metrics import classification_metrics
from ..zeroshot.templates import load_templates
from .sources import CLASSIFICATION, IMAGE_KEYS, RETRIEVAL, Benchmark, open_benchmark

CSV_HEAD = ["dataset", "model", "pretrained", "task", "language", "model_fullname"]
CLASSIFICATION_KEYS = ["acc1", "acc5", "mean_per_class_recall"]


# ----------------------------------------------------------------------------- samples (picklable)
class BenchmarkSample:
    """webdataset map stage: a raw sample -> ``{"name", "image" or None, "target" | "captions"[, "reason"]}``."""

    def __init__(self, transform, task: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.transform, self.task, self.max_pixels = transform, task, max_pixels

    def __call__(self, s: dict) -> dict:
        out = {"name": f"{s.get('__url__', '?')}:{s.get('__key__')}", "image": None}
        key = next((k for k in IMAGE_KEYS if k in s), None)
        label = "txt" if self.task == RETRIEVAL else "cls"
        if key is None or label not in s:
            out["reason"] = f"no {'image (' + '/'.join(IMAGE_KEYS) + ')' if key is None else label} field"
            return out
        text = s[label].decode("utf-8")
        try:
            if self.task == RETRIEVAL:
                out["captions"] = text.splitlines()          # CLIP_benchmark: str.splitlines, one caption a line
            else:
                out["target"] = int(text.strip())
            out["image"] = self.transform(decode_image(s[key], self.max_pixels))
        except Exception as e:  # noqa: BLE001 - reported and skipped
            out["image"], out["reason"] = None, f"{type(e).__name__}: {e}"
        return out


class TorchvisionItems:
    """Map-style view of a torchvision dataset as ``BenchmarkSample`` dicts."""

    def __init__(self, dataset, transform, max_pixels: int = DEFAULT_MAX_PIXELS, limit: int | None = None):
        self.dataset, self.transform, self.max_pixels = dataset, transform, max_pixels
        self.n = len(dataset) if limit is None else min(limit, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        out = {"pos": i, "name": f"{type(self.dataset).__name__}[{i}]", "image": None}
        try:
            img, target = self.dataset[i]
            out["target"] = int(target)
            out["image"] = self.transform(decode_image(img, self.max_pixels))
        except Exception as e:  # noqa: BLE001
            out["reason"] = f"{type(e).__name__}: {e}"
        return out


def _loader(bench: Benchmark, transform, *, batch_size, workers, max_pixels, max_samples):
    from torch.utils.data import DataLoader
    kw = dict(batch_size=batch_size, num_workers=workers, collate_fn=collate_list)
    if workers:
        kw["prefetch_factor"] = 4
    if bench.dataset is not None:
        return DataLoader(TorchvisionItems(bench.dataset, transform, max_pixels, max_samples), shuffle=False, **kw)
    return DataLoader(ShardPairs(bench.shards, BenchmarkSample(transform, bench.task, max_pixels), limit=max_samples),
                      **kw)


def embed_benchmark(model, bench: Benchmark, *, batch_size=64, workers=None, precision="auto",
                    max_pixels=DEFAULT_MAX_PIXELS, max_samples=None, progress=True) -> dict:
    """Image embeddings (I, D) in reading order, with ``targets`` (classification) or ``captions`` (a list per
    image, retrieval), and the samples ``skipped`` (with their reason)."""
    import torch
    from tqdm.auto import tqdm
    device = model_device(model)
    workers = default_workers(device) if workers is None else workers
    transform, finish = split_transform(eval_transform(model), device)
    feats, items, skipped = [], [], []
    loader = _loader(bench, transform, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                     max_samples=max_samples)
    with torch.inference_mode(), autocast(device, precision):
        for batch in tqdm(loader, desc=bench.name, unit="batch", disable=not progress):
            ok = sorted((b for b in batch if b["image"] is not None), key=lambda b: b["pos"])
            skipped += [{"path": b["name"], "reason": b["reason"]} for b in batch if b["image"] is None]
            if not ok:
                continue
            img = torch.stack([b["image"] for b in ok]).to(device, non_blocking=True)
            if finish is not None:
                img = finish(img)
            feats.append(model.encode_image(img, normalize=True).float().cpu())
            items += [{k: v for k, v in b.items() if k != "image"} for b in ok]
    if not feats:
        raise ConfigError(f"no image of {bench.source} could be decoded ({len(skipped)} skipped"
                          f"{': ' + skipped[0]['reason'] if skipped else ''})")
    image = torch.cat(feats)
    order = np.argsort([it["pos"] for it in items], kind="stable")      # several workers: back to reading order
    image, items = image[torch.as_tensor(order)], [items[i] for i in order]
    return {"image": image, "items": items, "skipped": skipped}


# ----------------------------------------------------------------------------- metrics
def classify(model, bench: Benchmark, emb: dict, *, classnames=None, templates=None, precision="auto") -> dict:
    """Zero-shot metrics with CLIP_benchmark's keys and mmfm's. ``classnames``/``templates`` override the
    benchmark's own (a list, or for templates a name/file ``load_templates`` knows)."""
    names = list(classnames) if classnames is not None else bench.classnames
    tmpl_name, tmpl = _templates(bench, templates)
    if not names:
        raise ConfigError(f"{bench.source}: no class names (classnames.txt) to classify with")
    weights = build_classifier(model, names, tmpl, precision=precision)
    targets = np.asarray([it["target"] for it in emb["items"]], dtype=np.int64)
    bad = targets[(targets < 0) | (targets >= len(names))]
    if len(bad):
        raise ConfigError(f"{bench.source}: label {int(bad[0])} is outside the {len(names)} class names")
    m = classification_metrics(emb["image"] @ weights.float(), targets, len(names))
    out = {"acc1": m["top1"], "acc5": m["top5"] if m["top5"] is not None else float("nan"),
           "mean_per_class_recall": m["mean_per_class_recall"], **m}
    out.update({"templates": tmpl_name, "n_templates": len(tmpl), "n_classes": len(names)})
    return out


def _templates(bench: Benchmark, templates) -> tuple[str, list[str]]:
    if templates is not None:
        return load_templates(templates)
    if bench.templates:
        return "zeroshot_classification_templates.txt", list(bench.templates)
    if bench.dataset is not None:
        return load_templates("openai")
    raise ConfigError(f"{bench.source}: zeroshot_classification_templates.txt is missing; give --templates")


def retrieve(model, emb: dict, *, ks=(1, 5, 10), precision="auto") -> dict:
    """Recall@k both ways, with CLIP_benchmark's keys (``image_retrieval_recall@k`` = text->image) and mmfm's."""
    import torch
    captions, owner = [], []
    for i, it in enumerate(emb["items"]):
        captions += it["captions"]
        owner += [i] * len(it["captions"])
    if not captions:
        raise ConfigError("retrieval benchmark: no caption in any sample (txt field)")
    text = encode_texts(model, captions, precision=precision)
    m = recall_at_k(emb["image"], text, torch.tensor(owner, dtype=torch.long), ks)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = m[f"text_to_image_R@{k}"]
        out[f"text_retrieval_recall@{k}"] = m[f"image_to_text_R@{k}"]
    out.update(m)
    out["n_captions"] = len(captions)
    out.update(long_caption_note(model, captions))
    return out


def evaluate_benchmark(model, bench: Benchmark | str, *, classnames=None, templates=None, ks=(1, 5, 10),
                       batch_size=64, workers=None, device=None, precision="auto", max_samples=None,
                       max_pixels=DEFAULT_MAX_PIXELS, dataset_root=None, progress=True) -> EvalResult:
    """One benchmark (a ``Benchmark`` or a spec ``open_benchmark`` reads): its scores (``metrics``) and their
    provenance (``meta``); ``summary()`` is the record ``--metrics``/``--out`` write."""
    t0 = time.perf_counter()
    if not isinstance(bench, Benchmark):
        bench = open_benchmark(bench, dataset_root=dataset_root)
    model, ckpt = load_clip(model, device)
    was_training = model.training
    model.eval()
    try:
        emb = embed_benchmark(model, bench, batch_size=batch_size, workers=workers, precision=precision,
                              max_pixels=max_pixels, max_samples=max_samples, progress=progress)
        if bench.task == CLASSIFICATION:
            m = classify(model, bench, emb, classnames=classnames, templates=templates, precision=precision)
        else:
            m = retrieve(model, emb, ks=ks, precision=precision)
    finally:
        model.train(was_training)
    dev = model_device(model)
    meta = {**bench.describe(), "backend": backend(), "model": ckpt or type(model).__name__, "device": str(dev),
            "precision": effective_precision(dev, precision), "n_samples": int(emb["image"].shape[0]),
            "n_skipped": len(emb["skipped"]), "skipped": emb["skipped"][:100],
            "seconds": round(time.perf_counter() - t0, 3)}
    meta.update({k: m.pop(k) for k in ("long_captions", "texts_cut") if k in m})     # retrieval captions
    return EvalResult(metrics={k: v for k, v in m.items() if k not in meta}, meta=meta)


# ----------------------------------------------------------------------------- suites and CSV
def read_suite(path: str) -> list[str]:
    """A CLIP_benchmark dataset list: one dataset a line (``wds/NAME``, ``torchvision:NAME:ROOT``, a folder or a
    URL); blank lines and ``#`` comments are skipped."""
    from mmfm.data import fs
    text = fs.read_text(path, "benchmark suite") if fs.is_remote(path) else _local_text(path)
    out = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not out:
        raise ConfigError(f"benchmark suite {path} lists no dataset")
    return out


def _local_text(path: str) -> str:
    import os
    if not os.path.isfile(path):
        raise ConfigError(f"benchmark suite file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def model_columns(spec) -> tuple[str, str]:
    """CLIP_benchmark's (model, pretrained) for an mmfm model spec: ``openclip:NAME:FILE`` -> (NAME, FILE)."""
    s = str(spec)
    if s.startswith("openclip:"):
        rest = s.split(":", 1)[1]
        name, _, pre = rest.partition(":") if "@" not in rest.split(":")[0] else rest.partition("@")
        return name, pre
    return s, ""


def result_row(model_spec, metrics: dict, language: str = "en") -> dict:
    """One CSV row as ``clip_benchmark build`` writes it: the run's fields, its metrics, ``model_fullname``."""
    name, pre = model_columns(model_spec)
    row = {"dataset": metrics["dataset"], "model": name, "pretrained": pre, "task": metrics["task"],
           "language": language, "model_fullname": f"{name} {pre}"}
    if metrics["task"] == CLASSIFICATION:
        row.update({k: metrics[k] for k in CLASSIFICATION_KEYS})
    else:
        row.update({k: v for k, v in metrics.items() if k.startswith(("image_retrieval_recall@",
                                                                     "text_retrieval_recall@"))})
    return row


def run_suite(model, specs: list[str], *, dataset_root=None, device=None, progress=True, on_result=None,
              **kw) -> EvalResult:
    """Every dataset of ``specs`` with one loaded model; all are opened (and checked) before the model loads.
    ``metrics``: each dataset's scores by its name; ``predictions``: each dataset's full record, in order (what
    ``--out`` writes); ``meta["rows"]``: the CSV rows (``result_row``)."""
    benches = [open_benchmark(s, dataset_root=dataset_root) for s in specs]
    loaded, _ = load_clip(model, device)
    records, scores = [], {}
    for bench in benches:
        res = evaluate_benchmark(loaded, bench, progress=progress, **kw)
        res.meta["model"] = str(model) if isinstance(model, str) else res.meta["model"]
        records.append(res.summary())
        scores[res.meta["dataset"]] = res.metrics
        if on_result is not None:
            on_result(records[-1])
    return EvalResult(metrics=scores,
                      meta={"task": "benchmark_suite", "model": str(model), "datasets": [r["dataset"] for r in records],
                            "rows": [result_row(model, r) for r in records]},
                      predictions=records)


def write_csv(rows: list[dict], path) -> None:
    """CLIP_benchmark's columns: the run's fields first, then every metric any row has (empty where absent)."""
    metric_cols: list[str] = []
    for r in rows:
        metric_cols += [k for k in r if k not in CSV_HEAD and k not in metric_cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_HEAD + metric_cols, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
