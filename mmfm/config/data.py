"""Schema of the ``data:`` section (streaming loader). Owned by mmfm.data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .core import ConfigError


@dataclass
class SourceConfig:
    """One shard source: a shard folder with manifest.json, a brace pattern, or a .tar path."""
    path: str = ""
    weight: float = 1.0

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path: a shard source needs a path")
        if self.weight <= 0:
            raise ConfigError(f"weight: must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 32            # per rank
    workers: int = 2                # DataLoader workers per rank
    resampled: bool = False         # infinite resampled shards instead of epochs
    shuffle_buffer: int = 1000
    samples_per_epoch: int | None = None   # default: from the manifests
    image_keys: str = "jpg;jpeg;png;webp"
    text_key: str = "txt"
    max_pixels: int = 89_478_485    # PIL's default bomb limit
    train_augment: bool = True      # timm train transform (random resized crop) vs eval transform
    seed: int = 0
    jpeg_draft: bool = True         # decode big JPEGs at 1/2..1/8 scale when the transform needs no more
    split: Literal["shard", "sample"] = "shard"   # how readers share an epoch: whole shards, or every
                                    # N-th sample of every shard (exact for a few big shards; more reading)
    preflight: Literal["auto", "full", "quick", "off"] = "auto"   # auto: full tar scan up to 256 shards
    timeout_s: float = 600.0        # a DataLoader worker that produces no batch for this long is an error
