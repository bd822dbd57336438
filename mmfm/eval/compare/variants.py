"""``mmfm eval compare --model ORIGINAL DATA --variant ...``: a compressed model against its original, side by
side: size, CPU latency per image and the metric, with the drop (the several-models mode, with paired bootstrap
intervals, is :mod:`mmfm.eval.compare.suite`; both read their data as :mod:`mmfm.eval.compare.data` and
``mmfm.eval.records`` say).

Variants: ``int8`` (dynamic int8 quantization of the original, done here), an int8 folder written by
``mmfm export --format int8``, or any other checkpoint of the same kind (e.g. a student from
``task.name: distill``). Metric: zero-shot top-1 for CLIP (an image folder with class subfolders, or shards
with ``--label-field``, default the manifest class), CIDEr-D (+ BLEU-4) for captioners (shards or a
JSONL/CSV with captions), on an even subsample of ``--max-samples`` items. Latency: batch 1 on the CPU with
``--threads`` torch threads, after warm-up, over the first ``--latency-images`` images (CLIP: image embedding;
captioner: a full caption with the decoding settings).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch

from mmfm.config import ConfigError
from mmfm.data.sampling import even_subsample

from ..embedding import model_kind
from ..records import is_shard_source, shard_records
from ..result import EvalResult, backend

__all__ = ["compare_models"]


def _load(spec, original=None):
    from mmfm.models.checkpoint import load as load_model

    from mmfm.models.quantized import quantize_model
    if spec == "int8":
        if original is None:
            raise ConfigError("variant int8: needs the original model")
        return quantize_model(original), "int8 (dynamic, quantized here)"
    return load_model(spec), str(spec)


def _size(model, spec) -> int:
    from mmfm.models.layout import is_quantized_dir
    from mmfm.models.quantized import model_size_bytes
    if isinstance(spec, str) and spec not in ("int8",) and Path(spec).exists():
        try:
            if is_quantized_dir(spec) or not getattr(model, "quantization", None):
                return model_size_bytes(spec)
        except ConfigError:
            pass
    return model_size_bytes(model)


# ----------------------------------------------------------------------------- data
class EvalData:
    """The evaluation images (decoded once) and what the metric needs."""

    def __init__(self, data: str, kind: str, max_samples: int | None, label_field: str):
        self.data, self.kind = str(data), kind
        self.folder = Path(data).is_dir() and not is_shard_source(data)
        if kind == "captioner":
            from ..captioning.data import read_caption_data
            self.items = even_subsample(read_caption_data(self.data), max_samples)
        elif self.folder:
            from ..zeroshot.folder import scan_folder
            self.spec = scan_folder(self.data, max_samples=max_samples)
            if not self.spec.labelled:
                raise ConfigError(f"{data}: a flat folder has no labels; give one subfolder per class")
            self.items = [{"image": str(Path(self.spec.root) / p)} for p in self.spec.paths]
        else:
            from ..bias.audit import sample_labels
            if not is_shard_source(self.data):
                raise ConfigError(f"{data}: expected an image folder with class subfolders, or shards")
            recs = even_subsample([r for r in shard_records(self.data) if r["image"] is not None], max_samples)
            if not recs:
                raise ConfigError(f"{data}: no samples with images")
            self.labels, self.label_field = sample_labels(recs, label_field, self.data)
            self.items = recs

    def images(self, n: int) -> list:
        """The first ``n`` evaluation images, decoded (for timing)."""
        from mmfm.data.decode import decode_image
        return [decode_image(it["image"]) for it in self.items[:n]]


# ----------------------------------------------------------------------------- measurements
def _latency(model, kind: str, images: list, gen, threads: int, warmup: int = 2) -> dict:
    from mmfm.data.transforms import eval_transform
    tf = eval_transform(model)
    xs = [tf(im).unsqueeze(0) for im in images]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        with torch.inference_mode():
            if kind == "captioner":
                from mmfm.generate import caption_tensors
                run = lambda x: caption_tensors(model, x, gen)  # noqa: E731
            else:
                run = lambda x: model.encode_image(x, normalize=True)  # noqa: E731
            for x in xs[:warmup]:
                run(x)
            for x in xs:
                t0 = time.perf_counter()
                run(x)
                times.append(1000 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    return {"ms_per_image": statistics.mean(times), "p50_ms": statistics.median(times),
            "p90_ms": sorted(times)[max(0, int(0.9 * len(times)) - 1)], "images": len(times), "threads": threads}


def _metric(model, kind: str, data: EvalData, gen, templates) -> dict:
    if kind == "captioner":
        from ..captioning.caption_metrics import score_captions
        from mmfm.generate import caption_images
        res = caption_images(model, [it["image"] for it in data.items], gen, names=[it["name"] for it in data.items],
                             alt_text=False)
        preds = {str(i): r["caption"] for i, r in enumerate(res) if not r["error"]}
        if not preds:
            raise ConfigError(f"{data.data}: no image could be decoded")
        m = score_captions(preds, {k: data.items[int(k)]["references"] for k in preds})
        return {"name": "CIDEr-D", "value": m["CIDEr-D"], "BLEU-4": m["BLEU-4"], "samples": len(preds)}
    if data.folder:
        from ..zeroshot.classify import zeroshot_classify
        res = zeroshot_classify(model, data.spec, templates=templates, workers=0, use_cache=False, progress=False)
        return {"name": "zero-shot top-1", "value": res.metrics["top1"], "samples": res.meta["n_samples"]}
    from ..bias.audit import zero_shot_samples
    preds = zero_shot_samples(model, data.items, data.labels, templates)
    acc = sum(p == y for p, y in zip(preds, data.labels)) / len(preds)
    return {"name": "zero-shot top-1", "value": acc, "samples": len(preds), "label_field": data.label_field}


def compare_models(original: str, data: str, variants: list[str] | None = None, *, max_samples: int | None = 500,
                   latency_images: int = 16, threads: int = 1, templates="simple", label_field: str = "auto",
                   gen=None, progress: bool = True) -> EvalResult:
    """Measure the original and each variant on the same data. ``metrics``: ``{"rows": [{"model", "role", "int8",
    "parameters", "size_bytes", "latency", "metric", "size_ratio", "speedup", "metric_drop"}]}``; ``meta``: kind,
    data, metric name, backend, threads, sample limit, decoding."""
    from mmfm.models.checkpoint import load as load_model

    variants = list(variants or ["int8"])
    base = load_model(original)
    kind = model_kind(base)
    if kind == "captioner" and gen is None:
        from mmfm.generate import stored_generate
        gen = stored_generate(original)
    data_ = EvalData(data, kind, max_samples, label_field)
    images = data_.images(latency_images)
    rows = []
    for i, spec in enumerate([original] + variants):
        model, name = (base, str(original)) if i == 0 else _load(spec, base)
        if model_kind(model) != kind:
            raise ConfigError(f"variant {spec} is a {model_kind(model)}, the original is a {kind}")
        if progress:
            print(f"measuring {name} ...", flush=True)
        rows.append({"model": name, "role": "original" if i == 0 else "variant",
                     "int8": bool(getattr(model, "quantization", None)),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "size_bytes": _size(model, spec), "latency": _latency(model, kind, images, gen, threads),
                     "metric": _metric(model, kind, data_, gen, templates)})
    ref = rows[0]
    for r in rows:
        r["size_ratio"] = r["size_bytes"] / ref["size_bytes"]
        r["speedup"] = ref["latency"]["ms_per_image"] / r["latency"]["ms_per_image"]
        r["metric_drop"] = ref["metric"]["value"] - r["metric"]["value"]
    meta = {"task": "compare", "kind": kind, "data": str(data), "metric": ref["metric"]["name"],
            "backend": f"{backend()}, CPU", "threads": threads, "max_samples": max_samples,
            "decoding": None if gen is None else dataclasses.asdict(gen)}
    return EvalResult(metrics={"rows": rows}, meta=meta)
