"""``mmfm eval caption|vqa|bias|compare|wise-ft``: evaluate checkpoints on a dataset, write results into a folder.

Sub-commands live in ``SUBCOMMANDS`` (name -> (help, add_arguments, run, show)); a new evaluation adds one entry.
``run(args)`` calls the library (``mmfm.eval.captioning``, ``mmfm.eval.bias``, ``mmfm.eval.compare``,
``mmfm.eval.zeroshot.wise_ft``), which returns an ``EvalResult``; ``show(args, result)`` writes its files and
prints from it.
"""
from __future__ import annotations

import argparse
import sys

from .decoding import add_generate_args, generate_config_from_args
from .eval_benchmarks import (benchmark_args, compositionality_args, multilingual_args, run_benchmark,
                              run_compositionality, run_multilingual, show_benchmark, show_compositionality,
                              show_multilingual)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="shard folder / .tar / brace pattern, or a JSONL/CSV file")
    p.add_argument("--model", required=True, help="checkpoint dir, run dir or exported folder")
    p.add_argument("--out", help="output folder for metrics.json and predictions.jsonl "
                                 "(default: runs/eval/<task>-<split>)")
    p.add_argument("--split", help="split name recorded in the results (default: the data's file/folder name)")
    p.add_argument("--max-samples", type=int, help="evaluate the first N samples only")
    p.add_argument("--device", default=None)
    p.add_argument("--max-skipped", type=float, default=0.01, metavar="SHARE",
                   help="fail (exit 1) when more than this share of the samples fails to decode and is left out "
                        "of the score (default 0.01 = 1%%; 0: none may fail)")
    p.add_argument("--quiet", action="store_true")
    add_generate_args(p)


def _caption_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--alt-text", action="store_true", help="score the post-processed alt text, not the raw caption")
    p.add_argument("--clipscore", metavar="MODEL", help="also score CLIPScore and RefCLIPScore (Hessel et al. 2021) "
                   "with this CLIP (checkpoint, openclip:..., hf:DIR)")


def _vqa_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--mode", choices=["generate", "rank"], default="generate",
                   help="generate an answer, or rank a candidate list (--answers/--answer-list)")
    p.add_argument("--answers", help="comma-separated candidate answers (rank mode)")
    p.add_argument("--answer-list", metavar="FILE", help="candidate answers, one per line (rank mode)")


def _load(args):
    from mmfm.generate import stored_generate
    from mmfm.models.checkpoint import load
    from mmfm.models.device import resolve_device

    model = load(args.model, device=resolve_device(args.device), expect="captioner")
    return model, generate_config_from_args(stored_generate(model), args)


def _run_caption(args):
    from mmfm.eval.captioning.caption import evaluate_captions

    model, gen = _load(args)
    res = evaluate_captions(model, args.data, gen, split=args.split, max_samples=args.max_samples,
                            alt_text=args.alt_text, progress=not args.quiet, max_skipped=args.max_skipped,
                            clipscore=args.clipscore)
    return _overlap(args, res)


def _overlap(args, res):
    """Warn (stderr, and ``train_overlap`` in metrics.json) when the data overlaps the model's training data."""
    from mmfm.eval.overlap import mark_overlap

    warning = mark_overlap(res, args.model, args.data, [p["image"] for p in res.predictions])
    if warning:
        print(warning, file=sys.stderr)
    return res


def _run_vqa(args):
    from mmfm.commands.vqa import read_candidates
    from mmfm.eval.captioning.vqa import evaluate_vqa_model
    from mmfm.models.layout import read_config

    candidates = read_candidates(args)
    model, gen = _load(args)
    vqa_cfg = read_config(args.model).task.vqa
    return _overlap(args, evaluate_vqa_model(model, args.data, gen, vqa_cfg, split=args.split,
                                             max_samples=args.max_samples, mode=args.mode, candidates=candidates,
                                             progress=not args.quiet, max_skipped=args.max_skipped))


def _show_scores(args, res) -> None:
    """caption / vqa: OUT/metrics.json and OUT/predictions.jsonl, the scores and the skipped images."""
    from mmfm.eval.result import write_eval

    meta = res.meta
    paths = write_eval(res, args.out or f"runs/eval/{args.what}-{meta['split']}")
    sk = meta["skipped"]
    print(f"{meta['samples']} samples scored, {sk['count']} of {sk['of']} skipped ({sk['frac']:.1%} failed to "
          f"decode, at most {sk['max_frac']:.1%} allowed), split {meta['split']!r}")
    print(_summary(res))
    _print_failures(res)
    print(f"wrote {paths['metrics']} and {paths['predictions']}")


