"""The alt-text service: ``mmfm serve --model CKPT [--model CKPT2]`` (FastAPI + uvicorn on 127.0.0.1).

* ``mmfm.serve.app``: routes, limits (upload bytes, image pixels, request timeout, concurrency) and errors.
* ``mmfm.serve.batching``: dynamic batching (asyncio queue -> batches -> one model worker thread).
* ``mmfm.serve.engine``: loaded models (float or int8), image decoding, the caption / classify batch functions.
* ``mmfm.serve.page``: the try-it web page at ``/``.

``serve(models, host, port, limits)`` runs it; ``create_app(load_engine(models), limits)`` gives the ASGI app.
"""
from __future__ import annotations

__all__ = ["serve"]


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = 8000, limits=None, quantize: bool = False,
          threads: int | None = None, log_level: str = "info") -> None:
    import uvicorn

    from .app import ServeLimits, create_app
    from .engine import load_engine

    limits = limits or ServeLimits()
    engine = load_engine(models, quantize=quantize, threads=threads, max_pixels=limits.max_pixels)
    app = create_app(engine, limits)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            limit_concurrency=limits.max_concurrency * 4 + 32, timeout_keep_alive=5,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
