"""A real S3 API on 127.0.0.1 (moto's standalone server) and a TCP proxy that drops connections mid-response.

``moto_s3()`` starts ``moto.server.ThreadedMotoServer`` on a free port, points ``AWS_ENDPOINT_URL`` (and dummy
credentials) at it in ``os.environ`` (so subprocesses inherit them), creates a bucket and yields the
``s3://bucket`` URL; it stops the server and restores the environment afterwards.
"""
from __future__ import annotations

import contextlib
import os
import uuid
import socket
import threading

import pytest

BUCKET = "mmfm-test"
_COUNT = iter(range(10 ** 6))


def _clear_fs_cache() -> None:
    import fsspec
    try:
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    fsspec.config.conf.pop("s3", None)


@contextlib.contextmanager
def endpoint(url: str):
    """Point s3fs (this process and its children) at ``url`` for the duration."""
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    _clear_fs_cache()
    try:
        yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_fs_cache()


@contextlib.contextmanager
def moto_s3(port: int = 0):
    """``port``: a fixed one (the run's Ray cluster has its workers' S3 endpoint there, tests/ray_head.py)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with endpoint(f"http://{host}:{port}") as url:
            import fsspec
            # moto keeps its buckets per process: a new name per server, unique even when this module is imported
            # twice under two names (s3_helpers and tests.integration.s3_helpers each had a counter from 0)
            bucket = f"{BUCKET}-{next(_COUNT)}-{uuid.uuid4().hex[:8]}"
            fsspec.filesystem("s3").mkdir(bucket)
            yield f"s3://{bucket}", url
    finally:
        server.stop()


class DropProxy:
    """TCP proxy on 127.0.0.1 to ``target`` (host, port). The first ``drops`` connections that carry more than
    ``after`` bytes back to the client are cut right there (mid-response); later ones pass untouched."""

    def __init__(self, target: tuple[str, int], drops: int, after: int = 4096):
        self.target, self.drops, self.after = target, drops, after
        self.dropped = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _take_drop(self) -> bool:
        with self._lock:
            if self.dropped < self.drops:
                self.dropped += 1
                return True
            return False

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=30)
        client.settimeout(30)

        def up():
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        threading.Thread(target=up, daemon=True).start()
        sent, cut = 0, None
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if cut is None and sent + len(data) > self.after:
                    cut = self._take_drop()
                    if cut:
                        client.sendall(data[: self.after - sent])
                        break
                client.sendall(data)
                sent += len(data)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)
