"""``train.init_from`` of an mmfm captioner checkpoint: its model section (vision architecture, decoder, tokenizer)
replaces the experiment's, which keeps only its training choices (vision lock / unlocked groups / grad
checkpointing / feature cache, LoRA); see :mod:`mmfm.models.captioner_init`."""
from __future__ import annotations

import copy
import dataclasses

from mmfm.config import ConfigError

__all__ = ["adopt_init_model"]

_TRAINING_CHOICES = ("lock", "unlock_last_groups", "grad_checkpointing", "cache_locked_features", "memo_dir")


def adopt_init_model(cfg) -> bool:
    """Replace ``cfg.model`` by the captioner checkpoint's model section (see the module docstring). True when
    it did; any other ``init_from`` (a CLIP, a library spec, a folder that cannot be read) is left alone."""
    from mmfm.models.checkpoint import is_spec, read_config

    spec = cfg.train.init_from
    if not spec or is_spec(str(spec)) or cfg.model.kind != "captioner":
        return False
    try:
        stored = read_config(spec).model
    except (ConfigError, OSError):
        return False                      # init_weights_from reports it
    if stored.kind != "captioner":
        return False
    model = copy.deepcopy(stored)
    model.clip_checkpoint = None          # the vision architecture is recorded; the weights come from init_from
    mine = cfg.model.vision
    model.vision = dataclasses.replace(model.vision, **{k: getattr(mine, k) for k in _TRAINING_CHOICES})
    model.lora = cfg.model.lora
    cfg.model = model
    return True
