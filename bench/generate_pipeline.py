"""``bench/generate.py --against pipeline``: ``mmfm caption`` on a folder against transformers' own captioning path
(``pipeline("image-to-text")``, or ``"image-text-to-text"`` with an empty prompt where transformers >= 5 dropped
the former) and a plain batched ``model.generate`` loop, on the same model, same images, greedy, the same number
of new tokens (``min_new_tokens = max_new_tokens``), captions compared word for word.

* Shapes: ``git`` (GitConfig() defaults: CLIP ViT-B/16 at 224 px + 6-layer BERT-base decoder) and ``blip``
  (BlipConfig() defaults: ViT-B/16 at 384 px + 12-layer BERT-base decoder), random weights (seed 0), saved with
  ``save_pretrained`` beside an offline word-level tokenizer built with the ``tokenizers`` library (BERT's
  special-token ids, 30,524 entries) and the family's processor -- the folders ``mmfm caption --model hf:DIR``
  and ``pipeline(model=DIR)`` both open.
* Images: N JPEGs (random sizes 320-640 px, seeded) written once to ``.bench/generate/jpeg``; every side reads the
  files (decoding is inside the timed region on every side).
* mmfm side: ``mmfm.generate.caption_images`` on the folder's paths, as ``mmfm caption DIR --raw`` runs it
  (confidence included). fp32 on CPU; bf16 autocast on CUDA for every side.
* Timing: one process per shape holds every side, warms each up on 2 images, then times ``--rounds``
  interleaved rounds (mmfm, pipeline, generate, mmfm, ...) and reports each side's median round, so load
  drift on a shared machine falls on every side alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 30524
SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522}
SIDES = ("mmfm", "pipeline", "generate")


def _tokenizer(family: str):
    """BERT-id special tokens over synthetic words ``w<i>``; GIT's template is ``[CLS] $A`` (its captioning
    start: what ``image-to-text`` gives GIT), BLIP's ``[CLS] $A [SEP]`` (BLIP's generate drops the trailing
    [SEP])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab.update(SPECIAL)
    vocab = {t: i for t, i in vocab.items() if t in SPECIAL or i not in SPECIAL.values()}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    pair = "[CLS] $A [SEP]" if family == "blip" else "[CLS] $A"
    tk.post_processor = processors.TemplateProcessing(single=pair, special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", additional_special_tokens=["[DEC]"],
                                   model_input_names=["input_ids", "attention_mask"])


TINY_VISION = dict(hidden_size=64, image_size=64, patch_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=128)
TINY_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def build_folder(family: str, folder: Path, size: str = "base") -> Path:
    """A random-init ``family`` captioner folder: transformers' default (base) config, or ``size="tiny"`` (64 px
    ViT and a 2-layer width-64 decoder over the same tokenizer) for smoke runs."""
    import torch
    import transformers as T

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    tok, tiny = _tokenizer(family), size == "tiny"
    px = TINY_VISION["image_size"] if tiny else (224 if family == "git" else 384)
    if family == "git":
        cfg = T.GitConfig(vision_config=TINY_VISION, **TINY_TEXT) if tiny else T.GitConfig()
        model = T.GitForCausalLM(cfg)
        ip = T.CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
        proc = T.GitProcessor(image_processor=ip, tokenizer=tok)
    else:
        cfg = (T.BlipConfig(vision_config=TINY_VISION, text_config=dict(TINY_TEXT, vocab_size=VOCAB),
                            projection_dim=64) if tiny else T.BlipConfig())
        model = T.BlipForConditionalGeneration(cfg)
        proc = T.BlipProcessor(image_processor=T.BlipImageProcessor(size={"height": px, "width": px}), tokenizer=tok)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(str(tmp))
    proc.save_pretrained(str(tmp))
    os.replace(tmp, folder)
    return folder


def write_images(folder: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        if not p.exists():
            w, h = (int(v) for v in rng.integers(320, 641, size=2))
            base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)   # blocky, photo-ish
            Image.fromarray(base).resize((w, h), Image.BILINEAR).save(p, quality=90)
        paths.append(str(p))
    return paths


def _autocast(device: str):
    import contextlib

    import torch
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def _sync(device: str):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gen_kwargs(n: int) -> dict:
    return dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)


def _timed(fn, paths, device):
    import torch
    with torch.no_grad(), _autocast(device):
        _sync(device)
        t0 = time.perf_counter()
        captions = fn(paths)
        _sync(device)
        return captions, time.perf_counter() - t0


def runner_mmfm(folder, args):
    """What ``mmfm caption DIR --raw`` runs: the hf: loader, then ``caption_images`` on the paths."""
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images
    from mmfm.models.checkpoint import load

    model = load(f"hf:{folder}", device=args.device, expect="captioner")
    gen = GenerateConfig(**_gen_kwargs(args.new_tokens), prompt="", batch_size=args.batch_size)
    return lambda ps: [r["caption"] for r in caption_images(model, ps, gen, alt_text=False)]


def _text(out) -> str:
    return (out[0] if isinstance(out, list) else out)["generated_text"]


