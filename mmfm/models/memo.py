"""Memoised outputs of a locked (frozen, eval-mode) tower: what a frozen part computes, computed once per input.

LiT trains only the projections on top of locked towers, so a tower's output for a given input never changes
during training. When training sees the same preprocessed inputs again (no random augmentation: every epoch
shows each image and caption exactly as before), :class:`RowMemo` returns the stored output rows and runs the
tower only on the rows it has not seen. Rows are keyed by a hash of their exact bytes, so a changed input is a
new key: the result always equals running the tower (it is never stale), and only the speed depends on repeats.

Persisted (``model.vision.memo_dir`` / ``model.text.memo_dir``): a memo opened with a folder reads, on its first
use in training, ``DIR/NAME-FINGERPRINT.safetensors`` and :func:`save_memos` (the trainer, at checkpoints and at
the end) writes it back atomically, so a later run on the same inputs starts with every row known. The fingerprint
hashes what the output depends on besides the input: the locked weights (every tensor of the state the memo
covers), the memo's identity (tower part, pooling, library versions) and how it runs (device type, autocast
dtype). A file whose fingerprint differs is never read (a log line names it); the run builds its own file.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["RowMemo", "memos", "save_memos", "state_fingerprint"]

log = logging.getLogger(__name__)
_FORMAT = "mmfm.rowmemo/1"


class RowMemo:
    """``memo(rows, keys, compute) -> (B, D)``: row ``i``'s output is the stored one for ``keys[i]`` or comes from
    ``compute(index_tensor)`` (run once on all missing rows). Stores at most ``max_bytes`` of outputs (then it
    keeps what it has and computes the rest), on the CPU."""

    def __init__(self, max_bytes: int = 256 * 2**20, name: str = "memo", directory: str | None = None,
                 identity: Callable[[], str] | None = None):
        self.max_bytes = max_bytes
        self.store: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        self.hits = self.misses = 0
        self.name, self.directory, self.identity = name, directory, identity   # persisted: see the module doc
        self.path: Path | None = None       # the file, once opened (first use in training)
        self.loaded = 0                     # rows read from it
        self.saved = 0                      # rows in the store when last read or written
        self._fingerprint = ""

    def open(self, device: torch.device) -> None:
        """Read the persisted rows made by the same locked weights, if any (once; called on first use)."""
        if self.path is not None or not self.directory or self.identity is None:
            return
        fp = self._fingerprint = _run_fingerprint(self.name, self.identity(), device)
        self.path = Path(os.path.expanduser(self.directory)) / f"{self.name}-{fp[:20]}.safetensors"
        others = [p.name for p in self.path.parent.glob(f"{self.name}-*.safetensors") if p != self.path]
        if others:
            log.info("memo %s: ignoring %s in %s (made by other locked weights or settings); using %s",
                     self.name, ", ".join(sorted(others)), self.path.parent, self.path.name)
        if self.path.is_file():
            self.loaded = self._read(fp)
        self.saved = len(self.store)

    def _read(self, fp: str) -> int:
        from safetensors import safe_open
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _FORMAT or meta.get("fingerprint") != fp or meta.get("name") != self.name:
                    log.warning("memo %s: %s has another fingerprint or format; ignored, rebuilt", self.name,
                                self.path)
                    return 0
                groups = sorted({k.split(".", 1)[1] for k in f.keys()})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - a damaged file is rebuilt, never trusted
            log.warning("memo %s: cannot read %s (%s); ignored, rebuilt", self.name, self.path, e)
            return 0
        n = 0
        for g in groups:
            for key, row in zip(tensors[f"keys.{g}"], tensors[f"rows.{g}"]):
                if self.nbytes >= self.max_bytes:
                    break
                k = bytes(key.tolist())
                if k not in self.store:
                    self.store[k] = row.clone()
                    self.nbytes += row.numel() * row.element_size()
                    n += 1
        log.info("memo %s: %d rows from %s", self.name, n, self.path)
        return n

    def save(self) -> Path | None:
        """Write the store to its file (temp + rename) when it holds rows the file lacks; returns the path."""
        if self.path is None or len(self.store) == self.saved:
            return None
        from safetensors.torch import save_file

        from mmfm.config.files import atomic_path
        groups: dict[tuple, list[tuple[bytes, torch.Tensor]]] = {}
        for k, row in self.store.items():
            groups.setdefault((tuple(row.shape), str(row.dtype)), []).append((k, row))
        tensors = {}
        for i, items in enumerate(groups.values()):
            tensors[f"keys.{i}"] = torch.frombuffer(bytearray(b"".join(k for k, _ in items)),
                                                    dtype=torch.uint8).view(len(items), -1)
            tensors[f"rows.{i}"] = torch.stack([r for _, r in items]).contiguous()
        meta = {"format": _FORMAT, "name": self.name, "fingerprint": self._fingerprint,
                "rows": str(len(self.store))}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)          # shared like the run's other files
        self.saved = len(self.store)
        return self.path

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        data = row.detach().contiguous().cpu().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16, person=str(tuple(row.shape)).encode()[:16]).digest()

    def __call__(self, keys: list[bytes], compute: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device) -> torch.Tensor:
        if self.directory and self.path is None:
            self.open(device)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute(torch.tensor(missing, dtype=torch.long, device=device)).detach() if missing else None
        if fresh is not None:
            for j, i in enumerate(missing):
                if self.nbytes >= self.max_bytes:
                    break
                if keys[i] not in self.store:
                    row = fresh[j].cpu().clone()
                    self.store[keys[i]] = row
                    self.nbytes += row.numel() * row.element_size()
        rows: list[torch.Tensor | None] = [None] * len(keys)
        for j, i in enumerate(missing):
            rows[i] = fresh[j]
        for i, k in enumerate(keys):
            if rows[i] is None:
                rows[i] = self.store[k].to(device)
        return torch.stack(rows)


def state_fingerprint(named: Iterable[tuple[str, torch.Tensor]], *identity: object) -> str:
    """A hash of named tensors (names, dtypes, shapes, bytes) and ``identity``: what a locked part computes with."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(identity).encode())
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _run_fingerprint(name: str, identity: str, device: torch.device) -> str:
    """The locked part's fingerprint + how this run computes it (device type, autocast, torch version)."""
    dev = torch.device(device).type
    amp = torch.is_autocast_enabled(dev) and str(torch.get_autocast_dtype(dev))
    h = hashlib.blake2b(f"{name}|{identity}|{dev}|{amp}|{torch.__version__}".encode(), digest_size=20)
    return h.hexdigest()


def memos(model: nn.Module) -> list[RowMemo]:
    """Every RowMemo held by ``model``'s modules (a wrapper such as DDP included)."""
    found: dict[int, RowMemo] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, RowMemo):
                found.setdefault(id(value), value)
    return list(found.values())


def save_memos(model: nn.Module) -> list[Path]:
    """Write each persisted memo of ``model`` that gained rows since it was read or written (one process of a
    distributed run calls it: it writes that process's rows)."""
    return [p for m in memos(model) if (p := m.save()) is not None]
