"""Training checkpoints (docs/architecture.md section 8): the ``Checkpointer`` saves when due, restores, and agrees
the restored step across ranks.

``OUT/checkpoints/step_00000100/`` holds ``model.safetensors`` + ``config.yaml`` + ``meta.json`` (written by
``mmfm.models.checkpoint.write_pretrained``, so ``mmfm.load`` reads it) and ``trainer_state.pt`` (optimizer,
scheduler, per-rank RNG and data position; plain tensors/containers, read with ``weights_only=True``).
With ``train.strategy: fsdp`` every rank writes its shards of the model and the optimizer into ``sharded/``
(torch.distributed.checkpoint) instead, and ``trainer_state.pt`` holds the rest. The folder is filled under a
temporary name and renamed into place; ``latest`` is a relative symlink replaced atomically; only the newest
``keep_last`` step folders are kept. Names and ``latest`` come from :mod:`mmfm.models.layout`, the one place that
knows checkpoint layouts; an fsspec ``train.output_dir`` is mirrored by :class:`~.run_folder.RunFolder`.
"""
from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mmfm.config import ConfigError, read_yaml, replace_dir, temp_dir_beside, to_dict
from mmfm.data import fs
from mmfm.models.checkpoint import init_weights_from, load_weights, write_pretrained
from mmfm.models.layout import (CHECKPOINTS, CONFIG_YAML, LATEST, TRAINER_STATE, fetch_checkpoint, is_sharded_dir,
                                list_checkpoints, point_latest, read_meta, resolve_latest, step_dir_name)

from . import distributed as D
from . import fsdp

log = logging.getLogger("mmfm.train")


@dataclass
class TrainState:
    """The trainer's counters; a checkpoint stores and restores them with the weights, optimizer, RNG and data."""
    step: int = 0
    epoch: int = 0
    samples_seen: int = 0
    skipped_steps: int = 0


