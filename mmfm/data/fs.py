"""fsspec URLs (``s3://``, ``gs://``, ``file://``, any installed protocol) wherever mmfm reads or writes a path.

* ``scheme(path)`` / ``is_remote(path)``: a path is *remote* when it has a ``SCHEME://`` other than ``file://``
  (``http(s)://`` shard patterns stay webdataset's, streamed with curl; everything else goes through fsspec).
* ``url_fs(url, what)``: the fsspec filesystem and the path inside it. A scheme that no installed filesystem
  handles is a ``ConfigError`` naming ``what`` (the field) and the URL, and the extra to install when one ships
  it (``mmfm[s3]``, ``mmfm[gcs]``): never a local folder named ``s3:``. Credentials come from the filesystem's
  usual environment and config files (``AWS_*`` / ``~/.aws`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for
  gcsfs); ``AWS_ENDPOINT_URL`` points s3fs at any S3-compatible store.
* ``RetryingReader``: a read-only stream over a remote object that, when a read fails (a dropped connection, a
  timeout), reopens the object and continues at the same byte offset, up to ``retries`` times with exponential
  backoff. The bytes handed out are exactly the object's bytes in order, so a tar streamed through it loses
  and repeats no sample. ``MMFM_READ_RETRIES`` (5) and ``MMFM_READ_BACKOFF`` (0.5 s) set the bounds.
* ``upload`` / ``download`` / ``write_bytes`` / ``read_text``: whole files; an object store makes each upload
  visible only once it is complete, and callers upload the file that commits a result (``manifest.json``,
  ``checkpoints/latest``) last.
"""
from __future__ import annotations

import io
import logging
import os
import re
import time
from pathlib import Path

from mmfm.config import ConfigError

log = logging.getLogger("mmfm.data")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# protocol -> the mmfm extra that installs its filesystem (pyproject.toml [project.optional-dependencies])
FS_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
# object stores an image column may name (a table's images next to it in a bucket); other schemes are skipped
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
# a remote read: retries after the first failure, and the first wait (doubled each time); env overrides
RETRIES, BACKOFF = 5, 0.5


def scheme(path) -> str | None:
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path) -> bool:
    """``SCHEME://...`` with a scheme other than ``file``."""
    return scheme(path) not in (None, "file")


def local_path(path) -> Path:
    """A local path or ``file://`` URL -> ``Path``."""
    text = str(path)
    return Path(text[len("file://"):]) if scheme(text) == "file" else Path(text)


def join(base: str, *parts: str) -> str:
    """``s3://b/x`` + ``y`` -> ``s3://b/x/y`` (URLs always use ``/``)."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def url_fs(url: str, what: str = "path"):
    """``(filesystem, path_inside_it)`` for an fsspec URL; a ``ConfigError`` naming ``what`` when no installed
    filesystem handles its scheme."""
    import fsspec
    from fsspec.registry import known_implementations, registry

    proto = scheme(url) or "file"
    if proto not in registry and proto not in known_implementations:
        raise ConfigError(f"{what}: {url}: no installed filesystem handles '{proto}://' (fsspec knows "
                          f"s3, gs, az, hdfs, file, memory, ...; is the scheme misspelled?)")
    try:
        return fsspec.core.url_to_fs(str(url))
    except ImportError as e:
        extra = FS_EXTRAS.get(proto)
        how = f"pip install 'mmfm[{extra}]'" if extra else str(e).splitlines()[0]
        raise ConfigError(f"{what}: {url}: the filesystem for '{proto}://' is not installed ({how})") from None


def check_url(path, what: str) -> None:
    """Fail early (before any work) when ``path`` is a URL whose scheme nothing installed can open."""
    if is_remote(path) and scheme(path) not in ("http", "https"):
        url_fs(str(path), what)


def exists(url: str, what: str = "path") -> bool:
    fs, p = url_fs(url, what)
    return fs.exists(p)


def read_bytes(url: str, what: str = "path") -> bytes:
    fs, p = url_fs(url, what)
    try:
        return fs.cat_file(p)
    except FileNotFoundError:
        raise ConfigError(f"{what}: {url} does not exist") from None


def read_text(url: str, what: str = "path") -> str:
    return read_bytes(url, what).decode("utf-8")


def write_bytes(url: str, data: bytes | str, what: str = "path") -> None:
    """One object, visible only once complete (object stores have no half-written objects)."""
    fs, p = url_fs(url, what)
    fs.pipe_file(p, data.encode("utf-8") if isinstance(data, str) else data)


def upload(local: str | os.PathLike, url: str, what: str = "path") -> None:
    """A local file or folder (recursively) -> ``url``."""
    fs, p = url_fs(url, what)
    local = Path(local)
    if local.is_dir():
        for f in sorted(local.rglob("*")):
            if f.is_file():
                fs.put_file(str(f), f"{p}/{f.relative_to(local).as_posix()}")
    else:
        fs.put_file(str(local), p)


def download(url: str, local: str | os.PathLike, what: str = "path") -> Path:
    """``url`` (a file, or a folder recursively) -> ``local``; returns ``local``."""
    fs, p = url_fs(url, what)
    local = Path(local)
    if fs.isdir(p):
        for f in fs.find(p):
            dest = local / f[len(p.rstrip("/")) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(dest))
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(p, str(local))
    return local


def remove(url: str, what: str = "path") -> None:
    fs, p = url_fs(url, what)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def listing(url: str, what: str = "path") -> dict[str, int]:
    """``{name: size}`` of the files directly inside the folder ``url`` (empty when it does not exist)."""
    fs, p = url_fs(url, what)
    try:
        entries = fs.ls(p, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
            if e.get("type") == "file"}


class RemoteReadError(OSError):
    """A remote object could not be read after the allowed retries; the message names it."""


class RetryingReader(io.RawIOBase):
    """Sequential reads of the object ``url``; a failed read reopens it at the same offset (see module doc)."""

    def __init__(self, url: str, retries: int | None = None, backoff: float | None = None):
        super().__init__()
        self.url = url
        self.retries = int(os.environ.get("MMFM_READ_RETRIES", RETRIES)) if retries is None else int(retries)
        self.backoff = float(os.environ.get("MMFM_READ_BACKOFF", BACKOFF)) if backoff is None else float(backoff)
        self.fs, self.path = url_fs(url, "data source")
        self.pos, self.retried, self._f = 0, 0, None

    def readable(self) -> bool:
        return True

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the connection is gone already
                pass

    def readinto(self, b) -> int:
        for attempt in range(self.retries + 1):
            try:
                if self._f is None:
                    self._f = self.fs.open(self.path, "rb")
                    self._f.seek(self.pos)
                data = self._f.read(len(b))
                break
            except (FileNotFoundError, PermissionError):
                raise
            except Exception as e:  # noqa: BLE001 - dropped connections surface as many exception types
                self._drop()
                if attempt == self.retries:
                    raise RemoteReadError(f"{self.url}: read failed at byte {self.pos} after {self.retries} "
                                          f"retries: {type(e).__name__}: {e}") from None
                self.retried += 1
                wait = self.backoff * 2 ** attempt
                log.warning("%s: read failed at byte %d (%s: %s); retry %d/%d in %.1fs", self.url, self.pos,
                            type(e).__name__, e, attempt + 1, self.retries, wait)
                time.sleep(wait)
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


def open_stream(url: str) -> io.BufferedReader:
    """A buffered, retrying read stream over a remote object (for tar streaming)."""
    return io.BufferedReader(RetryingReader(url), buffer_size=1 << 20)
