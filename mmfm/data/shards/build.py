"""``mmfm shards build``: sources -> the build plan -> an executor -> shard folders with ``manifest.json``.

``build()`` opens the source (config errors surface before anything is written) and hands it to one of two
executors, peers under one plan (``plan.py``: numbering, splits, chunks, dedup, failures, the commit):

- ``executor_local.py`` (``--distributor local``, the default): worker processes on this machine;
- ``executor_ray.py`` (``--distributor ray``): partitions of the input as Ray tasks.

Both write the same samples under the same keys, in the same splits, with the same ``failures.jsonl``; only the
shard boundaries differ. ``out_dir`` may be an fsspec URL (``s3://bucket/shards``): files are written into a
local staging folder and uploaded as each one is finished, ``manifest.json`` last (``store.py``); ``--resume``
reads what it keeps back from the URL.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mmfm.data import fs

from .executor_local import build_local
from .executor_ray import build_partitions
from .options import BuildOptions
from .plan import EmptyBuildError
from .readers import open_source
from .store import Store

__all__ = ["EmptyBuildError", "build"]


def build(opts: BuildOptions, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, dict]:
    """Build shards; returns ``{split_name: manifest}`` (split name ``""`` without ``holdout``). ``out_dir``: a
    folder or an fsspec URL (``s3://...``; an unknown scheme is a ConfigError, never a local folder ``s3:``)."""
    fs.check_url(out_dir, "--out")
    if fs.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix="mmfm-build-") as stage:
            return _build(opts, Store(str(out_dir), Path(stage)), resume, overwrite, progress)
    return _build(opts, Store(str(out_dir)), resume, overwrite, progress)


def _build(opts: BuildOptions, root: Store, resume: bool, overwrite: bool, progress: bool) -> dict[str, dict]:
    source = open_source(opts)   # config errors surface before anything is written
    if opts.distributor.kind == "ray":
        return build_partitions(opts, root, source, resume, overwrite, progress)
    return build_local(opts, root, source, resume, overwrite, progress)
