"""``mmfm shards build|inspect|audit``: build WebDataset shards from your data, look at / verify them, and audit an
attribute's distribution and skewed associations (``mmfm.data.shards.audit``)."""
from __future__ import annotations

import argparse
import sys

# CLI flag -> dotted option in BuildOptions (the same names a recipe YAML uses)
FLAGS = {
    "input": "source.path", "type": "source.type", "images": "source.image_root",
    "image_column": "source.image_column", "caption_column": "source.caption_column",
    "extra_columns": "source.extra_columns", "template": "source.template", "questions": "source.questions",
    "limit": "source.limit", "size": "image.size", "resize_mode": "image.resize_mode",
    "resize_side": "image.resize_side", "resample": "image.resample", "format": "image.format",
    "quality": "image.quality",
    "min_size": "image.min_size", "max_size": "image.max_size", "max_aspect_ratio": "image.max_aspect_ratio",
    "max_pixels": "image.max_pixels", "min_caption_length": "text.min_caption_length",
    "timeout": "download.timeout", "retries": "download.retries", "max_bytes": "download.max_bytes",
    "max_redirects": "download.max_redirects", "threads": "download.threads", "shard_size": "shard_size",
    "workers": "workers", "dedup": "dedup", "holdout": "holdout", "holdout_by": "holdout_by",
    "allow_private_urls": "download.allow_private_urls", "allow_local_files": "source.allow_local_files",
    "shuffle": "shuffle", "distributor": "distributor.kind", "ray_address": "distributor.address",
    "partition_rows": "distributor.partition_rows",
    "disallowed_header_directives": "download.disallowed_header_directives",
    "per_host": "download.per_host", "retry_failures": "retry_failures",
}


