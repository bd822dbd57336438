#!/usr/bin/env python
"""One-shot GPU benchmark (run by bench/gpu.sh; under 8 minutes on one H100/H200-class GPU).

Prints, for ViT-B/32 CLIP in bf16 on one GPU:
* training samples/s and MFU for DDP and FSDP2 (``train.strategy``), each with and without ``torch.compile``, on a
  resident batch (the step alone) and through the loader (WebDataset shards, JPEG decode, workers), with the peak
  GPU memory of each; MFU = FLOPs of a step (torch.utils.flop_counter) x steps/s / measured bf16 matmul peak;
* captioner generation tokens/s (bench/generate.py's base captioner, KV cache, greedy, bf16);
* a transformers captioner family (``--hf-family git|blip``, base shape, random init, bf16 autocast): ``mmfm
  caption``'s path against transformers' pipeline on the same JPEGs, images/s, tokens/s and the ratio;
* zero-shot images/s (bench/zeroshot.py's folder and random ViT-B-32, through ``mmfm.eval.zeroshot.classify``).

On one GPU the process group has one rank: DDP's all-reduce and FSDP's all-gather / reduce-scatter are the
one-rank versions, so the figures show each strategy's own overhead (hooks, casts, copies) on the step.
``--smoke`` runs every part on the CPU with the tiny models for a couple of steps: a check that the script runs,
not a benchmark. Without CUDA (and without --smoke) it exits with status 2 and says so.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))               # bench/train.py, generate.py, zeroshot.py: their helpers
sys.path.insert(0, str(HERE.parent))


def process_group(device):
    import torch.distributed as dist
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=0, world_size=1, **({"device_id": device} if backend == "nccl" else {}))


def build(model_name: str, strategy: str, compile_: bool, device, dtype):
    """The task wrapped as the trainer wraps it: DDP, or FSDP2 per block then the whole model."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.tasks import build_task
    from mmfm.train import fsdp
    from mmfm.train.optim import build_optimizer
    from mmfm.train.accumulate import TaskForward

    cfg = from_dict(ExperimentConfig, {"model": {"name": model_name}})
    torch.manual_seed(0)
    task = build_task(cfg).to(device)
    root = TaskForward(task)
    if strategy == "fsdp":
        replicated = fsdp.shard(root, device, dtype)
        model = root
    else:
        replicated = []
        model = DDP(root, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if compile_:
        model = torch.compile(model)
    return cfg, task, model, build_optimizer(task, cfg.train), replicated


def train_rate(args, strategy: str, compile_: bool, resident: bool, shards: Path, flops: float, peak: float) -> str:
    import torch

    from mmfm.data.pipeline import build_loader
    from mmfm.train import fsdp

    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    cfg, task, model, opt, replicated = build(args.model, strategy, compile_, dev, dtype)
    loader = build_loader(str(shards), task.processor(train=True), batch_size=args.batch, train=True,
                          workers=0 if resident else args.workers, world=(0, 1), data_cfg=cfg.data,
                          pin_memory=dev.type == "cuda")
    it = iter(loader)
    first = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in next(it).items()}
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        batch = first if resident else {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v)
                                        for k, v in next(it).items()}
        t0 = time.perf_counter()
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        fsdp.average_replicated_grads(replicated)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    sps = args.batch * len(times) / sum(times)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
    mfu = 100 * flops * sps / args.batch / peak
    where = "resident batch" if resident else f"loader, {args.workers} workers"
    return (f"  {strategy:4s} {'compile' if compile_ else 'eager  '}  {where:22s} {sps:9.0f} samples/s  "
            f"MFU {mfu:5.1f}%  peak memory {mem:6.2f} GiB")


def captioner_rate(args) -> str:
    import generate as bgen
    path = Path(args.work) / "generate_images.npy"
    n = 8 if args.smoke else 500
    bgen._images(path, n)
    ns = SimpleNamespace(size="small" if args.smoke else "base", device=args.device, images_file=str(path), images=n,
                         batch_size=8 if args.smoke else 100, new_tokens=4 if args.smoke else 20)
    res = bgen.run_mmfm(ns, use_cache=True)
    return (f"captioner generation ({ns.size}, KV cache, greedy, {ns.new_tokens} new tokens, batch {ns.batch_size}): "
            f"{res['tokens'] / res['seconds']:.0f} tokens/s, {n / res['seconds']:.1f} captions/s")


