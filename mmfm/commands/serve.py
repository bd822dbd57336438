"""``mmfm serve``: the alt-text HTTP service on 127.0.0.1 (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from mmfm.serve.app import ServeLimits
    d = ServeLimits()
    p = argparse.ArgumentParser(
        prog="mmfm serve",
        description="Serve POST /caption (image -> alt text), POST /classify (image + labels -> scores), GET /health "
                    "and a try-it page at /. Requests are batched dynamically; upload size, image pixels, request "
                    "time and concurrency are bounded.",
        epilog="examples:\n"
               "  mmfm serve --model runs/captioner --model runs/clip --port 8000\n"
               "  curl -F image=@photo.jpg -F num_beams=3 http://127.0.0.1:8000/caption\n"
               "  curl -F image=@photo.jpg -F labels='cat,dog,bird' http://127.0.0.1:8000/classify",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="a captioner and/or a CLIP checkpoint (float, or an int8 folder from mmfm export --format int8); "
                        "repeat for both")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quantize", action="store_true", help="dynamic int8 quantization of float models at start (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the model worker")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="dynamic batch size; 1 turns batching off")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2 ** 20)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, help="per-request time limit (s)")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency,
                   help="requests in flight before the server answers 503")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.serve import serve
    from mmfm.serve.app import ServeLimits

    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                         request_timeout_s=args.timeout, max_concurrency=args.max_concurrency,
                         max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    limits.validate()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmfm serve: warning: binding {args.host} exposes the service beyond this machine")
    serve(args.model, host=args.host, port=args.port, limits=limits, quantize=args.quantize, threads=args.threads,
          log_level=args.log_level)
    return 0
