"""LiT (locked ImageNet tower) vs unlocking its last timm groups, for the demo's CLIP: train clip.yaml on the demo's
Noto shards (OUT/shards from `mmfm demo --until shards`) for STEPS steps per variant, then zero-shot over the 9
groups on held-out Noto and on Twemoji (never trained on). Prints one row per variant.

  python bench/demo_unlock.py runs/demo --steps 400 --unlock 0 1 2 3
  python bench/demo_unlock.py runs/demo --steps 60 --scratch      # the from-scratch recipe (clip_scratch.yaml)
"""
import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--unlock", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--crop", action="store_true", help="random crops (nothing cached) instead of the whole image")
    ap.add_argument("--scratch", action="store_true", help="train clip_scratch.yaml (ResNet-10t, 48 px) instead")
    args = ap.parse_args()
    from mmfm.data.shards import read_manifest
    from mmfm.demo import transfer as T
    from mmfm.demo.pipeline import DemoContext, _clip_data

    out = args.out.resolve()
    ctx = DemoContext(out=out, progress=False)
    classes = read_manifest(ctx.shards / "train")["classes"]
    ctx.results["shards"] = {"classes": classes}
    sets = {"noto": ctx.shards / "heldout_by_group" / "images", "twemoji": T.build_twemoji(ctx),
            "photos": T.build_photos(ctx)}
    if args.scratch:
        run = out / "bench_unlock" / f"scratch_{args.steps}"
        values = {**_clip_data(ctx), "train.max_steps": args.steps, "train.output_dir": str(run),
                  "train.progress": False, "train.ckpt_every_steps": args.steps}
        _run(ctx, "clip_scratch", run, values, sets, classes, {"arm": "scratch", "steps": args.steps})
        return
    for n in args.unlock:
        run = out / "bench_unlock" / f"s{args.image_size}_u{n}_{args.steps}{'_crop' if args.crop else ''}"
        values = {**_clip_data(ctx), "train.max_steps": args.steps, "train.output_dir": str(run),
                  "train.progress": False, "model.vision.unlock_last_groups": n, "data.batch_size": args.batch,
                  "model.vision.image_size": args.image_size, "train.ckpt_every_steps": args.steps,
                  "model.vision.cache_locked_features": not args.crop}
        # no random crop: the frozen trunk (LiT) or its frozen prefix (unlocked last groups) runs once per image;
        # --crop: random crops for every variant (nothing cached)
        values["model.vision.preprocess"] = {"crop_pct": 1.0, "scale": [0.7, 1.0] if args.crop else [1.0, 1.0],
                                             "ratio": [3 / 4, 4 / 3] if args.crop else [1.0, 1.0]}
        _run(ctx, "clip", run, values, sets, classes,
             {"unlock_last_groups": n, "image_size": args.image_size, "steps": args.steps, "crop": args.crop})


def _run(ctx, config, run, values, sets, classes, row) -> None:
    from mmfm.config import load_experiment
    from mmfm.demo import transfer as T
    from mmfm.models.checkpoint import load
    from mmfm.train.builder import train_experiment

    t0 = time.monotonic()
    if not (run / "checkpoints" / "latest").exists():
        train_experiment(load_experiment(ctx.config(config), values=values))
    row["train_s"] = round(time.monotonic() - t0)
    model = load(str(run), expect="clip")
    res = {k: T.score_set(model, f, classes, ["a {} emoji"], progress=False) for k, f in sets.items()}
    row.update({f"{k}_{m}": round(r[m], 3) for k, r in res.items()
                for m in ("top1", "mean_per_class_recall", "macro_f1")})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