def _build_parser(sub) -> None:
    p = sub.add_parser("build", help="build shards from an image folder, a table, COCO/VQA JSON or a recipe",
                       description="Build WebDataset shards + manifest.json. Options come from (in order) "
                       "defaults, --recipe, the flags below, then --set key=value.")
    p.add_argument("input", nargs="?", help="image folder (ROOT/CLASS/IMG), .csv/.tsv/.jsonl/.parquet, "
                   "COCO captions or VQA .json, or emoji-test.txt")
    p.add_argument("-i", "--input", dest="input_flag", metavar="INPUT", help="the input, as a flag (same as INPUT)")
    p.add_argument("-o", "--out", required=True, help="output folder for shard-NNNNNN.tar + manifest.json")
    p.add_argument("--recipe", help="data_recipes/NAME/recipe.yaml, its folder, or NAME")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any option by its dotted name, e.g. --set image.background=[0,0,0]")
    p.add_argument("--resume", action="store_true", help="continue after the last complete shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    p.add_argument("--retry-failures", metavar="PREVIOUS_BUILD",
                   help="build only the inputs that PREVIOUS_BUILD (its --out) skipped, under their old keys, "
                   "into --out (same input and options)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("source")
    g.add_argument("--type", choices=["auto", "image_folder", "csv", "tsv", "jsonl", "parquet", "coco", "vqa",
                                      "vizwiz", "karpathy", "noto_emoji", "emoji_images"])
    g.add_argument("--images", help="folder that relative image paths are relative to")
    g.add_argument("--image-column")
    g.add_argument("--caption-column")
    g.add_argument("--extra-columns", nargs="*", help="table columns copied into KEY.json")
    g.add_argument("--template", help="image_folder caption template, e.g. 'a photo of a {}.'")
    g.add_argument("--questions", help="VQAv2 questions JSON (the input is the annotations JSON)")
    g.add_argument("--limit", type=int, help="only the first N inputs")
    g = p.add_argument_group("images")
    g.add_argument("--size", type=int, help="target size in pixels (default 256)")
    g.add_argument("--resize-mode", choices=["no", "keep_ratio", "center_crop", "border"])
    g.add_argument("--resize-side", choices=["shortest", "longest"], help="keep_ratio: side that becomes --size")
    g.add_argument("--resample", choices=["auto", "bilinear", "bicubic", "lanczos", "box"],
                   help="resize filter (auto: antialiased bilinear down, for upright RGB JPEGs by libjpeg-turbo + "
                   "OpenCV within ~1/255 of Pillow's; bicubic up. bilinear: always Pillow's)")
    g.add_argument("--format", choices=["jpg", "png", "webp"])
    g.add_argument("--quality", type=int)
    g.add_argument("--min-size", type=int, help="skip images whose shorter side is smaller")
    g.add_argument("--max-size", type=int, help="skip images whose longer side is larger")
    g.add_argument("--max-aspect-ratio", type=float, help="skip images with long/short side above this")
    g.add_argument("--max-pixels", type=int, help="decompression-bomb limit")
    g.add_argument("--min-caption-length", type=int)
    g = p.add_argument_group("downloads")
    g.add_argument("--timeout", type=float)
    g.add_argument("--retries", type=int)
    g.add_argument("--max-bytes", type=int)
    g.add_argument("--max-redirects", type=int)
    g.add_argument("--threads", type=int, help="concurrent downloads per worker")
    g.add_argument("--allow-private-urls", action="store_const", const=True,
                   help="also download from private, loopback and link-local addresses (refused by default)")
    g.add_argument("--allow-local-files", action="store_const", const=True,
                   help="let a table of http(s) URLs also name local paths or file:// URLs (refused by default)")
    g.add_argument("--disallowed-header-directives", nargs="*", metavar="DIRECTIVE",
                   help="X-Robots-Tag directives that opt an image out, counted as opted_out (default: noai "
                   "noimageai); give the flag alone to download opted-out images too")
    g.add_argument("--per-host", type=int, metavar="N",
                   help="at most N downloads at once per host, over all workers (default: no limit)")
    g = p.add_argument_group("output")
    g.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
    g.add_argument("--workers", type=int, help="worker processes (default 2; 0 = in-process)")
    g.add_argument("--no-dedup", dest="dedup", action="store_const", const=False, help="keep exact duplicates")
    g.add_argument("--holdout", type=float, help="fraction written to OUT/heldout (rest to OUT/train)")
    g.add_argument("--holdout-by", help="metadata field hashed for the split (default: source path)")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="seeded shuffle of the input order (default: image folders only; --set shuffle_seed=N)")
    g = p.add_argument_group("distributed (docs/scale.md)")
    g.add_argument("--distributor", choices=["local", "ray"],
                   help="local: worker processes here (default); ray: partitions of rows as Ray tasks (mmfm[ray])")
    g.add_argument("--ray-address", help="a running Ray cluster (HOST:PORT or auto); default: start one here")
    g.add_argument("--partition-rows", type=int, help="ray: input rows per partition (default 10000)")


def _inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print counts and schema; --verify reads every tar; --sheet draws samples")
    p.add_argument("path", help="shard folder (with manifest.json), folder of .tar files, or one .tar")
    p.add_argument("--verify", action="store_true", help="read every tar through; exit 1 naming a corrupt one")
    p.add_argument("--decode", action="store_true", help="with --verify: also decode every image and JSON")
    p.add_argument("--sheet", metavar="OUT.png", help="write a contact sheet of samples with captions")
    p.add_argument("-n", type=int, default=24, help="samples on the contact sheet")
    p.add_argument("--no-progress", action="store_true")


def _flags_to_dict(args: argparse.Namespace) -> dict:
    out: dict = {}
    for flag, dotted in FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        node = out
        *head, last = dotted.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return out


def run_build(args: argparse.Namespace) -> int:
    from mmfm.config import ConfigError
    from mmfm.data.shards.build import EmptyBuildError, build
    from mmfm.data.shards.executor_ray import PartitionError
    from mmfm.data.shards.recipes import resolve_options

    if args.input_flag:
        if args.input and args.input != args.input_flag:
            raise ConfigError(f"give the input once: {args.input!r} and --input {args.input_flag!r}")
        args.input = args.input_flag
    opts = resolve_options(args.recipe, args.overrides, _flags_to_dict(args))
    try:
        manifests = build(opts, args.out, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress)
    except (EmptyBuildError, PartitionError) as e:   # a failed partition: the finished ones stay for --resume
        print(f"mmfm shards build: {e}", file=sys.stderr)
        return 1
    for split, m in manifests.items():
        fails = m["failures"]
        where = f"{args.out}/{split}" if split else args.out
        print(f"{where}: {m['total_samples']} samples in {len(m['shards'])} shards "
              f"({m['build']['samples_this_run']} written this run); skipped {sum(fails.values())}"
              + (f" {dict(sorted(fails.items()))}" if fails else ""))
    b = next(iter(manifests.values()))["build"]
    print(f"{b['seconds']:.1f}s, {b['images_per_s'] or 0:.0f} images/s")
    return 0


