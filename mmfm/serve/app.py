"""The alt-text HTTP service (FastAPI, served by uvicorn on 127.0.0.1).

Routes: ``POST /caption`` (multipart: ``image`` file + optional decoding fields) -> alt text;
``POST /classify`` (``image`` + ``labels``: comma-separated or a JSON list) -> scores; ``GET /health``;
``GET /`` a small page to try it. Errors are JSON ``{"error": "...", "status": N}``:
400 corrupt/truncated image or bad field, 413 upload or image too large, 415 not an image, 422 bad option,
501 no model for that route, 503 busy (concurrency or queue limit; ``Retry-After``), 504 timed out.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import Request   # module level: FastAPI resolves the handlers' string annotations here

from mmfm.config import ConfigError

from .batching import DynamicBatcher, QueueFull
from .engine import Engine, ImageError

log = logging.getLogger("mmfm.serve")

__all__ = ["ServeLimits", "create_app"]


@dataclass
class ServeLimits:
    max_upload_bytes: int = 10 * 1024 * 1024   # request body (multipart included)
    max_pixels: int = 40_000_000                # decoded image (big JPEGs decode at reduced scale)
    request_timeout_s: float = 30.0             # from arrival to answer
    max_concurrency: int = 64                   # requests in flight on the model routes; more -> 503
    max_batch: int = 16                         # dynamic batching: 1 = off
    max_wait_ms: float = 10.0                   # how long a batch waits to fill after its first request
    max_labels: int = 100
    max_label_chars: int = 100

    def validate(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrency", "max_batch", "max_labels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"serve: request_timeout_s must be > 0, got {self.request_timeout_s}")


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length up front, and by counting the bytes of
    a streamed (chunked) body, so an upload never grows past the limit in memory or on disk."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, f"upload too large: {int(length)} bytes, the limit is "
                                               f"{self.max_bytes} bytes")
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, f"upload too large: more than {self.max_bytes} bytes")


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_upload(request: Request) -> tuple[bytes, dict]:
    """The multipart form: the ``image`` file's bytes and the other fields (repeated ``labels`` as a list)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(400, "send the image as multipart/form-data with a file field named 'image'")
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=64 * 1024)
    except _BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - malformed multipart
        raise ApiError(400, f"malformed multipart body: {e}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no file field named 'image' in the form")
    data = await upload.read()
    fields = {k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)}
    labels = [v for k, v in form.multi_items() if k == "labels" and isinstance(v, str)]
    if len(labels) > 1:
        fields["labels"] = labels
    await form.close()
    return data, fields


class Service:
    """The service's state and request handling: one dynamic batcher per route, the in-flight bound, counters."""

    def __init__(self, engine: Engine, limits: ServeLimits):
        self.engine, self.limits = engine, limits
        self.batchers: dict[str, DynamicBatcher] = {}
        self.in_flight, self.served, self.errors, self.started = 0, 0, {}, time.time()

    async def start(self) -> None:
        for route, model, fn in (("caption", self.engine.captioner, self.engine.run_captions),
                                 ("classify", self.engine.clip, self.engine.run_classify)):
            if model is not None:
                self.batchers[route] = DynamicBatcher(fn, max_batch=self.limits.max_batch,
                                                      max_wait_ms=self.limits.max_wait_ms,
                                                      max_queue=self.limits.max_concurrency, name=route)
        for b in self.batchers.values():
            await b.start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()

    def caption_key(self, fields: dict):
        return self.engine.caption_options({k: v for k, v in fields.items() if k != "labels"})

    def classify_key(self, fields: dict) -> tuple:
        labels = parse_labels(fields.get("labels"), self.limits)
        template = str(fields.get("template") or "a photo of a {}.")
        if "{}" not in template or len(template) > 200:
            raise ConfigError("template: needs a '{}' placeholder for the label (at most 200 characters)")
        top_k = fields.get("top_k") or 5
        try:
            top_k = int(top_k)
        except ValueError:
            raise ConfigError(f"top_k: expected an integer, got {top_k!r}") from None
        if top_k < 1:
            raise ConfigError("top_k: must be >= 1")
        return (tuple(labels), template, top_k)

    async def _work(self, route: str, request: Request, build) -> dict:
        data, fields = await read_upload(request)
        key = build(fields)                        # option errors before the image is decoded
        try:
            tensor = await asyncio.to_thread(self.engine.decode, data, route)
        except ImageError as e:
            raise ApiError(e.status, str(e)) from None
        return await self.batchers[route].submit(key, tensor)

    async def run(self, route: str, request: Request, build) -> dict:
        """Bound, time and run one request; every failure becomes an ApiError with its status."""
        if route not in self.batchers:
            what = "captioner" if route == "caption" else "CLIP model"
            raise ApiError(501, f"no {what} loaded: start the server with --model pointing at one")
        if self.in_flight >= self.limits.max_concurrency:
            raise ApiError(503, f"busy: {self.in_flight} requests in flight (limit {self.limits.max_concurrency}); "
                                f"retry shortly", {"Retry-After": "1"})
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._work(route, request, build), timeout=self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"timed out after {self.limits.request_timeout_s:g} s") from None
        except QueueFull as e:
            raise ApiError(503, f"busy: {e}", {"Retry-After": "1"}) from None
        except (ConfigError, ValueError) as e:
            raise ApiError(422, str(e)) from None
        except (ApiError, _BodyTooLarge):
            raise
        except Exception as e:  # noqa: BLE001 - the model failed on this batch; the server goes on
            log.exception("%s failed", route)
            raise ApiError(500, f"internal error while running the model: {type(e).__name__}: {e}") from None
        finally:
            self.in_flight -= 1
        self.served += 1
        return {**result, "latency_ms": round(1000 * (time.perf_counter() - t0), 2)}

    def health(self) -> dict:
        return {"status": "ok", "models": self.engine.describe(), "in_flight": self.in_flight,
                "served": self.served, "errors": {str(k): v for k, v in self.errors.items()},
                "queued": {k: b.queued for k, b in self.batchers.items()},
                "batches": {k: b.stats.as_dict() for k, b in self.batchers.items()},
                "limits": asdict(self.limits), "uptime_s": round(time.time() - self.started, 1)}


