"""The alt-text service, for real: uvicorn serving the app on 127.0.0.1 (in a thread of this process, and once
as the ``mmfm serve`` CLI subprocess), real multipart uploads with httpx, bad uploads, several hundred
concurrent requests, the concurrency / timeout limits, and the web page in headless chromium."""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from mmfm.models import build_model, save_pretrained  # noqa: E402
from mmfm.serve.app import ServeLimits, create_app  # noqa: E402
from mmfm.serve.engine import load_engine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(w=64, h=48, noise=False) -> bytes:
    from PIL import Image
    if noise:
        g = torch.Generator().manual_seed(0)
        img = Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())
    else:
        img = Image.new("RGB", (w, h), (200, 20, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w=256, h=256) -> bytes:
    from PIL import Image
    g = torch.Generator().manual_seed(1)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Server:
    """uvicorn.Server on a free port in a daemon thread; ``stop()`` asks it to exit and joins."""

    def __init__(self, engine, limits):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine, limits), host="127.0.0.1", port=self.port, log_level="error",
                                access_log=False, limit_concurrency=1000)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    save_pretrained(build_model("tiny_captioner"), None, d / "captioner")
    save_pretrained(build_model("tiny"), None, d / "clip")
    return d


@pytest.fixture(scope="module")
def engine(checkpoints):
    return load_engine([str(checkpoints / "captioner"), str(checkpoints / "clip")], threads=1)


@pytest.fixture(scope="module")
def server(engine):
    s = Server(engine, ServeLimits(max_upload_bytes=2 * 2 ** 20, max_pixels=1_000_000, request_timeout_s=60,
                                   max_concurrency=400, max_batch=8, max_wait_ms=5))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hf_server(hf_captioner, checkpoints):
    """The service on a transformers captioner (``hf:DIR``, saved by the library's own save_pretrained) beside
    mmfm's CLIP: what a user who starts from BLIP/GIT serves."""
    s = Server(load_engine([f"hf:{hf_captioner('git')}", str(checkpoints / "clip")], threads=1),
               ServeLimits(max_upload_bytes=2 * 2 ** 20, max_pixels=1_000_000, request_timeout_s=60,
                           max_concurrency=64, max_batch=8, max_wait_ms=5))
    yield s
    s.stop()


def _post(client, url, path, data: bytes | None, fields=None, filename="x.png"):
    files = {"image": (filename, data, "application/octet-stream")} if data is not None else None
    return client.post(url + path, files=files, data=fields or {}, timeout=60)


