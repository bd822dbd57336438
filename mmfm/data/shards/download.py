"""Bounded HTTP(S) downloads with the standard library: timeout, retries with back-off, byte limit,
redirect limit and loop detection. Every failure raises ``Skip`` with its own reason.

Safety: only ``http``/``https`` on every hop (a redirect elsewhere is ``redirect_scheme``); the host is
resolved and a connection is made only to public addresses (private, loopback, link-local such as the
cloud metadata service 169.254.169.254, ... are ``private_address``) unless ``allow_private_urls``.
``download.timeout`` bounds the whole attempt: connect, TLS handshake and every read get the time left.
"""
from __future__ import annotations

import functools
import http.client
import ipaddress
import math
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .imageops import Skip
from .options import DownloadOptions

_REDIRECTS = (301, 302, 303, 307, 308)
_RETRY = {"timeout", "http_5xx", "http_429", "connection_error", "incomplete_read"}
_SCHEMES = ("http", "https")
_DEADLINE = threading.local()   # time.monotonic() at which this thread's current attempt ends


def _time_left() -> float:
    left = getattr(_DEADLINE, "at", math.inf) - time.monotonic()
    if left <= 0:
        raise TimeoutError("download.timeout reached")
    return left


class _DeadlineReads:
    """Every read waits at most until the attempt's deadline, so a trickling server cannot stretch it."""

    def recv_into(self, *args, **kwargs):
        self.settimeout(_time_left())
        return super().recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self.settimeout(_time_left())
        return super().recv(*args, **kwargs)


class _DeadlineSocket(_DeadlineReads, socket.socket):
    """A plain socket whose reads keep the deadline."""


class _DeadlineSSLSocket(_DeadlineReads, ssl.SSLSocket):
    """The TLS twin of ``_DeadlineSocket``; the handshake keeps the deadline too (CPython bounds one handshake
    call by the socket timeout)."""

    def do_handshake(self, block=False):
        self.settimeout(_time_left())
        return super().do_handshake(block)


def is_public_address(ip: str) -> bool:
    """False for private, loopback, link-local, shared (CGNAT), reserved, unspecified and multicast addresses."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _resolve(host: str, port: int, allow_private: bool) -> list[tuple]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    allowed = [ai for ai in infos if allow_private or is_public_address(ai[4][0])]
    if not allowed:
        raise Skip("private_address", f"{host} resolves to {infos[0][4][0]} (set download.allow_private_urls "
                   "to download from private networks)")
    return allowed


def _connect(address, timeout=None, source_address=None, *, allow_private: bool) -> socket.socket:
    """``socket.create_connection`` that connects only to the checked addresses (no DNS-rebinding gap)."""
    err: OSError | None = None
    for family, type_, proto, _, sockaddr in _resolve(address[0], address[1], allow_private):
        sock = _DeadlineSocket(family, type_, proto)
        try:
            sock.settimeout(_time_left())
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            err = e
    assert err is not None
    raise err


class _Guarded:
    def __init__(self, *args, allow_private: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_connect, allow_private=allow_private)


class _HTTPConnection(_Guarded, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Guarded, http.client.HTTPSConnection):
    pass


def _policy(req: urllib.request.Request, allow_private: bool) -> bool:
    """Through a proxy the proxy (often private) is connected to; check the target's addresses instead."""
    if allow_private or not (req.has_proxy() or req._tunnel_host):
        return allow_private
    target = urllib.parse.urlsplit(req.full_url)
    _resolve(target.hostname or "", target.port or (443 if target.scheme == "https" else 80), False)
    return True


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_private: bool):
        super().__init__()
        self.allow_private = allow_private

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, allow_private=_policy(req, self.allow_private))


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_private: bool):
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        context.sslsocket_class = _DeadlineSSLSocket
        super().__init__(context=context)
        self.allow_private = allow_private

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context,
                            allow_private=_policy(req, self.allow_private))


@functools.lru_cache(maxsize=2)
def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    """http and https only: no file, ftp or data handlers, and 3xx comes back to ``_attempt`` as HTTPError."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTPHandler(allow_private),
                    _HTTPSHandler(allow_private), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


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
    """One try including redirects; the whole attempt (every connect and read) shares one deadline."""
    opener = _opener(opts.allow_private_urls)   # built once per process (loads the CA store): not on the clock
    deadline = time.monotonic() + opts.timeout
    _DEADLINE.at = deadline
    seen = {url}
    try:
        for hop in range(opts.max_redirects + 1):
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in _SCHEMES:
                raise Skip("redirect_scheme" if hop else "bad_url", f"{scheme or 'no'} scheme: {url[:200]}")
            req = urllib.request.Request(url, headers={"User-Agent": opts.user_agent, "Accept": "image/*,*/*;q=0.5"})
            try:
                with opener.open(req, timeout=_time_left()) as resp:
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
    finally:
        _DEADLINE.at = math.inf


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


def read_remote(url: str) -> bytes:
    """An image on an fsspec filesystem (``s3://``, ``gs://``, ...), e.g. next to a table read from there."""
    from mmfm.config import ConfigError
    from mmfm.data import fs

    try:
        return fs.read_bytes(url, "image")
    except ConfigError as e:
        msg = str(e)
        raise Skip("file_not_found" if "does not exist" in msg else "bad_url", msg) from None
    except Exception as e:  # noqa: BLE001 - one unreadable object costs its sample, not the build
        raise Skip("read_error", f"{url}: {type(e).__name__}: {e}") from None


def fetch(src: str, opts: DownloadOptions) -> bytes:
    if is_url(src):
        return fetch_url(src, opts)
    if "://" in src:
        from mmfm.data.fs import OBJECT_STORES, scheme
        if scheme(src) not in OBJECT_STORES:
            raise Skip("bad_url", f"unsupported scheme: {src.split('://', 1)[0]}")
        return read_remote(src)
    return read_local(src)
