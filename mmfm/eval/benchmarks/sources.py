"""Benchmark data in the layouts CLIP_benchmark users already have on disk or on a server.

``open_benchmark(spec)`` understands

* a CLIP_benchmark WebDataset folder (a local path or any fsspec URL), as written by its
  ``clip_benchmark_export_wds``::

      ROOT/classnames.txt                           one class name per line (classification)
      ROOT/zeroshot_classification_templates.txt    one template per line, ``{c}`` for the class name
      ROOT/dataset_type.txt                         optional: ``retrieval`` (else classification)
      ROOT/test/nshards.txt                         the number of shards N
      ROOT/test/0.tar ... ROOT/test/{N-1}.tar       samples: an image (webp, png, jpg or jpeg: the first
                                                    present, in that order) and ``cls`` (an integer) or
                                                    ``txt`` (retrieval: one caption per line)

  ``wds/NAME`` (CLIP_benchmark's dataset name) resolves through ``dataset_root``, a template with
  ``{dataset}`` and ``{dataset_cleaned}`` as CLIP_benchmark's ``--dataset_root``; a Hugging Face
  ``.../datasets/OWNER/REPO/tree/BRANCH`` root is read from its raw and resolve paths, as CLIP_benchmark does;
* ``torchvision:NAME:ROOT`` (or ``torchvision/NAME`` with ``dataset_root``): a torchvision dataset class already
  downloaded under ROOT, opened with ``download=False`` (nothing is downloaded).

A missing ``nshards.txt``, ``classnames.txt``, templates file or listed shard is one ``ConfigError`` line naming
the file. Every metadata file is read through fsspec (never a shell).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmfm.config import ConfigError
from mmfm.data import fs

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")       # CLIP_benchmark's order: the first one present is the image
CLASSIFICATION, RETRIEVAL = "zeroshot_classification", "zeroshot_retrieval"


@dataclass
class Benchmark:
    name: str                                  # CLIP_benchmark's "dataset" column: wds/NAME, torchvision/CIFAR10
    source: str                                # the folder / URL / torchvision root
    task: str                                  # CLASSIFICATION or RETRIEVAL
    classnames: list[str] | None = None
    templates: list[str] | None = None
    shards: list[str] = field(default_factory=list)      # WebDataset tars, in order
    dataset: object = None                     # a map-style torchvision dataset (PIL image, int target)
    split: str = "test"

    def describe(self) -> dict:
        out = {"dataset": self.name, "source": self.source, "split": self.split, "task": self.task,
               "format": "torchvision" if self.dataset is not None else "clip_benchmark-wds"}
        if self.classnames is not None:
            out["n_classes"] = len(self.classnames)
        if self.shards:
            out["n_shards"] = len(self.shards)
        return out


# ----------------------------------------------------------------------------- spec -> Benchmark
def is_benchmark_source(spec: str) -> bool:
    """True for ``wds/...``, ``torchvision:...`` and a folder/URL holding CLIP_benchmark's layout."""
    s = str(spec)
    if s.startswith(("wds/", "torchvision:", "torchvision/")):
        return True
    if fs.is_remote(s):
        return fs.exists(fs.join(s, "test", "nshards.txt")) or fs.exists(fs.join(s, "classnames.txt"))
    # a test/ folder too: an image folder with a classnames.txt beside its class folders stays an image folder
    return os.path.isdir(os.path.join(s, "test")) and (os.path.isfile(os.path.join(s, "test", "nshards.txt"))
                                                       or os.path.isfile(os.path.join(s, "classnames.txt")))


def open_benchmark(spec: str, *, dataset_root: str | None = None, split: str = "test") -> Benchmark:
    """The benchmark ``spec`` names (see the module doc)."""
    s = str(spec).strip()
    if s.startswith("torchvision:"):
        parts = s.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ConfigError(f"dataset {s!r}: expected torchvision:NAME:ROOT, e.g. torchvision:CIFAR10:data/cifar")
        return open_torchvision(parts[1], parts[2], split)
    if s.startswith(("wds/", "torchvision/")):
        if not dataset_root:
            raise ConfigError(f"dataset {s!r}: a CLIP_benchmark dataset name needs --dataset-root (a folder or a "
                              f"template such as 'benchmarks/{{dataset_cleaned}}')")
        prefix, name = s.split("/", 1)
        root = dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))
        if prefix == "torchvision":
            return open_torchvision(name, root, split)
        return open_wds(root, split, name=s)
    return open_wds(s, split)


def _hf_dirs(root: str) -> tuple[str, str]:
    """(metadata dir, tar dir): a Hugging Face ``.../tree/BRANCH`` page serves files from ``raw/`` and
    LFS tars from ``resolve/`` (CLIP_benchmark reads them the same way); any other root is both."""
    if root.startswith("https://huggingface.co/datasets/") and "/tree/" in root:
        head, tail = root.split("/tree/", 1)
        return f"{head}/raw/{tail}", f"{head}/resolve/{tail}"
    return root, root


def _join(root: str, *parts: str) -> str:
    return fs.join(root, *parts) if fs.is_remote(root) else os.path.join(root, *parts)