def _summary(res) -> str:
    m = res.metrics
    if res.task == "caption":
        d = res.meta["degenerate"]
        head = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
        flags = [f"{d['empty']} empty", f"{d['repetition_loops']} repetition loops",
                 f"{d['distinct_captions']} distinct captions of {d['samples']}"]
        if d["collapsed"]:
            flags.append(f"COLLAPSED: {d['most_common']['frac']:.0%} get {d['most_common']['caption']!r}")
        return head + "\n  degenerate: " + ", ".join(flags)
    parts = [f"overall {m['overall']:.2f}"] + [f"{k} {v:.2f}" for k, v in sorted(m["per_answer_type"].items())]
    return "VQA accuracy: " + "  ".join(parts)


def _print_failures(res) -> None:
    for f in res.meta["failures"][:10]:
        print(f"  failed: {f['image']}: {f['error']}", file=sys.stderr)


def _bias_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="shard folder / .tar / brace pattern whose json holds the attribute")
    p.add_argument("--model", action="append", required=True,
                   help="a CLIP checkpoint (zero-shot) and/or a captioner (caption quality); repeat for both, or "
                        "for several of one kind (then one row per model, side by side)")
    p.add_argument("--debias", action="append", metavar="PROMPTS|FILE",
                   help="also run each CLIP model with this text debiasing projection (mmfm zeroshot --debias), "
                        "side by side with the model as is; repeatable")
    p.add_argument("--attribute", required=True, help="json field naming the group, e.g. skin_tone")
    p.add_argument("--groups", help="comma-separated groups to compare (default: all; skin_tone: default + 5 tones)")
    p.add_argument("--match-by", default="auto",
                   help="json field that must exist in every group (default: base_name when present; 'none' = off)")
    p.add_argument("--label-field", default="auto",
                   help="zero-shot label: a json field or 'cls' (default: base_name when present, else cls)")
    p.add_argument("--templates", default="{}", help="prompt templates: a name (simple, openai), a file, or a "
                                                      "literal with {} (default '{}': the label itself)")
    p.add_argument("--max-samples", type=int, help="read at most N samples")
    p.add_argument("--out", help="output folder (default runs/eval/bias-ATTRIBUTE)")
    p.add_argument("--quiet", action="store_true")
    add_generate_args(p)


def _captioner_settings(specs: list[str], args):
    from mmfm.eval.bias.audit import is_captioner
    from mmfm.generate import stored_generate

    caps = [m for m in specs if is_captioner(m)]
    return generate_config_from_args(stored_generate(caps[0]), args) if caps else None


def _run_bias(args):
    from mmfm.eval.bias.audit import bias_report, is_captioner

    kw = dict(groups=[g.strip() for g in args.groups.split(",")] if args.groups else None,
              match_by=None if args.match_by == "none" else args.match_by, label_field=args.label_field,
              templates=args.templates, gen=_captioner_settings(args.model, args),
              max_samples=args.max_samples, progress=not args.quiet)
    caps = sum(map(is_captioner, args.model))
    if args.debias or caps > 1 or len(args.model) - caps > 1:
        from mmfm.eval.bias.compare import bias_compare, bias_settings
        return bias_compare(bias_settings(args.model, args.debias), args.data, args.attribute, **kw)
    return bias_report(args.model, args.data, args.attribute, **kw)


def _show_bias(args, res) -> None:
    from mmfm.eval.bias.output import format_table, write_bias_report

    if res.meta["task"] == "bias_compare":
        from mmfm.eval.bias.compare import format_comparison
        from mmfm.eval.result import write_json
        path = write_json(f"{args.out or f'runs/eval/bias-{args.attribute}'}/bias_compare.json", res.summary())
        print(format_comparison(res))
        print(f"{res.meta['n_samples']} images per setting, groups {res.meta['groups']}; wrote {path}")
        return
    paths = write_bias_report(res, args.out or f"runs/eval/bias-{args.attribute}")
    meta = res.meta
    print(format_table(res))
    print(f"{meta['n_samples']} images, groups {meta['groups']}"
          + (f", matched by {meta['match_by']}" if meta.get("match_by") else ""))
    paired = res.metrics.get("zeroshot", {}).get("gap", {}).get("paired")
    if paired:
        print(f"zero-shot best vs worst on the same {paired['pairs']} emoji: {paired['best_only_correct']} right only "
              f"in the best group, {paired['worst_only_correct']} only in the worst; exact McNemar p = "
              f"{paired['p_value']:.3g}")
    print(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}")


