"""Tiny data in the formats CLIP_benchmark users have on disk, written the way its own tools write them:

* ``write_wds_classification``: ``clip_benchmark_export_wds``'s layout (``classnames.txt``,
  ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/N.tar`` with keys ``s%07d`` holding an
  image (webp / png / jpg) and ``cls``, the label as decimal text);
* ``write_wds_retrieval``: its retrieval layout (``dataset_type.txt`` = ``retrieval``, ``txt`` = the captions
  joined by newlines);
* ``write_cifar10``: torchvision's CIFAR-10 python layout (``cifar-10-batches-py/test_batch`` and
  ``batches.meta`` pickles);
* ``tiny_open_clip``: a random open_clip model saved as a state dict, with its config registered.
"""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

OC_TINY = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
CLASSNAMES = ["golden retriever", "red fox", "tabby cat", "zebra", "fire truck", "teapot"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}.", "a drawing of the {c}."]
FORMATS = {"webp": dict(format="webp", lossless=True), "png": dict(format="png"), "jpg": dict(format="jpeg")}


def tiny_open_clip(folder: Path, name: str = "mmfm_cb_tiny", seed: int = 4) -> dict:
    """Seed 4 spreads the fixture's predictions over several classes (not one class for every image)."""
    import open_clip
    import torch
    cfg = folder / f"{name}.json"
    cfg.write_text(json.dumps(OC_TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    torch.save(model.state_dict(), folder / "weights.pt")
    return {"name": name, "config": cfg, "weights": folder / "weights.pt",
            "spec": f"openclip:{cfg}:{folder / 'weights.pt'}", "model": model.eval(), "preprocess": preprocess,
            "tokenizer": open_clip.get_tokenizer(name)}


def _image_bytes(seed: int, fmt: str) -> bytes:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(24 + 5 * (seed % 4), 36, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, **FORMATS[fmt])
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(root: Path, samples: list[dict], per_shard: int) -> int:
    (root / "test").mkdir(parents=True, exist_ok=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for n, part in enumerate(shards):
        with tarfile.open(root / "test" / f"{n}.tar", "w") as tar:
            for s in part:
                for ext, data in s.items():
                    if ext != "__key__":
                        _add(tar, f"{s['__key__']}.{ext}", data)
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    return len(shards)


def write_wds_classification(root: Path, n_per_class: int = 5, per_shard: int = 11) -> Path:
    """len(CLASSNAMES) x n_per_class samples over several shards, image formats mixed; the last class holds more
    images than the others (so top-1 and mean per-class recall differ)."""
    fmts = list(FORMATS)
    samples = []
    for i in range(len(CLASSNAMES) * n_per_class):
        fmt = fmts[i % 3]
        samples.append({"__key__": f"s{i:07d}", fmt: _image_bytes(i, fmt), "cls": str(_label(i)).encode()})
    _write_shards(root, samples, per_shard)
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def _label(i: int) -> int:
    return min(i % 8, len(CLASSNAMES) - 1)


CAPTIONS = ["a dog running on a beach", "two cats asleep on a sofa", "a red car parked in the street",
            "a bowl of soup on a table", "a man riding a bicycle", "a child flying a kite",
            "a plate of pasta with tomato", "a boat on a calm lake", "a tall building at night",
            "a horse in a green field", "a bird sitting on a wire", "a train at the station"]


def write_wds_retrieval(root: Path, n_images: int = 12, per_shard: int = 5) -> Path:
    """n_images samples with 1-3 captions each (newline-separated ``txt``)."""
    samples = []
    for i in range(n_images):
        caps = [CAPTIONS[(i + j * 5) % len(CAPTIONS)] + ("" if j == 0 else f" {j}") for j in range(1 + i % 3)]
        fmt = list(FORMATS)[(i + 1) % 3]
        samples.append({"__key__": f"s{i:07d}", fmt: _image_bytes(100 + i, fmt), "txt": "\n".join(caps).encode()})
    _write_shards(root, samples, per_shard)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def write_cifar10(root: Path, n: int = 20, classes=("airplane", "automobile", "bird", "cat")) -> Path:
    """torchvision's CIFAR-10 python layout with ``n`` random 32x32 test images (labels 0..len(classes)-1)."""
    import numpy as np
    rng = np.random.default_rng(7)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    batch = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             "labels": [i % len(classes) for i in range(n)]}
    (base / "test_batch").write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list(classes)}))
    return root
