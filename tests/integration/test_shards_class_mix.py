"""An image folder built and loaded with the defaults gives batches that mix the classes: the builder
shuffles the class-by-class folder listing (seeded, recorded in the manifest), so CLIP's in-batch
negatives are not same-class false negatives."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.config.data import DataConfig
from mmfm.data.pipeline import build_loader
from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.recipes import resolve_options

pytestmark = pytest.mark.timeout(120)
CLASSES, PER_CLASS = 10, 70


def class_only(sample):
    """Processor (module level, picklable): just the label."""
    return {"cls": torch.tensor(int(sample["cls"]))}


def _folder(root):
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{i}.png")
    return root


def _entropy(labels) -> float:
    counts = np.array(list(Counter(labels).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("mix") / "photos")


def _entropies(shards, cfg, batches=20) -> list[float]:
    bundle = build_loader(str(shards), class_only, batch_size=cfg.batch_size, workers=cfg.workers,
                          train=True, world=(0, 1), data_cfg=cfg)
    entropies = []
    for step, batch in enumerate(bundle):
        entropies.append(_entropy(batch["cls"].tolist()))
        if step == batches - 1:
            break
    assert len(entropies) == batches
    return entropies


def test_folder_built_batches_mix_the_classes(folder, tmp_path):
    opts = resolve_options(None, ["image.size=8", "shard_size=100", "workers=0"], {"source": {"path": str(folder)}})
    m = build(opts, tmp_path / "shards", progress=False)[""]
    assert m["total_samples"] == CLASSES * PER_CLASS
    mean = sum(_entropies(tmp_path / "shards", DataConfig())) / 20   # the loader's defaults: batch 32, 2 workers
    assert mean >= 0.8 * math.log(CLASSES), f"mean class entropy {mean:.2f} < 0.8 * log(10) = {0.8 * math.log(10):.2f}"
    assert m["shuffle_seed"] == 0 and m["args"]["shuffle"] is None     # the manifest records the order's seed


def test_loader_buffer_fills_before_the_first_batch(folder, tmp_path):
    """Class-sorted shards (another tool's, or shuffle=false): one reader's buffer (1000 > 700 samples) mixes
    them from the very first batch, not only once it has filled up."""
    opts = resolve_options(None, ["image.size=8", "shard_size=100", "workers=0", "shuffle=false"],
                           {"source": {"path": str(folder)}})
    build(opts, tmp_path / "sorted", progress=False)
    first = _entropies(tmp_path / "sorted", DataConfig(workers=0), batches=5)
    assert min(first) >= 0.8 * math.log(CLASSES), f"class entropy of the first batches {first}"


def test_shuffle_is_seeded_and_can_be_turned_off(folder, tmp_path):
    def first_classes(*sets):
        out = tmp_path / "_".join(sets)
        build(resolve_options(None, ["image.size=8", "workers=0", *sets], {"source": {"path": str(folder)}}),
              out, progress=False, overwrite=True)
        samples = iter_samples(out / read_manifest(out)["shards"][0]["name"])
        return [int(s["cls"]) for _, s in zip(range(30), samples)], read_manifest(out)["shuffle_seed"]

    default, seed = first_classes("shuffle_seed=0")
    assert seed == 0 and len(set(default)) >= 6
    assert first_classes("shuffle_seed=0") == (default, 0)                  # deterministic: same seed, same order
    assert first_classes("shuffle_seed=1")[0] != default
    assert first_classes("shuffle=false") == ([0] * 30, None)               # the folder's own (class) order
