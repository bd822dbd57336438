"""Benchmark: `mmfm shards build` vs img2dataset on the same local photo-sized JPEGs, in one run.

Both read the same CSV of file:// URLs + captions, resize to 224 with keep_ratio (shortest side),
encode JPEG quality 95, write WebDataset tars, and use the same number of worker processes.
img2dataset runs in the anchors' venv (bench/anchor_venv.sh). Prints images/s for both and the ratio.

    .venv/bin/python bench/shards.py               # 5,000 images, 2 workers
    .venv/bin/python bench/shards.py --n 1000      # quicker
    .venv/bin/python bench/shards.py --distributor ray --n 20000   # also the Ray build (mmfm[ray]) vs local

With ``--distributor ray`` the same list is built twice by mmfm, ``--distributor local`` and ``--distributor ray``
(a local Ray cluster with ``--workers`` CPUs, ~4 partitions per CPU), and the Ray path's overhead is printed
as the ratio of the two (pipeline: after Ray started; end-to-end: including starting it).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "shards"


# --- photo-like test images -----------------------------------------------------------------------

def _base_image(seed: int, size: int = 1024) -> Image.Image:
    """1/f multi-octave colour noise + soft shapes + grain: JPEG entropy close to a real photo."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for octave in (4, 8, 16, 32, 64, 128):
        grid = rng.normal(0, 1, (octave, octave, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((size, size), Image.BICUBIC))
                          for c in range(3)], -1)
        img += layer * (48.0 / math.sqrt(octave))
    img = img - img.mean((0, 1)) + rng.uniform(70, 180, 3)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(12):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(30, 200))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=color)
    pil = pil.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray((np.asarray(pil, np.float32) + grain).clip(0, 255).astype(np.uint8))


_BASES: list = []


def _make_one(args: tuple[int, str, int]) -> int:
    i, folder, side = args
    if not _BASES:
        _BASES.extend(_base_image(s) for s in range(8))
    rng = np.random.default_rng(1000 + i)
    base = _BASES[i % len(_BASES)]
    w = side if rng.random() < 0.6 else int(side * rng.uniform(1.0, 1.5))   # some landscape images
    h = side
    x, y = rng.integers(0, base.width - w), rng.integers(0, base.height - h)
    img = base.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    gains = rng.uniform(0.8, 1.2, 3)
    img = Image.fromarray((np.asarray(img, np.float32) * gains).clip(0, 255).astype(np.uint8))
    img.save(os.path.join(folder, f"{i:06d}.jpg"), quality=int(rng.integers(85, 96)))
    return i


def make_images(n: int, side: int = 512) -> Path:
    folder = WORK / f"images_{side}_{n}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with Pool(2) as pool:
        for _ in pool.imap_unordered(_make_one, [(i, str(folder), side) for i in range(n)], chunksize=64):
            pass
    marker.touch()
    print(f"generated {n} photo-like {side}px JPEGs in {time.time() - t:.0f}s -> {folder}", flush=True)
    return folder


def write_list(folder: Path, n: int) -> Path:
    path = WORK / f"list_{n}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for i in range(n):
            w.writerow([(folder / f"{i:06d}.jpg").as_uri(), f"a synthetic photo number {i}"])
    return path


# --- CPU accounting of a whole process tree (forkserver workers are not our children) --------------

class TreeCPU:
    """Samples utime+stime of a process and all its descendants from /proc every 0.1 s."""

    def __init__(self, pid: int):
        import threading
        self.pid, self.cpu, self._stop = pid, {}, threading.Event()
        self.timeline: list[tuple[float, float]] = []     # (epoch, tree CPU seconds so far)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        parent, ticks = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)] = int(fields[1])
            ticks[int(d)] = int(fields[11]) + int(fields[12])
        tree, grew = {self.pid}, True
        while grew:
            new = {p for p, pp in parent.items() if pp in tree and p not in tree}
            tree |= new
            grew = bool(new)
        for p in tree:
            if p in ticks:
                self.cpu[p] = max(self.cpu.get(p, 0), ticks[p])
        self.timeline.append((time.time(), sum(self.cpu.values()) / self._tick))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.cpu.values()) / self._tick

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds the tree spent between two epoch times (linear between 0.1 s samples)."""
        ts, cs = [t for t, _ in self.timeline], [c for _, c in self.timeline]
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs)) if ts else float("nan")


def _timed(cmd: list[str], **kw) -> tuple[float, TreeCPU]:
    """-> (wall seconds, the process tree's CPU meter, stopped). ``--profile``'s summary goes to stderr."""
    t = time.perf_counter()
    err = None if "MMFM_SHARDS_PROFILE" in kw.get("env", {}) else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **kw)
    meter = TreeCPU(proc.pid)
    if proc.wait() != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd[:4])} ...")
    wall = time.perf_counter() - t
    meter.stop()
    return wall, meter


# --- the two builders -------------------------------------------------------------------------------

def run_mmfm(url_list: Path, out: Path, workers: int, extra: tuple[str, ...] = (),
             resample: str = "auto", profile: Path | None = None) -> tuple[float, int, float, float, float]:
    """-> (wall s, samples, pipeline s, CPU s of the whole run, CPU s during the pipeline)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "mmfm", "shards", "build", str(url_list), "--out", str(out),
           "--image-column", "url", "--caption-column", "caption", "--size", "224",
           "--resize-mode", "keep_ratio", "--resize-side", "shortest", "--resample", resample,
           "--format", "jpg", "--quality", "95",
           "--shard-size", "1000", "--workers", str(workers), "--no-progress", *extra]
    env = dict(os.environ, **({"MMFM_SHARDS_PROFILE": str(profile)} if profile else {}))
    seconds, meter = _timed(cmd, cwd=ROOT, env=env)
    manifest = json.loads((out / "manifest.json").read_text())
    pipe = manifest["build"]["seconds"]
    end = (out / "manifest.json").stat().st_mtime       # written right after the pipeline ends
    return seconds, manifest["total_samples"], pipe, meter.stop(), meter.between(end - pipe, end)


