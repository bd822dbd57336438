"""Does an evaluation's data overlap the model's training data?

A captioner scored CIDEr-D 1.80 on its own training photos while writing nonsense: a score on seen samples says
nothing about the model. ``train_overlap(model, data, keys)`` reads the training sources that the checkpoint's
resolved config names (``data.train``) and compares them with the evaluated data by shard path (the same tar
file, after resolving links) and by sample key (a shard sample's ``__key__``; an image file's name without its
suffix). It returns ``None`` when nothing is shared or when the model names no training data (an export, an
``openclip:`` model), else ``{"train", "shards", "keys", "of", "examples"}``; ``overlap_warning`` words it.

Only local training shards are opened (their tar headers, not their images), at most ``MAX_TRAIN_SHARDS``.
"""
from __future__ import annotations

import os

__all__ = ["train_overlap", "overlap_warning", "mark_overlap", "sample_key", "MAX_TRAIN_SHARDS"]

MAX_TRAIN_SHARDS = 256


def sample_key(name) -> str:
    """The key a sample is matched by: a shard key as it is, a file path as its base name without suffix."""
    text = str(name)
    if ".tar:" in text:                                   # "shard.tar:KEY", as the eval records name samples
        return text.rsplit(":", 1)[1]
    return os.path.splitext(os.path.basename(text))[0]


def _train_specs(model) -> list[str]:
    if not isinstance(model, (str, os.PathLike)) or str(model).startswith("openclip:"):
        return []
    try:
        from mmfm.models.layout import read_config
        return [s.path for s in read_config(model).data.train]
    except Exception:  # noqa: BLE001 - no stored config (an export, a bare state dict): nothing to compare
        return []


def _local_shards(spec: str) -> list[str]:
    from mmfm.data import fs
    from mmfm.data.sources import resolve_source
    try:
        return [os.path.realpath(s.url) for s in resolve_source(spec).shards if not fs.is_remote(s.url)]
    except Exception:  # noqa: BLE001 - training data moved or gone: nothing to compare
        return []


def _shard_keys(urls: list[str]) -> set[str]:
    from mmfm.data.sources import scan_tar
    keys: set[str] = set()
    for u in urls[:MAX_TRAIN_SHARDS]:
        try:
            keys.update(k for k, _ in scan_tar(u))
        except Exception:  # noqa: BLE001 - an unreadable shard is the trainer's concern, not this check's
            continue
    return keys


def _eval_shards(data) -> list[str]:
    if data is None:
        return []
    from .records import is_shard_source
    return _local_shards(str(data)) if is_shard_source(data) else []


def train_overlap(model, data=None, keys=None) -> dict | None:
    """What ``data`` (a path) and the sample ``keys`` (shard keys or file paths) share with ``model``'s training
    data; ``None`` when nothing."""
    specs = _train_specs(model)
    if not specs:
        return None
    train = [u for s in specs for u in _local_shards(s)]
    if not train:
        return None
    evaluated = _eval_shards(data)
    shared_shards = sorted(set(evaluated) & set(train))
    if keys is None and evaluated:
        keys = sorted(_shard_keys([u for u in evaluated if u not in set(shared_shards)]))
    wanted = {sample_key(k) for k in (keys or [])}
    shared_keys = sorted(wanted & _shard_keys(train)) if wanted else []
    if not shared_shards and not shared_keys:
        return None
    return {"train": specs, "shards": shared_shards, "keys": len(shared_keys), "of": len(wanted),
            "examples": shared_keys[:5]}


def overlap_warning(ov: dict, what: str = "the evaluation data") -> str:
    """One line for stderr / the notes."""
    parts = []
    if ov["shards"]:
        parts.append(f"{len(ov['shards'])} shard(s) ({os.path.basename(ov['shards'][0])}"
                     f"{', ...' if len(ov['shards']) > 1 else ''})")
    if ov["keys"]:
        parts.append(f"{ov['keys']} of {ov['of']} sample keys (e.g. {', '.join(ov['examples'][:3])})")
    return (f"WARNING: {what} overlaps the model's training data ({', '.join(ov['train'])}): "
            f"{' and '.join(parts)}; scores on seen samples overstate the model")


def mark_overlap(result, model, data=None, keys=None) -> str | None:
    """Record ``train_overlap`` in ``result.meta`` when there is one, and return its warning (else ``None``)."""
    ov = train_overlap(model, data, keys)
    if ov is None:
        return None
    result.meta["train_overlap"] = ov
    return overlap_warning(ov, str(data) if data is not None else "the evaluation data")
