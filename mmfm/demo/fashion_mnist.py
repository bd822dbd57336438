"""Fashion-MNIST as image folders: an "old domain" of real photographs for forgetting checks.

Debian's ``dataset-fashion-mnist`` installs Zalando's four IDX files (``train-images-idx3-ubyte.gz`` ...) in
``/usr/share/datasets/fashion-mnist``. :func:`write_fashion_folders` writes a seeded, class-balanced sample of
them as ``root/train/<class>/<index>.png`` and ``root/test/<class>/<index>.png`` (28x28 greyscale saved as RGB)
with ``root/classnames.txt``, the tree ``mmfm zeroshot`` and ``mmfm eval compare --probe-train`` read. The IDX
reader checks the magic number, the sizes and the label range, and names the file it refuses. Data for the demo
and ``tools/continued_pretraining.py``, so it lives in ``mmfm.demo``, not in the core ``mmfm.data``.
"""
from __future__ import annotations

import io
from pathlib import Path

from mmfm.config import ConfigError, atomic_write, atomic_write_text
from mmfm.data.idx import read_idx
from mmfm.data.shards.extra_sources import FASHION_CLASSES

__all__ = ["CLASSES", "DEFAULT_DIR", "read_idx", "write_fashion_folders"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
# Zalando's label order (fashion-mnist README), as plain-English class names for zero-shot prompts.
CLASSES = FASHION_CLASSES
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _split(source: Path, split: str):
    images_file, labels_file = (source / name for name in _FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError(f"{images_file}: {images.shape} images do not match {labels_file}: {labels.shape} labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise ConfigError(f"{labels_file}: label {int(labels.max())} is outside the {len(CLASSES)} classes")
    return images, labels


def _pick(labels, per_class: int, seed: int) -> list[int]:
    """``per_class`` seeded indices of every class, in index order (all of a class when it has fewer)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        rows += sorted(rng.permutation(idx)[:per_class].tolist())
    return sorted(rows)


def write_fashion_folders(root: str | Path, *, train_per_class: int = 100, test_per_class: int = 100,
                          seed: int = 0, source: str | Path = DEFAULT_DIR) -> dict[str, Path]:
    """Write ``root/{train,test}/<class>/<index>.png`` and ``root/classnames.txt``; returns the two folders and
    the classnames file. Idempotent: an image already written is kept (each file is written then renamed)."""
    from PIL import Image
    root, source = Path(root), Path(source)
    out = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = _split(source, split)
        folder = root / split
        for i in _pick(labels, per_class, seed):
            path = folder / CLASSES[int(labels[i])].replace(" ", "_") / f"{split}_{i:05d}.png"
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(images[i]).convert("RGB").save(buf, format="PNG")
            atomic_write(path, buf.getvalue())
        out[split] = folder
    # class folders sort by name in scan_folder; the names file follows that order
    names = sorted(CLASSES, key=lambda c: c.replace(" ", "_"))
    out["classnames"] = atomic_write_text(root / "classnames.txt", "".join(f"{c}\n" for c in names))
    return out
