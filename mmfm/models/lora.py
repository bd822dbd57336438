"""LoRA fine-tuning through ``peft``: adapters on the towers' attention and MLP projections, merged away for use.

* ``apply_lora(model, cfg)`` injects peft LoRA layers (``peft.inject_adapter_in_model``) into every Linear (and
  the q/k/v ``in_proj_weight`` of open_clip's ``nn.MultiheadAttention``) inside the block stacks of the towers
  ``cfg.towers`` names (``visual``, ``text`` for mmfm, open_clip and transformers models alike, or module paths;
  timm's ``blocks``, open_clip's ``resblocks``, a transformers ``encoder.layer``: attention
  and MLP projections), or only those whose module name ends with one of ``cfg.targets``; everything else is frozen, so only the
  ``lora_A`` / ``lora_B`` matrices train. The model's state dict then holds ``...qkv.base_layer.weight`` and
  ``...qkv.lora_A.default.weight``.
* ``merge_lora(model)`` folds the adapters into the base weights (W + B A * alpha / r, peft's merge) and puts the
  plain layers back: same function, plain state-dict keys, ``model_cfg.lora`` cleared. ``mmfm.load`` does this
  for a LoRA checkpoint, so inference, evaluation and every ``mmfm export`` format see a plain model.
* ``adapt_state_dict(model, sd)``: a plain checkpoint (``train.init_from``) loads into a LoRA model: its tensors
  become the base weights, the adapters keep their initialisation (B = 0, so the model equals the checkpoint).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmfm.config import ConfigError

__all__ = ["apply_lora", "merge_lora", "has_lora", "lora_targets", "adapt_state_dict", "is_lora_key"]

_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def is_lora_key(name: str) -> bool:
    return any(part in f".{name}" for part in _ADAPTER_PARTS)


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _linear_types() -> tuple[type, ...]:
    """nn.Linear and transformers' Conv1D (GPT-2's projections: a Linear with its weight transposed, which peft
    adapts with fan_in_fan_out)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:                # pragma: no cover - transformers is a dependency
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def _block_stacks(tower: nn.Module) -> list[str]:
    """Names (inside ``tower``) of its block stacks: the outermost ModuleList / Sequential modules holding a Linear
    or attention (timm's ``blocks``, open_clip's ``transformer.resblocks``, transformers' ``encoder.layer``)."""
    stacks: list[str] = []
    for name, m in tower.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or any(name.startswith(s + ".") for s in stacks):
            continue
        if any(isinstance(c, (*_linear_types(), nn.MultiheadAttention)) for c in m.modules()):
            stacks.append(name)
    return stacks


def _tower_modules(model: nn.Module, tower: str) -> list[str]:
    """The module paths a tower name (``visual``, ``text``: ``mmfm.models.tower_setup``) or a module path means."""
    from .tower_setup import tower_names, tower_paths

    paths = tower_paths(model, tower)
    if paths is not None:
        params = dict(model.named_parameters())
        return [p for p in paths if p not in params]
    try:
        model.get_submodule(tower)
    except AttributeError:
        names = tower_names(model)
        tops = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(f"model.lora.towers: {type(model).__name__} has no module '{tower}' and no tower of that "
                          f"name (its towers: {', '.join(names) or 'none named'}; or a module path; its top-level "
                          f"modules: {tops})") from None
    return [tower]


def _stack_targets(model: nn.Module, path: str, wanted, modules: list[str], params: list[str]) -> None:
    """Append the Linear modules and MHA ``in_proj_weight`` parameters inside the block stacks of ``path``."""
    attentions: list[str] = []
    for stack in _block_stacks(model.get_submodule(path)):
        prefix = f"{path}.{stack}."
        for name, m in model.named_modules():
            if not name.startswith(prefix) or any(name.startswith(a + ".") for a in attentions):
                continue
            if isinstance(m, nn.MultiheadAttention):
                attentions.append(name)
                if wanted(name) and m.in_proj_weight is not None:
                    params.append(f"{name}.in_proj_weight")
            elif isinstance(m, _linear_types()) and wanted(name):
                modules.append(name)


