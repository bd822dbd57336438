"""Benchmark: the alt-text service with dynamic batching on and off. Sends the same 1,000 caption requests
to ``mmfm serve`` (a real server process on 127.0.0.1) both ways and prints requests/s and p50/p95 latency.

    .venv/bin/python bench/serve.py [--model CKPT | --hf git|blip [--hf-size base|tiny]] [--requests 1000]
                                    [--concurrency 64] [--max-batch 16] [--max-wait-ms 10] [--new-tokens 12]
                                    [--threads 1]

* Model: ``--model`` (a captioner checkpoint or ``hf:DIR``); ``--hf git|blip``: a transformers captioner served
  as ``hf:DIR`` (random-init GIT-base / BLIP-base shapes from bench/generate_pipeline.py, ``--hf-size tiny`` for
  a smoke run, kept in .bench/serve/); else a random-init small captioner built here (ViT 64 px,
  patch 8, width 192, 4 blocks -> 65 image tokens; GPT-2 decoder width 192, 4 layers, open_clip BPE). The
  weights do not change the work: every request decodes exactly ``--new-tokens`` tokens greedily
  (min_new_tokens = max_new_tokens), so on and off do the same amount of generation.
* Same requests: N PNG uploads (seeded random 96x96 images, a few distinct ones cycled), sent by
  ``--concurrency`` client threads, each with its own keep-alive connection. Latency = client-side time from
  sending to the full answer.
* "on": ``--max-batch`` / ``--max-wait-ms``; "off": ``--max-batch 1`` (each request runs alone). Same server
  threads (``--threads`` torch threads in the model worker) both times.
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"kind": "captioner",
         "vision": {"timm_model": "vit_tiny_patch16_224", "image_size": 64,
                    "timm_kwargs": {"patch_size": 8, "embed_dim": 192, "depth": 4, "num_heads": 3}},
         "decoder": {"arch": "gpt2", "tokenizer": "openclip", "max_length": 32,
                     "config_overrides": {"n_embd": 192, "n_layer": 4, "n_head": 3, "n_positions": 64}},
         "embed_dim": 192}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(tmp: Path) -> str:
    import torch

    from mmfm.models import build_model, get_model_config, save_pretrained
    torch.manual_seed(0)
    path = tmp / "small_captioner"
    save_pretrained(build_model(get_model_config(SMALL)), None, path)
    return str(path)


def _hf_model(family: str, size: str) -> str:
    """``hf:DIR`` of a random-init transformers captioner (built once under .bench/serve/)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from generate_pipeline import build_folder
    folder = ROOT / ".bench" / "serve" / f"hf-{family}-{size}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return f"hf:{build_folder(family, folder, size)}"


def _uploads(n: int = 8) -> list[bytes]:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _start(model: str, port: int, args, max_batch: int) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "mmfm", "serve", "--model", model, "--port", str(port), "--threads",
           str(args.threads), "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-concurrency", str(max(256, 2 * args.concurrency)), "--timeout", "300", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mmfm serve exited: {proc.stderr.read()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mmfm serve did not start in 180 s")
            time.sleep(0.5)


def _load(url: str, uploads: list[bytes], n: int, concurrency: int, new_tokens: int) -> dict:
    import httpx
    fields = {"max_new_tokens": str(new_tokens), "min_new_tokens": str(new_tokens), "num_beams": "1"}
    local = threading.local()
    lat, errors = [], []

    def one(i: int):
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=300)
        t0 = time.perf_counter()
        r = local.client.post(url + "/caption", files={"image": ("x.png", uploads[i % len(uploads)], "image/png")},
                              data=fields)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            errors.append((r.status_code, r.text[:200]))
        else:
            lat.append(dt)

    warm = min(concurrency, 16)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(warm)))                      # warm-up: connections, first batches
        lat.clear()
        t0 = time.perf_counter()
        list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    import httpx as _h
    health = _h.get(url + "/health").json()["batches"]["caption"]
    lat.sort()
    return {"requests": n, "ok": len(lat), "errors": len(errors), "wall_s": wall, "rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
            "mean_batch": health["mean_batch"], "largest_batch": health["largest_batch"],
            "first_errors": errors[:3]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="captioner checkpoint (default: a random-init small captioner)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--hf", choices=["git", "blip"], help="serve a transformers captioner (hf:DIR) of this family")
    p.add_argument("--hf-size", choices=["base", "tiny"], default="base")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server's model worker")
    args = p.parse_args()
    uploads = _uploads()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or (_hf_model(args.hf, args.hf_size) if args.hf else _model(Path(tmp)))
        for name, batch in (("batching on", args.max_batch), ("batching off", 1)):
            port = _free_port()
            proc = _start(model, port, args, batch)
            try:
                results[name] = _load(f"http://127.0.0.1:{port}", uploads, args.requests, args.concurrency,
                                      args.new_tokens)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            r = results[name]
            print(f"{name:13s} max_batch={batch:<3d} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p95 {r['p95_ms']:7.1f} ms  mean batch {r['mean_batch']:.1f}  ok {r['ok']}/{r['requests']}"
                  + (f"  errors {r['errors']} e.g. {r['first_errors']}" if r["errors"] else ""), flush=True)
    on, off = results["batching on"], results["batching off"]
    name = args.model or (f"hf: random-init {args.hf} ({args.hf_size} shape)" if args.hf
                          else "random-init small captioner (ViT 64px/192x4 + GPT-2 192x4)")
    print(f"model: {name}; "
          f"{args.requests} requests, {args.concurrency} concurrent clients, {args.new_tokens} tokens each, "
          f"{args.threads} server thread(s), {os.cpu_count()} CPUs")
    print(f"ratio on/off: {on['rps'] / off['rps']:.2f}x requests/s, p50 {on['p50_ms'] / off['p50_ms']:.2f}x, "
          f"p95 {on['p95_ms'] / off['p95_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