def _expand(path: str) -> list[str]:
    """A build with --holdout has OUT/train and OUT/heldout: inspect each."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() and not (p / "manifest.json").exists() and not any(p.glob("*.tar")):
        subs = sorted(str(d) for d in p.iterdir() if (d / "manifest.json").is_file())
        if subs:
            return subs
    return [path]


def run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmfm.data.shards.inspect import contact_sheet, summary, verify

    status = 0
    paths = _expand(args.path)
    for path in paths:
        print(summary(path))
        if args.verify:
            problems = verify(path, decode=args.decode, progress=not args.no_progress and sys.stderr.isatty())
            for tar, problem in problems:
                print(f"CORRUPT {tar}: {problem}", file=sys.stderr)
            print(f"verify: {'FAILED, ' + str(len(problems)) + ' corrupt shard(s)' if problems else 'all shards OK'}")
            status = max(status, 1 if problems else 0)
        if args.sheet:
            sheet = Path(args.sheet)
            if len(paths) > 1:
                sheet = sheet.with_name(f"{sheet.stem}_{Path(path).name}{sheet.suffix}")
            drawn = contact_sheet(path, sheet, n=args.n)
            print(f"contact sheet: {drawn.path}" + (f" ({drawn.title})" if drawn.title else ""))
    return status


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="an attribute's distribution and its most skewed associations with classes "
                       "and caption words (table, JSON, HTML with a chart)")
    p.add_argument("shards", help="shard folder, brace pattern, .tar, or an fsspec/http URL of those")
    p.add_argument("--attribute", required=True, metavar="KEY",
                   help="json field of each sample (or, with --words, the name of the caption rule)")
    p.add_argument("--words", metavar="JSON",
                   help='a caption word rule instead of a json field: a JSON file {"group": ["phrase", ...]}')
    p.add_argument("--by", default="cls", help="what to cross with the attribute: cls (manifest class names, "
                   "default) or a json field")
    p.add_argument("--min-count", type=int, default=5, help="ignore classes/words seen fewer times (default 5)")
    p.add_argument("--min-group", type=int, default=30, help="flag groups with fewer samples (default 30)")
    p.add_argument("--top", type=int, default=10, help="skewed associations listed per kind (default 10)")
    p.add_argument("--max-samples", type=int, help="read at most N samples")
    p.add_argument("--out", help="folder for audit.json and audit.html (default runs/audit-KEY)")


def run_audit(args: argparse.Namespace) -> int:
    import json

    from mmfm.config import ConfigError, InputError
    from mmfm.data.shards.audit import audit_shards, format_audit, write_audit

    words = None
    if args.words:
        try:
            words = json.loads(open(args.words, encoding="utf-8").read())
        except OSError as e:
            raise InputError(f"--words {args.words}: {e}") from None
        except ValueError as e:
            raise ConfigError(f"--words {args.words}: not JSON ({e})") from None
        if not isinstance(words, dict) or not all(isinstance(v, list) and v for v in words.values()):
            raise ConfigError(f'--words {args.words}: expected {{"group": ["phrase", ...], ...}}')
    report = audit_shards(args.shards, args.attribute, words=words, by=args.by, min_count=args.min_count,
                          min_group=args.min_group, top=args.top, max_samples=args.max_samples)
    paths = write_audit(report, args.out or f"runs/audit-{args.attribute}")
    print(format_audit(report))
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfm shards", description="Build, inspect and verify WebDataset shards.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{build,inspect,audit}")
    _build_parser(sub)
    _inspect_parser(sub)
    _audit_parser(sub)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return {"build": run_build, "inspect": run_inspect, "audit": run_audit}[args.cmd](args)
