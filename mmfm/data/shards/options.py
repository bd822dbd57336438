"""Typed options of ``mmfm shards build``: the same schema is a recipe YAML, CLI flags and ``--set``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmfm.config import ConfigError, ranged
from mmfm.config.data import DEFAULT_MAX_PIXELS

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SOURCE_TYPES = ("auto", "image_folder", "csv", "tsv", "jsonl", "parquet", "coco", "vqa", "vizwiz", "karpathy",
                "noto_emoji", "emoji_images", "openmoji", "country_flags", "fashion_mnist", "skimage_photos",
                "icon_theme", "openclipart")


@dataclass
class SourceOptions:
    """Where the samples come from and how its fields map onto image / caption / label."""
    type: Literal["auto", "image_folder", "csv", "tsv", "jsonl", "parquet", "coco", "vqa", "vizwiz", "karpathy",
                  "noto_emoji", "emoji_images", "openmoji", "country_flags", "fashion_mnist", "skimage_photos",
                  "icon_theme", "openclipart"] = "auto"
    path: str = ""                  # folder, table file, COCO/VQA JSON, or emoji-test.txt
    image_root: str = ""            # base of relative image paths (default: the table/JSON's folder);
                                    # emoji_images: the emoji-datasource package folder (emoji.json, img/SET/64)
    image_column: str = "image"     # tables: local path or http(s)/file URL
    caption_column: str = "caption"
    extra_columns: list[str] = field(default_factory=list)   # copied into KEY.json
    template: str = "a photo of a {}."   # image_folder: caption from the class name
    questions: str = ""             # vqa: VQAv2 questions JSON (path = the annotations JSON)
    image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg"  # vqa (VQAv2): image file name
    karpathy_split: str = ""        # karpathy: keep one split (train, val, test, restval; train+restval); "" = all
    font: str = EMOJI_FONT          # noto_emoji
    limit: int | None = ranged(None, ge=0)   # only the first N items (quick runs, fixtures)
    allow_local_files: bool = False  # tables/JSON that hold http(s) URLs may also name local paths or file://


@dataclass
class ImageOptions:
    size: int = ranged(256, ge=1)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "keep_ratio"
    resize_side: Literal["shortest", "longest"] = "shortest"   # keep_ratio: which side becomes `size`
    resize_only_if_bigger: bool = False
    # auto: bilinear down (upright RGB JPEGs by the fast path, within ~1/255 of Pillow's), bicubic up;
    # bilinear: always Pillow's antialiased bilinear
    resample: Literal["auto", "bilinear", "bicubic", "lanczos", "box"] = "auto"
    format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = ranged(95, ge=1, le=100)
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # alpha and border fill
    max_pixels: int = ranged(DEFAULT_MAX_PIXELS, ge=1)   # decompression-bomb guard (PIL's default limit)
    min_size: int = ranged(0, ge=0)  # skip if the original's shorter side is smaller
    max_size: int = ranged(0, ge=0)  # skip if the original's longer side is larger (0 = no limit)
    max_aspect_ratio: float = 0.0   # skip if long/short side exceeds this (0 = no limit)
    draft: bool = True              # JPEG: decode at a reduced DCT scale when downscaling (fast)

    def validate(self) -> None:
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ConfigError(f"image.background: expected [r, g, b] in 0..255, got {self.background}")
        if self.max_aspect_ratio and self.max_aspect_ratio < 1:
            raise ConfigError(f"image.max_aspect_ratio: must be >= 1 or 0, got {self.max_aspect_ratio}")


@dataclass
class TextOptions:
    min_caption_length: int = ranged(1, ge=0)   # characters after stripping; 0 allows empty captions
    max_answers: int = ranged(10, ge=1)         # vqa


@dataclass
class DownloadOptions:
    timeout: float = ranged(10.0, gt=0)      # seconds per attempt (connect + whole body)
    retries: int = ranged(2, ge=0)           # extra attempts on timeout, 5xx, 429, connection errors
    backoff: float = ranged(0.5, ge=0)       # seconds; doubles per retry
    max_bytes: int = ranged(20_000_000, ge=1)
    max_redirects: int = ranged(5, ge=0)
    threads: int = ranged(16, ge=1)          # concurrent downloads per worker process
    user_agent: str = "mmfm-shards/0.1 (+https://github.com/mmfm)"
    allow_private_urls: bool = False  # connect to private, loopback and link-local addresses too
    # X-Robots-Tag directives that opt an image out (img2dataset's disallowed_header_directives); [] = ignore them
    disallowed_header_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai"])
    user_agent_token: str = "mmfm"   # an X-Robots-Tag "TOKEN: directives" applies if TOKEN is this (or absent)
    per_host: int = ranged(0, ge=0)  # at most N downloads at once per host, over all workers (0 = no limit)


@dataclass
class DistributorOptions:
    """Who processes the partitions: ``local`` (worker processes of this machine) or ``ray`` (docs/scale.md)."""
    kind: Literal["local", "ray"] = "local"
    address: str = ""               # ray: a running cluster (HOST:PORT or "auto"); "" starts one here
    partition_rows: int = ranged(10_000, ge=1)   # ray: input rows per partition (each its own shard-id block)
    max_retries: int = ranged(3, ge=0)           # ray: re-runs of a partition whose worker died

    def validate(self) -> None:
        if self.address and self.kind != "ray":
            raise ConfigError(f"address: {self.address!r} is a Ray cluster; it needs kind ray (--distributor ray)")


@dataclass
class BuildOptions:
    name: str = ""
    description: str = ""
    source: SourceOptions = field(default_factory=SourceOptions)
    image: ImageOptions = field(default_factory=ImageOptions)
    text: TextOptions = field(default_factory=TextOptions)
    download: DownloadOptions = field(default_factory=DownloadOptions)
    shard_size: int = ranged(1000, ge=1)
    workers: int = ranged(2, ge=0)  # processes; 0 = in this process
    dedup: bool = True              # exact dedup by the sha256 of the source image bytes
    holdout: float = ranged(0.0, ge=0, lt=1)   # > 0: OUT/train and OUT/heldout, split by a hash of `holdout_by`
    holdout_by: str = ""            # metadata field to hash (default: the sample key)
    holdout_seed: int = 0
    shuffle: bool | None = None     # seeded shuffle of the input order; None: image folders only (listed
                                    # class by class), tables and JSON keep their order; true: every source
    shuffle_seed: int = 0
    distributor: DistributorOptions = field(default_factory=DistributorOptions)
    retry_failures: str = ""        # a previous build's --out: build only the inputs it skipped (retry.py)


# Options that change how a build runs but not what it writes (ignored when --resume compares args).
RUNTIME_ONLY = ("workers", "download.threads", "download.per_host", "distributor.address",
                "distributor.max_retries")
