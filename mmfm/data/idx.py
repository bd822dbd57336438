"""IDX files (the MNIST family's format, gzip or plain) as numpy arrays: read by the Fashion-MNIST recipe
(``mmfm.data.shards.extra_sources``) and the demo's Fashion-MNIST folders (``mmfm.demo.fashion_mnist``)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

from mmfm.config import ConfigError


def read_idx(path: str | Path):
    """An IDX file (gzip or plain) as a uint8 numpy array: ``(N,)`` labels or ``(N, rows, cols)`` images."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such IDX file (Debian: apt-get install dataset-fashion-mnist)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"{path}: unreadable IDX file: {e}") from None
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08 or data[3] not in (1, 3):
        raise ConfigError(f"{path}: not an IDX file of unsigned bytes with 1 or 3 dimensions (magic {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ConfigError(f"{path}: IDX header cut short")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise ConfigError(f"{path}: IDX header says {shape} ({expected} bytes), the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)
