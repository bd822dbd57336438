"""``mmfm eval benchmark`` (CLIP_benchmark datasets and suites -> one CSV) and ``mmfm eval compositionality``
(SugarCrepe, ARO); also the benchmark path of ``mmfm zeroshot`` / ``mmfm retrieval``. Parsing and printing only:
the work is in ``mmfm.eval.benchmarks``."""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_ks(text: str) -> tuple[int, ...]:
    from mmfm.config import ConfigError
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"--k: expected comma-separated integers, got {text!r}") from None


def add_dataset_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset-root", metavar="TEMPLATE",
                   help="where wds/NAME and torchvision/NAME datasets live: a folder or URL template with {dataset} "
                        "or {dataset_cleaned} (as CLIP_benchmark's --dataset_root)")


def benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATASET",
                   help="CLIP_benchmark datasets: wds/NAME (with --dataset-root), a benchmark folder or URL, "
                        "torchvision:NAME:ROOT, or a file listing them one per line (a suite)")
    p.add_argument("--model", required=True, help="mmfm checkpoint / run dir / export, or openclip:NAME[:FILE]")
    add_dataset_root(p)
    p.add_argument("--templates", metavar="NAME|FILE", help="override every dataset's templates")
    p.add_argument("--k", default="1,5,10", help="retrieval recall cut-offs (default 1,5,10)")
    p.add_argument("--csv", default="benchmark.csv", help="the CSV in CLIP_benchmark's columns (default benchmark.csv)")
    p.add_argument("--out", metavar="JSON", help="also write every dataset's full metrics as a JSON list")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-samples", type=int, help="only the first N samples of each dataset")
    p.add_argument("--quiet", action="store_true")


def expand_datasets(items: list[str]) -> list[str]:
    """Each item is a dataset, or a suite file (a plain file that is not a dataset) listing them."""
    from mmfm.eval.benchmarks.clip_benchmark import read_suite
    out = []
    for item in items:
        if os.path.isfile(item) and not item.endswith(".tar"):
            out += read_suite(item)
        else:
            out.append(item)
    return out


def run_benchmark(args):
    from mmfm.eval.benchmarks.clip_benchmark import run_suite
    return run_suite(args.model, expand_datasets(args.data), dataset_root=args.dataset_root, device=args.device,
                     templates=args.templates, ks=parse_ks(args.k), batch_size=args.batch_size,
                     workers=args.workers, precision=args.precision, max_samples=args.max_samples,
                     progress=not args.quiet)


def show_benchmark(args, res) -> None:
    """Each dataset's line, then the CSV (and --out's JSON list of full records)."""
    from mmfm.eval.benchmarks.clip_benchmark import write_csv
    from mmfm.eval.result import write_json
    for m in res.predictions:
        print(format_result(m))
    write_csv(res.meta["rows"], args.csv)
    if args.out:
        write_json(args.out, res.predictions)
    print(f"wrote {args.csv}" + (f" and {args.out}" if args.out else ""))


def format_result(m: dict) -> str:
    keys = [k for k in ("acc1", "acc5", "mean_per_class_recall") if k in m]
    keys += [k for k in m if k.startswith(("image_retrieval_recall@", "text_retrieval_recall@"))]
    vals = "  ".join(f"{k} {m[k]:.4f}" for k in keys)
    return f"{m['dataset']} ({m['task']}, {m['n_samples']} images, {m['n_skipped']} skipped): {vals}"


def compositionality_args(p: argparse.ArgumentParser) -> None:
    from mmfm.eval.benchmarks.compositionality import SUITES
    p.add_argument("data", help="the suite's released files: SugarCrepe's data/ folder (its category JSONs), ARO's "
                                "folder (visual_genome_*.json + images/), or the folder with the Karpathy test JSON")
    p.add_argument("--suite", required=True, choices=list(SUITES))
    p.add_argument("--model", required=True, help="mmfm checkpoint / run dir / export, or openclip:NAME[:FILE]")
    p.add_argument("--images", help="image folder (SugarCrepe: COCO val2017; ARO: default DATA/images; "
                                    "order: default DATA)")
    p.add_argument("--seed", type=int, default=1, help="COCO/Flickr order: seed of the word-order permutations")
    p.add_argument("--out", metavar="JSON", help="write the scores here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-samples", type=int, help="only the first N tests")
    p.add_argument("--quiet", action="store_true")


def run_compositionality(args):
    from mmfm.eval.benchmarks.compositionality import ORDER_FILES, evaluate_compositionality, read_suite
    kw = {"seed": args.seed} if args.suite in ORDER_FILES else {}
    suite = read_suite(args.suite, args.data, args.images, **kw)
    return evaluate_compositionality(args.model, suite, batch_size=args.batch_size, device=args.device,
                                     precision=args.precision, max_samples=args.max_samples,
                                     progress=not args.quiet)


