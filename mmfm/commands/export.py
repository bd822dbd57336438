"""``mmfm export``: write a checkpoint as safetensors, ONNX graphs, an open_clip/transformers folder, or int8."""
from __future__ import annotations

import argparse
import json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfm export",
        description="Export a checkpoint for another runtime. Every format is written to a temp folder and renamed "
                    "into place, and checked right after writing (ONNX: onnxruntime vs PyTorch; hf: the target "
                    "library's outputs vs mmfm's).",
        epilog="formats:\n"
               "  safetensors  model.safetensors + config.json (mmfm.load reads it)\n"
               "  onnx         CLIP: image_encoder.onnx + text_encoder.onnx; captioner: vision_encoder.onnx +\n"
               "               decoder.onnx; onnx_config.json holds preprocessing, tokenizer, parity figures\n"
               "  hf           open_clip folder (open_clip.create_model_and_transforms('local-dir:OUT')) for CLIP;\n"
               "               transformers VisionEncoderDecoderModel (or decoder + timm encoder) for captioners\n"
               "  openclip     open_clip_model.safetensors + ARCH.json: open_clip.create_model(ARCH,\n"
               "               pretrained=FILE) (after open_clip.add_model_config('OUT/ARCH.json'))\n"
               "  transformers CLIPModel / SiglipModel.from_pretrained(OUT) (models started from hf:DIR)\n"
               "  int8         dynamic int8 Linear layers for CPU inference (mmfm.load reads it)\n"
               "example: mmfm export runs/clip --format onnx --out exports/clip_onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="checkpoint dir, run dir, exported or int8 folder, openclip:NAME[:FILE] or hf:DIR")
    p.add_argument("--model", dest="model_flag", help=argparse.SUPPRESS)    # the older spelling
    p.add_argument("--format", required=True, choices=["onnx", "safetensors", "hf", "openclip", "transformers",
                                                               "int8"])
    p.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    p.add_argument("--onnx-exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="dynamo: torch.export based (PyTorch's default); torchscript: the legacy tracer, faster")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="ONNX parity tolerance (max |onnxruntime - torch|)")
    p.add_argument("--no-check", action="store_true", help="hf, openclip, transformers: skip loading the folder back with the target "
                   "library")
    p.add_argument("--debias", metavar="PROMPTS|FILE", help="safetensors: store a text debiasing projection "
                   "(mmfm zeroshot --debias; docs/bias.md) in the export; mmfm.load applies it")
    p.add_argument("--wise-ft", type=float, default=None, metavar="ALPHA",
                   help="WiSE-FT: export (1-ALPHA) * initial + ALPHA * fine-tuned weights of a run that recorded "
                        "train.init_from (0 = initial, 1 = fine-tuned); any format")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model = args.model or args.model_flag
    if not model:
        parser.error("the MODEL to export is required")
    if args.debias and args.format != "safetensors":
        parser.error("--debias: only --format safetensors carries the projection (other runtimes would ignore it)")
    if args.format == "onnx":       # fail in one line before loading anything when the export extra is missing
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    from mmfm.export import export

    opts: dict = {}
    if args.format == "onnx":
        opts = {"exporter": args.onnx_exporter, "opset": args.opset, "atol": args.atol}
    elif args.format in ("hf", "openclip", "transformers"):
        opts = {"check": not args.no_check}
    info = export(model, args.format, args.out, wise_ft=args.wise_ft, **opts)
    summary = {k: info.get(k) for k in ("format", "kind", "loader", "portable", "parity", "parity_max_abs_diff",
                                        "not_covered", "arch", "class", "bytes", "quantized_linears",
                                        "export_seconds", "wise_ft") if k in info}
    summary["out"] = str(args.out)
    if args.debias:
        from mmfm.models.checkpoint import load
        from mmfm.models.debias import debias_from_spec, save_debias
        exported = debias_from_spec(load(args.out), args.debias)      # directions of the exported weights
        summary["debias"] = str(save_debias(args.out, exported.debias["P"], exported.debias["prompts"]))
    print(json.dumps(summary, indent=2, default=str))
    return 0
