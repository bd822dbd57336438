"""Typed options of ``mmfm shards build``: the same schema is a recipe YAML, CLI flags and ``--set``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmfm.config import ConfigError

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SOURCE_TYPES = ("auto", "image_folder", "csv", "tsv", "jsonl", "parquet", "coco", "vqa", "noto_emoji")


@dataclass
class SourceOptions:
    """Where the samples come from and how its fields map onto image / caption / label."""
    type: Literal["auto", "image_folder", "csv", "tsv", "jsonl", "parquet", "coco", "vqa", "noto_emoji"] = "auto"
    path: str = ""                  # folder, table file, COCO/VQA JSON, or emoji-test.txt
    image_root: str = ""            # base of relative image paths (default: the table/JSON's folder)
    image_column: str = "image"     # tables: local path or http(s)/file URL
    caption_column: str = "caption"
    extra_columns: list[str] = field(default_factory=list)   # copied into KEY.json
    template: str = "a photo of a {}."   # image_folder: caption from the class name
    questions: str = ""             # vqa: VQAv2 questions JSON (path = the annotations JSON)
    image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg"  # vqa (VQAv2): image file name
    font: str = EMOJI_FONT          # noto_emoji
    limit: int | None = None        # only the first N items (quick runs, fixtures)
    allow_local_files: bool = False  # tables/JSON that hold http(s) URLs may also name local paths or file://

    def validate(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"source.limit: must be >= 0, got {self.limit}")


@dataclass
class ImageOptions:
    size: int = 256
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "keep_ratio"
    resize_side: Literal["shortest", "longest"] = "shortest"   # keep_ratio: which side becomes `size`
    resize_only_if_bigger: bool = False
    resample: Literal["auto", "bilinear", "bicubic", "lanczos", "box"] = "auto"  # auto: bilinear down, bicubic up
    format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = 95
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # alpha and border fill
    max_pixels: int = 89_478_485    # decompression-bomb guard (PIL's default limit)
    min_size: int = 0               # skip if the original's shorter side is smaller
    max_size: int = 0               # skip if the original's longer side is larger (0 = no limit)
    max_aspect_ratio: float = 0.0   # skip if long/short side exceeds this (0 = no limit)
    draft: bool = True              # JPEG: decode at a reduced DCT scale when downscaling (fast)

    def validate(self) -> None:
        if self.size < 1:
            raise ConfigError(f"image.size: must be >= 1, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"image.quality: must be 1..100, got {self.quality}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ConfigError(f"image.background: expected [r, g, b] in 0..255, got {self.background}")
        if self.max_pixels < 1:
            raise ConfigError(f"image.max_pixels: must be >= 1, got {self.max_pixels}")
        if self.max_aspect_ratio and self.max_aspect_ratio < 1:
            raise ConfigError(f"image.max_aspect_ratio: must be >= 1 or 0, got {self.max_aspect_ratio}")


@dataclass
class TextOptions:
    min_caption_length: int = 1     # characters after stripping; 0 allows empty captions
    max_answers: int = 10           # vqa


@dataclass
class DownloadOptions:
    timeout: float = 10.0           # seconds per attempt (connect + whole body)
    retries: int = 2                # extra attempts on timeout, 5xx, 429, connection errors
    backoff: float = 0.5            # seconds; doubles per retry
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    threads: int = 16               # concurrent downloads per worker process
    user_agent: str = "mmfm-shards/0.1 (+https://github.com/mmfm)"
    allow_private_urls: bool = False  # connect to private, loopback and link-local addresses too

    def validate(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"download.timeout: must be > 0, got {self.timeout}")
        if self.retries < 0 or self.max_redirects < 0 or self.threads < 1:
            raise ConfigError("download: retries and max_redirects must be >= 0, threads >= 1")


@dataclass
class BuildOptions:
    name: str = ""
    description: str = ""
    source: SourceOptions = field(default_factory=SourceOptions)
    image: ImageOptions = field(default_factory=ImageOptions)
    text: TextOptions = field(default_factory=TextOptions)
    download: DownloadOptions = field(default_factory=DownloadOptions)
    shard_size: int = 1000
    workers: int = 2                # processes; 0 = in this process
    dedup: bool = True              # exact dedup by the sha256 of the source image bytes
    holdout: float = 0.0            # > 0: OUT/train and OUT/heldout, split by a hash of `holdout_by`
    holdout_by: str = ""            # metadata field to hash (default: the sample key)
    holdout_seed: int = 0
    shuffle: bool | None = None     # seeded shuffle of the input order; None: image folders only (listed
                                    # class by class), tables and JSON keep their order; true: every source
    shuffle_seed: int = 0

    def validate(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be >= 1, got {self.shard_size}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout: must be in [0, 1), got {self.holdout}")


# Options that change how a build runs but not what it writes (ignored when --resume compares args).
RUNTIME_ONLY = ("workers", "download.threads")