def _compare_args(p: argparse.ArgumentParser) -> None:
    # dest "data": the positional inputs (the frozen CLI surface names every eval sub-command's first positional
    # "data"); here they are the models, and the data sets come with --data (dest "datasets")
    p.add_argument("data", nargs="*", metavar="MODEL",
                   help="checkpoints, runs or exports to compare on the same --data (the first is the reference "
                        "of the deltas); with --model: the one data set of the size/latency comparison")
    p.add_argument("--data", action="append", dest="datasets", metavar="[NAME=]PATH",
                   help="CLIP: image folder (zero-shot, probes) or image-caption shards/CSV/JSONL (retrieval); "
                        "captioner: captions (BLEU-4, CIDEr-D, ROUGE-L, perplexity) or questions (VQA accuracy, "
                        "token F1); repeat for the new domain and an old one")
    p.add_argument("--probe-train", action="append", metavar="[NAME=]FOLDER",
                   help="image folder with the same classes as a --data image folder: train a linear probe and "
                        "k-shot probes on it and score them there; NAME=FOLDER pairs it with the --data of that "
                        "name (repeat for the new and the old domain), a bare FOLDER serves every image folder")
    p.add_argument("--fewshot", default="1,5,10", help="k of the k-shot probes, comma-separated ('' for none)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the 95%% intervals")
    p.add_argument("--clipscore", metavar="MODEL", help="captioners: also compare CLIPScore and RefCLIPScore "
                   "computed with this CLIP (checkpoint, openclip:..., hf:DIR)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws and the probes")
    p.add_argument("--model", help="size/latency mode: the original (float) checkpoint, measured against "
                                   "--variant on the one positional data set")
    p.add_argument("--variant", action="append", default=None,
                   help="size/latency mode: int8 (quantize the original here), an int8 folder, or another "
                        "checkpoint such as a distilled student; repeatable (default: int8)")
    p.add_argument("--max-samples", type=int, help="evaluate at most N items (size/latency mode: default 500)")
    p.add_argument("--latency-images", type=int, default=16, help="images timed one by one (default 16)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1)")
    p.add_argument("--templates", default="simple", help="zero-shot templates: a name, a file or a literal with {}")
    p.add_argument("--label-field", default="auto", help="shards: json field or cls for zero-shot labels")
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="output folder for compare.json/.csv/.html (default runs/eval/compare); "
                                 "size/latency mode: the comparison JSON file")
    p.add_argument("--quiet", action="store_true")
    add_generate_args(p)


def _latency_mode(args) -> bool:
    """``--model``/``--variant``: the size/latency comparison of one model's variants on one data set."""
    from mmfm.config import ConfigError
    if args.model or args.variant:
        if len(args.data) != 1 or args.datasets:
            raise ConfigError("compare --model/--variant (size/latency mode) takes exactly one positional data set "
                              "and no --data")
        return True
    if not args.data or not args.datasets:
        raise ConfigError("compare: give the models as positionals and at least one --data (or --model ORIGINAL "
                          "DATA for the size/latency comparison)")
    return False


