"""ONNX export: CLIP image and text towers as two graphs; captioners as a vision encoder plus a decoder.

Folder layout written by :func:`export_onnx` (atomically: a temp dir, then renamed)::

    OUT/image_encoder.onnx   image (B,3,H,W) float32            -> image_embeds (B,D), L2-normalised   [clip]
    OUT/text_encoder.onnx    text_ids, attention_mask (B,L) int64 -> text_embeds (B,D), L2-normalised  [clip]
    OUT/vision_encoder.onnx  image (B,3,H,W) float32            -> image_tokens (B,N,W) (decoder memory) [captioner]
    OUT/decoder.onnx         input_ids, attention_mask (B,T) int64, image_tokens -> logits (B,T,V)   [captioner]
    OUT/onnx_config.json     preprocess, tokenizer, logit scale/bias, graph signatures, parity figures

Every graph is run in onnxruntime right after export and compared with PyTorch on fresh inputs
(``parity`` in onnx_config.json); a graph outside ``atol`` fails the export. The decoder graph has no
KV cache: each step re-runs the prefix (greedy decoding with it is in :class:`OnnxCaptioner`).
Exporters: ``dynamo`` (torch.export based, PyTorch's default; needs onnxscript) or ``torchscript``
(the legacy tracer; faster to export).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.config import ConfigError

__all__ = ["export_onnx", "OnnxCLIP", "OnnxCaptioner", "ONNX_CONFIG", "DEFAULT_OPSET"]

ONNX_CONFIG = "onnx_config.json"
ONNX_FORMAT = "mmfm-onnx/1"
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


# ----------------------------------------------------------------------------- graph wrappers
class ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(image), dim=-1)


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(text_ids, attention_mask), dim=-1)


class VisionTokens(nn.Module):
    """Captioner image -> the decoder's cross-attention memory (``model.image_tokens``: tower + projection)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.image_tokens(image)