def test_caption_classify_health_and_page(server):
    with httpx.Client() as c:
        r = _post(c, server.url, "/caption", _png(), {"num_beams": "2", "max_new_tokens": "6"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["alt_text"] and body["alt_text"][0].isupper() and body["alt_text"].endswith(".")
        r = _post(c, server.url, "/caption", _png(), {"alt_text": "false", "max_new_tokens": "4"})
        assert r.status_code == 200 and r.json()["alt_text"] == r.json()["caption"]
        r = _post(c, server.url, "/classify", _png(), {"labels": "a red circle, a blue square, a cat"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [s["label"] for s in body["scores"]][0] == body["label"]
        assert abs(sum(s["score"] for s in body["scores"]) - 1) < 1e-4
        r = _post(c, server.url, "/classify", _png(), {"labels": json.dumps(["red", "blue"]), "top_k": "1"})
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
        health = c.get(server.url + "/health").json()
        assert health["status"] == "ok" and health["models"]["captioner"]["class"] == "Captioner"
        page = c.get(server.url + "/")
        assert page.status_code == 200 and "/caption" in page.text and "aria-live" in page.text


def test_serves_alt_text_from_a_transformers_captioner(hf_server):
    with httpx.Client() as c:
        health = c.get(hf_server.url + "/health").json()
        assert health["models"]["captioner"]["class"] == "HFCaptioner"
        r = _post(c, hf_server.url, "/caption", _png(noise=True), {"max_new_tokens": "6"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["caption"] and body["alt_text"] and -50 < body["confidence"] <= 0 and "degenerate" in body


BAD = [
    ("not an image", lambda: b"%PDF-1.4 this is not an image" * 10, {}, 415, "not an image"),
    ("truncated", lambda: _jpeg()[:2000], {}, 400, "truncated"),
    ("empty", lambda: b"", {}, 400, "empty"),
    ("too many pixels", lambda: _png(1200, 1000), {}, 413, "pixels"),
    ("too large upload", lambda: os.urandom(3 * 2 ** 20), {}, 413, "upload too large"),
    ("bad option", _png, {"num_beams": "99"}, 422, "num_beams"),
    ("unknown option", _png, {"beams": "2"}, 422, "Did you mean 'num_beams'"),
    ("not a number", _png, {"max_new_tokens": "many"}, 422, "max_new_tokens"),
    ("past the decoder's positions", _png, {"max_new_tokens": "100"}, 422, "positions"),
]


@pytest.mark.parametrize("name,make,fields,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_clear_errors(server, name, make, fields, status, words):
    with httpx.Client() as c:
        r = _post(c, server.url, "/caption", make(), fields)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]
        assert c.get(server.url + "/health").json()["status"] == "ok"


def test_malformed_requests_and_chunked_oversize(server):
    with httpx.Client() as c:
        assert c.post(server.url + "/caption", content=b"raw bytes").status_code == 400          # not multipart
        assert "'image'" in _post(c, server.url, "/caption", None, {"x": "1"}).json()["error"]  # no file field
        r = _post(c, server.url, "/classify", _png(), {"labels": "only-one"})
        assert r.status_code == 422 and "two" in r.json()["error"]

        def chunks():                                                     # no Content-Length: counted as it streams
            yield (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
            for _ in range(40):
                yield os.urandom(64 * 1024)
        r = c.post(server.url + "/caption", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        big_jpeg = _jpeg(1600, 1200)                                      # 1.9 MP JPEG: decoded at 1/2 scale
        assert _post(c, server.url, "/caption", big_jpeg, {"max_new_tokens": "3"}, "a.jpg").status_code == 200


def test_several_hundred_concurrent_requests_all_answered_and_batched(server):
    png, bad = _png(noise=True), b"not an image"
    jobs = []
    for i in range(300):
        if i % 10 == 9:
            jobs.append(("/caption", bad, {}, {415}))
        elif i % 3 == 0:
            jobs.append(("/classify", png, {"labels": "red,green,blue"}, {200}))
        else:
            jobs.append(("/caption", png, {"max_new_tokens": "3"}, {200}))
    before = httpx.get(server.url + "/health").json()["batches"]["caption"]

    local = threading.local()

    def send(job):
        path, data, fields, ok = job
        if not hasattr(local, "client"):
            local.client = httpx.Client()
        r = _post(local.client, server.url, path, data, fields)
        return r.status_code in ok, r.status_code, r.text[:200]

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(send, jobs))
    failures = [r for r in results if not r[0]]
    assert not failures, failures[:5]
    health = httpx.get(server.url + "/health").json()
    cap = health["batches"]["caption"]
    n = cap["items"] - before["items"]
    assert n == 180 and cap["batches"] - before["batches"] < n           # requests shared batches
    assert cap["largest_batch"] > 1 and cap["errors"] == 0 and health["in_flight"] == 0


def test_concurrency_limit_answers_503_and_timeout_504(engine):
    busy = Server(engine, ServeLimits(max_concurrency=3, max_batch=1, request_timeout_s=60))
    slow = {"max_new_tokens": "60", "min_new_tokens": "60", "num_beams": "4"}
    try:
        def send(_):
            with httpx.Client() as c:
                r = _post(c, busy.url, "/caption", _png(), slow)
                return r.status_code, r.headers.get("retry-after")
        with ThreadPoolExecutor(16) as pool:
            res = list(pool.map(send, range(16)))
        codes = [c for c, _ in res]
        assert set(codes) <= {200, 503} and codes.count(200) >= 3 and codes.count(503) >= 1
        assert all(ra == "1" for c, ra in res if c == 503)
    finally:
        busy.stop()
    late = Server(engine, ServeLimits(request_timeout_s=0.05, max_batch=1))
    try:
        with httpx.Client() as c:
            r = _post(c, late.url, "/caption", _png(), slow)
            assert r.status_code == 504 and "timed out" in r.json()["error"]
            assert c.get(late.url + "/health").json()["status"] == "ok"
    finally:
        late.stop()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.parametrize("which", ["server", "hf_server"])
def test_web_page_round_trips_in_headless_chromium(which, request, tmp_path):
    server = request.getfixturevalue(which)
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; `make test` installs it)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
           "--dump-dom", f"{server.url}/?demo=1"]
    before = httpx.get(server.url + "/health").json()["served"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert 'data-state="done"' in dom, (dom[-2000:], out.stderr[-2000:])
    assert "demo: caption + classify ok" in dom
    import re
    caption = re.search(r'<p id="caption">([^<]+)</p>', dom)
    assert caption and caption.group(1).strip().endswith(".")
    assert dom.count("<tr>") == 3                                          # one row per candidate label
    assert f'alt="{caption.group(1)}"' in dom                               # the preview image got the alt text
    assert httpx.get(server.url + "/health").json()["served"] >= before + 2


@pytest.mark.slow
def test_cli_serves_an_int8_model_and_stops_on_sigint(checkpoints):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmfm", "serve", "--model", str(checkpoints / "captioner"),
                             "--quantize", "--port", str(port), "--threads", "1", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mmfm serve did not come up in 90 s"
                time.sleep(0.5)
        assert health["models"]["captioner"]["int8"] is True and health["models"]["clip"] is None
        with httpx.Client() as c:
            assert _post(c, f"http://127.0.0.1:{port}", "/caption", _png(), {"max_new_tokens": "4"}).status_code == 200
            r = _post(c, f"http://127.0.0.1:{port}", "/classify", _png(), {"labels": "a,b"})
            assert r.status_code == 501 and "no CLIP model" in r.json()["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read()
    assert proc.returncode in (0, 130) and "Traceback" not in output, output     # 130: the SIGINT convention
