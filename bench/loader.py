#!/usr/bin/env python
"""Loader throughput alone (read tar + decode + augment + tokenize + batch): mmfm's streaming loader vs
open_clip_train's WebDataset loader (``open_clip_train.data.get_wds_dataset``, webdataset 0.2.86, in the
anchors venv), on the same 512-px JPEG shards, in one run.

    python bench/loader.py [--size 224] [--batch 64] [--workers 2] [--batches 40]

Both sides: CLIP train transform (RandomResizedCrop scale (0.9, 1), bicubic, normalise) to --size, the
open_clip BPE tokenizer at context 77, batches of --batch, --workers DataLoader workers. Steady-state
samples/s is measured after --warmup batches.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
ANCHOR_PY = BENCH / "anchors" / "bin" / "python"

MMFM_SIDE = textwrap.dedent("""
    import json, sys, time
    from mmfm.config.data import DataConfig
    from mmfm.data.pipeline import build_loader
    from mmfm.data.tokenizers import build_tokenizer
    from mmfm.data.transforms import build_transform, decode_size
    from mmfm.tasks.contrastive import ContrastiveProcessor
    shards, size, batch, workers, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    pre = {"input_size": size}
    proc = ContrastiveProcessor(build_transform(pre, True), build_tokenizer("openclip", context_length=77))
    bundle = build_loader(shards, proc, batch_size=batch, workers=workers, train=True, world=(0, 1),
                          data_cfg=DataConfig(), decode_size=decode_size(pre, True))
    stamps = []
    t0 = time.perf_counter()
    for i, b in enumerate(bundle):
        assert b["image"].shape == (batch, 3, size, size) and b["text_ids"].shape == (batch, 77)
        stamps.append(time.perf_counter() - t0)
        if len(stamps) == n:
            break
    print("STAMPS" + json.dumps(stamps))
""")

OPENCLIP_SIDE = textwrap.dedent("""
    import json, sys, time
    import open_clip
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args
    pattern, size, batch, workers, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    args = parse_args(["--train-data", pattern, "--train-num-samples", str(total), "--dataset-type", "webdataset",
                       "--batch-size", str(batch), "--workers", str(workers), "--model", "ViT-B-32"])
    args.world_size, args.rank, args.local_rank, args.distributed = 1, 0, 0, False
    preprocess = open_clip.image_transform(size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    loader = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer).dataloader
    stamps = []
    t0 = time.perf_counter()
    for images, texts in loader:
        assert images.shape == (batch, 3, size, size) and texts.shape == (batch, 77)
        stamps.append(time.perf_counter() - t0)
        if len(stamps) == n:
            break
    print("STAMPS" + json.dumps(stamps))
""")


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def jpeg512_shards(n: int) -> Path:
    """Photo-like 512x512 JPEGs (smooth random fields + noise, quality 90) with captions."""
    out = BENCH / "data" / f"jpeg512_{n}"
    if (out / "manifest.json").is_file():
        return out
    import numpy as np
    from PIL import Image

    from mmfm.data.shards import write_shards
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "small", "large", "old", "cat", "dog", "car", "tree", "house", "on a table"]

    def samples():
        for i in range(n):
            low = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(low).resize((512, 512), Image.BICUBIC), dtype=np.int16)
            img = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            yield {"__key__": f"p{i:06d}", "jpg": Image.fromarray(img),
                   "txt": "a photo of a " + " ".join(rng.choice(words, 4))}
    print(f"writing {n} 512-px JPEG samples into {out} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    write_shards(samples(), out, shard_size=250, quality=90)
    return out


def pattern(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("shard-*.tar"))
    return str(folder / f"shard-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar")


def run_side(python: str, code: str, args: list[str]) -> list[float]:
    proc = subprocess.run([python, "-c", code, *args], env=env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{python} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("STAMPS")][-1]
    return json.loads(line[len("STAMPS"):])


def steady(stamps: list[float], warmup: int, batch: int) -> float:
    return batch * (len(stamps) - warmup) / (stamps[-1] - stamps[warmup - 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224, help="output image side")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--skip-anchor", action="store_true")
    a = p.parse_args()
    shards = jpeg512_shards(a.samples)
    n = min(a.batches, a.samples // a.batch - 1)
    print(f"{a.samples} 512-px JPEGs in {shards}; {n} batches of {a.batch} at {a.size}px, {a.workers} workers",
          flush=True)
    common = [str(a.size), str(a.batch), str(a.workers), str(n)]
    mm = steady(run_side(sys.executable, MMFM_SIDE, [str(shards), *common]), a.warmup, a.batch)
    print(f"  mmfm loader: {mm:.1f} samples/s", flush=True)
    oc = float("nan")
    if not a.skip_anchor:
        if not ANCHOR_PY.is_file():
            print(f"  open_clip: {ANCHOR_PY} missing; run bench/anchor_venv.sh", flush=True)
        else:
            oc = steady(run_side(str(ANCHOR_PY), OPENCLIP_SIDE, [pattern(shards), *common, str(a.samples)]),
                        a.warmup, a.batch)
            print(f"  open_clip loader: {oc:.1f} samples/s", flush=True)
    print()
    print(f"{'':30s}{'samples/s':>12s}")
    print(f"{'mmfm build_loader':30s}{mm:12.1f}")
    print(f"{'open_clip get_wds_dataset':30s}{oc:12.1f}")
    print(f"ratio mmfm / open_clip: {mm / oc:.2f}x  (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
