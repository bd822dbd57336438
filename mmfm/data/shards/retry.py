"""``--retry-failures PREVIOUS_BUILD``: build again only the inputs a previous build skipped.

A build lists every skipped input in ``failures.jsonl`` (per split folder), in input order, as
``{"index", "source", "reason", "detail"}``; ``index`` is the input position, which is also the sample key.
A retry reads the same input, keeps the inputs whose index is listed with a reason that another download could
change (not ``duplicate`` nor a row, policy or URL problem) and writes them under their original keys to a new
``--out``. Memory stays flat: the lists are streamed in step with the input (merge by index), and the previous
build's image digests (its shard stats) seed the dedup index, so a retried image that the previous build already
holds is still a ``duplicate``.
"""
from __future__ import annotations

import heapq
import json
from typing import Iterator

from mmfm.config import ConfigError
from mmfm.data import fs

from .manifest import BUILD_ARGS, FAILURES, MANIFEST, stats_name
from .options import BuildOptions
from .store import Store

# decided by the row, a policy or dedup: downloading again gives the same answer (or a wrong sample)
NOT_RETRIED = frozenset({"duplicate", "missing_image", "missing_caption", "empty_caption", "caption_too_short",
                         "caption_not_utf8", "bad_row", "local_file", "private_address", "redirect_scheme",
                         "bad_url", "opted_out"})


def _split_stores(prev: str) -> list[Store]:
    root = Store(str(prev))
    names = root.sizes()
    if FAILURES in names or MANIFEST in names:
        return [root]
    subs = [root.child(n) for n in ("train", "heldout")]
    subs = [s for s in subs if FAILURES in s.sizes()]
    if not subs:
        raise ConfigError(f"--retry-failures: {prev} has no {FAILURES} (nor train/ and heldout/ with one); "
                          "give the --out folder of a previous `mmfm shards build`")
    return subs


def check_previous(prev: str, opts: BuildOptions) -> None:
    """The previous build must have read the same input, or its indices (the keys) name other inputs."""
    root = Store(str(prev))
    if BUILD_ARGS not in root.sizes():
        raise ConfigError(f"--retry-failures: {prev} has no {BUILD_ARGS}; it was not written by `mmfm shards build`")
    before = root.read_json(BUILD_ARGS).get("source", {})
    now = opts.source
    for field in ("path", "type", "image_column", "limit"):
        if before.get(field) != getattr(now, field):
            raise ConfigError(f"--retry-failures: {prev} was built from source.{field}={before.get(field)!r}, this "
                              f"build has {getattr(now, field)!r}; retry with the same input so the keys match")


def _records(store: Store) -> Iterator[dict]:
    url = store.path(FAILURES)
    filesystem, p = fs.url_fs(url, "--retry-failures") if store.remote else (None, url)
    with (filesystem.open(p, "rt", encoding="utf-8") if filesystem else open(p, encoding="utf-8")) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                int(rec["index"])
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{url}: line {lineno} is not a failure record with an 'index'") from None
            yield rec


def failed_indices(prev: str) -> Iterator[int]:
    """The retried input indices of the previous build, ascending (each split's list is in input order)."""
    streams = [(int(r["index"]) for r in _records(s) if r.get("reason") not in NOT_RETRIED)
               for s in _split_stores(prev)]
    last = -1
    for index in heapq.merge(*streams):
        if index > last:
            yield index
            last = index


def count_failed(prev: str) -> int:
    return sum(1 for _ in failed_indices(prev))


def only(items: Iterator[tuple[int, dict]], indices: Iterator[int]) -> Iterator[tuple[int, dict]]:
    """The ``(index, item)`` pairs whose index is in the ascending ``indices``."""
    want = next(indices, None)
    for index, item in items:
        while want is not None and want < index:
            want = next(indices, None)
        if want is None:
            return
        if want == index:
            yield index, item


def previous_digests(prev: str) -> Iterator[list]:
    """Per shard of the previous build, its ``[index, sha256]`` pairs (read one stats file at a time)."""
    for store in _split_stores(prev):
        if MANIFEST not in store.sizes():
            continue
        for shard in store.read_json(MANIFEST)["shards"]:
            yield store.read_json(stats_name(shard["name"])).get("image_sha256", [])
