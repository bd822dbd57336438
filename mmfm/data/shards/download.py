"""Bounded HTTP(S) downloads with the standard library: timeout, retries with back-off, byte limit,
redirect limit and loop detection. Every failure raises ``Skip`` with its own reason."""
from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .imageops import Skip
from .options import DownloadOptions

_REDIRECTS = (301, 302, 303, 307, 308)
_RETRY = {"timeout", "http_5xx", "http_429", "connection_error", "incomplete_read"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx back to us so we can count hops and spot loops."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://", "file://"))


def _status_reason(code: int) -> str:
    if code >= 500:
        return "http_5xx"
    return f"http_{code}"


def _read_body(resp, opts: DownloadOptions, deadline: float) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > opts.max_bytes:
        raise Skip("too_large", f"Content-Length {length} > {opts.max_bytes}")
    ctype = (resp.headers.get("Content-Type") or "").lower()
    if ctype.startswith(("text/", "application/json", "application/xml")):
        raise Skip("not_an_image", f"Content-Type {ctype}")
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise Skip("timeout", "body not complete in time")
        block = resp.read(65536)
        if not block:
            break
        total += len(block)
        if total > opts.max_bytes:
            raise Skip("too_large", f"more than {opts.max_bytes} bytes")
        chunks.append(block)
    return b"".join(chunks)


def _attempt(url: str, opts: DownloadOptions) -> bytes:
    """One try including redirects; the whole attempt shares one deadline."""
    deadline = time.monotonic() + opts.timeout
    seen = {url}
    for _ in range(opts.max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Skip("timeout")
        req = urllib.request.Request(url, headers={"User-Agent": opts.user_agent, "Accept": "image/*,*/*;q=0.5"})
        try:
            with _OPENER.open(req, timeout=remaining) as resp:
                return _read_body(resp, opts, deadline)
        except urllib.error.HTTPError as e:
            location = e.headers.get("Location") if e.headers else None
            e.close()
            if e.code in _REDIRECTS and location:
                url = urllib.parse.urljoin(url, location)
                if url in seen:
                    raise Skip("redirect_loop", url) from None
                seen.add(url)
                continue
            raise Skip(_status_reason(e.code), f"HTTP {e.code}") from None
    raise Skip("too_many_redirects", f"> {opts.max_redirects}")


def _classify(e: BaseException) -> Skip:
    if isinstance(e, Skip):
        return e
    if isinstance(e, (socket.timeout, TimeoutError)):
        return Skip("timeout")
    if isinstance(e, http.client.IncompleteRead):
        return Skip("incomplete_read", str(e))
    if isinstance(e, urllib.error.URLError):
        inner = e.reason
        if isinstance(inner, (socket.timeout, TimeoutError)):
            return Skip("timeout")
        if isinstance(inner, socket.gaierror):
            return Skip("dns_error", str(inner))
        if isinstance(inner, ssl.SSLError):
            return Skip("ssl_error", str(inner))
        if isinstance(inner, str) and "unknown url type" in inner:
            return Skip("bad_url", inner)
        return Skip("connection_error", str(inner))
    if isinstance(e, (ConnectionError, http.client.HTTPException, OSError)):
        return Skip("connection_error", f"{type(e).__name__}: {e}")
    if isinstance(e, ValueError):
        return Skip("bad_url", str(e))
    return Skip("download_error", f"{type(e).__name__}: {e}")


def fetch_url(url: str, opts: DownloadOptions) -> bytes:
    """GET ``url`` (http, https) with retries; ``file://`` is read from disk. Raises ``Skip(reason)``."""
    if url.startswith("file://"):
        return read_local(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    last: Skip | None = None
    for attempt in range(opts.retries + 1):
        if attempt:
            time.sleep(min(opts.backoff * 2 ** (attempt - 1), 30.0))
        try:
            return _attempt(url, opts)
        except Exception as e:  # noqa: BLE001 - classified into a reason, never raised past here
            last = _classify(e)
            if last.reason not in _RETRY:
                break
    assert last is not None
    raise last


def read_local(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise Skip("file_not_found", path) from None
    except IsADirectoryError:
        raise Skip("not_a_file", path) from None
    except PermissionError:
        raise Skip("permission_denied", path) from None
    except OSError as e:
        raise Skip("read_error", f"{path}: {e}") from None


def fetch(src: str, opts: DownloadOptions) -> bytes:
    if is_url(src):
        return fetch_url(src, opts)
    if "://" in src:
        raise Skip("bad_url", f"unsupported scheme: {src.split('://', 1)[0]}")
    return read_local(src)
