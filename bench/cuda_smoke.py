#!/usr/bin/env python
"""CUDA smoke check, run under torchrun: an NCCL process group, a DDP-wrapped ContrastiveTask step in bf16
autocast with the gather-with-grad loss, and the same step in fp32 for comparison.

    torchrun --nproc_per_node N bench/cuda_smoke.py [--model vit_b32] [--batch 128]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit_b32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()

    from mmfm.config import ExperimentConfig, from_dict
    from mmfm.tasks import build_task
    from mmfm.train.distributed import init_distributed

    info = init_distributed()
    if not dist.is_initialized():  # torchrun with one process: join a 1-rank NCCL group anyway
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=info.device)
    dev = info.device
    print(f"rank {dist.get_rank()}/{dist.get_world_size()} backend={dist.get_backend()} device={dev} "
          f"({torch.cuda.get_device_name(dev)})", flush=True)
    cfg = from_dict(ExperimentConfig, {"model": {"name": args.model}})
    task = build_task(cfg).to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(task, device_ids=[dev.index])
    size = task.model.preprocess["input_size"][-1]
    tok = task.tokenizer([f"a photo of thing number {i}" for i in range(args.batch)])
    batch = {"image": torch.randn(args.batch, 3, size, size, device=dev),
             "text_ids": tok["text_ids"].to(dev), "attention_mask": tok["attention_mask"].to(dev)}
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = ddp(batch)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        steady = sorted(times[2:])[len(times[2:]) // 2]
        t = torch.tensor([out["loss"].item()], device=dev)
        dist.all_reduce(t)
        print(f"{name}: loss {out['loss'].item():.4f} (all-reduced {t.item():.4f}), median step {steady * 1e3:.1f} ms, "
              f"{args.batch / steady:.0f} samples/s per rank", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
