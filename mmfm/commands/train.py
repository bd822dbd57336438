"""``mmfm train CONFIG.yaml|NAME [--set key=value ...] [--resume latest|PATH | --overwrite] [--init-from CKPT]``

Runs unchanged under torchrun: ``torchrun --nproc_per_node 8 -m mmfm train cfg.yaml`` (gloo on CPU,
nccl on CUDA; multi-node through torchrun's rendezvous). Exit codes: 0 done, 2 config/data error,
3 non-finite loss, 143 / 130 stopped by SIGTERM / SIGINT (Ctrl-C) after saving a checkpoint (the message
prints the command that continues the run with --resume latest).
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm train", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment YAML: a path, or the name of a shipped config (demo/caption, "
                                  "finetune/lora: configs/experiments/NAME.yaml, also from a pip install)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="continue a run exactly (weights, optimizer, schedule, RNG, data position)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an output dir that holds another run's checkpoints, deleting them")
    p.add_argument("--init-from", default=None, metavar="SPEC",
                   help="load weights only (continued pre-training: LR warms up again): an mmfm run, checkpoint or "
                        "export, openclip:ARCH:FILE, openclip:ARCH@TAG, openclip:hf-hub:ORG/REPO or hf:DIR_OR_ID "
                        "(these define the architecture: the config's model section may be left out)")
    p.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for --set train.max_steps=...")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return p


_RESTART_KEYS = ("train.resume=", "train.overwrite=", "train.init_from=")


def resume_command(argv: list[str]) -> str:
    """This command line with ``--resume latest`` in place of any --resume / --overwrite / --init-from."""
    import shlex
    kept, i = [], 0
    while i < len(argv):
        a, nxt = argv[i], (argv[i + 1] if i + 1 < len(argv) else "")
        if a in ("--resume", "--init-from") or (a == "--set" and nxt.startswith(_RESTART_KEYS)):
            i += 2
            continue
        if a != "--overwrite" and not a.startswith(("--resume=", "--init-from=")) and \
                not (a.startswith("--set=") and a[6:].startswith(_RESTART_KEYS)):
            kept.append(a)
        i += 1
    return shlex.join(["mmfm", "train", *kept, "--resume", "latest"])


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.config import load_experiment

    overrides = list(args.overrides)
    for key, value in (("train.resume", args.resume), ("train.init_from", args.init_from),
                       ("train.output_dir", args.output_dir), ("train.max_steps", args.max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    cfg = load_experiment(args.config, overrides)

    from mmfm.train.builder import train_experiment      # checks train.output_dir before any heavy work
    from mmfm.train.trainer import NonFiniteLoss

    try:
        result = train_experiment(cfg)
    except NonFiniteLoss as e:
        print(f"mmfm train: {e}", file=sys.stderr)
        return 3
    is_main, distributed = result.pop("is_main", True), result.pop("distributed", False)
    if "stopped" in result:
        if is_main:
            again = resume_command(argv)
            how = f"{again}  (launched the same way, e.g. with torchrun)" if distributed else again
            print(f"mmfm train: {result['stopped']}:\n  {how}", file=sys.stderr)
        return 128 + result["signal"]               # 143 SIGTERM, 130 SIGINT; a checkpoint was saved
    if is_main:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
        print(f"mmfm train: done ({shown}); checkpoints in {str(cfg.train.output_dir).rstrip('/')}/checkpoints")
    return 0
