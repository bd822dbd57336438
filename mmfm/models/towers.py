"""The vision tower: any timm model, pooled features or token features, with LiT-style locking."""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from mmfm.config import ConfigError

from .pooled import timm_vit_pooled

__all__ = ["TimmVisionTower", "KeepLockedEval", "frozen_modules", "lock_groups", "layer_ids"]


def _create(name: str, kwargs: dict, image_size: int | None, pretrained: bool = False) -> nn.Module:
    import timm

    if image_size is not None and "img_size" not in kwargs:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:  # a model without an img_size argument (most CNNs): size is a transform matter
            pass
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.vision.timm_kwargs: timm rejected {sorted(kwargs)} for '{name}': {e}") from None


def _in_order(name: str, kwargs: dict, image_size: int | None, path: str) -> tuple[dict | None, dict, str]:
    """``(state, head_kwargs, reason)``: the file's tensors renamed in order onto the timm model (with its
    classifier when the file has one: ``head_kwargs``), or None when the names are timm's own or the order
    does not fit (``reason``)."""
    from .weights import map_by_order, read_state_dict

    source = read_state_dict(path)
    with torch.device("meta"):
        trunk = _create(name, {**kwargs, "num_classes": 0}, image_size).state_dict()
        if set(trunk) <= set(source):
            return None, {}, ""
        refs = [({**kwargs, "num_classes": 0}, trunk)]
        if len(source) != len(trunk):
            refs.insert(0, (kwargs, _create(name, kwargs, image_size).state_dict()))
    if path.endswith(".safetensors"):
        return None, {}, "a safetensors file does not keep its tensors' order"
    reason = ""
    for head_kwargs, target in refs:
        try:
            return map_by_order(source, target), head_kwargs, ""
        except ConfigError as e:
            reason = str(e)
    return None, {}, reason


def _create_timm(name: str, kwargs: dict, image_size: int | None, weights: str | None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        import difflib
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"model.vision.timm_model: '{name}' is not a timm model."
                          + (f" Did you mean {', '.join(close)}?" if close else ""))
    kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if not weights:
        return _create(name, {**kwargs, "num_classes": 0}, image_size)
    from .weights import resolve_weights_file

    path = resolve_weights_file(weights)
    state, head_kwargs, reason = _in_order(name, kwargs, image_size, path)
    if state is not None:      # another implementation's layout (lukemelas EfficientNet): renamed by position
        model = _create(name, head_kwargs, image_size)
        model.load_state_dict(state)
        model.reset_classifier(0)
        return model
    # timm's own loader: applies the model's checkpoint filter (pos-embed resize, open_clip/OpenAI
    # layouts) and drops the classifier head; safetensors or torch.load(weights_only=True). With the head
    # dropped it loads non-strictly and only logs missing tensors: those are an error here, not random init.
    overlay = {"file": os.path.abspath(path), "hf_hub_id": None, "url": None}
    try:
        with _timm_missing_keys() as missing:
            model = _create(name, {**kwargs, "num_classes": 0, "pretrained_cfg_overlay": overlay}, image_size, True)
        if missing:
            raise RuntimeError(missing[0][:300] + ("...)" if len(missing[0]) > 300 else ""))
    except RuntimeError as e:
        raise ConfigError(f"model.vision.pretrained: {path} does not fit '{name}' by name ({e})"
                          + (f" nor in order ({reason})" if reason else "")) from None
    return model


