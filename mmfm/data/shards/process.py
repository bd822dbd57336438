"""Worker side of the builder: item -> encoded WebDataset sample, or a failure reason.

Module-level, picklable functions: ``init_worker`` sets the options once per process and
``process_chunk`` handles a list of ``(index, item)`` pairs, downloading URLs concurrently, and returns one
``ItemResult`` per input, in input order (both executors, local processes and Ray, consume these).
"""
from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .download import fetch, is_url, set_host_slots
from .imageops import Skip, process_bytes, process_pil, single_threaded_codecs
from .options import BuildOptions

@dataclass(slots=True)
class ItemResult:
    """One input's outcome: an encoded sample and its image digest, or the reason it was skipped."""
    index: int                     # the input's position in the source (its sample key)
    split: int = 0                 # the output split it was routed to (plan.route)
    sample: dict | None = None     # the encoded WebDataset sample, when ok
    digest: str = ""               # sha256 of the image, when ok (dedup)
    reason: str = ""               # why it was skipped (http_404, duplicate, ...), when not ok
    detail: str = ""
    source: str = ""               # the input's path or URL, for the failure record

    @property
    def ok(self) -> bool:
        return self.sample is not None

    def duplicate(self) -> "ItemResult":
        """This good sample, skipped as a duplicate of an earlier one."""
        return ItemResult(self.index, self.split, reason="duplicate", source=json.loads(self.sample["json"])["source"])

    def failure(self) -> dict:
        """The line ``failures.jsonl`` holds for a skipped input."""
        return {"index": self.index, "source": self.source, "reason": self.reason, "detail": self.detail}


def failed_results(chunk: list[tuple[int, dict]], reason: str, detail: str) -> list[ItemResult]:
    """Every input of a chunk, skipped for one reason (a worker that timed out or crashed)."""
    return [ItemResult(i, it.get("split", 0), reason=reason, detail=detail, source=it.get("source", ""))
            for i, it in chunk]


_OPTS: BuildOptions | None = None
_POOL: ThreadPoolExecutor | None = None


def init_worker(opts: BuildOptions, host_slots: list | None = None) -> None:
    """Per process: the options, and the ``download.per_host`` semaphores shared by all workers (if any)."""
    global _OPTS, _POOL
    _OPTS, _POOL = opts, None
    set_host_slots(host_slots)
    single_threaded_codecs()


def sample_key(index: int) -> str:
    return f"{index:09d}"


def check_text(value: Any, min_len: int) -> str:
    """A caption/question -> clean str, or ``Skip`` (missing_caption, empty_caption, caption_not_utf8...)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise Skip("missing_caption")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Skip("caption_not_utf8") from None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes from a file that is not UTF-8
        raise Skip("caption_not_utf8") from None
    value = " ".join(value.split())
    if not value and min_len > 0:
        raise Skip("empty_caption")
    if len(value) < min_len:
        raise Skip("caption_too_short", f"{len(value)} < {min_len}")
    return value


def _texts(item: dict, opts: BuildOptions) -> list[str]:
    raw = item.get("captions") or [None]
    texts = []
    for i, value in enumerate(raw):
        try:
            texts.append(check_text(value, opts.text.min_caption_length))
        except Skip:
            if i == 0:  # the first caption is the sample's txt; extra bad ones are dropped
                raise
    return texts


def _load(item: dict, opts: BuildOptions) -> tuple[bytes | None, Any]:
    """Returns (source bytes, rendered PIL image or None)."""
    if item.get("emoji"):
        from .emoji import render
        return None, render(item["emoji"], item["font"])
    if item.get("load"):                  # SVG, IDX rows, skimage photos; placeholders skipped (extra_sources)
        from .extra_sources import load_image
        rendered = load_image(item["load"], opts.image.size)
        if rendered is not None:
            return None, rendered
    if not item.get("src"):
        raise Skip("missing_image")
    return fetch(item["src"], opts.download), None


def make_sample(index: int, item: dict, texts: list[str], opts: BuildOptions, data: bytes | None,
                rendered: Any) -> tuple[dict, str]:
    if rendered is not None:
        digest = hashlib.sha256(rendered.tobytes() + repr(rendered.size).encode()).hexdigest()
        image, orig = process_pil(rendered, opts.image)
    else:
        digest = hashlib.sha256(data).hexdigest()
        image, orig = process_bytes(data, opts.image)
    meta = {"captions": texts, "source": item.get("source", item.get("src", "")), "orig_size": list(orig),
            "sha256": digest, **item.get("meta", {})}
    if "question" in item:
        meta.update(question=texts[0], answers=item.get("answers") or [], answer_type=item.get("answer_type"))
    sample = {"__key__": sample_key(index), opts.image.format: image, "txt": texts[0].encode("utf-8"),
              "json": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8",
                                                                                                "replace")}
    if item.get("cls") is not None:
        sample["cls"] = str(int(item["cls"])).encode("ascii")
    return sample, digest


def _fetch_safe(item: dict, opts: BuildOptions):
    try:
        return _load(item, opts), None
    except Skip as e:
        return (None, None), e
    except Exception as e:  # noqa: BLE001 - never let one input kill the build
        return (None, None), Skip("read_error", f"{type(e).__name__}: {e}")


def _precheck(item: dict, opts: BuildOptions) -> list[str] | Skip:
    """Row-level problems are found before any download: a bad row costs nothing."""
    try:
        if item.get("error"):
            raise Skip(item["error"], item.get("error_detail", ""))
        return _texts(item, opts)
    except Skip as e:
        return e


def _fetch_all(todo: list[dict], opts: BuildOptions) -> list:
    global _POOL
    remote = sum(1 for it in todo if is_url(it.get("src") or "") and not it["src"].startswith("file:"))
    if remote > 1 and opts.download.threads > 1:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(opts.download.threads, thread_name_prefix="mmfm-dl")
        futures = [_POOL.submit(_fetch_safe, it, opts) for it in todo]
        return [f.result() for f in futures]
    return [_fetch_safe(it, opts) for it in todo]


def process_chunk(chunk: list[tuple[int, dict]]) -> list[ItemResult]:
    """-> one ``ItemResult`` per ``(index, item)``, in input order."""
    opts = _OPTS
    assert opts is not None, "init_worker was not called"
    checked = [_precheck(item, opts) for _, item in chunk]
    todo = [item for (_, item), c in zip(chunk, checked) if not isinstance(c, Skip)]
    loaded = iter(_fetch_all(todo, opts))
    out = []
    for (index, item), texts in zip(chunk, checked):
        split = item.get("split", 0)
        try:
            if isinstance(texts, Skip):
                raise texts
            (data, rendered), err = next(loaded)
            if err is not None:
                raise err
            sample, digest = make_sample(index, item, texts, opts, data, rendered)
            out.append(ItemResult(index, split, sample=sample, digest=digest))
        except Skip as e:
            out.append(ItemResult(index, split, reason=e.reason, detail=e.detail, source=item.get("source", "")))
        except Exception as e:  # noqa: BLE001
            out.append(ItemResult(index, split, reason="decode_error", detail=f"{type(e).__name__}: {e}",
                                  source=item.get("source", "")))
    return out
