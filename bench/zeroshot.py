"""Benchmark: zero-shot classification of one 2,000-image folder, mmfm vs CLIP_benchmark, in one run.

    .venv/bin/python bench/zeroshot.py [--model ViT-B-32] [--n 2000] [--device cuda] [--workers 4]

1. Generates (once, cached under .bench/zeroshot/) a folder of N rendered JPEGs, 10 classes, 256-512 px.
2. Saves a randomly initialised open_clip model (state dict) to a local file.
3. Runs each side in its own process: mmfm (this venv) via ``zeroshot_classify("openclip:NAME:FILE", ...)``,
   and CLIP_benchmark (the anchors venv from bench/anchor_venv.sh) via its own
   ``zeroshot_classification.evaluate`` on a torchvision ``ImageFolder`` -- exactly what its builder does for
   image-folder datasets -- with ``load_clip(model_type="open_clip", pretrained=FILE)``.
   Same images, model, class names, templates (80 OpenAI prompts), batch size and worker count.
   Timed: building the text classifier + classifying every image (model loading excluded on both sides).
   Precision: fp32 on CPU for both (CLIP_benchmark's default amp would mean bf16 autocast, far slower on
   CPU); on CUDA both use their default autocast (mmfm bf16, CLIP_benchmark fp16).
4. Prints images/s for both (wall clock, and per CPU-second of the process + its loader workers, which is
   steadier on a shared machine), the ratios, and both top-1 (they should agree).
   ``--fast-decode`` adds a third run: mmfm with JPEG draft decoding (opt-in; not bit-identical).

The classifier cache is disabled for mmfm so both sides start cold.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red_circle", "blue_square", "green_triangle", "yellow_star", "purple_stripes",
           "orange_ring", "black_cross", "white_dots", "brown_checkerboard", "pink_diamond"]


# ----------------------------------------------------------------------------- data + model
def _render(cls_idx: int, seed: int, size: tuple[int, int]):
    import random

    from PIL import Image, ImageDraw, ImageFilter
    rnd = random.Random(seed)
    w, h = size
    bg = tuple(rnd.randint(60, 200) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(30):                                   # clutter
        x, y = rnd.randrange(w), rnd.randrange(h)
        d.line((x, y, x + rnd.randint(-80, 80), y + rnd.randint(-80, 80)),
               fill=tuple(rnd.randint(0, 255) for _ in range(3)), width=rnd.randint(1, 4))
    colors = [(220, 30, 30), (30, 60, 220), (30, 170, 40), (240, 220, 20), (140, 40, 170), (250, 140, 20),
              (10, 10, 10), (250, 250, 250), (120, 70, 20), (250, 120, 180)]
    c = colors[cls_idx]
    s = rnd.randint(min(w, h) // 4, min(w, h) // 2)
    x0, y0 = rnd.randint(0, w - s), rnd.randint(0, h - s)
    box = (x0, y0, x0 + s, y0 + s)
    shape = CLASSES[cls_idx].split("_")[1]
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "triangle":
        d.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=c)
    elif shape == "star":
        import math
        pts = [(x0 + s / 2 + (s / 2 if i % 2 == 0 else s / 5) * math.cos(i * math.pi / 5 - math.pi / 2),
                y0 + s / 2 + (s / 2 if i % 2 == 0 else s / 5) * math.sin(i * math.pi / 5 - math.pi / 2))
               for i in range(10)]
        d.polygon(pts, fill=c)
    elif shape == "stripes":
        for i in range(0, s, 16):
            d.rectangle((x0 + i, y0, x0 + i + 7, y0 + s), fill=c)
    elif shape == "ring":
        d.ellipse(box, outline=c, width=max(4, s // 8))
    elif shape == "cross":
        d.rectangle((x0 + s // 3, y0, x0 + 2 * s // 3, y0 + s), fill=c)
        d.rectangle((x0, y0 + s // 3, x0 + s, y0 + 2 * s // 3), fill=c)
    elif shape == "dots":
        for i in range(0, s, 20):
            for j in range(0, s, 20):
                d.ellipse((x0 + i, y0 + j, x0 + i + 8, y0 + j + 8), fill=c)
    elif shape == "checkerboard":
        for i in range(0, s, 24):
            for j in range(0, s, 24):
                if (i + j) // 24 % 2 == 0:
                    d.rectangle((x0 + i, y0 + j, x0 + i + 23, y0 + j + 23), fill=c)
    else:
        d.polygon([(x0 + s // 2, y0), (x0 + s, y0 + s // 2), (x0 + s // 2, y0 + s), (x0, y0 + s // 2)], fill=c)
    return img.filter(ImageFilter.GaussianBlur(rnd.uniform(0, 1.2)))


def make_folder(out: Path, n: int) -> Path:
    """N JPEGs (quality 90, 256-512 px sides) in 10 class folders; built once into a temp dir, then renamed."""
    import random
    import shutil
    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) == n:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rnd = random.Random(0)
    for i in range(n):
        cls = i % len(CLASSES)
        size = (rnd.randint(256, 512), rnd.randint(256, 512))
        p = tmp / CLASSES[cls] / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        _render(cls, i, size).save(p, quality=90)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def make_model(name: str, path: Path) -> Path:
    if path.is_file():
        return path
    import open_clip
    import torch
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def openai_templates() -> list[str]:
    from open_clip import zero_shot_metadata
    return [t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]


# ----------------------------------------------------------------------------- the two sides
def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers)."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def side_mmfm(a) -> dict:
    import torch
    import mmfm
    from mmfm.eval.zeroshot.classify import zeroshot_classify
    model = mmfm.load(f"openclip:{a.model}:{a.weights}", device=a.device)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = zeroshot_classify(model, a.folder, templates=json.loads(a.templates), batch_size=a.batch_size,
                            workers=a.workers, precision="auto", use_cache=False, progress=False,
                            fast_decode=a.fast_decode)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "cpu_seconds": _cpu_seconds() - c0, "n": res.meta["n_samples"],
            "top1": res.metrics["top1"],
            "images_phase_s": res.meta["timing"]["images_s"], "torch": torch.__version__}


def side_clip_benchmark(a) -> dict:
    import torch
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.models import load_clip
    from torchvision.datasets import ImageFolder
    model, transform, tokenizer = load_clip(model_type="open_clip", model_name=a.model, pretrained=a.weights,
                                            cache_dir=None, device=a.device)
    model.eval()
    amp = a.device.startswith("cuda")
    templates = [t.replace("{}", "{c}") for t in json.loads(a.templates)]
    t0, c0 = time.perf_counter(), _cpu_seconds()
    ds = ImageFolder(root=a.folder, transform=transform)      # as clip_benchmark's builder does for folders
    classnames = [c.replace("_", " ") for c in ds.classes]
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=False, num_workers=a.workers)
    # zsc.evaluate() = these two calls + sklearn metrics; its accuracy() breaks on numpy>=2.3
    # (float() of a 1-element array), so top-1 is taken from its logits here.
    classifier = zsc.zero_shot_classifier(model, tokenizer, classnames, templates, a.device, amp=amp)
    logits, target = zsc.run_classification(model, classifier, dl, a.device, amp=amp)
    dt = time.perf_counter() - t0
    top1 = float((logits.argmax(1) == target).float().mean())
    return {"seconds": dt, "cpu_seconds": _cpu_seconds() - c0, "n": len(ds), "top1": top1,
            "torch": torch.__version__}


# ----------------------------------------------------------------------------- arithmetic
def work_gflop(a, n_images: int) -> dict:
    """GFLOP each side executes for the whole job (torch.utils.flop_counter): the images' forward, one image
    counted and scaled, plus the text classifier over every prompt. CLIP_benchmark runs open_clip's
    ``encode_image`` / ``encode_text`` (77 positions per prompt); mmfm runs its own paths (the class token
    alone through the last ViT block, prompts trimmed to their batch's last end-of-text token). At equal
    FLOP/s the speed-up is the ratio of the two. The attention scores themselves (~1% here) are not counted on
    either side."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import mmfm
    from mmfm.eval.embedding import encode_texts

    def count(fn) -> float:
        # grad mode on: under no_grad/inference_mode nn.MultiheadAttention takes its fused fast path
        # (aten._native_multi_head_attention), whose q/k/v and output projections the counter cannot see
        # (a third of a ViT block). Nothing is backpropagated; parameters require grad on both sides.
        with torch.enable_grad(), FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e9

    prompts = [t.replace("{}", c.replace("_", " ")) for c in CLASSES for t in json.loads(a.templates)]
    oc = open_clip.create_model(a.model)
    oc.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    oc.eval()
    size = oc.visual.image_size
    x = torch.zeros(1, 3, *(size if isinstance(size, (tuple, list)) else (size, size)))
    tok = open_clip.get_tokenizer(a.model)
    per_prompt = count(lambda: oc.encode_text(tok(prompts[:1])))      # every prompt runs all 77 positions
    anchor = n_images * count(lambda: oc.encode_image(x)) + len(prompts) * per_prompt
    mm = mmfm.load(f"openclip:{a.model}:{a.weights}", device="cpu")
    ours = n_images * count(lambda: mm.encode_image(x)) + count(lambda: encode_texts(mm, prompts))
    return {"clip_benchmark": anchor, "mmfm": ours}


# ----------------------------------------------------------------------------- driver
def _anchor_python() -> str:
    out = subprocess.run(["bash", str(ROOT / "bench" / "anchor_venv.sh")], capture_output=True, text=True,
                         timeout=3600, check=True)
    return out.stdout.strip().splitlines()[-1]


def _run_side(python: str, side: str, a, extra_env=None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--_side", side.split("+")[0], "--model", a.model,
           "--weights", str(a.weights), "--folder", str(a.folder), "--device", a.device,
           "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--templates", a.templates]
    if side.endswith("+fast-decode"):
        cmd.append("--fast-decode")
    mm = side.startswith("mmfm")
    env = dict(os.environ, PYTHONPATH=str(ROOT) if mm else "", TQDM_DISABLE="1", **(extra_env or {}))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3 * 3600)
    if out.returncode != 0:
        raise SystemExit(f"{side} side failed (rc {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for both (default: 4 on CUDA, "
                   "cores-1 on CPU)")
    p.add_argument("--work-dir", default=str(ROOT / ".bench" / "zeroshot"))
    p.add_argument("--order", default="mmfm,clip_benchmark", help="which side runs first")
    p.add_argument("--fast-decode", action="store_true",
                   help="also time mmfm with --fast-decode (JPEG draft decoding; not bit-identical)")
    p.add_argument("--_side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--templates", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._side:
        result = side_mmfm(a) if a._side == "mmfm" else side_clip_benchmark(a)
        print(json.dumps(result))
        return 0

    import torch
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.workers is None:
        a.workers = 4 if a.device.startswith("cuda") else max(1, (os.cpu_count() or 2) - 1)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    a.folder = make_folder(work / f"folder_{a.n}", a.n)
    a.weights = make_model(a.model, work / f"{a.model}_random.pt")
    a.templates = json.dumps(openai_templates())
    print(f"data + model ready in {time.perf_counter() - t:.1f}s: {a.folder} ({a.n} JPEGs, 10 classes), "
          f"{a.model} random init, 80 templates, device {a.device}, batch {a.batch_size}, workers {a.workers}",
          flush=True)
    anchor = _anchor_python()
    sides = a.order.split(",") + (["mmfm+fast-decode"] if a.fast_decode else [])
    results = {}
    for side in sides:
        results[side] = r = _run_side(anchor if side == "clip_benchmark" else sys.executable, side, a)
        print(f"{side:>22}: {r['n'] / r['seconds']:8.1f} images/s wall ({r['seconds']:.1f}s), "
              f"{r['n'] / r['cpu_seconds']:6.2f} images per CPU-second ({r['cpu_seconds']:.1f} CPU-s), "
              f"top-1 {r['top1']:.4f}", flush=True)
    c = results["clip_benchmark"]
    for side in (s for s in sides if s != "clip_benchmark"):
        m = results[side]
        print(f"{'ratio ' + side:>22}: {c['seconds'] / m['seconds']:.2f}x wall, "
              f"{c['cpu_seconds'] / m['cpu_seconds']:.2f}x CPU time (vs CLIP_benchmark; target >= 1.5x)")
    m = results["mmfm"]
    if a.device == "cpu":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train import matmul_peak
        work = work_gflop(a, m["n"])
        peak = max(matmul_peak("cpu", n=1024), matmul_peak("cpu", n=2048)) / 1e9
        for side in ("clip_benchmark", "mmfm"):
            r = results[side]
            print(f"{'work ' + side:>22}: {work[side]:8.0f} GFLOP -> {work[side] / r['seconds']:6.1f} GFLOP/s "
                  f"= {100 * work[side] / r['seconds'] / peak:4.1f}% of the fp32 matmul peak ({peak:.1f} GFLOP/s)")
        print(f"{'work ratio':>22}: {work['clip_benchmark'] / work['mmfm']:.2f}x fewer FLOPs in mmfm (the speed-up "
              f"at equal FLOP/s; the rest is FLOP/s)")
        results["work_gflop"], results["peak_gflops"] = work, peak
    # CLIP_benchmark accumulates top-1 in float32 (0.10499999...): equal within float32 rounding
    print(f"{'top-1 agree':>22}: {abs(m['top1'] - c['top1']) < 1e-6} (mmfm {m['top1']:.4f}, "
          f"CLIP_benchmark {c['top1']:.4f})")
    print(json.dumps({"model": a.model, "n": a.n, "device": a.device, "batch_size": a.batch_size,
                      "workers": a.workers, **results, "ratio_wall": c["seconds"] / m["seconds"],
                      "ratio_cpu": c["cpu_seconds"] / m["cpu_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