def lora_targets(model: nn.Module, towers: list[str], targets: list[str] | None = None
                 ) -> tuple[list[str], list[str]]:
    """What gets adapters, as (module names, parameter names): each Linear inside the block stacks of each tower in
    ``towers`` (tower names, the same for every source: ``visual``, ``text``; or module paths such as
    ``model.visual``), and the
    ``in_proj_weight`` (q, k, v) of each ``nn.MultiheadAttention`` there, adapted as a parameter (peft's
    ``target_parameters``: a parametrization, so the frozen weight is never rewritten; peft's module-level MHA
    adapter merges and unmerges in every forward, which moves the frozen weight by float rounding). An MHA's
    ``out_proj`` is left alone: MHA reads its weight without calling it. ``targets``: only names ending so."""
    def wanted(name: str) -> bool:
        return not targets or any(name == t or name.endswith("." + t) for t in targets)

    modules: list[str] = []
    params: list[str] = []
    for tower in towers:
        found = len(modules) + len(params)
        for path in _tower_modules(model, tower):
            _stack_targets(model, path, wanted, modules, params)
        if len(modules) + len(params) == found:
            raise ConfigError(f"model.lora: no Linear or attention module in the blocks of tower '{tower}' "
                              f"matches model.lora.targets {targets or '(any)'}; LoRA adapts transformer towers")
    return modules, params


def apply_lora(model: nn.Module, cfg) -> nn.Module:
    """Inject LoRA adapters in place (``cfg``: mmfm.config.model.LoraConfig) and freeze all but the adapters."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:    # pragma: no cover - peft is a dependency
        raise ConfigError(f"model.lora needs the peft package: {e}") from e
    modules, params = lora_targets(model, list(cfg.towers), list(cfg.targets))
    if params and cfg.dropout:
        raise ConfigError(f"model.lora.dropout: the q/k/v adapters of nn.MultiheadAttention ({params[0]}, ...) take "
                          f"no dropout in peft; set dropout: 0, or leave the attention out of model.lora.targets")
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules or None,
                          target_parameters=params or None)
    inject_adapter_in_model(peft_cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad = is_lora_key(name)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layer back, in place (peft's merge-and-unload,
    for a model that is not a PeftModel). ``model.model_cfg.lora`` is cleared: the result is a plain model."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import _get_submodules

    tuners = {k for k, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    keys = [k for k, _ in model.named_modules()
            if not any(k.rpartition(".")[0] == t or k.startswith(t + ".") for t in tuners)]
    with torch.no_grad():
        for key in keys:
            try:
                parent, target, name = _get_submodules(model, key)
            except AttributeError:
                continue
            if hasattr(target, "unload_and_optionally_merge_module"):      # MultiheadAttention
                setattr(parent, name, target.unload_and_optionally_merge_module(
                    merge=True, safe_merge=False, adapter_names=None))
            elif isinstance(target, BaseTunerLayer):
                target.merge()
                setattr(parent, name, target.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    cfg = getattr(model, "model_cfg", None)
    if dataclasses.is_dataclass(cfg) and getattr(cfg, "lora", None) is not None:
        model.model_cfg = dataclasses.replace(cfg, lora=None)
    return model


def adapt_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A plain state dict renamed for a LoRA model (``x.weight`` -> ``x.base_layer.weight``), and the adapter keys
    that then keep their initialisation. Unchanged (and an empty set) when the model has no adapters or ``sd``
    already holds adapter tensors (a LoRA checkpoint)."""
    own = model.state_dict()
    adapters = {k for k in own if is_lora_key(k)}
    if not adapters or any(is_lora_key(k) for k in sd):
        return sd, set()
    plain = {k.replace(".base_layer", ""): k for k in own if not is_lora_key(k)}
    return {plain.get(k, k): v for k, v in sd.items()}, adapters
