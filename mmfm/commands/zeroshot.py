"""``mmfm zeroshot``: zero-shot classify an image folder with a CLIP checkpoint."""
from __future__ import annotations

import argparse
import json
import sys

from mmfm.config.data import DEFAULT_MAX_PIXELS


from .eval_benchmarks import add_dataset_root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm zeroshot",
        description="Zero-shot classify an image folder: one subfolder per class (metrics + report), or a flat "
                    "folder with --labels (predictions only).",
        epilog="MODEL: an mmfm checkpoint dir, a run dir (its latest checkpoint), an exported folder, or "
               "openclip:MODEL_NAME[:STATE_DICT_FILE|:PRETRAINED_TAG].\n"
               "example: mmfm zeroshot --model runs/clip photos/ --templates openai --report runs/zs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="image folder (class subfolders, or flat with --labels), or a CLIP_benchmark "
                   "dataset: its WebDataset folder or URL, wds/NAME with --dataset-root, torchvision:NAME:ROOT")
    p.add_argument("--model", required=True, help="checkpoint to evaluate (see below)")
    p.add_argument("--classnames", metavar="FILE", help="class names: one per line (sorted folder order), a JSON "
                   "list, or a JSON object {folder: name}")
    p.add_argument("--labels", help='comma-separated candidate labels, e.g. "cat,dog" (flat folders)')
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: openai (80 ImageNet prompts, default; a CLIP_benchmark folder's own "
                        "templates file for its data), openai-simple (7), simple ('a photo of a {}.'), or a file "
                        "with one template per line")
    add_dataset_root(p)
    p.add_argument("--out", metavar="PREDS", help="write predictions to a .jsonl or .csv file")
    p.add_argument("--report", metavar="DIR", help="write metrics.json, per_class.csv, confusion.png, "
                   "index.html (misclassified images) and skipped.txt into DIR")
    p.add_argument("--metrics", metavar="JSON", help="write the metrics JSON here too")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: by device and CPUs)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--topk", type=int, default=5, help="labels kept per prediction")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate an even subsample of N images")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="decode guard: larger JPEGs decode at reduced scale, other formats are skipped")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode large JPEGs at reduced DCT scale (faster; pixels differ slightly from a full decode)")
    p.add_argument("--cache-dir", default=None, help="text-classifier cache (default: $MMFM_CACHE or ~/.cache/mmfm)")
    p.add_argument("--no-cache", action="store_true", help="always recompute the text classifier")
    p.add_argument("--no-thumbnails", action="store_true", help="HTML report without embedded thumbnails")
    p.add_argument("--debias", metavar="PROMPTS|FILE", help="project bias-prompt directions out of the text "
                   "embeddings (Chuang et al. 2023): a prompt list (.txt), a JSON with prompts and calibration "
                   "pairs, or a saved debias.safetensors (docs/bias.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.eval.benchmarks.sources import is_benchmark_source
    if is_benchmark_source(args.folder):
        return _benchmark(args)
    args.templates = args.templates or "openai"
    from mmfm.eval.zeroshot.classify import zeroshot_classify
    from mmfm.eval.zeroshot.folder import scan_folder
    from mmfm.eval.zeroshot.report import format_table, write_predictions, write_report

    spec = scan_folder(args.folder, labels=args.labels, classnames_file=args.classnames,
                       max_samples=args.max_samples)       # folder errors before the model loads
    model = debiased(args.model, args.debias, args.device)
    res = zeroshot_classify(model, spec, templates=args.templates, batch_size=args.batch_size,
                            workers=args.workers, device=args.device, precision=args.precision, topk=args.topk,
                            cache=args.cache_dir, use_cache=not (args.no_cache or args.debias),
                            max_pixels=args.max_pixels,
                            fast_decode=args.fast_decode, progress=not args.quiet)
    _warn_overlap(res, args.model, args.folder, [r["path"] for r in res.predictions])
    if res.meta.get("texts_cut"):
        print(f"warning: {res.meta['texts_cut']} prompt(s) longer than the text tower's context were cut "
              f"(model.text.long_captions: {res.meta['long_captions']}; stretch reads them whole)", file=sys.stderr)
    if args.debias:                            # metrics say how they were made
        res.meta["debias"] = {"spec": args.debias, "prompts": model.debias["prompts"]}
    if args.out:
        write_predictions(res, args.out)
    if args.report:
        write_report(res, args.report, thumbnails=not args.no_thumbnails)
    if args.metrics:
        from mmfm.eval.result import write_json
        write_json(args.metrics, res.summary())
    _print_summary(res, args, format_table)
    return 0


def debiased(model: str, debias: str | None, device: str | None):
    """The model spec, or with ``--debias`` the loaded model with the projection attached."""
    if not debias:
        return model
    from mmfm.eval.embedding import load_clip
    from mmfm.models.debias import debias_from_spec
    return debias_from_spec(load_clip(model, device)[0], debias)


def _benchmark(args) -> int:
    from mmfm.config import ConfigError

    from .eval_benchmarks import run_single
    given = [f for f, v in (("--out", args.out), ("--report", args.report), ("--labels", args.labels),
                            ("--classnames", args.classnames)) if v]
    if given:
        raise ConfigError(f"{', '.join(given)}: not available for a CLIP_benchmark dataset ({args.folder}); its "
                          f"classnames.txt names the classes, --metrics writes the results")
    return run_single(args, zeroshot=True)


def _warn_overlap(res, model, data, keys) -> None:
    """stderr (and ``train_overlap`` in the metrics) when the data overlaps the model's training data."""
    from mmfm.eval.overlap import mark_overlap
    warning = mark_overlap(res, model, data, keys)
    if warning:
        print(warning, file=sys.stderr)


def _print_summary(res, args, format_table) -> None:
    m = res.summary()
    err = sys.stderr
    if res.skipped:
        print(f"skipped {len(res.skipped)} file(s):", file=err)
        for s in res.skipped[:10]:
            print(f"  {s['path']}: {s['reason']}", file=err)
        if len(res.skipped) > 10:
            print(f"  ... ({len(res.skipped) - 10} more{', see ' + args.report + '/skipped.txt' if args.report else ''})",
                  file=err)
    if res.confusion is not None:
        print(format_table(res.per_class))
    else:
        for r in res.predictions[:20]:
            print(f"{r['path']}\t{r['pred']}\t{r['score']:.3f}")
        if len(res.predictions) > 20:
            print(f"... {len(res.predictions) - 20} more" + ("" if args.out else " (write them all with --out)"))
    keys = ("top1", "top5", "mean_per_class_recall", "n_samples", "n_skipped", "n_classes", "templates", "model",
            "device", "precision")
    print(json.dumps({k: m.get(k) for k in keys if k in m}))
    if args.report:
        print(f"report: {args.report}/index.html", file=err)