def create_app(engine: Engine, limits: ServeLimits | None = None):
    """The FastAPI app: POST /caption, POST /classify, GET /health and the try-it page at /."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse

    from .page import render_page

    limits = limits or ServeLimits()
    limits.validate()
    engine.max_pixels = limits.max_pixels
    svc = Service(engine, limits)

    @asynccontextmanager
    async def lifespan(_app):
        await svc.start()
        yield
        await svc.stop()

    app = FastAPI(title="mmfm alt-text service", lifespan=lifespan,
                  description="Alt text and zero-shot labels for images, from mmfm checkpoints.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_upload_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        svc.errors[exc.status] = svc.errors.get(exc.status, 0) + 1
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status,
                            headers=exc.headers)

    @app.post("/caption", summary="image upload -> alt text")
    async def caption(request: Request):
        """Multipart fields: ``image`` (file); optional ``num_beams``, ``max_new_tokens``, ``min_new_tokens``,
        ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``no_repeat_ngram_size``, ``repetition_penalty``,
        ``length_penalty``, ``seed``, ``prompt``, ``alt_text`` (false: the raw caption)."""
        return JSONResponse(await svc.run("caption", request, svc.caption_key))

    @app.post("/classify", summary="image + labels -> scores")
    async def classify(request: Request):
        """Multipart fields: ``image`` (file), ``labels`` (comma-separated, a JSON list, or repeated fields),
        optional ``template`` (default ``a photo of a {}.``) and ``top_k``."""
        return JSONResponse(await svc.run("classify", request, svc.classify_key))

    @app.get("/health")
    async def health():
        return svc.health()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(render_page(engine.generate))      # the checkpoint's stored decoding settings

    app.state.engine, app.state.limits, app.state.batchers = engine, limits, svc.batchers
    return app


def parse_labels(raw, limits: ServeLimits) -> list[str]:
    if raw is None or raw == "" or raw == []:
        raise ConfigError("labels: give at least two candidate labels (comma-separated or a JSON list)")
    if isinstance(raw, list):
        labels = raw
    elif str(raw).lstrip().startswith("["):
        try:
            labels = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"labels: not a valid JSON list ({e})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError("labels: the JSON must be a list of strings")
    else:
        labels = str(raw).split(",")
    labels = [str(x).strip() for x in labels if str(x).strip()]
    labels = list(dict.fromkeys(labels))
    if len(labels) < 2:
        raise ConfigError(f"labels: need at least two distinct labels, got {labels}")
    if len(labels) > limits.max_labels:
        raise ConfigError(f"labels: {len(labels)} labels, the limit is {limits.max_labels}")
    long = [x for x in labels if len(x) > limits.max_label_chars]
    if long:
        raise ConfigError(f"labels: '{long[0][:40]}...' is longer than {limits.max_label_chars} characters")
    return labels