def _read(path: str, what: str) -> str | None:
    """The text of ``path`` (local or fsspec URL), None when it does not exist."""
    if fs.is_remote(path):
        try:
            return fs.read_text(path, what) if fs.exists(path, what) else None
        except (FileNotFoundError, ConfigError):
            return None
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def _require(path: str, why: str) -> str:
    text = _read(path, why)
    if text is None:
        raise ConfigError(f"{path} is missing ({why})")
    return text


def open_wds(root: str, split: str = "test", *, name: str | None = None) -> Benchmark:
    """A CLIP_benchmark WebDataset folder (module doc). Class names and templates come from its files."""
    root = str(root).rstrip("/") if fs.is_remote(str(root)) else str(root)
    if not fs.is_remote(root) and not os.path.isdir(root):
        raise ConfigError(f"benchmark folder not found: {root}")
    meta, tars = _hf_dirs(root)
    nshards_file = _join(meta, split, "nshards.txt")
    text = _require(nshards_file, "the number of shards of the split")
    try:
        n = int(text.strip())
    except ValueError:
        raise ConfigError(f"{nshards_file}: expected an integer, got {text.strip()[:40]!r}") from None
    if n < 1:
        raise ConfigError(f"{nshards_file}: {n} shards")
    kind = (_read(_join(meta, "dataset_type.txt"), "dataset type") or "classification").strip().lower()
    if kind not in ("classification", "retrieval"):
        raise ConfigError(f"{_join(meta, 'dataset_type.txt')}: dataset type {kind!r} is not supported "
                          f"(classification or retrieval)")
    shards = [_join(tars, split, f"{i}.tar") for i in range(n)]
    _check_shards(shards, nshards_file)
    bench = Benchmark(name or f"wds/{os.path.basename(root.rstrip('/'))}", root,
                      RETRIEVAL if kind == "retrieval" else CLASSIFICATION, shards=shards, split=split)
    if bench.task == CLASSIFICATION:
        bench.classnames = _lines(_require(_join(meta, "classnames.txt"), "class names, one per line"))
        tmpl = _read(_join(meta, "zeroshot_classification_templates.txt"), "templates")
        bench.templates = _lines(tmpl) if tmpl is not None else None
    return bench


def _lines(text: str) -> list[str]:
    # CLIP_benchmark: [line.strip() for line in text.splitlines()]
    return [ln.strip() for ln in text.splitlines()]


def _check_shards(shards: list[str], nshards_file: str) -> None:
    for url in shards:
        there = fs.exists(url, "benchmark shard") if fs.is_remote(url) else os.path.isfile(url)
        if not there:
            raise ConfigError(f"{url} is missing ({nshards_file} lists {len(shards)} shards)")


# ----------------------------------------------------------------------------- torchvision on disk
def open_torchvision(name: str, root: str, split: str = "test") -> Benchmark:
    """``torchvision.datasets.<name>`` under ``root`` with ``download=False``; its ``classes`` are the class names.
    Files are read as they are on disk: the md5 sums torchvision checks are those of its downloads."""
    import inspect

    import torchvision.datasets as tvd
    cls = getattr(tvd, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"torchvision has no dataset {name!r} (e.g. CIFAR10, CIFAR100, MNIST, Food101, DTD)")
    if not os.path.isdir(root):
        raise ConfigError(f"torchvision:{name}: dataset root not found: {root}")
    cls = _listed_files_checked(cls, root, split)
    params = inspect.signature(cls.__init__).parameters
    kw = {"download": False} if "download" in params else {}
    if "split" in params:
        kw["split"] = split
    elif "train" in params:
        kw["train"] = split == "train"
    try:
        ds = cls(root, **kw)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"torchvision:{name}:{root}: {e}") from None
    classes = getattr(ds, "classes", None)
    if not classes:
        raise ConfigError(f"torchvision:{name}:{root}: the dataset has no .classes to build prompts from")
    return Benchmark(f"torchvision/{name}", root, CLASSIFICATION, classnames=[str(c) for c in classes],
                     dataset=ds, split=split)


def _listed_files_checked(cls, root: str, split: str):
    """For datasets that list their files (CIFAR-style ``base_folder``, ``train_list``/``test_list``, ``meta``):
    a missing one is an error naming it, and a present one is read without the download's md5 check."""
    base = getattr(cls, "base_folder", None)
    listed = getattr(cls, "train_list" if split == "train" else "test_list", None)
    meta = getattr(cls, "meta", None)
    if not (base and listed and isinstance(meta, dict)):
        return cls
    for fname in [f[0] for f in listed] + [meta["filename"]]:
        path = os.path.join(root, base, fname)
        if not os.path.isfile(path):
            raise ConfigError(f"{path} is missing (torchvision {cls.__name__} layout under {root})")
    return _on_disk(cls)


def _on_disk(cls):
    import pickle

    def _check_integrity(self):
        return True                             # presence was checked file by file above

    def _load_meta(self):
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return type(cls.__name__, (cls,), {"_check_integrity": _check_integrity, "_load_meta": _load_meta})