def hf_captioner_rate(args) -> list[str]:
    """A transformers captioner family at base shape (bench/generate_pipeline.py: random-init GIT-base or
    BLIP-base), ``mmfm caption``'s path against transformers' pipeline, same JPEGs, greedy, bf16 autocast."""
    import generate_pipeline as gp
    work, n = Path(args.work), 8 if args.smoke else 512
    size = "tiny" if args.smoke else "base"
    folder = gp.build_folder(args.hf_family, work / f"hf-{args.hf_family}-{size}", size)
    paths = gp.write_images(work / "hf_jpeg", n)
    ns = SimpleNamespace(device=args.device, batch_size=4 if args.smoke else 64, new_tokens=4 if args.smoke else 20)
    lines, res = [], {}
    for side in ("mmfm", "pipeline"):
        res[side] = getattr(gp, f"side_{side}")(folder, paths, ns)
        rate = n / res[side][1]
        lines.append(f"  {args.hf_family}-{size} {side:<8} {rate:8.1f} images/s {rate * ns.new_tokens:9.0f} tokens/s "
                     f"(batch {ns.batch_size}, {ns.new_tokens} new tokens, {n} JPEGs)")
    lines.append(f"  ratio mmfm / transformers pipeline ({args.hf_family}): {res['pipeline'][1] / res['mmfm'][1]:.2f}x "
                 f"images/s, captions identical: {gp._same(res['mmfm'][0], res['pipeline'][0])}")
    return [f"transformers captioner ({'bf16 autocast' if args.device.startswith('cuda') else 'fp32'}):", *lines]


def zeroshot_rate(args) -> str:
    import zeroshot as bzs
    work = Path(args.work)
    n = 20 if args.smoke else 2000
    model = "ViT-B-32"
    ns = SimpleNamespace(model=model, device=args.device, batch_size=256 if not args.smoke else 10,
                         workers=args.workers, fast_decode=False, folder=bzs.make_folder(work / f"folder_{n}", n),
                         weights=bzs.make_model(model, work / f"{model}_random.pt"))
    import json
    ns.templates = json.dumps(bzs.openai_templates()[:2] if args.smoke else bzs.openai_templates())
    res = bzs.side_mmfm(ns)
    return (f"zero-shot {model} ({res['n']} images, batch {ns.batch_size}, {args.workers} workers): "
            f"{res['n'] / res['seconds']:.0f} images/s end to end")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--samples", type=int, default=12000, help="synthetic 256 px JPEG samples for the loader")
    p.add_argument("--work", default=str(HERE.parent / ".bench" / "gpu"))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, 2 steps: check the script runs")
    p.add_argument("--parts", default="train,caption,hf-caption,zeroshot")
    p.add_argument("--hf-family", choices=["git", "blip"], default="git", help="hf-caption: the family timed")
    args = p.parse_args(argv)
    import torch
    if args.smoke:
        args.device, args.model, args.batch, args.steps, args.warmup, args.workers = "cpu", "tiny", 4, 2, 1, 1
        args.samples = 24
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA GPU (torch.cuda.is_available() is False); this benchmark needs one "
                  "(--smoke checks the script on the CPU)", file=sys.stderr)
            return 2
        args.device, args.model = "cuda:0", "vit_b32"
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (smoke run, not a benchmark)"
    print(f"device: {name}; torch {torch.__version__}; model {args.model}, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}", flush=True)
    parts = set(args.parts.split(","))
    if "train" in parts:
        import train as btrain
        shards = btrain.synthetic_shards(32 if args.smoke else 256, args.samples, f"gpu_synthetic{args.samples}")
        dtype = torch.bfloat16 if dev.type == "cuda" else None
        flops = btrain.step_flops(args.model, args.batch, dev.type, shards, dtype)
        peak = btrain.matmul_peak(dev.type, "bfloat16" if dtype else "float32", n=8192 if dtype else 256,
                                  seconds=3.0 if dtype else 0.2)
        print(f"training ({'bf16' if dtype else 'fp32'}; {flops / 1e12:.3f} TFLOP per step; matmul peak "
              f"{peak / 1e12:.1f} TFLOP/s measured):", flush=True)
        process_group(dev)
        for strategy in ("ddp", "fsdp"):
            for compile_ in (False, True):
                print(train_rate(args, strategy, compile_, True, shards, flops, peak), flush=True)
            print(train_rate(args, strategy, False, False, shards, flops, peak), flush=True)
    if "caption" in parts:
        print(captioner_rate(args), flush=True)
    if "hf-caption" in parts:
        print("\n".join(hf_captioner_rate(args)), flush=True)
    if "zeroshot" in parts:
        print(zeroshot_rate(args), flush=True)
    print(f"total {time.perf_counter() - t_all:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
