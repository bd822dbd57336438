"""Benchmark: caption the same images three ways in one run -- mmfm with its KV cache, mmfm without it, and
open_clip's CoCa ``generate`` -- at matched decoder size, and print captions/s, tokens/s and the ratios.

    .venv/bin/python bench/generate.py [--images 500] [--size base|small] [--new-tokens 20] [--batch-size 50]
                                       [--device cpu|cuda] [--threads N]
    .venv/bin/python bench/generate.py --against pipeline [--images 64] [--new-tokens 20] [--shapes git,blip]
      (mmfm caption vs transformers' pipeline and a plain generate loop: see bench/generate_pipeline.py)

* Same images: N random 224x224 RGB images (seeded), written once to a .npy file both sides read.
* Same sizes, random init on both sides (no downloads):
  - vision: a ViT with patch 32 at 224 px -> 49 patch tokens (+ cls) on both sides; CoCa's attentional pooler
    gets 50 queries so both decoders cross-attend to 50 image tokens (open_clip's default is 256).
  - text: CoCa = a unimodal text tower (L_t layers) + a multimodal decoder (L_m layers, self- and
    cross-attention), width W; mmfm = one GPT-2 decoder of width W with cross-attention in every layer and
    as many layers as it takes to have at least CoCa's decoding-stack parameters (printed).
  - open_clip BPE vocabulary (49,408) on both sides.
* Equal work: greedy decoding of exactly ``--new-tokens`` tokens per image on every side (mmfm:
  ``min_new_tokens = max_new_tokens``; CoCa: ``seq_len = new_tokens + 1``, ``min_seq_len = seq_len - 1``, top-k 1,
  a pad id that cannot be generated, so no row stops early). Image encoding is inside the timed region on every
  side (CoCa's ``generate`` encodes images itself). fp32 on CPU; bf16 autocast on CUDA for every side.
* CoCa runs in the anchors venv (bench/anchor_venv.sh: open_clip 3.3 with transformers 4.57, which CoCa's
  generate needs) in a subprocess; mmfm runs in this venv.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB, SOT, EOT = 49408, 49406, 49407
SIZES = {   # vision width/layers/heads, decoder width/heads, CoCa text layers + multimodal layers
    "base": dict(v_width=768, v_layers=12, v_heads=12, width=512, heads=8, text_layers=12, mm_layers=12),
    "small": dict(v_width=192, v_layers=6, v_heads=3, width=256, heads=4, text_layers=4, mm_layers=4),
}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _images(path: Path, n: int):
    import numpy as np
    if not path.exists() or np.load(path, mmap_mode="r").shape[0] < n:
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(0).integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
        np.save(path, arr)
    return path


def _tensor_batches(path: str, n: int, batch: int, device):
    import numpy as np
    import torch
    arr = np.load(path, mmap_mode="r")[:n]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, n, batch):
        x = torch.from_numpy(np.ascontiguousarray(arr[i: i + batch])).permute(0, 3, 1, 2).float() / 255.0
        out.append(((x - mean) / std).to(device))
    return out


def _layer_params(model) -> int:
    """Parameters of the text/decoding stack without the vocabulary-sized tensors (token embeddings, LM head;
    CoCa unties its head, mmfm's GPT-2 ties it) -- the part whose size sets the per-token compute."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("visual.") and VOCAB not in p.shape)


def _autocast(device: str):
    import contextlib

    import torch
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def _sync(device: str):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- CoCa (anchors venv)
def coca_config(s: dict) -> dict:
    return {
        "embed_dim": s["width"],
        "vision_cfg": {"image_size": 224, "layers": s["v_layers"], "width": s["v_width"], "patch_size": 32,
                       "head_width": s["v_width"] // s["v_heads"], "attentional_pool": True,
                       "attn_pooler_queries": 51, "attn_pooler_heads": s["heads"], "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": VOCAB, "width": s["width"], "heads": s["heads"],
                     "layers": s["text_layers"], "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": VOCAB, "width": s["width"], "heads": s["heads"],
                           "layers": s["mm_layers"], "attn_pooler_heads": s["heads"]},
        "custom_text": True,
    }


def _beam_search_scorer_shim() -> None:
    """open_clip 3.3's coca_model imports ``BeamSearchScorer`` from ``transformers`` or ``transformers.generation``;
    transformers 4.57 keeps it only in ``transformers.generation.beam_search``, so without this every CoCa
    ``generate`` call fails with "Please install transformers". Expose it where open_clip looks."""
    import transformers
    try:
        from transformers import BeamSearchScorer  # noqa: F401
    except ImportError:
        from transformers.generation.beam_search import BeamSearchScorer
        transformers.BeamSearchScorer = BeamSearchScorer


def run_coca(args) -> dict:
    import tempfile

    _beam_search_scorer_shim()
    import open_clip
    import torch

    torch.manual_seed(0)
    s = SIZES[args.size]
    with tempfile.TemporaryDirectory() as d:
        cfg_path = Path(d) / f"coca_bench_{args.size}.json"
        cfg_path.write_text(json.dumps(coca_config(s)))
        open_clip.add_model_config(str(cfg_path))
        model = open_clip.create_model(cfg_path.stem).to(args.device).eval()
    decoding = _layer_params(model)
    batches = _tensor_batches(args.images_file, args.images, args.batch_size, args.device)
    seq_len = args.new_tokens + 1

    def gen(x):
        return model.generate(x, seq_len=seq_len, min_seq_len=seq_len - 1, generation_type="top_k", top_k=1,
                              pad_token_id=-1, eos_token_id=EOT, sot_token_id=SOT)

    with torch.no_grad(), _autocast(args.device):
        gen(batches[0][:2])                                         # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        tokens = 0
        for x in batches:
            out = gen(x)
            tokens += int((out[:, 1:] >= 0).sum())
        _sync(args.device)
        seconds = time.perf_counter() - t0
    return {"side": "open_clip CoCa generate (no KV cache)", "seconds": seconds, "captions": args.images,
            "tokens": tokens, "decoder_params": decoding,
            "image_tokens": int(model.visual.attn_pool.query.shape[0]) - 1}


# ----------------------------------------------------------------------------- mmfm (this venv)
def mmfm_layers(s: dict) -> int:
    """GPT-2 layers (self + cross attention + MLP = 16 W^2 each) to reach CoCa's decoding-stack parameters:
    text layers 12 W^2 each, multimodal layers 24 W^2 each (open_clip's cross-attention block has its own MLP)."""
    return math.ceil((12 * s["text_layers"] + 24 * s["mm_layers"]) / 16)


def build_mmfm(s: dict):
    from mmfm.models.factory import build_model
    cfg = {"kind": "captioner",
           "vision": {"timm_model": "vit_base_patch32_clip_224",
                      "timm_kwargs": {"embed_dim": s["v_width"], "depth": s["v_layers"], "num_heads": s["v_heads"]}},
           "decoder": {"arch": "gpt2", "tokenizer": "openclip", "max_length": 77,
                       "config_overrides": {"n_embd": s["width"], "n_layer": mmfm_layers(s), "n_head": s["heads"],
                                            "n_positions": 128}}}
    return build_model(cfg)


def run_mmfm(args, use_cache: bool) -> dict:
    import torch

    torch.manual_seed(0)
    model = build_mmfm(SIZES[args.size]).to(args.device).eval()
    decoding = _layer_params(model)
    batches = _tensor_batches(args.images_file, args.images, args.batch_size, args.device)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_beams=1, do_sample=False,
              use_cache=use_cache)
    with torch.no_grad(), _autocast(args.device):
        model.generate_ids(batches[0][:2], [[]] * 2, **kw)        # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        tokens = 0
        for x in batches:
            tokens += int(model.generate_ids(x, [[]] * x.shape[0], **kw).numel())
        _sync(args.device)
        seconds = time.perf_counter() - t0
    return {"side": f"mmfm generate ({'KV cache' if use_cache else 'no KV cache'})", "seconds": seconds,
            "captions": args.images, "tokens": tokens, "decoder_params": decoding,
            "image_tokens": int(model.visual.forward_tokens(batches[0][:1]).shape[1])}