def runner_pipeline(folder, args):
    from transformers import pipeline
    from transformers.pipelines import SUPPORTED_TASKS

    kw = dict(batch_size=args.batch_size, generate_kwargs=_gen_kwargs(args.new_tokens))
    if "image-to-text" in SUPPORTED_TASKS:
        pipe = pipeline("image-to-text", model=str(folder), device=args.device)
        return lambda ps: [_text(o) for o in pipe(ps, **kw)]
    pipe = pipeline("image-text-to-text", model=str(folder), device=args.device)
    return lambda ps: [_text(o) for o in pipe(images=ps, text=[""] * len(ps), return_full_text=False, **kw)]


def runner_generate(folder, args):
    import transformers as T
    from PIL import Image

    model = T.AutoModelForImageTextToText.from_pretrained(str(folder)).to(args.device).eval()
    proc = T.AutoProcessor.from_pretrained(str(folder))
    n = args.new_tokens

    def run(ps):
        out = []
        for i in range(0, len(ps), args.batch_size):
            ims = [Image.open(p).convert("RGB") for p in ps[i: i + args.batch_size]]
            pv = proc(images=ims, return_tensors="pt")["pixel_values"].to(args.device)
            ids = model.generate(pixel_values=pv, **_gen_kwargs(n))
            out += proc.batch_decode(ids[:, -n:], skip_special_tokens=True)
        return out
    return run


def side_mmfm(folder, paths, args):
    """One warm-up on 2 images, then one timed pass: (captions, seconds)."""
    return _warm_then_time(runner_mmfm(folder, args), paths, args.device)


def side_pipeline(folder, paths, args):
    return _warm_then_time(runner_pipeline(folder, args), paths, args.device)


def _warm_then_time(fn, paths, device):
    _timed(fn, paths[:2], device)
    return _timed(fn, paths, device)


def run_shape(args) -> dict:
    """Every side of one shape in this process, warmed up, then timed in ``--rounds`` interleaved rounds (on a
    shared machine, load drifts; interleaving gives every side the same drift); each side's median round."""
    import statistics

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = ROOT / ".bench" / "generate" / f"hf-{args.shape}"
    paths = sorted(str(p) for p in (ROOT / ".bench" / "generate" / "jpeg").glob("*.jpg"))[: args.images]
    runners = {side: globals()[f"runner_{side}"](folder, args) for side in SIDES}
    for fn in runners.values():
        _timed(fn, paths[:2], args.device)                                        # warm-up
    times, captions = {side: [] for side in SIDES}, {}
    for _ in range(args.rounds):
        for side, fn in runners.items():
            captions[side], seconds = _timed(fn, paths, args.device)
            times[side].append(seconds)
    return {side: {"seconds": statistics.median(times[side]), "rounds": times[side], "images": len(paths),
                   "tokens": len(paths) * args.new_tokens, "captions": captions[side]} for side in SIDES}


def _same(a, b) -> bool:
    from mmfm.generate import clean_caption
    return [clean_caption(x) for x in a] == [clean_caption(x) for x in b]


def main(args) -> int:
    """Build the folders and images, run each shape's sides in one process, print both sides and the ratios."""
    import torch

    paths = write_images(ROOT / ".bench" / "generate" / "jpeg", args.images)
    ratios = []
    for shape in args.shapes.split(","):
        build_folder(shape, ROOT / ".bench" / "generate" / f"hf-{shape}")
        cmd = [sys.executable, str(ROOT / "bench" / "generate.py"), "--against", "pipeline", "--shape-side",
               shape, "--images", str(len(paths)), "--new-tokens", str(args.new_tokens), "--rounds",
               str(args.rounds), "--batch-size", str(args.batch_size), "--device", args.device, "--threads",
               str(args.threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode != 0 or line is None:
            print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{shape} failed (exit {p.returncode})")
        res = json.loads(line[7:])
        for side, r in res.items():
            print(f"  {shape:<5} {side:<9} {r['images'] / r['seconds']:8.2f} images/s {r['tokens'] / r['seconds']:9.1f}"
                  f" tokens/s  (median of {' '.join(f'{t:.1f}' for t in r['rounds'])} s)", flush=True)
        same = _same(res["mmfm"]["captions"], res["pipeline"]["captions"])
        same_gen = _same(res["mmfm"]["captions"], res["generate"]["captions"])
        rate = {s: r["images"] / r["seconds"] for s, r in res.items()}
        print(f"  {shape}: mmfm / plain generate loop {rate['mmfm'] / rate['generate']:.2f}x, captions identical: "
              f"{same_gen}; first caption: {res['mmfm']['captions'][0]!r}")
        ratios.append(f"ratio mmfm / transformers pipeline ({shape}): {rate['mmfm'] / rate['pipeline']:.2f}x "
                      f"images/s, captions identical: {same}")
    print(f"\n{len(paths)} images, {args.new_tokens} new tokens each, device {args.device}, batch "
          f"{args.batch_size}, threads {args.threads or torch.get_num_threads()}")
    print("\n".join(ratios))
    return 0
