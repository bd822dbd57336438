"""Post-training dynamic int8 quantization of Linear layers, for CPU inference of CLIP models and captioners.

``quantize_model(model)`` returns a copy whose ``nn.Linear`` layers (and transformers' GPT-2 ``Conv1D``
layers, converted to Linear first) are ``torch.ao.nn.quantized.dynamic.Linear``: int8 weights, activations
quantized on the fly per batch (``torch.ao.quantization.quantize_dynamic``). Embeddings, norms, convolutions
and the attention in-projections that ``nn.MultiheadAttention`` keeps as raw parameters stay float.

Embedding tables are also stored as 8-bit rows (weight-only, per-row scale/offset), since token embeddings are
most of a small text tower or decoder. ``int8_original_dtype`` is set on the quantized layers so open_clip's
text tower (which asks its first MLP layer for the weight dtype) keeps working.

Saved format (``mmfm.export.int8.save_quantized``, ``mmfm export --format int8``), safe to load (safetensors only, no pickled code)::

    OUT/model.int8.safetensors   float tensors + per quantized Linear: NAME.weight_int8 (int8), NAME.weight_scale,
                                 NAME.weight_zero_point (and NAME.weight_axis for per-channel), NAME.bias;
                                 per quantized Embedding: NAME.weight_uint8, NAME.weight_scale, NAME.weight_zero_point
    OUT/config.yaml              the source checkpoint's resolved config (rebuilds the float architecture)
    OUT/meta.json                the source meta + ``quantization`` {method, dtype, modules, converted, ...}

``mmfm.models.checkpoint.load(OUT)`` rebuilds the float model from config.yaml (no weights read), quantizes its
structure, then fills every tensor from the safetensors file (``restore_quantized``).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError

from .layout import QUANT_FORMAT, QUANT_WEIGHTS, WEIGHTS, CheckpointMismatchError, resolve_checkpoint

__all__ = ["quantize_model", "quantized_state_dict", "restore_quantized", "model_size_bytes"]



def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", DeprecationWarning)   # torch.ao.quantization's migration notice
    warnings.simplefilter("ignore", UserWarning)          # quantized tensor creation notice
    return ctx


def _dynamic_linear_cls():
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    return DynLinear


def _qembedding_cls():
    from torch.ao.nn.quantized import Embedding as QEmbedding
    return QEmbedding


_CONTIGUOUS_QEMBEDDING = None


def _contiguous_qembedding():
    """torch's quantized Embedding, accepting non-contiguous indices (text towers slice off padding columns)."""
    global _CONTIGUOUS_QEMBEDDING
    if _CONTIGUOUS_QEMBEDDING is None:
        base = _qembedding_cls()

        class ContiguousQEmbedding(base):
            def forward(self, indices: torch.Tensor) -> torch.Tensor:
                return super().forward(indices.contiguous())

            @classmethod
            def from_float(cls, mod, use_precomputed_fake_quant=False):
                q = base.from_float(mod, use_precomputed_fake_quant)
                q.__class__ = cls
                return q

        _CONTIGUOUS_QEMBEDDING = ContiguousQEmbedding
    return _CONTIGUOUS_QEMBEDDING


