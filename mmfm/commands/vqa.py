"""``mmfm vqa``: answer questions about images with a captioner checkpoint trained for VQA."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .decoding import add_generate_args, generate_config_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm vqa",
        description="Answer a question about one or more images (IMAGE ... --question), or every row of a JSONL "
                    "file "
                    "(--batch, rows {image, question[, id]}). With --answers/--answer-list the model ranks the "
                    "given answers by likelihood instead of generating one. Empty or over-long questions are "
                    "truncated with a warning.",
        epilog='examples:\n  mmfm vqa --model runs/vqa cat.jpg --question "what color is the cat?"\n'
               "  mmfm vqa --model runs/vqa --batch questions.jsonl --out answers.jsonl --answers yes,no",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="captioner/VQA checkpoint dir, run dir or exported folder")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image file(s) to ask --question about")
    p.add_argument("--image", action="append", default=[], help=argparse.SUPPRESS)   # the older spelling
    p.add_argument("--question", help="the question about each IMAGE")
    p.add_argument("--batch", metavar="JSONL", help="rows {image, question[, id]}; relative image paths are "
                   "resolved against the file's folder")
    p.add_argument("--out", metavar="JSONL", help="write answers here (batch mode; default: stdout)")
    p.add_argument("--answers", help="comma-separated candidate answers to rank (rank mode)")
    p.add_argument("--answer-list", metavar="FILE", help="candidate answers, one per line (rank mode)")
    p.add_argument("--top", type=int, default=5, help="ranked answers kept per question (rank mode)")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    add_generate_args(p)
    return p


def read_candidates(args) -> list[str] | None:
    from mmfm.config import ConfigError

    if args.answers and args.answer_list:
        raise ConfigError("give --answers or --answer-list, not both")
    if args.answers:
        cands = [a.strip() for a in args.answers.split(",")]
    elif args.answer_list:
        path = Path(args.answer_list)
        if not path.is_file():
            raise ConfigError(f"--answer-list: file not found: {path}")
        cands = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        return None
    cands = list(dict.fromkeys(c for c in cands if c))
    if not cands:
        raise ConfigError("the candidate answer list is empty")
    return cands


def read_batch(path: str) -> list[dict]:
    from mmfm.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--batch: file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} line {n}: invalid JSON ({e})") from None
        if not isinstance(row, dict) or not row.get("image"):
            raise ConfigError(f"{p} line {n}: needs an 'image' field")
        image = row["image"] if Path(row["image"]).is_absolute() else str(p.parent / row["image"])
        rows.append({"id": row.get("id", row.get("question_id", n)), "image": image,
                     "question": row.get("question") or ""})
    if not rows:
        raise ConfigError(f"{p}: no questions")
    return rows


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import logging

    from mmfm.config import ConfigError
    from mmfm.generate import answer_rows, stored_generate
    from mmfm.models.checkpoint import load
    from mmfm.models.device import resolve_device
    from mmfm.models.layout import is_spec, read_config

    logging.basicConfig(level=logging.WARNING, format="mmfm vqa: %(message)s")
    images = list(args.images) + list(args.image)
    if args.batch:
        if images or args.question is not None:
            raise ConfigError("--batch replaces IMAGE/--question; give one or the other")
        rows = read_batch(args.batch)
    else:
        if not images:
            raise ConfigError("give IMAGE ... --question (or --batch FILE)")
        rows = [{"id": i, "image": im, "question": args.question or ""} for i, im in enumerate(images)]
    candidates = read_candidates(args)
    model = load(args.model, device=resolve_device(args.device), expect="captioner")
    vqa_cfg = None if is_spec(args.model) else read_config(args.model).task.vqa   # a library model: defaults
    gen = generate_config_from_args(stored_generate(model), args)
    results = answer_rows(model, rows, gen, vqa_cfg, candidates, args.top, progress=not args.quiet and bool(args.batch))
    failed = [r for r in results if r["error"]]
    for r in failed:
        print(f"mmfm vqa: {r['image']}: {r['error']}", file=sys.stderr)
    if args.batch:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        if args.out:
            from mmfm.config import atomic_write_text
            atomic_write_text(args.out, text)
            print(f"answered {len(results) - len(failed)} of {len(results)} questions -> {args.out}")
        else:
            sys.stdout.write(text)
    else:
        for r in results:
            if r["error"]:
                continue
            print(r["answer"] if len(results) == 1 else f"{r['image']}: {r['answer']}")
            for item in r.get("ranking") or []:
                print(f"  {item['logprob']:9.3f}  {item['answer']}")
    return 0 if len(failed) < len(results) else 1
