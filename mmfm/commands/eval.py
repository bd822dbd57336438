"""``mmfm eval caption|vqa``: evaluate a checkpoint on a dataset, write metrics JSON + predictions.

Sub-commands live in ``SUBCOMMANDS`` (name -> (help, add_arguments, run)); a new evaluation (e.g. ``bias``)
adds one entry.
"""
from __future__ import annotations

import argparse
import sys


def _common(p: argparse.ArgumentParser) -> None:
    from mmfm.generate import add_generate_args

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


def _vqa_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--mode", choices=["generate", "rank"], default="generate",
                   help="generate an answer, or rank a candidate list (--answers/--answer-list)")
    p.add_argument("--answers", help="comma-separated candidate answers (rank mode)")
    p.add_argument("--answer-list", metavar="FILE", help="candidate answers, one per line (rank mode)")


def _load(args):
    from mmfm.eval.common import resolve_device
    from mmfm.generate import generate_config_from_args, load_captioner

    model, stored = load_captioner(args.model, device=resolve_device(args.device))
    return model, generate_config_from_args(stored, args)


def _run_caption(args) -> dict:
    from mmfm.eval.caption_eval import evaluate_captions

    model, gen = _load(args)
    return evaluate_captions(model, args.data, gen, split=args.split, max_samples=args.max_samples,
                             alt_text=args.alt_text, progress=not args.quiet, max_skipped=args.max_skipped)


def _run_vqa(args) -> dict:
    from mmfm.commands.vqa import read_candidates
    from mmfm.eval.caption_eval import evaluate_vqa_model
    from mmfm.models.loading import read_checkpoint_config

    candidates = read_candidates(args)
    model, gen = _load(args)
    vqa_cfg = read_checkpoint_config(args.model).task.vqa
    return evaluate_vqa_model(model, args.data, gen, vqa_cfg, split=args.split, max_samples=args.max_samples,
                              mode=args.mode, candidates=candidates, progress=not args.quiet,
                              max_skipped=args.max_skipped)


def _bias_args(p: argparse.ArgumentParser) -> None:
    from mmfm.eval.bias import add_arguments
    add_arguments(p)


def _run_bias(args) -> int:
    from mmfm.eval.bias import run
    return run(args)


def _compare_args(p: argparse.ArgumentParser) -> None:
    from mmfm.compress.compare import add_arguments
    add_arguments(p)


def _run_compare(args) -> int:
    from mmfm.compress.compare import run
    return run(args)


SUBCOMMANDS = {
    "caption": ("BLEU-1..4, ROUGE-L, CIDEr-D + degenerate-output report", _caption_args, _run_caption),
    "vqa": ("VQAv2 accuracy by answer type (yes/no, number, other)", _vqa_args, _run_vqa),
    "bias": ("zero-shot accuracy and caption quality per group of a sensitive attribute, best-worst gap",
             _bias_args, _run_bias),
    "compare": ("size, CPU latency per image and metric drop of int8 / distilled variants vs the original",
                _compare_args, _run_compare),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm eval", description="Evaluate a checkpoint; writes OUT/metrics.json and OUT/predictions.jsonl.",
        epilog="examples:\n  mmfm eval caption --model runs/cap data/coco_val --preset beam\n"
               "  mmfm eval vqa --model runs/vqa data/vqa_val.jsonl --out runs/eval/vqa",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_, add, _) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_, prog=f"mmfm eval {name}"))
    return p


def _summary(res: dict) -> str:
    m = res["metrics"]
    if res["task"] == "caption":
        d = res["degenerate"]
        head = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
        flags = [f"{d['empty']} empty", f"{d['repetition_loops']} repetition loops",
                 f"{d['distinct_captions']} distinct captions of {d['samples']}"]
        if d["collapsed"]:
            flags.append(f"COLLAPSED: {d['most_common']['frac']:.0%} get {d['most_common']['caption']!r}")
        return head + "\n  degenerate: " + ", ".join(flags)
    parts = [f"overall {m['overall']:.2f}"] + [f"{k} {v:.2f}" for k, v in sorted(m["per_answer_type"].items())]
    return "VQA accuracy: " + "  ".join(parts)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mmfm.eval.caption_eval import TooManySkipped, write_eval

    try:
        res = SUBCOMMANDS[args.what][2](args)
    except TooManySkipped as e:                    # nothing written: a partial score must not pass for a full one
        _print_failures(e.result)
        print(f"mmfm eval {args.what}: {e}", file=sys.stderr)
        return 1
    if isinstance(res, int):                       # sub-commands that write and print their own results
        return res
    out = args.out or f"runs/eval/{args.what}-{res['split']}"
    paths = write_eval(res, out)
    sk = res["skipped"]
    print(f"{res['samples']} samples scored, {sk['count']} of {sk['of']} skipped ({sk['frac']:.1%} failed to decode, "
          f"at most {sk['max_frac']:.1%} allowed), split {res['split']!r}")
    print(_summary(res))
    _print_failures(res)
    print(f"wrote {paths['metrics']} and {paths['predictions']}")
    return 0


def _print_failures(res: dict) -> None:
    for f in res["failures"][:10]:
        print(f"  failed: {f['image']}: {f['error']}", file=sys.stderr)