def convert_conv1d(model: nn.Module) -> list[str]:
    """Replace transformers' ``Conv1D`` (GPT-2's linear layers, weight stored (in, out)) by equivalent
    ``nn.Linear`` modules so dynamic quantization reaches them. Returns the converted module names."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return []
    done = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.T)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(mod, child_name, lin)
                done.append(f"{name}.{child_name}" if name else child_name)
    return done


def quantize_model(model: nn.Module, dtype: str = "qint8", inplace: bool = False,
                   embeddings: bool = True) -> nn.Module:
    """A CPU copy of ``model`` with dynamic int8 Linear layers (eval mode). Keeps ``.preprocess``,
    ``.tokenizer``, ``.model_cfg`` and the scripting API; ``model.quantization`` describes what was done.

    ``embeddings`` (default yes): also store embedding tables as 8-bit rows (weight-only, per-row scale and
    offset). Token embeddings are most of a small text tower or decoder; a decoder's output layer, tied to its
    input embedding in float, becomes a separate int8 Linear."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    if dtype != "qint8":
        raise ConfigError(f"quantization dtype {dtype!r}: only qint8 (dynamic int8) is supported")
    if getattr(model, "quantization", None):
        raise ConfigError("this model is already quantized")
    q = model if inplace else copy.deepcopy(model)
    q = q.float().cpu().eval()
    converted = convert_conv1d(q)
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    spec = {nn.Linear: default_dynamic_qconfig}
    mapping = dict(get_default_dynamic_quant_module_mappings())
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
        mapping[nn.Embedding] = _contiguous_qembedding()
    ctx = _quiet()
    try:
        q = quantize_dynamic(q, spec, dtype=torch.qint8, mapping=mapping, inplace=True)
    finally:
        ctx.__exit__(None, None, None)
    n = 0
    for m in q.modules():
        if isinstance(m, _dynamic_linear_cls()):
            m.int8_original_dtype = torch.float32     # open_clip reads it instead of .weight.dtype (a method here)
            n += 1
    if n == 0:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    n_emb = sum(isinstance(m, _qembedding_cls()) for m in q.modules())
    q.quantization = {"format": QUANT_FORMAT, "method": "torch.ao.quantization.quantize_dynamic",
                      "dtype": dtype, "modules": ["Linear"] + (["Embedding"] if n_emb else []),
                      "converted_conv1d": converted, "quantized_linears": n, "quantized_embeddings": n_emb,
                      "embeddings": bool(embeddings), "torch_version": torch.__version__}
    return q