def show_compositionality(args, res) -> None:
    from mmfm.eval.result import write_json
    m, n = res.metrics, res.meta["n_tests"]
    print(f"{args.suite}: accuracy {m['accuracy']:.4f} over {n} tests"
          + (f", macro {m['macro_accuracy']:.4f}" if m.get("macro_accuracy") is not None else ""))
    for cat, acc in (m.get("per_category") or {}).items():
        print(f"  {cat:<12} {acc:.4f}")
    if args.out:
        print(f"wrote {write_json(args.out, res.summary())}")


def run_single(args, *, zeroshot: bool) -> int:
    """``mmfm zeroshot`` / ``mmfm retrieval`` on one CLIP_benchmark dataset: run, then print (and write)."""
    show_single(args, evaluate_single(args, zeroshot=zeroshot))
    return 0


def evaluate_single(args, *, zeroshot: bool):
    """The run step of ``run_single``: the dataset's ``EvalResult``."""
    from mmfm.config import ConfigError
    from mmfm.eval.benchmarks.clip_benchmark import evaluate_benchmark
    from mmfm.eval.benchmarks.sources import CLASSIFICATION, open_benchmark
    bench = open_benchmark(args.folder if zeroshot else args.data, dataset_root=args.dataset_root)
    if zeroshot != (bench.task == CLASSIFICATION):
        other = "mmfm retrieval" if zeroshot else "mmfm zeroshot"
        raise ConfigError(f"{bench.source} is a {bench.task} dataset: use {other}")
    kw = {"templates": args.templates} if zeroshot else {"ks": parse_ks(args.k)}
    return evaluate_benchmark(args.model, bench, batch_size=args.batch_size, workers=args.workers,
                              device=args.device, precision=args.precision, max_samples=args.max_samples,
                              progress=not args.quiet, **kw)


def show_single(args, res) -> None:
    """The show step of ``run_single``: ``--metrics``/``--out`` (the record), its line and the record as JSON."""
    from mmfm.eval.result import write_json
    m = res.summary()
    if m.get("texts_cut"):
        print(f"warning: {m['texts_cut']} caption(s) longer than the text tower's context were cut "
              f"(model.text.long_captions: {m['long_captions']}; stretch reads them whole)", file=sys.stderr)
    out = getattr(args, "metrics", None) or getattr(args, "out", None)
    if out:
        write_json(out, m)
    print(format_result(m))
    print(json.dumps({k: v for k, v in m.items() if k != "skipped"}))


def multilingual_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="XM3600's captions.jsonl, or Multi30k's data/task1 folder (image_splits/, raw/)")
    p.add_argument("--format", choices=["xm3600", "multi30k"], default=None,
                   help="default: xm3600 for a .jsonl file, multi30k for a folder")
    p.add_argument("--images", required=True, help="the image folder (XM3600: KEY.jpg; Multi30k: the Flickr30k "
                                                   "images its split lists)")
    p.add_argument("--split", default="test_2016_flickr", help="Multi30k split (default test_2016_flickr)")
    p.add_argument("--langs", help="comma-separated languages (default: every language of XM3600; Multi30k: "
                                   "en,de,fr,cs)")
    p.add_argument("--model", required=True, help="mmfm checkpoint / run dir / export, or openclip:NAME[:FILE]")
    p.add_argument("--k", default="1,5,10", help="recall cut-offs (default 1,5,10)")
    p.add_argument("--out", metavar="JSON", help="write the per-language scores here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--quiet", action="store_true")


def run_multilingual(args):
    from mmfm.eval.benchmarks.multilingual import evaluate_multilingual, read_multi30k, read_xm3600
    langs = [s.strip() for s in args.langs.split(",") if s.strip()] if args.langs else None
    fmt = args.format or ("xm3600" if args.data.endswith(".jsonl") else "multi30k")
    if fmt == "xm3600":
        data = read_xm3600(args.data, args.images, langs)
    else:
        data = read_multi30k(args.data, args.split, args.images, langs or ["en", "de", "fr", "cs"])
    return evaluate_multilingual(args.model, data, ks=parse_ks(args.k), batch_size=args.batch_size,
                                 device=args.device, precision=args.precision, progress=not args.quiet)


def show_multilingual(args, res) -> None:
    """One line per language (and the mean): its recalls."""
    from mmfm.eval.result import write_json
    ks = parse_ks(args.k)
    print(f"{res.meta['dataset']}: {res.meta['n_images']} images, languages {', '.join(res.meta['languages'])}")
    for lang, m in res.metrics.items():
        print(f"  {lang:<6} " + "  ".join(f"{d} R@{k} {100 * m[f'{d}_R@{k}']:.2f}"
                                          for d in ("image_to_text", "text_to_image") for k in ks))
    if args.out:
        print(f"wrote {write_json(args.out, res.summary())}")
