"""``mmfm retrieval``: image<->text recall@k of a CLIP checkpoint on shards or CSV/JSONL."""
from __future__ import annotations

import argparse
import json
import sys

from mmfm.config.data import DEFAULT_MAX_PIXELS


from .eval_benchmarks import add_dataset_root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm retrieval",
        description="Image->text and text->image recall@1/5/10. Several captions per image count the standard "
                    "way: an image is a hit when any of its captions is in the top k; every caption is a query.",
        epilog="DATA: a shard folder (manifest.json; captions from json 'captions' or txt), a .tar, a brace "
               "pattern, or a .csv/.jsonl with an image path column (image, filepath, path, ...) and captions "
               "(captions list, caption, text, ...).\n"
               "example: mmfm retrieval --model runs/clip shards/val --out runs/clip/retrieval.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="shards or CSV/JSONL (see below), or a CLIP_benchmark retrieval dataset (its "
                               "WebDataset folder or URL, or wds/NAME with --dataset-root)")
    p.add_argument("--model", required=True, help="mmfm checkpoint / run dir / export, or openclip:NAME[:FILE]")
    p.add_argument("--image-key", help="CSV/JSONL column holding the image path")
    p.add_argument("--caption-key", help="CSV/JSONL column holding the caption(s)")
    p.add_argument("--k", default="1,5,10", help="recall cut-offs (default 1,5,10)")
    p.add_argument("--out", metavar="JSON", help="write the metrics JSON here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-samples", type=int, default=None, help="only the first N images")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--debias", metavar="PROMPTS|FILE", help="project bias-prompt directions out of the text "
                   "embeddings (as mmfm zeroshot --debias; docs/bias.md)")
    p.add_argument("--quiet", action="store_true")
    add_dataset_root(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.eval.benchmarks.sources import is_benchmark_source
    if is_benchmark_source(args.data):
        from .eval_benchmarks import run_single
        return run_single(args, zeroshot=False)
    from mmfm.config import ConfigError
    from mmfm.eval.result import write_json
    from mmfm.eval.retrieval import retrieval_evaluate
    try:
        ks = tuple(int(k) for k in args.k.split(","))
    except ValueError:
        raise ConfigError(f"--k: expected comma-separated integers, got {args.k!r}") from None
    from .zeroshot import debiased
    model = debiased(args.model, args.debias, args.device)
    res = retrieval_evaluate(model, args.data, image_key=args.image_key,
                             caption_key=args.caption_key,
                             batch_size=args.batch_size, workers=args.workers, device=args.device,
                             precision=args.precision, ks=ks, max_samples=args.max_samples,
                             max_pixels=args.max_pixels, progress=not args.quiet)
    from .zeroshot import _warn_overlap
    _warn_overlap(res, args.model, args.data, None)
    if res.meta.get("texts_cut"):
        print(f"warning: {res.meta['texts_cut']} caption(s) longer than the text tower's context were cut "
              f"(model.text.long_captions: {res.meta['long_captions']}; stretch reads them whole)", file=sys.stderr)
    if args.debias:
        res.meta["debias"] = {"spec": args.debias, "prompts": model.debias["prompts"]}
    m = res.summary()
    if args.out:
        write_json(args.out, m)
    for direction in ("image_to_text", "text_to_image"):
        print(f"{direction:>14}: " + "  ".join(f"R@{k} {100 * m[f'{direction}_R@{k}']:.2f}" for k in ks))
    print(json.dumps({k: v for k, v in m.items() if k != "skipped"}))
    return 0