# ----------------------------------------------------------------------------- state dict <-> safetensors
def quantized_state_dict(q: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for every weight of a quantized model (int8 weights with their scale / zero point)."""
    dyn, qemb = _dynamic_linear_cls(), _qembedding_cls()
    out: dict[str, torch.Tensor] = {}
    qnames = {name for name, m in q.named_modules() if isinstance(m, (dyn, qemb))}
    for name, m in q.named_modules():
        if name not in qnames:
            continue
        if isinstance(m, qemb):
            w = m.weight()
            out[f"{name}.weight_uint8"] = w.int_repr().contiguous()
            out[f"{name}.weight_scale"] = w.q_per_channel_scales().contiguous()          # float32 per row
            out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().contiguous()
            continue
        w, b = m._packed_params._weight_bias()
        out[f"{name}.weight_int8"] = w.int_repr().contiguous()
        if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            out[f"{name}.weight_scale"] = torch.tensor(float(w.q_scale()), dtype=torch.float64)
            out[f"{name}.weight_zero_point"] = torch.tensor(int(w.q_zero_point()), dtype=torch.int64)
        else:
            out[f"{name}.weight_scale"] = w.q_per_channel_scales().to(torch.float64).contiguous()
            out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64).contiguous()
            out[f"{name}.weight_axis"] = torch.tensor(int(w.q_per_channel_axis()), dtype=torch.int64)
        if b is not None:
            out[f"{name}.bias"] = b.detach().contiguous()
    seen = set()
    for key, t in q.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if any(key.startswith(f"{n}.") for n in qnames if owner.startswith(n)):
            continue                      # packed params / output scale of a quantized Linear: stored above
        if not isinstance(t, torch.Tensor) or t.is_quantized:
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:
            continue                      # tied tensors stored once
        if ptr is not None:
            seen.add(ptr)
        out[key] = t.detach().cpu().contiguous()
    return out


def restore_quantized(q: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    dyn, qemb = _dynamic_linear_cls(), _qembedding_cls()
    used = set()
    problems = []
    for name, m in q.named_modules():
        if isinstance(m, qemb):
            key = f"{name}.weight_uint8"
            if key not in sd:
                problems.append(f"missing {key}")
                continue
            if tuple(sd[key].shape) != tuple(m.weight().shape):
                problems.append(f"{key}: shape {tuple(sd[key].shape)} vs model {tuple(m.weight().shape)}")
                continue
            m.set_weight(torch._make_per_channel_quantized_tensor(
                sd[key], sd[f"{name}.weight_scale"].double(), sd[f"{name}.weight_zero_point"], 0))
            used.update((key, f"{name}.weight_scale", f"{name}.weight_zero_point"))
            continue
        if not isinstance(m, dyn):
            continue
        key = f"{name}.weight_int8"
        if key not in sd:
            problems.append(f"missing {key}")
            continue
        w8, scale, zp = sd[key], sd.get(f"{name}.weight_scale"), sd.get(f"{name}.weight_zero_point")
        expected = tuple(m._packed_params._weight_bias()[0].shape)
        if tuple(w8.shape) != expected:
            problems.append(f"{key}: shape {tuple(w8.shape)} vs model {expected}")
            continue
        if f"{name}.weight_axis" in sd:
            qw = torch._make_per_channel_quantized_tensor(w8, scale.double(), zp.long(), int(sd[f"{name}.weight_axis"]))
        else:
            qw = torch._make_per_tensor_quantized_tensor(w8, float(scale), int(zp))
        m.set_weight_bias(qw, sd.get(f"{name}.bias"))
        used.update(k for k in (key, f"{name}.weight_scale", f"{name}.weight_zero_point", f"{name}.weight_axis",
                                f"{name}.bias") if k in sd)
    rest = {k: v for k, v in sd.items() if k not in used}
    qnames = [n for n, m in q.named_modules() if isinstance(m, (dyn, qemb))]
    own = {k: v for k, v in q.state_dict(keep_vars=True).items()
           if isinstance(v, torch.Tensor) and not v.is_quantized and not any(k.startswith(f"{n}.") for n in qnames)}
    unexpected = [k for k in rest if k not in own]
    shape = [f"{k} {tuple(rest[k].shape)} vs {tuple(own[k].shape)}" for k in rest if k in own
             and tuple(rest[k].shape) != tuple(own[k].shape)]
    with torch.no_grad():
        for k, v in rest.items():
            if k in own and tuple(v.shape) == tuple(own[k].shape):
                own[k].copy_(v)
    missing = [k for k in own if k not in rest and not _tied_alias(q, k, rest)]
    problems += [f"unexpected {k}" for k in unexpected] + [f"shape {s}" for s in shape]
    problems += [f"missing {k}" for k in missing]
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit the quantized model: " + "; ".join(problems[:20])
                                      + (f" ... (+{len(problems) - 20} more)" if len(problems) > 20 else ""))


def _tied_alias(q: nn.Module, key: str, loaded: dict) -> bool:
    """A tied tensor stored under another name (e.g. a decoder's output embedding)."""
    t = q.state_dict().get(key)
    if t is None or not t.numel():
        return False
    sd = q.state_dict()
    ptr = (t.untyped_storage().data_ptr(), t.storage_offset())
    return any(k in loaded for k, v in sd.items() if k != key and isinstance(v, torch.Tensor) and v.numel()
               and not v.is_quantized and (v.untyped_storage().data_ptr(), v.storage_offset()) == ptr)


def model_size_bytes(model_or_path) -> int:
    """On-disk size of a checkpoint's weights file, or the bytes a model's weights take in safetensors."""
    if isinstance(model_or_path, nn.Module):
        m = model_or_path
        sd = quantized_state_dict(m) if getattr(m, "quantization", None) else m.state_dict()
        seen, total = set(), 0
        for t in sd.values():
            if isinstance(t, torch.Tensor) and not t.is_quantized and t.numel():
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
                if key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
        return total
    p = Path(str(model_or_path))
    for name in (QUANT_WEIGHTS, WEIGHTS):
        if (p / name).is_file():
            return (p / name).stat().st_size
    return (resolve_checkpoint(p) / WEIGHTS).stat().st_size
