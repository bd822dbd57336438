"""One training loop for every task (contrastive, caption, VQA): ``Trainer(cfg, task, train_data).fit()``.

* DDP under torchrun (gloo on CPU, nccl on CUDA); AdamW (no decay on norms/biases/logit scale); linear
  warmup + cosine; gradient accumulation (``task.accumulation_mode``: ``features`` keeps the full batch's
  negatives, ``plain`` sums micro-batch losses); gradient clipping; bf16 autocast on CUDA only; optional
  ``torch.compile``.
* tqdm bar on rank 0; metrics to ``OUT/metrics.jsonl`` and TensorBoard ``OUT/tb``; validation loss and
  eval hooks every ``eval.every_steps`` (and at the end; at the start too for ``init_from``).
* Checkpoints every N steps / minutes, atomic, last K kept; ``train.resume`` continues exactly (weights,
  optimizer, scheduler, RNG and data position); ``train.init_from`` loads weights only.
* A non-finite loss stops the run (``NonFiniteLoss``) and leaves the last good checkpoint as ``latest``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError, save_config

from . import distributed as D
from .checkpoint import find_resume, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .logging import MetricsWriter, Progress
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("mmfm.train")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; training stopped without writing a checkpoint."""


def check_output_dir(path: Path) -> None:
    """Create ``path`` and prove it is writable, before any training work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir: cannot write to {path}: {e.strerror or e}") from None


class _Forward(nn.Module):
    """What DDP / torch.compile wrap: ``forward(batch)`` = the task's loss dict; ``features_only`` = ``encode``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch: dict, features_only: bool = False):
        return self.task.encode(batch) if features_only else self.task(batch)


def accumulation_mode(task) -> str:
    mode = getattr(task, "accumulation_mode", None)
    if mode is None:
        mode = "features" if callable(getattr(task, "encode", None)) and callable(
            getattr(task, "compute_loss", None)) else "plain"
    if mode not in ("plain", "features"):
        raise ConfigError(f"{type(task).__name__}.accumulation_mode: {mode!r} is not 'plain' or 'features'")
    return mode


