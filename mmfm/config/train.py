"""Schema of the ``train:`` section. Owned by mmfm.train."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .core import ConfigError


@dataclass
class TrainConfig:
    output_dir: str = "runs/exp"
    epochs: int = 1
    max_steps: int | None = None          # overrides epochs when set
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    ckpt_every_steps: int | None = 500
    ckpt_every_minutes: float | None = None
    keep_last: int = 3
    init_from: str | None = None          # continued pre-training: load weights only
    resume: str | None = None             # "latest" or a checkpoint path
    overwrite: bool = False               # start afresh in an output_dir that holds another run's checkpoints
    tensorboard: bool = True
    progress: bool = True
    min_lr_ratio: float = 0.0             # cosine decays to lr * min_lr_ratio
    dist_timeout_minutes: float = 30.0    # bound on every collective (a dead rank fails the others)
    device: str | None = None             # default: cuda:LOCAL_RANK when available, else cpu
    find_unused_parameters: bool = False  # DDP: set for models with parameters some steps do not use

    def validate(self) -> None:
        if self.overwrite and self.resume:
            raise ConfigError("train.overwrite: cannot be combined with train.resume (overwrite starts a new run "
                              "and deletes the old one's checkpoints; resume continues it)")