@contextlib.contextmanager
def _timm_missing_keys():
    """The 'Missing keys (...)' messages timm's pretrained loader logs while the block runs."""
    import logging

    found: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Missing keys"):
                found.append(message.split(" discovered")[0])

    logger = logging.getLogger("timm.models._builder")
    handler, level = _Catch(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lock_groups(module: nn.Module, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
    """Freeze a timm model, leaving its last ``unlocked_groups`` parameter groups (timm's group_matcher) trainable."""
    from timm.models import group_modules, group_parameters
    from timm.utils.model import freeze

    if not unlocked_groups:
        freeze(module, include_bn_running_stats=freeze_bn_stats)
        return
    if not hasattr(module, "group_matcher"):
        raise ConfigError(f"unlock_last_groups: {type(module).__name__} has no timm group_matcher")
    matcher = module.group_matcher()
    gparams = group_parameters(module, matcher)
    last_locked = max(gparams) - unlocked_groups
    for gid, names in gparams.items():
        if gid <= last_locked:
            for name in names:
                module.get_parameter(name).requires_grad = False
    if freeze_bn_stats:
        submodules = dict(module.named_modules())
        names = [n for n, g in group_modules(module, matcher, reverse=True).items()
                 if g <= last_locked and n in submodules]
        if names:
            freeze(module, names, include_bn_running_stats=True)


def layer_ids(tower: nn.Module) -> dict[str, int] | None:
    """Parameter name -> layer id (0 = embeddings, then one per block, the top last) from the tower's timm
    ``group_matcher(coarse=False)``, as timm's layer-wise lr decay groups them; None for a module without one.
    A TimmVisionTower's names carry its ``trunk.`` prefix."""
    from timm.models import group_parameters

    inner, prefix = (tower.trunk, "trunk.") if isinstance(tower, TimmVisionTower) else (tower, "")
    if not callable(getattr(inner, "group_matcher", None)):
        return None
    ids = group_parameters(inner, inner.group_matcher(coarse=False), reverse=True)
    return {prefix + name: int(i) for name, i in ids.items()}


def frozen_modules(module: nn.Module) -> list[str]:
    """Names of the largest submodules of ``module`` (never ``module`` itself) whose parameters are all frozen;
    parameterless submodules (dropout, pooling) count only as part of a frozen parent."""
    out: list[str] = []

    def visit(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                out.append(prefix + name)
            elif params:
                visit(f"{prefix}{name}.", child)

    visit("", module)
    return out


class KeepLockedEval:
    """Mixin for a tower with ``lock()``: what the lock froze stays in eval mode through every later ``train()``
    (no dropout, no BatchNorm statistic updates), so a locked tower computes the same function in training as at
    inference. ``freeze_bn_stats=False`` keeps the frozen BatchNorm layers following the train/eval mode."""

    _locked: tuple[str, ...] = ()
    _locked_bn_stats_follow: bool = False

    def keep_locked_eval(self, freeze_bn_stats: bool = True) -> None:
        """Record the frozen submodules (call at the end of ``lock()``) and put them in eval mode now."""
        self._locked = tuple(frozen_modules(self))
        self._locked_bn_stats_follow = self._locked_bn_stats_follow or not freeze_bn_stats
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._locked if mode else ():
            sub = self.get_submodule(name).train(False)
            if self._locked_bn_stats_follow:
                for m in sub.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train(mode)
        return self


def _ignore_obsolete_keys(module, state_dict, prefix, *args) -> None:
    for key in module.obsolete_keys:
        state_dict.pop(prefix + key, None)


def _chain(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk's children in declaration order, its ``blocks`` Sequential opened down to the single blocks
    (``blocks.5.3``: timm's fine groups, which ``unlock_last_groups`` counts)."""
    def opened(name: str, seq: nn.Sequential):
        for i, child in enumerate(seq):
            if isinstance(child, nn.Sequential):
                yield from opened(f"{name}.{i}", child)
            else:
                yield f"{name}.{i}", child

    out: list[tuple[str, nn.Module]] = []
    for name, child in trunk.named_children():
        out += list(opened(name, child)) if name == "blocks" and isinstance(child, nn.Sequential) else [(name, child)]
    return out


def _frozen_prefix_length(trunk: nn.Module) -> int:
    """How many ``_chain`` items come before the first one with a trainable parameter or with no state at all (a
    dropout or pooling layer outside the frozen modules follows the train mode: its output must not be cached;
    a frozen BatchNorm keeps buffers only)."""
    if any(p.requires_grad for p in trunk.parameters(recurse=False)):
        return 0
    for i, (_, module) in enumerate(_chain(trunk)):
        stateful = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if not stateful or any(p.requires_grad for p in module.parameters()):
            return i
    return len(_chain(trunk))


EVAL_CHUNK = 64     # inference batches of the vision tower run in chunks of this many images


def _eager() -> bool:
    """Not under tracing, torch.compile or ONNX export: there the batch size is symbolic, and a branch on it
    would fix the exported graph's batch size."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class TimmVisionTower(KeepLockedEval, nn.Module):
    """``timm.create_model(name, num_classes=0, **kwargs)``: ``forward(image) -> (B, width)`` pooled features,
    ``forward_tokens(image) -> (B, N, width)``. ``.preprocess`` is timm's resolved data config."""

    obsolete_keys: tuple[str, ...] | None = None     # drop_pooling_head: the dropped tensors' names

    def __init__(self, timm_model: str, timm_kwargs: dict | None = None, pretrained: str | None = None,
                 image_size: int | None = None, preprocess: dict | None = None):
        super().__init__()
        from timm.data import resolve_data_config

        self.trunk = _create_timm(timm_model, timm_kwargs or {}, image_size, pretrained)
        self.width = int(self.trunk.num_features)
        cfg = dict(resolve_data_config({}, model=self.trunk))
        if image_size is not None:
            cfg["input_size"] = (3, int(image_size), int(image_size))
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        cfg = {k: v for k, v in cfg.items() if k in keys}
        cfg.update(preprocess or {})            # user overrides (validated by mmfm.data.transforms)
        self.preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}

    memo = token_memo = None          # cache_locked_features: RowMemos of the pooled and the token outputs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.obsolete_keys is not None:
            raise RuntimeError("this vision tower keeps only its token path (drop_pooling_head): use forward_tokens")
        if self.memo is not None and self.training:
            return self.memo([self.memo.key(row) for row in image], lambda idx: self.trunk(image[idx]), image.device)
        if self.prefix_memo is not None and self.training:
            return self._rest().forward(self._cached_prefix(image))
        if not self.training and not torch.is_grad_enabled() and _eager() and len(image) > EVAL_CHUNK:
            # inference: a big batch runs in chunks (eval-mode timm trunks treat samples independently, so the
            # result is the same): a 256-image batch of a CNN at 128 px would hold ~1 GB of early activations
            return torch.cat([self._pooled(c) for c in image.split(EVAL_CHUNK)])
        return self._pooled(image)

    def _pooled(self, image: torch.Tensor) -> torch.Tensor:
        """``trunk(image)``; a class-token ViT computes its last block for the class token only (exact)."""
        out = timm_vit_pooled(self.trunk, image)
        return self.trunk(image) if out is None else out

    def cache_locked_features(self, memo_dir: str | None = None) -> None:
        """Training computes the locked part of the trunk once per distinct preprocessed image
        (``mmfm.models.memo``): the whole trunk when nothing is unlocked, else the frozen layers that run before
        the first unlocked one (``unlock_last_groups``), whose output feeds the trainable rest on every step.
        ``memo_dir``: the memos persist there (read on first use, written by the trainer)."""
        from functools import partial

        from .memo import RowMemo
        if not any(p.requires_grad for p in self.trunk.parameters()):
            self.memo, self.token_memo = (RowMemo(name=f"vision-{part}", directory=memo_dir,
                                                  identity=partial(self._memo_identity, part))
                                          for part in ("pooled", "tokens"))
            return
        self._n_prefix = _frozen_prefix_length(self.trunk)
        if not self._n_prefix:
            raise ConfigError("model.vision.cache_locked_features: needs a locked tower (lock: true); this one's "
                              "first layer trains, so there is no frozen part to cache")
        self._check_split()
        self.prefix_memo = RowMemo(max_bytes=1024 * 2**20, name="vision-prefix", directory=memo_dir,
                                   identity=partial(self._memo_identity, "prefix"))

    def _memo_identity(self, part: str) -> str:
        """What the memo ``part`` computes with: the locked weights it runs (the frozen prefix or the trunk)."""
        import timm

        from .memo import state_fingerprint
        chain = _chain(self.trunk)[:self._n_prefix] if part == "prefix" else [("", self.trunk)]
        named = [(f"{n}.{k}", v) for n, m in chain for k, v in m.state_dict().items()]
        modes = [sub.training for _, m in chain for sub in m.modules()]
        return state_fingerprint(named, part, type(self.trunk).__name__, self._n_prefix, modes, timm.__version__)

    prefix_memo = None                # cache_locked_features with unlocked groups: a RowMemo of the frozen prefix
    _n_prefix = 0

    def _prefix(self, image: torch.Tensor) -> torch.Tensor:
        for _, module in _chain(self.trunk)[:self._n_prefix]:
            image = module(image)
        return image

    def _cached_prefix(self, image: torch.Tensor) -> torch.Tensor:
        memo = self.prefix_memo        # new images run in chunks of 64: a 256-image batch's early activations
        return memo([memo.key(row) for row in image],    # at full resolution would peak at ~1 GB
                    lambda idx: torch.cat([self._prefix(image[c]) for c in idx.split(64)]), image.device)

    def _rest(self) -> nn.Module:
        """The trunk with its frozen prefix taken out (a view sharing every module and parameter): its
        ``forward``/``forward_features`` take the prefix's output. Built per call, so it follows later changes
        to the trunk (``drop_pooling_head``, grad checkpointing, train/eval)."""
        import copy
        prefix = {name for name, _ in _chain(self.trunk)[:self._n_prefix]}
        view = copy.copy(self.trunk)
        view._modules = dict(self.trunk._modules)
        for name in list(view._modules):
            if name in prefix:
                view._modules[name] = nn.Identity()
            elif name == "blocks":
                view._modules[name] = nn.Sequential(*[b for n, b in _chain(self.trunk)
                                                      if n.startswith("blocks.") and n not in prefix])
        return view

    def _check_split(self) -> None:
        """The split must compute what the trunk computes: checked once on a random image, in eval mode."""
        size = self.preprocess.get("input_size", (3, 64, 64))
        mode, x = self.training, torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        self.eval()
        try:
            with torch.no_grad():
                mid = self._prefix(x)
                ok = (torch.allclose(self._rest().forward(mid), self.trunk(x), atol=1e-4, rtol=1e-4)
                      and torch.allclose(self._rest().forward_features(mid), self.trunk.forward_features(x),
                                         atol=1e-4, rtol=1e-4))
            why = "the split computes something else"
        except Exception as e:  # noqa: BLE001 - e.g. a trunk that adds embeddings between its children
            ok, why = False, f"{type(e).__name__}: {e}"
        finally:
            self.train(mode)
        if not ok:
            raise ConfigError(f"model.vision.cache_locked_features: needs a locked tower with nothing unlocked, "
                              f"or one whose frozen layers run first, child by child (timm CNNs with blocks: "
                              f"EfficientNet, MobileNet); {type(self.trunk).__name__} with unlocked groups does "
                              f"not split there ({why[:200]})")

    def drop_pooling_head(self) -> None:
        """Keep only what ``forward_tokens`` uses (a captioner's tower). timm's pooling head (ConvNeXt's
        ``head.norm``, a MAP-pooled ViT's ``attn_pool``, an average-pooled ViT's ``fc_norm``) would otherwise get
        no gradient, which DDP refuses (``find_unused_parameters: false``). timm prunes it itself; a checkpoint
        that still holds those tensors loads, their keys ignored (``obsolete_keys``)."""
        before = set(self.state_dict())
        trunk = self.trunk
        last = (getattr(trunk, "feature_info", None) or [{}])[-1].get("num_chs")
        if hasattr(trunk, "prune_intermediate_layers") and last == self.width:
            trunk.prune_intermediate_layers(prune_norm=False, prune_head=True)   # keeps every block, the final norm
        else:   # no pruning API, or its last feature is not forward_features' (EfficientNet's conv_head follows)
            trunk.reset_classifier(0, "")
        self.obsolete_keys = tuple(sorted(before - set(self.state_dict())))
        self.register_load_state_dict_pre_hook(_ignore_obsolete_keys)

    def forward_tokens(self, image: torch.Tensor) -> torch.Tensor:
        if self.token_memo is not None and self.training:
            return self.token_memo([self.token_memo.key(row) for row in image],
                                   lambda idx: self._tokens(image[idx]), image.device)
        if self.prefix_memo is not None and self.training:
            return self._tokens(self._cached_prefix(image), self._rest())
        return self._tokens(image)

    def _tokens(self, image: torch.Tensor, trunk: nn.Module | None = None) -> torch.Tensor:
        x = (trunk or self.trunk).forward_features(image)
        if x.ndim == 4:                       # CNN feature map (B, C, H, W) -> (B, HW, C)
            x = x.flatten(2).transpose(1, 2)
        return x

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        lock_groups(self.trunk, unlocked_groups, freeze_bn_stats)
        self.keep_locked_eval(freeze_bn_stats)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
