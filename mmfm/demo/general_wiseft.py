"""WiSE-FT arms of the leave-one-source-out table: a tuned CLIP's weights interpolated with the weights its run
started from (``mmfm.models.wiseft.interpolate_weights``).

The general job's CLIPs start from the pretrained towers named in their config (no ``train.init_from``): the
trainer builds that model under ``torch.manual_seed(train.seed)`` (``mmfm.train.builder.build_run``, the new
projections drawn from that seed), so the same build under the same seed gives the starting weights again. A run
that did start from ``train.init_from`` uses those weights instead (``mmfm.models.wiseft.WiseFT``). Every arm of
the job shares one model config and seed, so the starting weights are built once.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def starting_state(run: Path) -> dict[str, torch.Tensor]:
    """The weights ``run`` started training from."""
    from mmfm.models.factory import build_model
    from mmfm.models.layout import read_config

    cfg = read_config(run)
    if cfg.train.init_from:
        from mmfm.models.wiseft import WiseFT
        return WiseFT(run).initial
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class StartingWeights:
    """Starting weights per (model config, seed, init_from), built once; ``interpolate`` sets a tuned model's
    weights to ``(1 - alpha) * start + alpha * tuned`` in place."""

    def __init__(self):
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def _key(self, run: Path) -> str:
        from mmfm.config import to_dict
        from mmfm.models.layout import read_config

        cfg = read_config(run)
        return json.dumps([to_dict(cfg.model), cfg.train.seed, cfg.train.init_from], sort_keys=True, default=str)

    def interpolate(self, model, run: Path, alpha: float) -> dict:
        from mmfm.models.wiseft import interpolate_weights

        key = self._key(run)
        if key not in self._cache:
            self._cache[key] = starting_state(run)
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(interpolate_weights(self._cache[key], tuned, alpha))
        model.eval()
        changed = sum(int(not torch.equal(self._cache[key][k], tuned[k])) for k in tuned)
        return {"alpha": float(alpha), "tensors_tuned": changed, "tensors": len(tuned)}