def anchor_python() -> str:
    out = subprocess.run(["bash", str(ROOT / "bench" / "anchor_venv.sh")], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()
    return out[-1]


def run_img2dataset(python: str, url_list: Path, out: Path, workers: int,
                    n: int) -> tuple[float, int, float, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    per_shard = max(1, math.ceil(n / (workers * 5)))   # even shards per process: no idle tail for img2dataset
    code = ("from img2dataset import download; import sys; download(url_list=sys.argv[1], output_folder=sys.argv[2], "
            "input_format='csv', url_col='url', caption_col='caption', output_format='webdataset', "
            "image_size=224, resize_mode='keep_ratio', encode_format='jpg', encode_quality=95, "
            f"processes_count={workers}, thread_count=16, number_sample_per_shard={per_shard}, "
            "distributor='multiprocessing', timeout=10, retries=0, enable_wandb=False)")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    seconds, meter = _timed([python, "-c", code, str(url_list), str(out)], cwd=WORK, env=env)
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    ok = sum(st.get("successes", 0) for st in stats)
    t0, t1 = min(st["start_time"] for st in stats), max(st["end_time"] for st in stats)
    return seconds, ok, t1 - t0, meter.stop(), meter.between(t0, t1)


def _sample_size(folder: Path) -> tuple[int, int]:
    import tarfile
    tar = sorted(folder.glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        for m in tf:
            if m.name.endswith(".jpg"):
                return Image.open(io.BytesIO(tf.extractfile(m).read())).size
    return (0, 0)


def _report(name: str, r: tuple, out: Path) -> None:
    wall, n, pipe, cpu, pcpu = r
    print(f"{name:<18}: {n:>6} samples; end-to-end {wall:6.1f}s = {n / wall:7.1f} images/s; "
          f"pipeline {pipe:6.1f}s = {n / pipe:7.1f} images/s; CPU {cpu:6.1f}s = {n / cpu:6.1f} images/CPU-s, "
          f"of which during the pipeline {pcpu:6.1f}s = {n / pcpu:6.1f} images/CPU-s "
          f"({100 * pcpu / (pipe * os.cpu_count()):.0f}% of the cores busy) (output {_sample_size(out)})", flush=True)


def _samples_by_caption(folder: Path, limit: int, wanted: set | None = None) -> dict[str, np.ndarray]:
    """caption -> decoded pixels of the first ``limit`` samples (only captions in ``wanted``, if given)."""
    import tarfile
    out: dict[str, np.ndarray] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members: dict[str, dict] = {}
            for m in tf:
                key, ext = m.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for d in members.values():
            if "txt" in d and "jpg" in d and len(out) < limit and (wanted is None or d["txt"].decode() in wanted):
                out[d["txt"].decode()] = np.asarray(Image.open(io.BytesIO(d["jpg"])).convert("RGB"), np.int16)
        if len(out) >= limit:
            break
    return out


def pixel_check(mm: Path, i2d: Path, limit: int = 200) -> None:
    """Mean |diff| of mmfm's and img2dataset's output pixels on the same images (matched by caption)."""
    a = _samples_by_caption(mm, limit)
    b = _samples_by_caption(i2d, len(a), set(a))
    same = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not same:
        print("pixel check: no sample of the same size in both outputs")
        return
    diff = np.mean([np.abs(a[k] - b[k]).mean() for k in same])
    print(f"pixel check against img2dataset: mean |diff| {diff:.2f}/255 on {len(same)} images "
          f"({len(set(a) & set(b)) - len(same)} differ in size)", flush=True)


def _compare_ray(url_list: Path, args, local: tuple) -> None:
    rows = math.ceil(args.n / (4 * args.workers))     # ~4 partitions per CPU: no idle tail
    extra = ("--distributor", "ray", "--partition-rows", str(rows))
    best_r = min((run_mmfm(url_list, WORK / "out_mmfm_ray", args.workers, extra, args.resample)
                  for _ in range(args.repeat)), key=lambda r: r[0])
    _report("mmfm --distributor ray", best_r, WORK / "out_mmfm_ray")
    wall, pipe = (local[1] / local[0]) / (best_r[1] / best_r[0]), (local[1] / local[2]) / (best_r[1] / best_r[2])
    print(f"ratio local / ray images/s: {pipe:.2f}x pipeline ({local[2]:.1f}s vs {best_r[2]:.1f}s; Ray overhead "
          f"{(pipe - 1) * 100:+.0f}%, target <= +15%), {wall:.2f}x end-to-end ({local[0]:.1f}s vs {best_r[0]:.1f}s, "
          f"includes starting Ray); {rows} rows per partition", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="number of images (default 5000)")
    p.add_argument("--side", type=int, default=512, help="source image height in px (default 512)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--anchor-python", help="python with img2dataset (default: from bench/anchor_venv.sh)")
    p.add_argument("--skip-anchor", action="store_true", help="only time mmfm")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool; the best is reported")
    p.add_argument("--resample", default="auto", choices=["auto", "box", "bilinear", "bicubic", "lanczos"],
                   help="mmfm's resize filter (default auto: antialiased bilinear after a half-scale JPEG decode; "
                   "its pixels are closer to img2dataset's cv2.INTER_AREA output (mean |diff| 0.87/255 on 200 of "
                   "these images) than box's are (1.43/255))")
    p.add_argument("--profile", action="store_true",
                   help="profile mmfm's pipeline over time (per-process CPU, queue depths, the parent's time split); "
                   "the summary is printed and saved to .bench/shards/profile_mmfm_N.txt (+ .json)")
    p.add_argument("--distributor", choices=["local", "ray"], default="local",
                   help="ray: also build with --distributor ray and print its ratio to the local build")
    args = p.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    folder = make_images(args.n, args.side)
    url_list = write_list(folder, args.n)
    print(f"{args.n} images ({args.side}px JPEG) -> resize 224 keep_ratio (mmfm --resample {args.resample}, "
          f"img2dataset INTER_AREA), JPEG q95, {args.workers} workers "
          f"(CPU cores: {os.cpu_count()})", flush=True)

    python = None if args.skip_anchor else (args.anchor_python or anchor_python())
    mm_runs, i2d_runs = [], []
    for rep in range(args.repeat):        # alternating, so a drifting machine weighs on both sides alike
        prof = WORK / f"profile_mmfm_{args.n}.json" if args.profile else None
        mm_runs.append(run_mmfm(url_list, WORK / "out_mmfm", args.workers, resample=args.resample, profile=prof))
        _report(f"mmfm shards build #{rep + 1}", mm_runs[-1], WORK / "out_mmfm")
        if python:
            i2d_runs.append(run_img2dataset(python, url_list, WORK / "out_img2dataset", args.workers, args.n))
            _report(f"img2dataset #{rep + 1}", i2d_runs[-1], WORK / "out_img2dataset")
    best_m = min(mm_runs, key=lambda r: r[0])
    if args.distributor == "ray":
        _compare_ray(url_list, args, best_m)
    if not python:
        return 0
    best_i = min(i2d_runs, key=lambda r: r[0])
    print(f"best of {args.repeat} each:")
    _report("mmfm shards build", best_m, WORK / "out_mmfm")
    _report("img2dataset", best_i, WORK / "out_img2dataset")
    wall = (best_m[1] / best_m[0]) / (best_i[1] / best_i[0])
    pipe = (best_m[1] / best_m[2]) / (best_i[1] / best_i[2])
    cpu = (best_m[1] / best_m[3]) / (best_i[1] / best_i[3])
    pcpu = (best_m[1] / best_m[4]) / (best_i[1] / best_i[4])
    print(f"ratio mmfm / img2dataset: {wall:.2f}x end-to-end images/s, {pipe:.2f}x pipeline-only images/s "
          f"(target >= 2x), {cpu:.2f}x images per CPU-second of the whole run (target >= 2.5x), "
          f"{pcpu:.2f}x per CPU-second during the pipeline alone")
    pixel_check(WORK / "out_mmfm", WORK / "out_img2dataset")
    if args.repeat > 1:
        pairs = [((m[1] / m[2]) / (i[1] / i[2]), (m[1] / m[3]) / (i[1] / i[3])) for m, i in zip(mm_runs, i2d_runs)]
        print("per alternating pair (pipeline, per CPU-second): " + ", ".join(f"{p:.2f}x / {c:.2f}x" for p, c in pairs))
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
