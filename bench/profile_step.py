#!/usr/bin/env python
"""Where a step's CPU time goes: torch.profiler over a few steps, top ops by self CPU time.

    python bench/profile_step.py train            # bench/train.py's model: Trainer.train_step, batch 100
    python bench/profile_step.py image --model openclip:ViT-B-32 --batch 16   # zero-shot's image forward

The batch is synthetic (random 64 px images, random token ids with realistic padding), so no shards are needed;
the op mix is the same as on real data. ``--set key=value`` overrides train config fields (e.g. compile=true).
Figures on a shared machine are noisy; compare the op *shares*, not absolute times.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time


def synthetic_batch(task, batch: int, image_size: int, seed: int = 0) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    ctx = getattr(task.model.text, "context_length", 32)
    lengths = torch.randint(8, min(ctx, 20), (batch,), generator=g)
    ids = torch.randint(1, 49406, (batch, ctx), generator=g)
    pos = torch.arange(ctx)[None]
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    ids[torch.arange(batch), lengths - 1] = 49407            # eos: argmax pooling
    return {"key": [f"s{i}" for i in range(batch)], "image": torch.randn(batch, 3, image_size, image_size, generator=g),
            "text_ids": ids, "attention_mask": mask}


def build(model: str, overrides: dict):
    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.tasks import build_task
    cfg = from_dict(ExperimentConfig, {"model": {"name": model}, "train": {
        "output_dir": tempfile.mkdtemp(prefix="mmfm-prof-"), "max_steps": 1000, "lr": 5e-4, "weight_decay": 0.2,
        "grad_clip": 1.0, "progress": False, "tensorboard": False, "precision": "fp32", **overrides}})
    return cfg, build_task(cfg)


def profile(fn, steps: int, warmup: int, rows: int) -> float:
    from torch.profiler import ProfilerActivity, profile as prof
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    per_step = (time.perf_counter() - t0) / steps
    with prof(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            fn()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44))
    return per_step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "image"])
    ap.add_argument("--model", default="bench_vit_tiny")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="train.KEY=VALUE (yaml value)")
    args = ap.parse_args()
    import torch
    import yaml
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.model.startswith("openclip:"):      # what bench/zeroshot.py runs: open_clip's own model
        import open_clip
        model = open_clip.create_model(args.model.split(":", 1)[1]).eval()
        image = torch.randn(args.batch, 3, *model.visual.image_size)

        def fn():
            with torch.inference_mode():
                model.encode_image(image)
        return report(args, profile(fn, args.steps, args.warmup, args.rows))
    cfg, task = build(args.model, overrides)
    size = int(task.model.preprocess["input_size"][-1])
    batch = synthetic_batch(task, args.batch, size)
    if args.what == "train":
        sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
        from train import RepeatBatch  # the stand-in loader of bench/train.py
        from mmfm.train.trainer import Trainer
        trainer = Trainer(cfg, task, RepeatBatch(batch, 1))

        def fn():
            trainer.train_step([batch])
            trainer._bad.item()
    else:
        task.eval()
        image = batch["image"]

        def fn():
            with torch.inference_mode():
                task.model.encode_image(image)
    report(args, profile(fn, args.steps, args.warmup, args.rows))
    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)
    return 0


def report(args, per_step: float) -> int:
    import os

    import torch
    print(f"{args.what} {args.model} batch {args.batch}: {per_step * 1e3:.0f} ms/step = {args.batch / per_step:.1f} "
          f"samples/s ({torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
