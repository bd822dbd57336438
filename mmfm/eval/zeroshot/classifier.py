"""The zero-shot text classifier: open_clip's ``build_zero_shot_classifier`` recipe (normalised prompt embeddings,
mean over templates, re-normalised), computed once per (checkpoint identity, class names, templates, precision) and
cached on disk (``$MMFM_CACHE`` or ``~/.cache/mmfm``)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mmfm.models.device import model_device

from ..embedding import effective_precision, encode_texts
from .templates import build_prompts

__all__ = ["build_classifier", "classifier_key", "checkpoint_identity", "cache_dir"]


def checkpoint_identity(spec: str | None) -> str | None:
    """A string that changes when the checkpoint's files change (path + size + mtime of each file)."""
    if spec is None:
        return None
    parts = [spec]
    path = spec.split(":", 2)[2] if spec.startswith("openclip:") and spec.count(":") >= 2 else spec
    p = Path(path)
    if p.is_file():
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    elif p.is_dir():
        for i, f in enumerate(sorted(p.rglob("*"))):
            if i >= 2000:
                break
            if f.is_file() and f.suffix in (".safetensors", ".pt", ".pth", ".bin", ".json", ".yaml", "") :
                st = f.stat()
                parts.append(f"{f.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}")
        parts.append(str(p.resolve()))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    base = os.environ.get("MMFM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mmfm")
    return Path(base)


def classifier_key(model_id: str | None, classnames, templates, precision: str) -> str | None:
    if model_id is None:
        return None
    blob = json.dumps([model_id, list(classnames), list(templates), precision])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def build_classifier(model, classnames: list[str], templates: list[str], *, batch_size: int = 256,
                     precision: str = "auto", cache: str | None = None, model_id: str | None = None,
                     progress: bool = False):
    """Zero-shot weights (D, C): open_clip's recipe, batched over all prompts; cached when ``model_id``."""
    prec = effective_precision(model_device(model), precision)
    key = classifier_key(model_id, classnames, templates, prec)
    path = cache_dir(cache) / "zeroshot" / f"{key}.safetensors" if key else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file
        try:
            return load_file(str(path))["classifier"]
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            pass
    prompts = build_prompts(classnames, templates)
    emb = encode_texts(model, prompts, batch_size=batch_size, precision=precision, progress=progress,
                       desc="text classifier")
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    weights = (emb / emb.norm(dim=1, keepdim=True)).T.contiguous()
    if path is not None:
        _save_classifier(path, weights, model_id, classnames, templates)
    return weights


def _save_classifier(path, weights, model_id, classnames, templates) -> None:
    from safetensors.torch import save

    from mmfm.config import atomic_write
    meta = {"model_id": str(model_id), "n_classes": str(len(classnames)), "n_templates": str(len(templates))}
    atomic_write(path, save({"classifier": weights}, metadata=meta))