def merge_features(cached: list[dict], j: int, live: dict, micro: int) -> dict:
    """Micro-batch ``j``'s live features in place of its cached ones, the rest concatenated along dim 0."""
    out = {}
    for k, v in live.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == micro:
            out[k] = torch.cat([v if i == j else c[k] for i, c in enumerate(cached)])
        else:
            out[k] = v
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class Trainer:
    def __init__(self, cfg, task: nn.Module, train_data, val_data=None, hooks=()):
        self.cfg, self.tc = cfg, cfg.train
        self.out = Path(self.tc.output_dir)
        check_output_dir(self.out)
        self.dist = D.init_distributed(self.tc.dist_timeout_minutes, self.tc.device)
        self.device = self.dist.device
        self.task = task.to(self.device)
        self.train_data, self.val_data, self.hooks = train_data, val_data, list(hooks)
        self.accum = max(int(self.tc.grad_accum), 1)
        if getattr(train_data, "grad_accum", self.accum) != self.accum:
            raise ConfigError(f"train.grad_accum={self.accum} but the loader was built for "
                              f"{train_data.grad_accum}; pass grad_accum to build_loader")
        self.mode = accumulation_mode(task)
        self.amp_dtype = self._amp_dtype()
        self.steps_per_epoch = int(train_data.steps_per_epoch)
        self.total_steps = int(self.tc.max_steps or self.tc.epochs * self.steps_per_epoch)
        if self.total_steps <= 0:
            raise ConfigError("train: nothing to do (train.max_steps / train.epochs give 0 steps)")
        self.optimizer = build_optimizer(self.task, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total_steps)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]   # for clipping, once
        self.step, self.epoch, self.samples_seen = 0, 0, 0
        self.last_ckpt: Path | None = None
        self._saved_step = -1
        self._stop_signal = None
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._ddp = None
        self.model = self._wrap()
        self.metrics = MetricsWriter(self.out, self.dist.is_main, self.tc.tensorboard)

    # ------------------------------------------------------------------ setup
    def _amp_dtype(self):
        p = self.tc.precision
        if p == "fp32" or (p == "auto" and self.device.type != "cuda"):
            return None
        if self.device.type != "cuda":
            log.warning("train.precision=bf16 needs CUDA; training in fp32 on %s (bf16 matmul on CPU is very slow)",
                        self.device)
            return None
        return torch.bfloat16

    def _wrap(self) -> nn.Module:
        model: nn.Module = _Forward(self.task)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self._ddp = DDP(model, device_ids=ids, broadcast_buffers=False,
                                    find_unused_parameters=self.tc.find_unused_parameters)
        if self.tc.compile:
            model = torch.compile(model)
        return model

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool):
        return self._ddp.no_sync() if (self._ddp is not None and not last) else contextlib.nullcontext()

    # ------------------------------------------------------------------ state
    def _restore(self) -> bool:
        """Resume (full state) or init_from (weights only). True when evaluation should run at the start."""
        from mmfm.models.loading import load_weights

        if self.tc.resume:
            ckpt = find_resume(self.tc.resume, self.out)
            if ckpt is None:
                log.info("train.resume=latest: no checkpoint in %s yet, starting from scratch",
                         self.out / "checkpoints")
            else:
                self._resume(ckpt, load_weights)
                return False
        if self.tc.init_from:
            load_weights(self.task.model, self.tc.init_from, strict=True)
            log.info("initialised weights from %s (optimizer, schedule and data start fresh)", self.tc.init_from)
            return True
        return bool(self.cfg.eval.at_start)

    def _resume(self, ckpt: Path, load_weights) -> None:
        load_weights(self.task.model, ckpt, strict=True)
        state = load_trainer_state(ckpt)
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise ConfigError(f"{ckpt}: written by {state.get('world_size')} processes, this run has "
                              f"{self.dist.world_size}; exact resume needs the same number")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.samples_seen = int(state.get("samples_seen", 0))
        set_rng_state(state["rng"][self.dist.rank])
        self.train_data.load_state_dict(state["data"][self.dist.rank])
        self.epoch = int(state["data"][self.dist.rank]["epoch"])
        self.last_ckpt = ckpt
        self._saved_step = self.step
        log.info("resumed from %s at step %d (epoch %d)", ckpt, self.step, self.epoch)

    def save(self) -> Path | None:
        """Collective: every rank contributes RNG + data position; rank 0 writes."""
        rngs = D.all_gather_object(rng_state())
        datas = D.all_gather_object(self.train_data.state_dict())
        path = None
        if self.dist.is_main:
            state = {"step": self.step, "epoch": self.epoch, "samples_seen": self.samples_seen,
                     "world_size": self.dist.world_size, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rngs, "data": datas}
            meta = {"step": self.step, "epoch": self.epoch, "samples_seen": self.samples_seen,
                    "task": self.cfg.task.name}
            path = save_checkpoint(self.out / "checkpoints", self.step, self.task.model, self.cfg, state, meta,
                                   self.tc.keep_last)
            log.info("saved checkpoint %s", path)
        D.barrier()
        self.last_ckpt = path or self.out / "checkpoints" / "latest"
        self._saved_step = self.step
        self._last_save_time = time.monotonic()
        return path

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, micro: list[dict]) -> dict:
        micro = [to_device(b, self.device) for b in micro]
        n = len(micro)
        logged: dict = {}
        if self.mode == "features" and n > 1:
            with torch.no_grad(), self._autocast():
                cached = [{k: (v.detach() if isinstance(v, torch.Tensor) else v)
                           for k, v in self.model(b, features_only=True).items()} for b in micro]
            size = _batch_len(micro[0])
            for j, b in enumerate(micro):
                with self._no_sync(j == n - 1), self._autocast():
                    live = self.model(b, features_only=True)
                    out = self.task.compute_loss(merge_features(cached, j, live, size))
                out["loss"].backward()
            logged = out
        else:
            for j, b in enumerate(micro):
                with self._no_sync(j == n - 1), self._autocast():
                    out = self.model(b)
                (out["loss"] / n).backward() if n > 1 else out["loss"].backward()
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.ndim == 0:
                        logged[k] = logged.get(k, 0) + v.detach().float() / n
        if self.tc.grad_clip:
            logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._params, self.tc.grad_clip)
        logged["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])   # the lr this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._bad = self._bad | ~torch.isfinite(logged["loss"].detach())
        return {k: v.detach().float() for k, v in logged.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        metrics: dict = {}
        self.task.eval()
        try:
            if self.val_data is not None and self.cfg.eval.val_loss:
                metrics.update(self._val_loss())
            for hook in self.hooks:
                metrics.update(hook(self.task, self.step) or {})
        finally:
            self.task.train()
        if metrics:
            self.metrics.write(self.step, metrics, epoch=self.epoch)
            self.progress.write(f"eval @ step {self.step}: " +
                                ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in metrics.items()))
        self.last_eval = metrics
        return metrics

    def _val_loss(self) -> dict:
        """Mean loss per validation sample. Each rank scores its share once (batch counts and sizes differ
        across ranks, so no collective runs per batch); the sums and counts are reduced afterwards."""
        self.val_data.set_epoch(0)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for batch in self.val_data:
            n = _batch_len(batch)
            with self._autocast():
                out = self.task(to_device(batch, self.device))
            total[0] += out["loss"].detach().double() * n
            total[1] += n
        D.all_reduce(total, "sum")
        if total[1] == 0:
            return {}
        return {"val/loss": (total[0] / total[1]).item(), "val/samples": int(total[1].item())}

    # ------------------------------------------------------------------ the loop
    def _check(self) -> bool:
        """Collective: raise NonFiniteLoss if any rank saw a NaN/inf loss; True if any rank got SIGTERM."""
        flags = torch.tensor([float(self._bad.item()), float(self._stop_signal is not None)], device=self.device)
        D.all_reduce(flags, "max")
        if flags[0] > 0:
            where = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written"
            msg = (f"loss is NaN/inf at step {self.step} (epoch {self.epoch}); stopping without saving. "
                   f"{where}. Resume with --resume latest and a lower train.lr, or check the data.")
            log.error(msg)
            raise NonFiniteLoss(msg)
        return bool(flags[1] > 0)

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM (preemption, scancel, torchrun shutting down) -> checkpoint at the next step, then stop."""
        import signal
        import threading
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    def _ckpt_due(self) -> bool:
        if self._due(self.tc.ckpt_every_steps):
            return True
        if self.tc.ckpt_every_minutes:
            late = time.monotonic() - self._last_save_time >= 60 * self.tc.ckpt_every_minutes
            return D.broadcast_flag(late, self.device)
        return False

    def fit(self) -> dict:
        """Train to ``total_steps``; returns the final metrics. Raises NonFiniteLoss on NaN."""
        tc = self.tc
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        eval_at_start = self._restore()
        self._last_save_time = time.monotonic()
        self.progress = Progress(self.total_steps, self.step, self.dist.is_main and tc.progress)
        self.last_eval: dict = {}
        global_batch = self.train_data.dataset.batch_size * self.dist.world_size * self.accum
        log.info("training %d steps (%d per epoch), global batch %d (%d ranks x %d x accum %d), %s, device %s",
                 self.total_steps, self.steps_per_epoch, global_batch, self.dist.world_size,
                 self.train_data.dataset.batch_size, self.accum, self.amp_dtype or "fp32", self.device)
        try:
            with self._signals():
                if eval_at_start:
                    self.evaluate()
                self.task.train()
                stopped = self._loop(global_batch)
                self._check()
                final = {}
                if self._saved_step != self.step:
                    self.save()
                if stopped:
                    msg = f"stopped by signal {self._stop_signal} at step {self.step}; continue with --resume latest"
                    self.progress.write(msg)
                    return {"step": self.step, "epoch": self.epoch, "stopped": msg}
            if self.hooks or (self.val_data is not None and self.cfg.eval.val_loss):
                final = self.evaluate()
            return {"step": self.step, "epoch": self.epoch, **final}
        finally:
            self.progress.close()
            self.metrics.close()

    def _loop(self, global_batch: int) -> bool:
        """Train until ``total_steps``; returns True when stopped early by a signal."""
        tc = self.tc
        check_every = 1 if self.device.type == "cpu" else max(tc.log_every, 1)
        sums: dict = {}
        t_log, steps_log = time.perf_counter(), 0
        while self.step < self.total_steps:
            self.train_data.set_epoch(self.epoch)
            it = iter(self.train_data)
            while self.step < self.total_steps:
                micro = []
                t_wait = time.perf_counter()
                for _ in range(self.accum):
                    b = next(it, None)
                    if b is None:
                        break
                    micro.append(b)
                if len(micro) < self.accum:
                    break                       # epoch done (every rank has the same count)
                t_wait = time.perf_counter() - t_wait
                out = self.train_step(micro)
                out["data_time"] = torch.tensor(t_wait)     # seconds this step waited for the loader
                self.step += 1
                steps_log += 1
                self.samples_seen += global_batch
                for k, v in out.items():
                    sums[k] = sums.get(k, 0) + v
                log_due = self._due(tc.log_every) or self.step == self.total_steps
                if (self.step % check_every == 0 or log_due) and self._check():
                    return True
                if log_due:
                    t_now = time.perf_counter()
                    self._log(sums, steps_log, global_batch * steps_log / max(t_now - t_log, 1e-9))
                    sums, t_log, steps_log = {}, t_now, 0
                else:
                    self.progress.update(1)
                if self._due(self.cfg.eval.every_steps) and self.step < self.total_steps:
                    self.evaluate()
                if self._ckpt_due() and self.step < self.total_steps:
                    if self._check():
                        return True
                    self.save()
            if self.train_data.batches >= self.train_data.batches_per_epoch:
                self.epoch += 1
        return False

    def _log(self, sums: dict, n: int, samples_per_s: float) -> None:
        keys = sorted(sums)
        vec = torch.stack([sums[k].to(self.device) / max(n, 1) for k in keys]) if keys else None
        if vec is not None:
            D.all_reduce(vec, "mean")
        metrics = {f"train/{k}": v for k, v in zip(keys, vec.tolist())} if vec is not None else {}
        lr = metrics.get("train/lr", self.optimizer.param_groups[0]["lr"])
        metrics.update({"train/samples_per_s": samples_per_s, "train/samples_seen": self.samples_seen})
        if getattr(self.train_data, "corrupt_total", 0):
            metrics["data/corrupt_samples_epoch"] = self.train_data.corrupt_total
        self.metrics.write(self.step, metrics, epoch=self.epoch)
        loss = metrics.get("train/loss", float("nan"))
        self.progress.update(1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.0f}")
        if self.progress.lines and self.dist.is_main:
            log.info("step %d/%d loss %.4f lr %.2e %.0f samples/s", self.step, self.total_steps, loss, lr,
                     samples_per_s)


def _batch_len(batch: dict) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            return v.shape[0]
        if isinstance(v, list):
            return len(v)
    return 0
