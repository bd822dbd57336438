"""Atomic writes, the one way: write under a temp name beside the target, then rename it into place.

Readers see the old file (or folder) or the new one, never half of one, and a crash leaves only a dot-named temp.

* ``atomic_write(path, data)``: bytes or UTF-8 text.
* ``atomic_path(path)``: a temp name for anything another writer creates (``save_file``, a symlink, a stream).
* ``atomic_dir(target)``: a temp folder to fill; it replaces ``target`` (an old folder included) at the end.
* ``temp_dir_beside(target)`` + ``replace_dir(tmp, target)``: the same in two steps, for a folder that several
  processes fill before one of them publishes it (a sharded checkpoint).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "atomic_write_text", "replace_dir", "temp_dir_beside"]


def _unlink(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (a stale one removed) to create a file or symlink at; when the block
    ends without error it is renamed onto ``path``, when the block raises it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _unlink(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _unlink(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through a temp file + ``os.replace``: readers see the old file
    or the new one, never half of it. ``fsync`` also forces the bytes to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def temp_dir_beside(target: str | os.PathLike) -> Path:
    """A new empty folder ``.NAME.tmpXXXX`` beside ``target``, with the permissions a plain ``mkdir`` gives
    (``mkdtemp`` makes 0700; outputs are shared like any other folder)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the finished folder ``tmp`` onto ``target``. An existing ``target`` is first renamed aside and
    removed afterwards, so ``target`` is never missing its files, only briefly absent between two renames."""
    tmp, target = Path(tmp), Path(target)
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``target`` to fill; when the block ends without error it replaces ``target``
    (:func:`replace_dir`), when the block raises it is removed and ``target`` is left as it was."""
    tmp = temp_dir_beside(target)
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
