#!/usr/bin/env python
"""Training throughput: mmfm vs open_clip_train on the same shards, the same model, in one run.

    python bench/train.py                 # CPU: the tiny CLIP below, fp32, batch 100
    python bench/train.py --cuda          # GPU: ViT-B/32 in bf16 (mmfm only), samples/s and MFU

The model (both sides): ViT image 64, patch 8, width 192, 4 layers; text width 128, 4 layers, context 32;
embed 128 (configs/models/bench_vit_tiny.yaml; an equivalent open_clip model JSON is written for
open_clip_train). Data: the noto_emoji recipe at 64 px (built once into .bench/data), the same tars for both.
Both sides log every step; steady-state samples/s is measured over the steps after --warmup.
mmfm's achieved FLOP/s (torch.utils.flop_counter on one training step) is shown as a fraction of this
machine's measured fp32 matmul peak.

open_clip_train runs in its own venv (bench/anchor_venv.sh -> .bench/anchors, webdataset 0.2.86).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
ANCHOR_PY = BENCH / "anchors" / "bin" / "python"
OPENCLIP_TINY = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}
OPENCLIP_MAIN = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                 "from open_clip_train.main import main; main(sys.argv[1:])")


THREADS: int | None = None


def env(threads: int | None = None) -> dict:
    threads = threads or THREADS
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        e["OMP_NUM_THREADS"] = str(threads)
    return e


# ------------------------------------------------------------------------------------------- data
def emoji_shards(size: int = 64) -> Path:
    out = BENCH / "data" / f"emoji{size}"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        print(f"building noto_emoji shards ({size} px) into {out} ...", flush=True)
        subprocess.run([sys.executable, "-m", "mmfm", "shards", "build", "--recipe", "noto_emoji", "--out", str(out),
                        "--size", str(size), "--shard-size", "500", "--set", "holdout=0"],
                       check=True, env=env(), cwd=ROOT)
    return out


def synthetic_shards(size: int, n: int, name: str) -> Path:
    """Random-texture JPEGs + captions (for machines without the emoji font, e.g. GPU boxes)."""
    out = BENCH / "data" / name
    if (out / "manifest.json").is_file():
        return out
    import numpy as np
    from PIL import Image

    from mmfm.data.shards import write_shards
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "small", "large", "striped", "dotted", "cat", "dog", "car", "tree", "house"]

    def samples():
        for i in range(n):
            base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size, size), Image.BICUBIC)
            cap = " ".join(rng.choice(words, 5))
            yield {"__key__": f"s{i:07d}", "jpg": img, "txt": f"a photo of a {cap}"}
    print(f"writing {n} synthetic {size}px JPEG samples into {out} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    write_shards(samples(), out, shard_size=500, quality=90)
    return out


def shard_pattern(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("shard-*.tar"))
    first, last = names[0][6:12], names[-1][6:12]
    return str(folder / f"shard-{{{first}..{last}}}.tar")


# ------------------------------------------------------------------------------------------- runs
def run_mmfm(shards: Path, out: Path, model: str, steps: int, batch: int, workers: int, precision: str,
             extra: list[str] = ()) -> list[float]:
    import yaml
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = {"model": {"name": model},
           "data": {"train": [{"path": str(shards)}], "batch_size": batch, "workers": workers},
           "train": {"output_dir": str(out / "run"), "max_steps": steps, "precision": precision, "lr": 5e-4,
                     "weight_decay": 0.2, "warmup_steps": 10, "grad_clip": 1.0, "log_every": 1,
                     "ckpt_every_steps": None, "tensorboard": False, "progress": False}}
    (out / "bench.yaml").write_text(yaml.safe_dump(cfg))
    args = [sys.executable, "-m", "mmfm", "train", str(out / "bench.yaml"), *extra]
    out = out / "run"
    t0 = time.time()
    proc = subprocess.run(args, env=env(), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"mmfm run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "train/loss" in r]
    print(f"  mmfm: {len(times)} steps in {time.time() - t0:.0f} s wall (incl. start-up)", flush=True)
    return [b - a for a, b in zip([times[0]] + times, times)][1:]   # per-step durations from step 2 on


def run_openclip(shards: Path, out: Path, steps: int, batch: int, workers: int, samples: int) -> list[float]:
    if not ANCHOR_PY.is_file():
        print(f"  open_clip_train: {ANCHOR_PY} missing; run bench/anchor_venv.sh first", flush=True)
        return []
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    cfg_dir = out / "model_configs"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "mmfm-bench-tiny.json").write_text(json.dumps(OPENCLIP_TINY))
    n = min(samples, steps * batch)
    args = [str(ANCHOR_PY), "-c", OPENCLIP_MAIN, str(cfg_dir),
            "--train-data", shard_pattern(shards), "--train-num-samples", str(n), "--dataset-type", "webdataset",
            "--model", "mmfm-bench-tiny", "--batch-size", str(batch), "--workers", str(workers), "--epochs", "1",
            "--precision", "fp32", "--lr", "5e-4", "--wd", "0.2", "--warmup", "10", "--grad-clip-norm", "1.0",
            "--log-every-n-steps", "1", "--logs", str(out / "logs"), "--name", "bench", "--save-frequency", "0",
            "--report-to", "", "--seed", "0"]
    t0 = time.time()
    proc = subprocess.run(args, env=env(), cwd=out, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(f"  open_clip_train failed ({proc.returncode}):\n{text[-3000:]}", flush=True)
        return []
    per_step = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    print(f"  open_clip_train: {len(per_step)} steps in {time.time() - t0:.0f} s wall (incl. start-up)", flush=True)
    return per_step[1:]


def steady(durations: list[float], warmup: int, batch: int) -> tuple[float, float]:
    """(mean, median) samples/s over the steps after ``warmup``; the median resists a busy machine."""
    import statistics
    tail = durations[max(warmup - 1, 0):] if warmup else list(durations)
    if not tail or sum(tail) <= 0:
        return float("nan"), float("nan")
    return batch * len(tail) / sum(tail), batch / statistics.median(tail)


# ------------------------------------------------------------------------------------------- FLOPs
def step_flops(model_name: str, batch: int, device: str, shards: Path, dtype=None,
               full_last_block: bool = False) -> float:
    """FLOPs of one training step (forward + backward) of the mmfm ContrastiveTask on a real batch from
    ``shards`` (so padding trimmed by the text tower is not counted), by torch.utils.flop_counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.data.pipeline import build_loader
    from mmfm.tasks import build_task
    cfg = from_dict(ExperimentConfig, {"model": {"name": model_name}})
    task = build_task(cfg).to(device)
    bundle = build_loader(str(shards), task.processor(train=True), batch_size=batch, workers=0, train=True,
                          world=(0, 1), data_cfg=cfg.data)
    real = next(iter(bundle))
    real = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in real.items()}
    autocast = torch.autocast(device, dtype=dtype) if dtype is not None else torch.autocast(device, enabled=False)
    counter = FlopCounterMode(display=False)
    import mmfm.models.towers as towers
    pooled = towers.timm_vit_pooled
    if full_last_block:          # the library's forward: every token through the last block
        towers.timm_vit_pooled = lambda *a: None
    try:
        with counter, autocast:
            task(real)["loss"].backward()
    finally:
        towers.timm_vit_pooled = pooled
    return float(counter.get_total_flops())


