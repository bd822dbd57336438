"""Schema of the ``train:`` section. Owned by mmfm.train."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .core import ConfigError, ranged


@dataclass
class TrainConfig:
    output_dir: str = "runs/exp"
    epochs: int = ranged(1, ge=1)
    max_steps: int | None = ranged(None, ge=1)   # overrides epochs when set
    lr: float = ranged(5e-4, ge=0)
    weight_decay: float = ranged(0.2, ge=0)
    betas: tuple[float, float] = ranged((0.9, 0.98), ge=0, lt=1)
    eps: float = ranged(1e-6, gt=0)
    warmup_steps: int = ranged(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_accum: int = ranged(1, ge=1)
    grad_clip: float | None = ranged(1.0, ge=0)   # None or 0: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    grad_scaler_init: float = ranged(65536.0, gt=0)   # fp16: the GradScaler's first loss scale
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the model
    compile: bool = False
    seed: int = 0
    log_every: int = ranged(10, ge=1)
    ckpt_every_steps: int | None = ranged(500, ge=1)
    ckpt_every_minutes: float | None = ranged(None, gt=0)
    keep_last: int = ranged(3, ge=1)
    init_from: str | None = None          # continued pre-training: load weights only
    resume: str | None = None             # "latest" or a checkpoint path
    overwrite: bool = False               # start afresh in an output_dir that holds another run's checkpoints
    tensorboard: bool = True              # false: no TensorBoard even when report_to lists it
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)   # cosine decays to lr * min_lr_ratio
    dist_timeout_minutes: float = ranged(30.0, gt=0)   # bound on every collective (a dead rank fails the others)
    device: str | None = None             # default: cuda:LOCAL_RANK when available, else cpu
    find_unused_parameters: bool = False  # DDP: set for models with parameters some steps do not use
    lr_groups: dict[str, float] = field(default_factory=dict)   # lr by parameter-name prefix (a module path
                                          # of the model: visual, text, text.text_projection); longest prefix
                                          # wins; the rest (projections, logit scale) train at train.lr
    layer_decay: float = ranged(1.0, gt=0, le=1)   # layer-wise lr decay inside each tower (timm's layer ids:
                                          # embeddings 0, block i is i + 1, the final norm/projection last):
                                          # layer k of K trains at its lr * layer_decay ** (K - k)

    def validate(self) -> None:
        for key, value in self.lr_groups.items():
            if value < 0:
                raise ConfigError(f"lr_groups.{key}: must be >= 0, got {value}")
        if self.overwrite and self.resume:
            raise ConfigError("train.overwrite: cannot be combined with train.resume (overwrite starts a new run "
                              "and deletes the old one's checkpoints; resume continues it)")
