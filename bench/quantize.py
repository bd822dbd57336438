"""Benchmark: int8 dynamic quantization for CPU inference. Prints size, CPU latency per image and the metric
before and after int8, for a CLIP model and a captioner, with the ratios; for the CLIP image tower it adds
onnxruntime (fp32 export, and onnxruntime's own int8 dynamic quantization) as the reference runtime.

    .venv/bin/python bench/quantize.py [--clip CKPT] [--captioner CKPT] [--data SHARDS] [--samples 300]
                                       [--latency-images 32] [--threads 1]

* Models: the given checkpoints, else random-init ones built here (CLIP: configs/models/bench_vit_tiny.yaml;
  captioner: ViT 64 px 192x4 + GPT-2 192x4, as bench/serve.py). Random weights give chance-level metrics, so
  the drop is only meaningful with trained checkpoints (e.g. the demo's); the latency and size are real.
* Data: ``--data`` shards, else the Noto emoji shards built here from Debian's emoji-test.txt at 64 px
  (CLIP metric: zero-shot top-1 over the 9 emoji groups; captioner metric: CIDEr-D against the emoji names).
* Latency: batch 1, ``--threads`` torch/onnxruntime threads, after warm-up (CLIP: image embedding; captioner:
  a full greedy caption of 12 tokens). Same code as ``mmfm eval compare``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _emoji_shards(tmp: Path, samples: int) -> str:
    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options
    opts = resolve_options("noto_emoji", ["workers=0", "image.size=64", "holdout=0", f"shard_size={samples}"])
    build(opts, tmp / "emoji", progress=False)
    return str(tmp / "emoji")


def _models(tmp: Path, args) -> tuple[str, str]:
    import torch

    from mmfm.models import build_model, get_model_config, save_pretrained
    from serve import SMALL
    clip, cap = args.clip, args.captioner
    torch.manual_seed(0)
    if not clip:
        clip = str(tmp / "clip")
        save_pretrained(build_model("bench_vit_tiny"), None, clip)
    if not cap:
        cap = str(tmp / "captioner")
        save_pretrained(build_model(get_model_config(SMALL)), None, cap)
    return clip, cap


def _onnx_rows(clip: str, data: str, tmp: Path, samples: int, n_lat: int, threads: int, templates) -> list[dict]:
    """CLIP image tower in onnxruntime: fp32 export and onnxruntime's int8 dynamic quantization of it."""
    import numpy as np
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import mmfm
    from mmfm.eval.compare.variants import EvalData
    from mmfm.eval.zeroshot.classifier import build_classifier
    from mmfm.export import export
    from mmfm.export.onnx import OnnxCLIP
    from mmfm.data.transforms import eval_transform

    export(clip, "onnx", tmp / "onnx", exporter="torchscript")
    src = tmp / "onnx" / "image_encoder.onnx"
    q8 = tmp / "onnx_int8"
    q8.mkdir(exist_ok=True)
    for f in (tmp / "onnx").iterdir():
        if f.name != "image_encoder.onnx":
            (q8 / f.name).write_bytes(f.read_bytes())
    quantize_dynamic(str(src), str(q8 / "image_encoder.onnx"), weight_type=QuantType.QInt8)
    model = mmfm.load(clip)
    d = EvalData(data, "clip", samples, "cls")
    classes = sorted(set(d.labels))
    from mmfm.eval.zeroshot.templates import load_templates
    w = build_classifier(model, classes, load_templates([templates] if "{" in templates else templates)[1]).float().numpy()
    tf = eval_transform(model.preprocess)
    xs = torch.stack([tf(im) for im in d.images(len(d.items))]).numpy()
    rows = []
    for name, folder in (("onnxruntime fp32", tmp / "onnx"), ("onnxruntime int8", q8)):
        rt = OnnxCLIP(folder, threads=threads)
        feats = np.concatenate([rt.embed_images(xs[i:i + 64]) for i in range(0, len(xs), 64)])
        acc = float(np.mean([classes[j] == y for j, y in zip((feats @ w).argmax(1), d.labels)]))
        for x in xs[:2]:
            rt.embed_images(x[None])
        times = []
        for x in xs[:n_lat]:
            t0 = time.perf_counter()
            rt.embed_images(x[None])
            times.append(1000 * (time.perf_counter() - t0))
        rows.append({"model": name, "size_bytes": (folder / "image_encoder.onnx").stat().st_size,
                     "ms": statistics.mean(times), "metric": acc})
    return rows


def _print(title: str, result, extra: list[dict] | None = None) -> None:
    res = result.summary()
    print(f"\n== {title}: {res['metric']} on {res['rows'][0]['metric']['samples']} images, "
          f"{res['threads']} thread(s), batch 1 ==")
    print(f"{'':28s} {'size MB':>9s} {'ms/image':>9s} {'speedup':>8s} {res['metric']:>16s} {'drop':>8s}")
    base = res["rows"][0]
    for r, label in zip(res["rows"], ["torch fp32 (original)", "mmfm int8 (torch dynamic)"]):
        drop = "" if r is base else f"{r['metric_drop']:+.4f}"
        print(f"{label:28s} {r['size_bytes'] / 2**20:9.2f} {r['latency']['ms_per_image']:9.2f} "
              f"{r['speedup']:7.2f}x {r['metric']['value']:16.4f} {drop:>8s}")
    for r in extra or []:
        print(f"{r['model']:28s} {r['size_bytes'] / 2**20:9.2f} {r['ms']:9.2f} "
              f"{base['latency']['ms_per_image'] / r['ms']:7.2f}x {r['metric']:16.4f} "
              f"{base['metric']['value'] - r['metric']:+8.4f}   (image tower only)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip")
    p.add_argument("--captioner")
    p.add_argument("--data", help="shards with json captions and cls (default: emoji shards built here)")
    p.add_argument("--samples", type=int, default=300, help="images for the metric")
    p.add_argument("--latency-images", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--templates", default="an emoji of {}.")
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from mmfm.eval.compare.variants import compare_models
    from mmfm.config.caption import GenerateConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or _emoji_shards(tmp, 4000)
        clip, cap = _models(tmp, args)
        trained = bool(args.clip and args.captioner)
        print(f"models: CLIP {args.clip or 'random-init bench_vit_tiny'}, captioner "
              f"{args.captioner or 'random-init small captioner'}" + ("" if trained else
                                                                      " (random weights: metrics at chance level)"))
        print(f"data: {args.data or 'Noto emoji shards (64 px) built from emoji-test.txt'}; torch "
              f"{torch.__version__}, {os.cpu_count()} CPUs")
        res = compare_models(clip, data, ["int8"], max_samples=args.samples, latency_images=args.latency_images,
                             threads=args.threads, templates=args.templates, label_field="cls", progress=False)
        extra = None if args.no_onnx else _onnx_rows(clip, data, tmp, args.samples, args.latency_images,
                                                      args.threads, args.templates)
        _print("CLIP (zero-shot over the emoji groups)", res, extra)
        gen = GenerateConfig(max_new_tokens=12, min_new_tokens=12, batch_size=32)
        res = compare_models(cap, data, ["int8"], max_samples=min(args.samples, 200),
                             latency_images=min(args.latency_images, 16), threads=args.threads, gen=gen,
                             progress=False)
        _print("captioner (greedy, 12 tokens)", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
