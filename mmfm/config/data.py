"""Schema of the ``data:`` section (streaming loader). Owned by mmfm.data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .core import ConfigError, ranged

WorkerPriority = Literal["auto", "normal", "low", "idle"]   # what each means: mmfm.data.workers
DEFAULT_MAX_PIXELS = 89_478_485   # the decompression-bomb guard: PIL's own default limit (Image.MAX_IMAGE_PIXELS)


@dataclass
class SourceConfig:
    """One shard source: a shard folder with manifest.json, a brace pattern, or a .tar path."""
    path: str = ""
    weight: float = ranged(1.0, gt=0)     # share of the mix

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path: a shard source needs a path")


@dataclass
class BalanceConfig:
    """Attribute-balanced training data (mmfm.data.balance): ``data.balance: {key: skin_tone, mode: sample}``."""
    key: str = ""                   # the json field naming each sample's group
    mode: Literal["sample", "weight"] = "sample"   # sample: keep each group about equally; weight: loss weights
    counts: str | None = None       # audit.json of `mmfm shards audit` (else one pass over data.train counts them)

    def validate(self) -> None:
        if not self.key:
            raise ConfigError("key: data.balance needs the json field that names the group")


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    batch_size: int = ranged(32, ge=1)          # per rank
    workers: int = ranged(2, ge=0)              # DataLoader workers per rank
    resampled: bool = False         # infinite resampled shards instead of epochs
    shuffle_buffer: int = ranged(1000, ge=0)    # samples; 0 or 1: no sample shuffle
    samples_per_epoch: int | None = ranged(None, ge=1)   # default: from the manifests
    image_keys: str = "jpg;jpeg;png;webp"
    text_key: str = "txt"
    max_pixels: int = ranged(DEFAULT_MAX_PIXELS, ge=1)
    train_augment: bool = True      # timm train transform (random resized crop) vs eval transform
    seed: int = 0
    jpeg_draft: bool = True         # decode big JPEGs at 1/2..1/8 scale when the transform needs no more
    split: Literal["shard", "sample"] = "shard"   # how readers share an epoch: whole shards, or every
                                    # N-th sample of every shard (exact for a few big shards; more reading)
    preflight: Literal["auto", "full", "quick", "off"] = "auto"   # auto: full tar scan up to 256 shards
    timeout_s: float = ranged(600.0, gt=0)      # a DataLoader worker that produces no batch for this long is an error
    balance: BalanceConfig | None = None   # attribute-balanced sampling or loss weights (docs/bias.md)
    worker_priority: WorkerPriority = "auto"   # loader workers' CPU priority: low =
                                    # nice 19, idle = SCHED_IDLE; auto: idle when one process trains on the CPU
                                    # (they decode while the trainer waits, never preempting it mid-matmul),
                                    # else normal (CUDA, several ranks)