class DecoderLogits(nn.Module):
    """Captioner decoder: token ids + image memory -> next-token logits at every position (no cache)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor):
        return self.model(text_ids=input_ids, attention_mask=attention_mask, image_tokens=image_tokens)["logits"]


# ----------------------------------------------------------------------------- helpers
def _require_onnx(exporter: str) -> None:
    missing = []
    for mod in ("onnx", "onnxruntime") + (("onnxscript",) if exporter == "dynamo" else ()):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'mmfm[export]'"
                          + (" (or use --onnx-exporter torchscript)" if missing == ["onnxscript"] else ""))


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic: dict[str, dict[int, str]], exporter: str, opset: int) -> None:
    """One graph to ``path``: weights inside the .onnx file (no external data files)."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer / deprecation chatter
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True)
            return
        from torch.export import Dim
        dims: dict[str, Dim] = {}
        shapes = {}
        for name in input_names:
            axes = dynamic.get(name, {})
            shapes[name] = {ax: dims.setdefault(label, Dim(label, min=1, max=65536)) for ax, label in axes.items()}
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                     dynamic_shapes=shapes, opset_version=opset, optimize=True, verbose=False)
        prog.save(str(path), external_data=False)


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session, feeds: dict):
    """Run with the inputs the graph declares (an exporter drops an input the model ignores, e.g. the
    attention mask of open_clip's causal text tower, which pools at the eos token)."""
    names = {i.name for i in session.get_inputs()}
    missing = names - set(feeds)
    if missing:
        raise ConfigError(f"ONNX graph needs inputs {sorted(missing)}")
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def _example_text(model: nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-length token rows (every column attended), so no tracer bakes in a padding trim."""
    tok = model.tokenizer
    length = int(tok.context_length)
    g = torch.Generator().manual_seed(0)
    hi = max(int(tok.vocab_size) - 1, 2)
    ids = torch.randint(1, hi, (batch, length), generator=g)
    ids[:, 0] = tok.bos_token_id
    ids[:, -1] = tok.eos_token_id
    return ids, torch.ones_like(ids)


def _parity_text(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Real captions of different lengths (so padding is exercised), batch of 3."""
    tok = model.tokenizer(["a red circle", "", "a small blue square next to a large green triangle " * 3])
    return tok["text_ids"], tok["attention_mask"].to(torch.long)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def _image_shape(model: nn.Module) -> tuple[int, int, int]:
    size = (model.preprocess or {}).get("input_size") or (3, 224, 224)
    return tuple(int(s) for s in size)


# ----------------------------------------------------------------------------- CLIP
def _export_clip(model: nn.Module, out: Path, exporter: str, opset: int) -> dict:
    c, h, w = _image_shape(model)
    g = torch.Generator().manual_seed(0)
    graphs, parity = {}, {}
    img_mod = ImageEncoder(model)
    _export_graph(img_mod, (torch.randn(2, c, h, w, generator=g),), out / "image_encoder.onnx", ["image"],
                  ["image_embeds"], {"image": {0: "batch"}, "image_embeds": {0: "batch"}}, exporter, opset)
    graphs["image_encoder"] = {"file": "image_encoder.onnx", "inputs": {"image": ["batch", c, h, w]},
                               "outputs": {"image_embeds": ["batch", "embed_dim"]}}
    txt_mod = TextEncoder(model)
    _export_graph(txt_mod, _example_text(model, 2), out / "text_encoder.onnx", ["text_ids", "attention_mask"],
                  ["text_embeds"], {"text_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                    "text_embeds": {0: "batch"}}, exporter, opset)
    length = int(model.tokenizer.context_length)
    graphs["text_encoder"] = {"file": "text_encoder.onnx",
                              "inputs": {"text_ids": ["batch", length], "attention_mask": ["batch", length]},
                              "outputs": {"text_embeds": ["batch", "embed_dim"]}}
    # parity on fresh inputs with a batch size the export never saw
    image = torch.randn(3, c, h, w, generator=g)
    ids, mask = _parity_text(model)
    with torch.no_grad():
        ref_i, ref_t = img_mod(image), txt_mod(ids, mask)
    got_i = run_session(_session(out / "image_encoder.onnx"), {"image": image.numpy()})[0]
    text_sess = _session(out / "text_encoder.onnx")
    got_t = run_session(text_sess, {"text_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    graphs["text_encoder"]["inputs"] = {i.name: graphs["text_encoder"]["inputs"][i.name] for i in text_sess.get_inputs()}
    parity["image_encoder"] = _max_diff(got_i, ref_i)
    parity["text_encoder"] = _max_diff(got_t, ref_t)
    scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    extra = {"logit_scale": float(torch.as_tensor(scale).detach().float().exp().clamp(max=100.0)) if scale is not None
             else None,
             "logit_bias": float(bias.detach()) if isinstance(bias, torch.Tensor) else None,
             "embed_dim": int(ref_i.shape[-1])}
    return {"graphs": graphs, "parity": parity, **extra}


# ----------------------------------------------------------------------------- captioner
def _check_captioner_api(model: nn.Module) -> None:
    missing = [m for m in ("image_tokens", "generate_ids") if not callable(getattr(model, m, None))]
    if missing:
        raise ConfigError(f"ONNX export of a captioner needs {type(model).__name__}.{' and .'.join(missing)}(); "
                          f"this captioner does not provide them")


def _export_captioner(model: nn.Module, out: Path, exporter: str, opset: int) -> dict:
    _check_captioner_api(model)
    c, h, w = _image_shape(model)
    g = torch.Generator().manual_seed(0)
    vis = VisionTokens(model)
    example_img = torch.randn(2, c, h, w, generator=g)
    _export_graph(vis, (example_img,), out / "vision_encoder.onnx", ["image"], ["image_tokens"],
                  {"image": {0: "batch"}, "image_tokens": {0: "batch"}}, exporter, opset)
    with torch.no_grad():
        mem = vis(example_img)
    dec = DecoderLogits(model)
    tok = model.tokenizer
    t = 5
    ids = torch.randint(3, max(int(tok.vocab_size) - 1, 4), (2, t), generator=g)
    _export_graph(dec, (ids, torch.ones_like(ids), mem), out / "decoder.onnx",
                  ["input_ids", "attention_mask", "image_tokens"], ["logits"],
                  {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                   "image_tokens": {0: "batch"}, "logits": {0: "batch", 1: "seq"}}, exporter, opset)
    image = torch.randn(3, c, h, w, generator=g)
    ids = torch.randint(3, max(int(tok.vocab_size) - 1, 4), (3, 7), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref_m = vis(image)
        ref_l = dec(ids, mask, ref_m)
    got_m = run_session(_session(out / "vision_encoder.onnx"), {"image": image.numpy()})[0]
    got_l = run_session(_session(out / "decoder.onnx"), {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                                         "image_tokens": ref_m.numpy()})[0]
    n, width = int(ref_m.shape[1]), int(ref_m.shape[2])
    graphs = {"vision_encoder": {"file": "vision_encoder.onnx", "inputs": {"image": ["batch", c, h, w]},
                                 "outputs": {"image_tokens": ["batch", n, width]}},
              "decoder": {"file": "decoder.onnx",
                          "inputs": {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"],
                                     "image_tokens": ["batch", n, width]},
                          "outputs": {"logits": ["batch", "seq", int(ref_l.shape[-1])]}}}
    parity = {"vision_encoder": _max_diff(got_m, ref_m), "decoder": _max_diff(got_l, ref_l)}
    special = {k: getattr(tok, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    prompt = getattr(model, "prompt", "") or ""
    return {"graphs": graphs, "parity": parity, "special_tokens": special, "prompt": prompt,
            "prompt_ids": model.encode_plain(prompt) if prompt else [], "generation": _generation(model)}


def _generation(model) -> dict | None:
    """The decoding settings stored with the checkpoint (config.yaml's ``generate:``), when it has them."""
    from mmfm.config import to_dict
    from mmfm.generate import stored_generate
    gen = stored_generate(model, default=None)
    return to_dict(gen) if gen is not None else None


# ----------------------------------------------------------------------------- entry point
def model_kind(model: nn.Module) -> str:
    kind = getattr(getattr(model, "model_cfg", None), "kind", None)
    if kind in ("clip", "captioner"):
        return kind
    from mmfm.models.factory import is_clip_model
    return "clip" if is_clip_model(model) else "captioner"


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, exporter: str = "dynamo",
                opset: int = DEFAULT_OPSET, atol: float = 1e-4, source: str | None = None) -> dict:
    """Export ``model`` (a loaded mmfm CLIP or captioner) to ONNX graphs in ``out_dir``; returns the config
    written to onnx_config.json (graph signatures + ``parity``: max |onnxruntime - torch| per graph)."""
    from mmfm.models.layout import atomic_dir

    if exporter not in EXPORTERS:
        raise ConfigError(f"onnx exporter: {exporter!r} is not one of {', '.join(EXPORTERS)}")
    _require_onnx(exporter)
    model = model.float().eval().cpu()
    kind = model_kind(model)
    result: dict = {}

    def fill(tmp: Path) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            info = (_export_clip if kind == "clip" else _export_captioner)(model, tmp, exporter, opset)
        bad = {k: v for k, v in info["parity"].items() if not v <= atol}
        if bad:
            raise ConfigError(f"ONNX export: onnxruntime output differs from PyTorch beyond atol={atol}: "
                              + ", ".join(f"{k} max|diff|={v:.3g}" for k, v in bad.items()))
        from mmfm.version import __version__
        tok = getattr(model, "tokenizer", None)
        result.update({"format": ONNX_FORMAT, "kind": kind, "mmfm_version": __version__,
                       "torch_version": torch.__version__, "exporter": exporter, "opset": opset, "atol": atol,
                       "source": source, "model_class": type(model).__name__,
                       "preprocess": getattr(model, "preprocess", None),
                       "tokenizer": getattr(tok, "name", None),
                       "context_length": getattr(tok, "context_length", None),
                       "export_seconds": round(time.perf_counter() - t0, 2), **info})
        (tmp / ONNX_CONFIG).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")

    atomic_dir(out_dir, fill)
    return result


# ----------------------------------------------------------------------------- runtimes
def read_onnx_config(folder: str | os.PathLike) -> dict:
    p = Path(folder) / ONNX_CONFIG
    if not p.is_file():
        raise ConfigError(f"{folder}: no {ONNX_CONFIG} (not an mmfm ONNX export)")
    cfg = json.loads(p.read_text(encoding="utf-8"))
    if cfg.get("format") != ONNX_FORMAT:
        raise ConfigError(f"{p}: format {cfg.get('format')!r}, expected {ONNX_FORMAT}")
    return cfg


class OnnxCLIP:
    """Run an exported CLIP with onnxruntime only: ``embed_images(float array)``, ``embed_texts(ids, mask)``.

    ``tokenizer`` / transforms are not bundled; use ``mmfm.data.tokenizers.build_tokenizer`` with
    ``config["tokenizer"]`` and ``mmfm.data.transforms.build_transform(config["preprocess"], False)``."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        self.config = read_onnx_config(folder)
        if self.config["kind"] != "clip":
            raise ConfigError(f"{folder} is a {self.config['kind']} export, not a CLIP one")
        self.image = _session(Path(folder) / "image_encoder.onnx", threads)
        self.text = _session(Path(folder) / "text_encoder.onnx", threads)

    def embed_images(self, images):
        return run_session(self.image, {"image": _np(images, "float32")})[0]

    def embed_texts(self, text_ids, attention_mask):
        return run_session(self.text, {"text_ids": _np(text_ids, "int64"),
                                       "attention_mask": _np(attention_mask, "int64")})[0]


class OnnxCaptioner:
    """Run an exported captioner with onnxruntime: ``image_tokens(images)``, ``logits(ids, mask, tokens)`` and
    ``greedy(images, max_new_tokens)`` (token ids, no KV cache)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        self.config = read_onnx_config(folder)
        if self.config["kind"] != "captioner":
            raise ConfigError(f"{folder} is a {self.config['kind']} export, not a captioner one")
        self.vision = _session(Path(folder) / "vision_encoder.onnx", threads)
        self.decoder = _session(Path(folder) / "decoder.onnx", threads)

    def image_tokens(self, images):
        return run_session(self.vision, {"image": _np(images, "float32")})[0]

    def logits(self, input_ids, attention_mask, image_tokens):
        return run_session(self.decoder, {"input_ids": _np(input_ids, "int64"),
                                          "attention_mask": _np(attention_mask, "int64"),
                                          "image_tokens": _np(image_tokens, "float32")})[0]

    def greedy(self, images, max_new_tokens: int = 20, prompt_ids=None):
        import numpy as np
        sp = self.config["special_tokens"]
        mem = self.image_tokens(images)
        b = mem.shape[0]
        prompt_ids = self.config.get("prompt_ids", []) if prompt_ids is None else prompt_ids
        start = [sp["bos_token_id"]] + list(prompt_ids)
        ids = np.tile(np.asarray(start, dtype=np.int64), (b, 1))
        done = np.zeros(b, dtype=bool)
        for _ in range(max_new_tokens):
            nxt = self.logits(ids, np.ones_like(ids), mem)[:, -1].argmax(-1)
            nxt = np.where(done, sp["pad_token_id"], nxt)
            ids = np.concatenate([ids, nxt[:, None]], axis=1)
            done |= nxt == sp["eos_token_id"]
            if done.all():
                break
        return ids[:, len(start):]


def _np(x, dtype: str):
    import numpy as np
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)
