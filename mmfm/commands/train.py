"""``mmfm train CONFIG.yaml [--set key=value ...] [--resume latest|PATH] [--init-from CKPT]``

Runs unchanged under torchrun: ``torchrun --nproc_per_node 8 -m mmfm train cfg.yaml`` (gloo on CPU,
nccl on CUDA; multi-node through torchrun's rendezvous). Exit codes: 0 done, 2 config/data error,
3 non-finite loss, 143 stopped by SIGTERM after saving a checkpoint (continue with --resume latest).
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm train", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment YAML (configs/experiments/...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="continue a run exactly (weights, optimizer, schedule, RNG, data position)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="load weights only (continued pre-training: LR warms up again)")
    p.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for --set train.max_steps=...")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from mmfm.config import load_experiment

    overrides = list(args.overrides)
    for key, value in (("train.resume", args.resume), ("train.init_from", args.init_from),
                       ("train.output_dir", args.output_dir), ("train.max_steps", args.max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.no_progress:
        overrides.append("train.progress=false")
    cfg = load_experiment(args.config, overrides)

    from mmfm.train.builder import train_experiment
    from mmfm.train.trainer import NonFiniteLoss

    try:
        result = train_experiment(cfg)
    except NonFiniteLoss as e:
        print(f"mmfm train: {e}", file=sys.stderr)
        return 3
    is_main = result.pop("is_main", True)
    if "stopped" in result:
        if is_main:
            print(f"mmfm train: {result['stopped']}", file=sys.stderr)
        return 143                                  # terminated by SIGTERM, checkpoint saved
    if is_main:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
        print(f"mmfm train: done ({shown}); checkpoints in {Path(cfg.train.output_dir) / 'checkpoints'}")
    return 0