class Checkpointer:
    """Saves when due (every ``train.ckpt_every_steps`` steps, or ``ckpt_every_minutes`` on rank 0's clock),
    restores (``train.resume``: weights, optimizer, scaler, RNG, data position; ``train.init_from``: weights only)
    and agrees the restored step across ranks. ``fsdp_root``: the FSDP-sharded module, whose ranks each write and
    read their own shards."""

    def __init__(self, cfg, run, dist, model, optimizer, scaler, data, fsdp_root=None):
        self.cfg, self.tc, self.run, self.dist = cfg, cfg.train, run, dist
        self.model, self.optimizer, self.scaler, self.data, self.fsdp_root = model, optimizer, scaler, data, fsdp_root
        self.root = run.local / CHECKPOINTS
        self.last: Path | None = None               # the newest checkpoint, written or restored
        self.saved_step = -1
        self.init_source: dict | None = None        # where the starting weights came from (meta.json)
        self._saved_at = time.monotonic()

    # ------------------------------------------------------------------ when
    def due(self, step: int) -> bool:
        """Due by steps (``train.ckpt_every_steps``)."""
        return bool(self.tc.ckpt_every_steps) and step % self.tc.ckpt_every_steps == 0

    def late(self) -> bool:
        """Due by rank 0's clock (``train.ckpt_every_minutes`` since the last save or the start); False elsewhere:
        the caller agrees it across ranks."""
        return bool(self.tc.ckpt_every_minutes) and self.dist.is_main and \
            time.monotonic() - self._saved_at >= 60 * self.tc.ckpt_every_minutes

    # ------------------------------------------------------------------ restore
    def restore(self, state: TrainState) -> bool:
        """``train.resume`` (the full state, into ``state`` and the components; collective) or else
        ``train.init_from`` (weights only). True when a checkpoint was resumed."""
        if self.tc.resume:
            error = None
            try:
                self.run.pull(self.tc.resume)
                ckpt = find_resume(self.tc.resume, self.run.local)
                if ckpt is None:
                    log.info("train.resume=latest: no checkpoint in %s yet, starting from scratch", self.root)
                else:
                    self._resume(ckpt, state)
            except Exception as e:  # noqa: BLE001 - reported to the other ranks first, then raised
                error = e
            self._agree_on_step(state.step, error)
        if self.last is None and self.tc.init_from:
            self.init_source = init_weights_from(self.model, self.tc.init_from)
            log.info("initialised weights from %s (optimizer, schedule and data start fresh)", self.tc.init_from)
        self._saved_at = time.monotonic()
        return self.last is not None

    def _resume(self, ckpt: Path, state: TrainState) -> None:
        self.init_source = read_meta(ckpt).get("init_from")
        saved = load_trainer_state(ckpt)
        if int(saved.get("world_size", 1)) != self.dist.world_size:
            raise ConfigError(f"{ckpt}: written by {saved.get('world_size')} processes, this run has "
                              f"{self.dist.world_size}; exact resume needs the same number")
        sharded = is_sharded_dir(ckpt) and "optimizer" not in saved
        if sharded != (self.fsdp_root is not None):
            raise ConfigError(f"{ckpt}: written with train.strategy={'fsdp' if sharded else 'ddp'}, this run has "
                              f"train.strategy={self.tc.strategy} (with {self.dist.world_size} process(es)); exact "
                              f"resume needs the same (train.init_from loads the weights alone)")
        state.step = int(saved["step"])
        _log_changes(ckpt, self.cfg, state.step)
        # The optimizer's moments come from the checkpoint; its hyper-parameters (lr, betas, eps, weight decay)
        # from this run's config (the trainer rebuilds the schedule at the restored step).
        current = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if sharded:
            fsdp.load_sharded(ckpt, self.fsdp_root, self.model, self.optimizer)
        else:
            load_weights(self.model, ckpt, strict=True)
            self.optimizer.load_state_dict(saved["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, current):
            group.update(hyper)
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        state.skipped_steps = int(saved.get("skipped_steps", 0))
        state.samples_seen = int(saved.get("samples_seen", 0))
        set_rng_state(saved["rng"][self.dist.rank])
        self.data.load_state_dict(saved["data"][self.dist.rank])
        state.epoch = int(saved["data"][self.dist.rank]["epoch"])
        self.last, self.saved_step = ckpt, state.step

    def _agree_on_step(self, step: int, error: BaseException | None) -> None:
        """Collective (one all-reduce): every rank must have restored the same step. A rank that cannot read
        the checkpoint (a node-local output_dir) would otherwise train from scratch beside the others."""
        t = torch.tensor([step, -step, int(error is not None)], dtype=torch.int64, device=self.dist.device)
        D.all_reduce(t, "max")
        if error is not None:
            raise error
        if t[2] > 0:
            raise ConfigError("train.resume: another process failed to restore the checkpoint (its error is in "
                              "its log); every process must read the same checkpoint")
        low, high = int(-t[1]), int(t[0])
        if low != high:
            mine = f"step {step} from {self.last}" if self.last else f"no checkpoint (none found in {self.root})"
            raise ConfigError(f"train.resume: the processes restored different steps ({low} to {high}); rank "
                              f"{self.dist.rank} restored {mine}. Checkpoints must be on storage that every node "
                              f"reads (a shared train.output_dir), not on node-local disks")

    # ------------------------------------------------------------------ save
    def save(self, state: TrainState, scheduler) -> Path | None:
        """Collective: every rank contributes RNG + data position (and, under FSDP, its shards); rank 0 writes.
        Returns the step folder on rank 0."""
        rngs = D.all_gather_object(rng_state())
        datas = D.all_gather_object(self.data.state_dict())
        path = tmp = None
        if self.fsdp_root is not None:          # every rank writes its shards into the folder rank 0 makes
            tmp = D.all_gather_object(new_checkpoint_dir(self.root, state.step) if self.dist.is_main else None)[0]
            fsdp.save_sharded(tmp, self.fsdp_root, self.model, self.optimizer)
        if self.dist.is_main:
            saved = {"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen,
                     "world_size": self.dist.world_size, "strategy": "fsdp" if tmp else "ddp",
                     "scheduler": scheduler.state_dict(), "rng": rngs, "data": datas,
                     "scaler": self.scaler.state_dict(), "skipped_steps": state.skipped_steps}
            if tmp is None:
                saved["optimizer"] = self.optimizer.state_dict()
            meta = {"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen,
                    "task": self.cfg.task.name, "init_from": self.init_source, "sharded": tmp is not None}
            path = save_checkpoint(self.root, state.step, self.model, self.cfg, saved, meta, self.tc.keep_last,
                                   tmp=tmp)
            self.run.push(path, self.tc.keep_last)
            log.info("saved checkpoint %s", fs.join(self.run.remote, CHECKPOINTS, path.name) if self.run.remote
                     else path)
        D.barrier()
        self.last = path or self.root / LATEST
        self.saved_step = state.step
        self._saved_at = time.monotonic()
        return path


# ---------------------------------------------------------------- the pieces, as functions
def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_checkpoint_dir(ckpt_root: Path, step: int) -> Path:
    """Rank 0: the temporary folder that becomes ``step_XXXXXXXX`` (the ranks of a sharded save all write into it)."""
    return temp_dir_beside(ckpt_root / step_dir_name(step))


def save_checkpoint(ckpt_root: Path, step: int, model, cfg, trainer_state: dict, meta: dict,
                    keep_last: int = 3, tmp: Path | None = None) -> Path:
    """Rank 0 only. Writes ``step_XXXXXXXX`` atomically, repoints ``latest``, prunes old ones. ``tmp``: the folder
    from :func:`new_checkpoint_dir` into which every rank already wrote its shards (``sharded/``); the model's
    weights are then not written again as ``model.safetensors``."""
    final = ckpt_root / step_dir_name(step)
    sharded, tmp = tmp is not None, tmp or new_checkpoint_dir(ckpt_root, step)
    try:
        write_pretrained(model, cfg, tmp, meta=meta, weights=not sharded)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        replace_dir(tmp, final)                # also when re-saving the same step (e.g. final == last periodic)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_latest(ckpt_root, final)
    prune(ckpt_root, keep_last, keep=final)
    return final


def prune(ckpt_root: Path, keep_last: int, keep: Path | None = None) -> None:
    ckpts = list_checkpoints(ckpt_root)
    for old in ckpts[: max(len(ckpts) - max(keep_last, 1), 0)]:
        if keep is not None and old.resolve() == keep.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step_*.tmp*"):   # leftovers of a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def find_resume(spec: str, output_dir: Path) -> Path | None:
    """``latest`` -> the run's newest checkpoint (None when the run has none yet); else a checkpoint dir
    or run dir. Raises ConfigError for a path that is not a checkpoint."""
    if fs.is_remote(spec):
        spec = str(fetch_checkpoint(spec))
    if spec == LATEST:
        root = output_dir / CHECKPOINTS
        if (root / LATEST).exists():
            return resolve_latest(root)
        ckpts = list_checkpoints(root)
        return ckpts[-1] if ckpts else None
    p = Path(spec)
    if (p / TRAINER_STATE).is_file():
        return p
    if (p / CHECKPOINTS / LATEST).exists():
        return resolve_latest(p / CHECKPOINTS)
    raise ConfigError(f"train.resume: {spec} is not a training checkpoint (no {TRAINER_STATE}); use 'latest', a "
                      f"step_XXXXXXXX folder or a run folder. For weights only use train.init_from")


def load_trainer_state(ckpt: Path) -> dict:
    path = ckpt / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise ConfigError(f"cannot read {path}: {e}") from e


def _log_changes(ckpt: Path, cfg, step: int) -> None:
    """Log each config value that differs from the checkpoint's (old -> new): they apply from here on."""
    try:
        old = _flatten(read_yaml(ckpt / CONFIG_YAML))
    except ConfigError as e:
        log.warning("cannot compare with the checkpoint's config: %s", e)
        return
    new = _flatten(to_dict(cfg))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if k not in ("train.resume", "train.overwrite") and old.get(k) != new.get(k)]
    if changed:
        log.info("resuming with a changed config (applies from step %d on): %s", step + 1, "; ".join(changed))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