# ----------------------------------------------------------------------------- driver
def _anchor_python() -> str:
    py = ROOT / ".bench" / "anchors" / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"anchors venv missing: run bash bench/anchor_venv.sh (expected {py})")
    return str(py)


def _side_args(args) -> list[str]:
    return ["--images", str(args.images), "--size", args.size, "--new-tokens", str(args.new_tokens),
            "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads),
            "--images-file", args.images_file]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--side", choices=["all", "coca", "mmfm", "mmfm-nocache"], default="all")
    p.add_argument("--images-file", default=str(ROOT / ".bench" / "generate" / "images.npy"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--against", choices=["coca", "pipeline"], default="coca",
                   help="pipeline: mmfm caption vs transformers' pipeline and generate loop (bench/generate_pipeline.py)")
    p.add_argument("--shapes", default="git,blip", help="--against pipeline: comma-separated git,blip")
    p.add_argument("--rounds", type=int, default=3, help="--against pipeline: interleaved timed rounds per side")
    p.add_argument("--shape-side", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv=None) -> int:
    args = parse(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.against == "pipeline":
        sys.path.insert(0, str(ROOT / "bench"))
        import generate_pipeline as gp
        if args.shape_side:
            args.shape = args.shape_side
            print("RESULT " + json.dumps(gp.run_shape(args)))
            return 0
        return gp.main(args)
    if args.side != "all":
        res = run_coca(args) if args.side == "coca" else run_mmfm(args, args.side == "mmfm")
        print("RESULT " + json.dumps(res))
        return 0
    _images(Path(args.images_file), args.images)
    results = []
    for side, py in (("mmfm", sys.executable), ("mmfm-nocache", sys.executable), ("coca", _anchor_python())):
        env = {**os.environ, "PYTHONPATH": str(ROOT) if side != "coca" else "", "HF_HUB_OFFLINE": "1"}
        p = subprocess.run([py, __file__, "--side", side, *_side_args(args)], capture_output=True, text=True,
                           env=env, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode != 0 or line is None:
            print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{side} side failed (exit {p.returncode})")
        results.append(json.loads(line[7:]))
        r = results[-1]
        print(f"  {r['side']:<40} {r['captions'] / r['seconds']:8.2f} captions/s {r['tokens'] / r['seconds']:9.1f}"
              f" tokens/s  ({r['seconds']:.1f} s, decoder layers {r['decoder_params'] / 1e6:.1f} M params, "
              f"{r['image_tokens']} image tokens)", flush=True)
    cache, nocache, coca = results
    rate = {r["side"]: r["captions"] / r["seconds"] for r in results}
    print(f"\n{args.images} images, {args.new_tokens} new tokens each, size {args.size}, device {args.device}, "
          f"batch {args.batch_size}, threads {args.threads or torch.get_num_threads()}")
    print(f"mmfm KV cache vs open_clip CoCa:   {rate[cache['side']] / rate[coca['side']]:.2f}x  (target >= 3x)")
    print(f"mmfm KV cache vs mmfm no cache:    {rate[cache['side']] / rate[nocache['side']]:.2f}x")
    print(f"mmfm no cache vs open_clip CoCa:   {rate[nocache['side']] / rate[coca['side']]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