def matmul_peak(device: str, dtype_name: str = "float32", n: int = 1024, seconds: float = 2.0) -> float:
    import torch
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        iters += 10
        sync()
    return 2 * n ** 3 * iters / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- main
def cpu_bench(args) -> None:
    shards = emoji_shards(64)
    n = json.loads((shards / "manifest.json").read_text())["total_samples"]
    steps = min(args.steps, n // args.batch)
    print(f"data: {shards} ({n} samples); {steps} steps of batch {args.batch}, {args.workers} workers, "
          f"fp32, steady state after step {args.warmup}", flush=True)
    runs = BENCH / "runs"
    mm_runs, oc_runs = [], []
    for _ in range(args.repeats):        # alternate the sides so a busy machine hurts both alike
        mm_runs.append(run_mmfm(shards, runs / "train_mmfm", "bench_vit_tiny", steps, args.batch, args.workers,
                                "fp32"))
        if not args.skip_anchor:
            oc_runs.append(run_openclip(shards, runs / "train_openclip", steps, args.batch, args.workers, n))
    mm = [d for r in mm_runs for d in r[max(args.warmup - 1, 0):]]
    oc = [d for r in oc_runs for d in r[max(args.warmup - 1, 0):]]
    (mm_sps, mm_med), (oc_sps, oc_med) = steady(mm, 0, args.batch), steady(oc, 0, args.batch)
    step_mm, step_oc = step_compare(shards, args.batch, args.step_reps)
    flops = step_flops("bench_vit_tiny", args.batch, "cpu", shards)
    peak = max(matmul_peak("cpu", n=n) for n in (1024, 2048))     # the better of two sizes: an honest peak
    achieved = flops * mm_sps / args.batch
    print()
    print(f"{'samples/s (steady state)':28s}{'mean':>10s}{'median':>10s}")
    print(f"{'mmfm train':28s}{mm_sps:10.1f}{mm_med:10.1f}")
    print(f"{'open_clip_train 3.3.0':28s}{oc_sps:10.1f}{oc_med:10.1f}")
    print(f"ratio mmfm / open_clip: {mm_sps / oc_sps:.2f}x mean, {mm_med / oc_med:.2f}x median  (target >= 1.5x)")
    print(f"training step alone (same real batch, one process, alternating, median of {args.step_reps}): "
          f"mmfm {step_mm:.1f} vs open_clip {step_oc:.1f} samples/s = {step_mm / step_oc:.2f}x")
    print(f"mmfm FLOP/s: {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of this machine's fp32 "
          f"matmul peak ({peak / 1e9:.1f} GFLOP/s; {flops / 1e9:.2f} GFLOP executed per real step of {args.batch})")
    nominal = step_flops("bench_vit_tiny", args.batch, "cpu", shards, full_last_block=True)
    print(f"  model FLOPs utilisation counting the full last ViT block, as open_clip computes it ("
          f"{nominal / 1e9:.2f} GFLOP per step): {100 * nominal * mm_sps / args.batch / peak:.1f}%")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(figures are only comparable on an otherwise idle machine)")


class RepeatBatch:
    """A stand-in LoaderBundle that hands out one device-resident batch: times the trainer's hot path
    (forward, backward, optimizer, logging) without the loader."""

    def __init__(self, batch: dict, steps: int):
        from types import SimpleNamespace
        self.batch, self.steps_per_epoch, self.batches_per_epoch, self.grad_accum = batch, steps, steps, 1
        self.dataset = SimpleNamespace(batch_size=len(batch["key"]))
        self.batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.batches = 0

    def __iter__(self):
        while self.batches < self.batches_per_epoch:
            self.batches += 1
            yield self.batch

    def state_dict(self) -> dict:
        return {}


def trainer_only(model_name: str, shards: Path, batch: int, steps: int, warmup: int, compile_: bool) -> float:
    """samples/s of mmfm's Trainer on a resident batch (bf16 autocast on CUDA)."""
    import torch

    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.data.pipeline import build_loader
    from mmfm.tasks import build_task
    from mmfm.train.trainer import Trainer
    out = BENCH / "runs" / "trainer_only"
    shutil.rmtree(out, ignore_errors=True)
    cfg = from_dict(ExperimentConfig, {"model": {"name": model_name}, "train": {
        "output_dir": str(out), "max_steps": steps, "log_every": 1, "ckpt_every_steps": None, "progress": False,
        "tensorboard": False, "compile": compile_, "precision": "auto"}})
    task = build_task(cfg)
    real = next(iter(build_loader(str(shards), task.processor(train=True), batch_size=batch, workers=0,
                                  train=True, world=(0, 1), data_cfg=cfg.data)))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    real = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in real.items()}
    Trainer(cfg, task, RepeatBatch(real, steps)).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "train/loss" in r]
    return steady([b - a for a, b in zip(times, times[1:])], warmup, batch)[0]