def _run_compare(args):
    from mmfm.config import ConfigError
    if _latency_mode(args):
        from mmfm.eval.compare.variants import compare_models
        return compare_models(args.model, args.data[0], args.variant,
                              max_samples=500 if args.max_samples is None else args.max_samples,
                              latency_images=args.latency_images, threads=args.threads, templates=args.templates,
                              label_field=args.label_field, gen=_captioner_settings([args.model], args),
                              progress=not args.quiet)
    from mmfm.eval.compare.suite import compare_suite
    try:
        fewshot = [int(k) for k in args.fewshot.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--fewshot {args.fewshot!r}: expected comma-separated integers such as 1,5,10") from None
    return compare_suite(args.data, args.datasets, probe_train=args.probe_train, fewshot=fewshot,
                         templates=args.templates, max_samples=args.max_samples,
                         gen=_captioner_settings(args.data[:1], args), n_boot=args.bootstrap,
                         seed=args.bootstrap_seed, device=args.device, progress=not args.quiet,
                         clipscore=args.clipscore)


def _show_compare(args, res) -> None:
    from mmfm.eval.compare.report import format_comparison, format_suite, write_compare
    from mmfm.eval.result import write_json

    if _latency_mode(args):                          # size/latency: one JSON file, when asked for
        print(format_comparison(res))
        if args.out:
            write_json(args.out, res.summary())
            print(f"wrote {args.out}")
        return
    print(format_suite(res))
    for note in res.meta["notes"]:
        print(f"note: {note}")
    paths = write_compare(res, args.out or "runs/eval/compare")
    print(f"wrote {paths['json']}, {paths['csv']} and {paths['html']}")


def _wise_ft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a fine-tuned run (or checkpoint) that recorded train.init_from")
    p.add_argument("data", help="image folder with class subfolders")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                   help="comma-separated WiSE-FT alphas in [0, 1] (0 = initial weights, 1 = fine-tuned)")
    p.add_argument("--init-from", help="the initial weights (default: the run's train.init_from)")
    p.add_argument("--templates", default="openai", help="zero-shot templates: a name, a file or a literal with {}")
    p.add_argument("--max-samples", type=int, help="an even subsample of N images")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/eval/wise_ft.json", help="JSON results (default runs/eval/wise_ft.json)")
    p.add_argument("--quiet", action="store_true")


def _run_wise_ft(args):
    from mmfm.eval.zeroshot.wise_ft import parse_alphas, wise_ft_sweep

    return wise_ft_sweep(args.run, args.data, parse_alphas(args.alphas), templates=args.templates,
                         init_from=args.init_from, device=args.device, max_samples=args.max_samples,
                         progress=not args.quiet)


def _show_wise_ft(args, res) -> None:
    from mmfm.eval.result import write_json
    from mmfm.eval.zeroshot.wise_ft import format_sweep

    print(format_sweep(res))
    print(f"wrote {write_json(args.out, res.summary())}")


SUBCOMMANDS = {
    "caption": ("BLEU-1..4, ROUGE-L, CIDEr-D + degenerate-output report", _caption_args, _run_caption,
                _show_scores),
    "vqa": ("VQAv2 accuracy by answer type (yes/no, number, other)", _vqa_args, _run_vqa,
            _show_scores),
    "bias": ("zero-shot accuracy and caption quality per group of a sensitive attribute, best-worst gap",
             _bias_args, _run_bias, _show_bias),
    "compare": ("several models on the same data: zero-shot, probes, retrieval, caption/VQA metrics, perplexity, "
                "deltas with 95%% CIs; or (--model/--variant) size, CPU latency and metric drop of int8 / "
                "distilled variants", _compare_args, _run_compare, _show_compare),
    "wise-ft": ("zero-shot top-1 of a run's WiSE-FT weights (initial/fine-tuned interpolation) per alpha",
                _wise_ft_args, _run_wise_ft, _show_wise_ft),
    "benchmark": ("CLIP_benchmark datasets or suite files (its WebDataset folders, torchvision datasets on disk): "
                  "zero-shot and retrieval metrics, one CSV in its columns", benchmark_args, run_benchmark,
                  show_benchmark),
    "compositionality": ("SugarCrepe / ARO (VG-Relation, VG-Attribution, COCO/Flickr order): how often the image "
                         "prefers the true caption to the hard negatives", compositionality_args,
                         run_compositionality, show_compositionality),
    "multilingual": ("XM3600 / Multi30k: image-text retrieval R@k per language", multilingual_args,
                     run_multilingual, show_multilingual),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm eval", description="Evaluate a checkpoint; writes OUT/metrics.json and OUT/predictions.jsonl.",
        epilog="examples:\n  mmfm eval caption --model runs/cap data/coco_val --preset beam\n"
               "  mmfm eval vqa --model runs/vqa data/vqa_val.jsonl --out runs/eval/vqa",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_, add, _, _) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_, prog=f"mmfm eval {name}"))
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.eval.captioning.runner import TooManySkipped

    _, _, run, show = SUBCOMMANDS[args.what]
    try:
        res = run(args)
    except TooManySkipped as e:                    # nothing written: a partial score must not pass for a full one
        _print_failures(e.result)
        print(f"mmfm eval {args.what}: {e}", file=sys.stderr)
        return 1
    show(args, res)
    return 0
