"""Peak memory (max RSS) of `mmfm shards build` as the dataset grows: it should stay flat.

Input: a JSONL table of N tiny local PNGs, each with distinct bytes (a 4-pixel image plus its number after the
PNG end marker, which decoders ignore), so dedup hashes N distinct digests. The build runs in one process
(``--workers 0``) under ``/usr/bin/time -f %M``, once per N and per code tree, e.g. before and after a change::

    git archive BASE_COMMIT | tar -x -C /tmp/mmfm-base
    python bench/shards_memory.py --sizes 50000 100000 200000 --code before=/tmp/mmfm-base --code after=.

Prints max RSS (MiB) per N and code tree, the after/before ratio, and the growth from the smallest N.
Numbers from a machine shared with other jobs are noisy in time, less so in memory.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_input(folder: Path, n: int) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (120, 30, 200)).save(buf, "PNG")
    base = buf.getvalue()
    table = folder / f"rows-{n}.jsonl"
    images = folder / "img"
    with open(table, "w") as f:
        for i in range(n):
            sub = images / f"{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"{i}.png"
            path.write_bytes(base + i.to_bytes(4, "big"))
            f.write(json.dumps({"image": str(path), "caption": f"image number {i}"}) + "\n")
    return table


def run_build(code: Path, table: Path, out: Path, timeout: float) -> tuple[float, float, str]:
    """-> (max RSS MiB, seconds, summary line) of one build in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(code.resolve()), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M", sys.executable, "-m", "mmfm", "shards", "build", str(table),
           "--out", str(out), "--workers", "0", "--size", "2", "--shard-size", "1000", "--no-progress"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=code)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"build failed ({code}):\n{res.stdout}\n{res.stderr[-3000:]}")
    kb = int(next(line for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB="))[len("MAXRSS_KB="):])
    summary = res.stdout.strip().splitlines()[0]
    return kb / 1024, seconds, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    ap.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                    help="a source tree to run (its mmfm package is imported); repeatable (default: this tree)")
    ap.add_argument("--work", help="folder for the input and outputs (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per build")
    args = ap.parse_args()
    codes = [tuple(c.split("=", 1)) for c in args.code] or [("this", str(Path(__file__).resolve().parents[1]))]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmfm-shards-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], float] = {}
    try:
        for n in sorted(args.sizes):
            table = make_input(work, n)
            for label, code in codes:
                rss, seconds, summary = run_build(Path(code), table, work / f"out-{label}", args.timeout)
                results[label, n] = rss
                print(f"N={n:>8} {label:>8}: max RSS {rss:7.1f} MiB  {seconds:6.1f}s  ({summary})", flush=True)
                manifest = json.loads((work / f"out-{label}" / "manifest.json").read_text())
                if manifest["total_samples"] != n:
                    print(f"  warning: {manifest['total_samples']} samples of {n}: {manifest['failures']}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    small = min(args.sizes)
    print("\nmax RSS MiB" + "".join(f"  {label:>8}" for label, _ in codes) +
          ("  ratio(last/first)" if len(codes) == 2 else ""))
    for n in sorted(args.sizes):
        row = [results[label, n] for label, _ in codes]
        ratio = f"  {row[-1] / row[0]:.2f}" if len(codes) == 2 else ""
        print(f"N={n:>8}" + "".join(f"  {r:8.1f}" for r in row) + ratio)
    for label, _ in codes:
        print(f"{label}: growth from N={small} to N={max(args.sizes)}: "
              f"{results[label, max(args.sizes)] - results[label, small]:+.1f} MiB")


if __name__ == "__main__":
    main()
