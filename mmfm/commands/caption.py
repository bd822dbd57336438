"""``mmfm caption``: alt text for images with a captioner checkpoint (JSONL + an HTML page of thumbnails)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .decoding import add_generate_args, generate_config_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm caption",
        description="Write alt text for images: one JSON line per image ({image, alt_text, caption, error}). "
                    "An image that fails to decode gets an error line; the others still get captions.",
        epilog="example: mmfm caption --model runs/cap photos/ --out alt.jsonl --html alt.html --preset alt_text",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", required=True, help="captioner checkpoint dir, run dir or exported folder")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--html", metavar="PAGE", help="also write an HTML page with thumbnails beside the alt text")
    p.add_argument("--raw", action="store_true", help="no alt-text post-processing (alt_text = raw caption)")
    p.add_argument("--keep-prefix", action="store_true", help='keep "an image of ..." prefixes')
    p.add_argument("--max-chars", type=int, help="alt-text length limit (0 = none; default from the checkpoint)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generate_args(p)
    return p


def collect_images(inputs: list[str]) -> list[str]:
    """Files as given (decode errors are reported later, per image); folders expanded to their images."""
    from mmfm.config import ConfigError, InputError
    from mmfm.eval.zeroshot.folder import list_images

    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                print(f"mmfm caption: warning: no images in folder {p}", file=sys.stderr)
            out.extend(found)
        elif p.exists():
            out.append(str(p))
        else:
            raise InputError(f"no such file or folder: {item}")
    if not out:
        raise ConfigError("no images to caption")
    return out


def write_jsonl(rows: list[dict], path: str) -> None:
    from mmfm.config import atomic_write_text
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import dataclasses

    from mmfm.config import atomic_write_text
    from mmfm.eval.html import alt_text_page
    from mmfm.generate import caption_images, settings_dict, stored_generate
    from mmfm.models.checkpoint import load
    from mmfm.models.device import resolve_device

    paths = collect_images(args.images)
    model = load(args.model, device=resolve_device(args.device), expect="captioner")
    gen = generate_config_from_args(stored_generate(model), args)
    alt = gen.alt_text
    if args.keep_prefix:
        alt = dataclasses.replace(alt, strip_prefix=False)
    if args.max_chars is not None:
        alt = dataclasses.replace(alt, max_chars=args.max_chars)
    gen = dataclasses.replace(gen, alt_text=alt)
    rows = caption_images(model, paths, gen, alt_text=not args.raw, progress=not args.quiet)
    write_jsonl(rows, args.out)
    if args.html:
        atomic_write_text(args.html, alt_text_page(rows, f"Alt text by {args.model}", settings_dict(gen, model)))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"mmfm caption: {r['image']}: {r['error']}", file=sys.stderr)
    print(f"captioned {len(rows) - len(failed)} of {len(rows)} images -> {args.out}"
          + (f" and {args.html}" if args.html else "") + (f"; {len(failed)} failed" if failed else ""))
    return 0 if len(failed) < len(rows) else 1
