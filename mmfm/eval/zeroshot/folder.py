"""Image folders for zero-shot evaluation.

``scan_folder(root)`` understands two layouts:

* ``root/<class>/.../*.jpg`` (one subfolder per class, sorted like torchvision's ``ImageFolder``):
  labelled, so accuracy metrics can be computed;
* ``root/*.jpg`` (flat): unlabelled, predictions only; the candidate labels come from ``labels``
  (e.g. ``--labels "cat,dog"``) or a classnames file.

Files that are not images (by extension) are skipped at scan time, images that fail to decode are
skipped at load time; both are listed with their reason. Class names are tidied (``golden_retriever``
-> ``golden retriever``) unless a classnames file gives them.

Images are opened with :func:`mmfm.data.decode.decode_image`, the one decoder (and the one oversize rule).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmfm.config import ConfigError, InputError
from mmfm.data.decode import DEFAULT_MAX_PIXELS, decode_image
from mmfm.data.sampling import even_indices

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class FolderSpec:
    root: str
    paths: list[str]                 # image files, relative to root, in a stable order
    targets: list[int]               # class index per image, -1 when unlabelled
    classes: list[str]               # folder names (labelled) or candidate labels (flat)
    classnames: list[str]            # the names put into the prompts
    labelled: bool
    skipped: list[dict] = field(default_factory=list)   # {"path", "reason"}

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict:
        return {"folder": self.root, "layout": "class-subfolders" if self.labelled else "flat",
                "n_image_files": len(self.paths), "n_classes": len(self.classes), "n_skipped": len(self.skipped)}


def tidy_classname(name: str) -> str:
    """``golden_retriever`` -> ``golden retriever`` (underscores to spaces, whitespace collapsed)."""
    return " ".join(name.replace("_", " ").split())


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def _walk_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        out += [Path(dirpath) / f for f in sorted(filenames) if _visible(f)]
    return out


def list_images(folder: str | os.PathLike) -> list[str]:
    """Every image file (by extension) below ``folder``, recursively, sorted; hidden files skipped."""
    return sorted(str(f) for f in _walk_files(Path(folder)) if _is_image(f.name))


def read_classnames(path: str | os.PathLike, classes: list[str] | None = None) -> list[str]:
    """Class names from a file: one per line, a JSON list, or a JSON object ``{folder: name}``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"classnames file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"classnames file {p} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            if classes is None:
                return [str(v) for v in data.values()]
            missing = [c for c in classes if c not in data]
            if missing:
                raise ConfigError(f"classnames file {p} has no entry for class folder(s): {', '.join(missing[:10])}")
            return [str(data[c]) for c in classes]
        if not isinstance(data, list):
            raise ConfigError(f"classnames file {p} must hold a JSON list or object")
        names = [str(x) for x in data]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if classes is not None and len(names) != len(classes):
        raise ConfigError(f"classnames file {p} has {len(names)} names but the folder has {len(classes)} "
                          f"class folders ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
    return names


def parse_labels(labels: str | list[str]) -> list[str]:
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out = [s.strip() for s in items if s.strip()]
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise ConfigError(f"--labels: duplicate label(s): {', '.join(dup)}")
    return out


def scan_folder(root: str | os.PathLike, *, labels: str | list[str] | None = None,
                classnames_file: str | os.PathLike | None = None, max_samples: int | None = None,
                classes: list[str] | None = None) -> FolderSpec:
    """Index an image folder (see module doc). Errors name the folder or file at fault.

    ``classes``: the full list of class folder names, in label order. Every class is a candidate even when its
    folder is missing or empty (an evaluation set that holds no image of some classes is still classified over
    all of them); a subfolder not in the list is an error."""
    rootp = Path(root)
    if not rootp.exists():
        raise InputError(f"image folder not found: {rootp}")
    if not rootp.is_dir():
        raise InputError(f"not a folder: {rootp} (zero-shot expects a folder of images or of class subfolders)")
    entries = sorted(e for e in os.listdir(rootp) if _visible(e))
    subdirs = [e for e in entries if (rootp / e).is_dir()]
    if classes is not None:
        unknown = sorted(set(subdirs) - set(classes))
        if unknown:
            raise ConfigError(f"{rootp}: class folder(s) {', '.join(unknown)} are not among the classes given "
                              f"({', '.join(classes[:10])})")
        spec = _scan_labelled(rootp, list(classes), entries, allow_empty=True)
    elif subdirs:
        spec = _scan_labelled(rootp, subdirs, entries)
    else:
        spec = _scan_flat(rootp, entries)
    _apply_names(spec, labels, classnames_file)
    if max_samples is not None and len(spec.paths) > max_samples:
        _subsample(spec, max_samples)
    return spec


def _scan_labelled(rootp: Path, subdirs: list[str], entries: list[str], allow_empty: bool = False) -> FolderSpec:
    skipped = [{"path": e, "reason": "file at the top level of a class-subfolder layout"}
               for e in entries if e not in subdirs]
    paths, targets = [], []
    for idx, cls in enumerate(subdirs):
        n = 0
        for f in _walk_files(rootp / cls) if (rootp / cls).is_dir() else ():
            rel = f.relative_to(rootp).as_posix()
            if _is_image(f.name):
                paths.append(rel)
                targets.append(idx)
                n += 1
            else:
                skipped.append({"path": rel, "reason": "not an image file (extension)"})
        if n == 0 and not allow_empty:
            raise ConfigError(f"class folder '{cls}' in {rootp} holds no images "
                              f"(extensions: {', '.join(sorted(IMAGE_EXTS))}); remove it or add images")
    if len(subdirs) < 2:
        raise ConfigError(f"{rootp} has a single class folder ('{subdirs[0]}'): zero-shot classification "
                          f"needs at least 2 classes")
    return FolderSpec(str(rootp), paths, targets, list(subdirs), [tidy_classname(c) for c in subdirs], True, skipped)


def _scan_flat(rootp: Path, entries: list[str]) -> FolderSpec:
    paths = [e for e in entries if _is_image(e)]
    skipped = [{"path": e, "reason": "not an image file (extension)"} for e in entries if not _is_image(e)]
    if not paths:
        raise ConfigError(f"{rootp} holds no images and no class subfolders")
    return FolderSpec(str(rootp), paths, [-1] * len(paths), [], [], False, skipped)


def _apply_names(spec: FolderSpec, labels, classnames_file) -> None:
    if labels is not None and classnames_file is not None:
        raise ConfigError("give either --labels or --classnames, not both")
    if spec.labelled:
        if classnames_file is not None:
            spec.classnames = read_classnames(classnames_file, spec.classes)
        elif labels is not None:
            names = parse_labels(labels)
            if len(names) != len(spec.classes):
                raise ConfigError(f"--labels gives {len(names)} names but {spec.root} has {len(spec.classes)} "
                                  f"class folders ({', '.join(spec.classes[:8])})")
            spec.classnames = names
        return
    if classnames_file is not None:
        names = read_classnames(classnames_file)
    elif labels is not None:
        names = parse_labels(labels)
    else:
        raise ConfigError(f"{spec.root} is a flat folder (no class subfolders): pass the candidate labels "
                          f"with --labels \"cat,dog\" or --classnames FILE")
    if len(names) < 2:
        raise ConfigError(f"zero-shot classification needs at least 2 candidate labels, got {names}")
    spec.classes = list(names)
    spec.classnames = [tidy_classname(n) for n in names] if labels is not None else list(names)


def _subsample(spec: FolderSpec, n: int) -> None:
    """Keep ``n`` images spread evenly over the (sorted) list, so every class stays represented."""
    keep = even_indices(len(spec.paths), n)
    spec.paths = [spec.paths[i] for i in keep]
    spec.targets = [spec.targets[i] for i in keep]


class FolderDataset:
    """Map-style dataset over ``spec.paths``: item ``i`` -> ``(i, tensor)`` or ``(i, None, reason)``."""

    def __init__(self, spec: FolderSpec, transform, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None):
        self.root, self.paths = spec.root, spec.paths
        self.transform, self.max_pixels, self.draft_size = transform, max_pixels, draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = decode_image(os.path.join(self.root, self.paths[i]), self.max_pixels, self.draft_size)
            return i, self.transform(img)
        except Exception as e:  # noqa: BLE001 - any decode failure skips the file, with its reason
            return i, None, f"{type(e).__name__}: {e}"


def collate_skipping(items):
    """Stack the images that decoded; report the others as ``failed`` (index, reason)."""
    import torch
    ok = [it for it in items if it[1] is not None]
    return {"index": [it[0] for it in ok],
            "image": torch.stack([it[1] for it in ok]) if ok else None,
            "failed": [(it[0], it[2]) for it in items if it[1] is None]}