def step_compare(shards: Path, batch: int, reps: int) -> tuple[float, float]:
    """In one process, alternating, on the same real batch: the median time of one training step
    (forward, loss, backward, clipping, optimizer) of mmfm's Trainer.train_step vs open_clip_train's
    equivalent (open_clip model + ClipLoss + torch AdamW with its two param groups, as open_clip_train
    builds them). Robust to a busy machine; no data loading on either side."""
    import math
    import statistics

    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.data.pipeline import build_loader
    from mmfm.tasks import build_task
    from mmfm.train.trainer import Trainer
    out = BENCH / "runs" / "step_compare"
    shutil.rmtree(out, ignore_errors=True)
    cfg = from_dict(ExperimentConfig, {"model": {"name": "bench_vit_tiny"}, "train": {
        "output_dir": str(out), "max_steps": reps, "lr": 5e-4, "weight_decay": 0.2, "grad_clip": 1.0,
        "progress": False, "tensorboard": False, "precision": "fp32"}})
    torch.manual_seed(0)
    task = build_task(cfg)
    real = next(iter(build_loader(str(shards), task.processor(train=True), batch_size=batch, workers=0,
                                  train=True, world=(0, 1), data_cfg=cfg.data)))
    trainer = Trainer(cfg, task, RepeatBatch(real, reps))

    cfg_dir = out / "model_configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "mmfm-bench-tiny.json").write_text(json.dumps(OPENCLIP_TINY))
    open_clip.add_model_config(str(cfg_dir))
    oc = open_clip.create_model("mmfm-bench-tiny", output_dict=True)
    texts = real["text_ids"]            # mmfm's openclip tokenizer gives open_clip's ids, padded to 32
    named = list(oc.named_parameters())
    excl = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    opt = torch.optim.AdamW([{"params": [p for n, p in named if excl(n, p)], "weight_decay": 0.0},
                             {"params": [p for n, p in named if not excl(n, p)], "weight_decay": 0.2}],
                            lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    images = real["image"]

    def oc_step():
        f = oc(images, texts)
        loss = loss_fn(f["image_features"], f["text_features"], f["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(oc.parameters(), 1.0, norm_type=2.0)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            oc.logit_scale.clamp_(0, math.log(100))
        loss.item()

    def mm_step():
        trainer.train_step([real])
        trainer._bad.item()

    times = {"mm": [], "oc": []}
    for _ in range(reps):
        for key, fn in (("mm", mm_step), ("oc", oc_step)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) for k, v in times.items()}
    return batch / med["mm"], batch / med["oc"]


def cuda_bench(args) -> None:
    import torch
    if not torch.cuda.is_available():
        sys.exit("--cuda: no CUDA device")
    shards = synthetic_shards(256, args.samples, "synthetic256")
    batch = args.batch if args.batch != 100 else 256
    print(f"GPU: {torch.cuda.get_device_name()}; ViT-B/32 bf16, batch {batch}, {args.workers} workers", flush=True)
    mm = run_mmfm(shards, BENCH / "runs" / "train_mmfm_cuda", "vit_b32", args.steps, batch, args.workers, "bf16",
                  ["--set", f"data.samples_per_epoch={args.steps * batch}"] + (
                      ["--set", "train.compile=true"] if args.compile else []))
    sps, _ = steady(mm, args.warmup, batch)
    flops = step_flops("vit_b32", batch, "cuda", shards, torch.bfloat16)
    peak = matmul_peak("cuda", "bfloat16", n=8192, seconds=3.0)
    hot = trainer_only("vit_b32", shards, batch, args.steps, args.warmup, args.compile)
    print(f"mmfm train ViT-B/32 bf16, batch {batch}:")
    print(f"  end to end (loader, {args.workers} workers): {sps:8.0f} samples/s  MFU {100 * flops * sps / batch / peak:5.1f}%")
    print(f"  trainer on a resident batch:      {hot:8.0f} samples/s  MFU {100 * flops * hot / batch / peak:5.1f}%")
    print(f"  (MFU against the measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; {flops / 1e12:.3f} TFLOP per step)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from the steady state")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 2 on CPU, 10 with --cuda)")
    p.add_argument("--skip-anchor", action="store_true", help="mmfm only")
    p.add_argument("--step-reps", type=int, default=12, help="in-process step comparison repetitions")
    p.add_argument("--repeats", type=int, default=1, help="alternate mmfm / open_clip runs this many times")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both sides (default: unset)")
    p.add_argument("--cuda", action="store_true", help="ViT-B/32 bf16 on the GPU (mmfm only)")
    p.add_argument("--compile", action="store_true", help="with --cuda: train.compile=true")
    p.add_argument("--samples", type=int, default=20000, help="--cuda: synthetic samples to write")
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    if args.workers is None:
        args.workers = 10 if args.cuda else 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.cuda:
        cuda_bench(args)
    else:
        cpu_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
