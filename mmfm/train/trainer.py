"""One training loop for every task (contrastive, caption, VQA): ``Trainer(cfg, task, train_data).fit()``.

The trainer owns the model, the optimizer and the step; components decide the rest, as in torchtitan:

* :class:`~.cadence.Cadence`: what is due after each step (logging, evaluation, a checkpoint, the NaN check, stop);
* :class:`~.checkpointer.Checkpointer`: checkpoints every N steps / minutes, atomic, last K kept;
  ``train.resume`` continues exactly (weights, optimizer state, RNG and data position; the lr schedule is rebuilt
  from the current config at the restored step), ``train.init_from`` loads weights only; every rank must restore
  the same step;
* :class:`~.evaluator.Evaluator`: validation loss and eval hooks every ``eval.every_steps`` (and at the end; at
  the start too for ``init_from``), on every rank; ``Trainer.evaluate()`` also works outside ``fit()``;
* :mod:`.logging`: metrics to ``OUT/metrics.jsonl``, TensorBoard ``OUT/tb`` and wandb, the tqdm bar on rank 0;
* :mod:`.run_folder`: ``train.output_dir`` (a folder or an fsspec URL), checked once: a new run refuses a folder
  that holds checkpoints unless ``train.overwrite``.

DDP or FSDP2 (``train.strategy``, :mod:`.fsdp`) under torchrun (gloo on CPU, nccl on CUDA); AdamW (no decay on
norms/biases/logit scale); linear warmup + cosine; gradient accumulation (``task.accumulation_mode``: ``features``
keeps the full batch's negatives, ``plain`` sums micro-batch losses); gradient clipping; bf16 autocast on CUDA, or
fp16 with a GradScaler (skipped steps counted); optional ``torch.compile``. SIGTERM / SIGINT (Ctrl-C): checkpoint
at the end of the current step, then stop. A non-finite loss stops the run (``NonFiniteLoss``) and leaves the last
good checkpoint as ``latest``.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import time

import torch
from torch import nn

from mmfm.config import ConfigError, save_config
from mmfm.models.memo import memos, save_memos

from . import distributed as D
from . import fsdp
from .accumulate import TaskForward, accumulate_gradients, accumulation_mode, to_device
from .cadence import Cadence, NonFiniteLoss
from .checkpointer import Checkpointer, TrainState
from .evaluator import Evaluator
from .logging import MetricsWriter, Progress, StepMeter
from .optim import build_optimizer, build_scheduler
from .run_folder import clear_run, open_run_folder

__all__ = ["Trainer", "NonFiniteLoss"]

log = logging.getLogger("mmfm.train")


class Trainer:
    def __init__(self, cfg, task: nn.Module, train_data, val_data=None, hooks=(), *, run=None, dist=None):
        """``run`` (a checked :class:`~.run_folder.RunFolder`) and ``dist`` (the process group's ``DistInfo``):
        given by a caller that made them already (``train_experiment``), otherwise made here, once."""
        self.cfg, self.tc = cfg, cfg.train
        self.run = run if run is not None else open_run_folder(self.tc)   # an fsspec URL: a local staging folder
        self.out = self.run.local
        self.dist = dist if dist is not None else D.init_distributed(self.tc.dist_timeout_minutes, self.tc.device)
        self.device = self.dist.device
        self.task = task.to(self.device)
        self.train_data = train_data
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
        self._ddp = self._fsdp = None
        self._replicated: list = []          # FSDP: 0-dim parameters kept whole on every rank
        self.model = self._wrap()            # before the optimizer: FSDP replaces the parameters by their shards
        self.optimizer = build_optimizer(self.task, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total_steps)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]   # for clipping, once
        scaler = fsdp.GradScaler if self._fsdp is not None else torch.amp.GradScaler
        self.scaler = scaler(self.device.type, init_scale=self.tc.grad_scaler_init,
                             enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.checkpointer = Checkpointer(cfg, self.run, self.dist, self.task.model, self.optimizer, self.scaler,
                                         train_data, self._fsdp)
        self.evaluator = Evaluator(cfg, self.task, val_data, hooks, self.device, self._autocast, self._fsdp)
        self.cadence = Cadence(self.tc, self.total_steps, self.device.type, self.checkpointer, self.evaluator)
        self.metrics: MetricsWriter | None = None      # opened by fit() once the start step is known
        self.progress: Progress | None = None
        self.last_eval: dict = {}

    # ------------------------------------------------------------------ setup
    def _amp_dtype(self):
        p = self.tc.precision
        if p == "fp32" or (p == "auto" and self.device.type != "cuda"):
            return None
        if p == "fp16":
            if self.device.type != "cuda":
                log.warning("train.precision=fp16 on %s: fp16 autocast and the GradScaler run, but slowly (a check "
                            "before a GPU run)", self.device)
            return torch.float16
        if self.device.type != "cuda":
            log.warning("train.precision=bf16 needs CUDA; training in fp32 on %s (bf16 matmul on CPU is very slow)",
                        self.device)
            return None
        return torch.bfloat16

    def _wrap(self) -> nn.Module:
        model: nn.Module = TaskForward(self.task)
        if self.tc.strategy == "fsdp" and not self.dist.enabled:
            log.warning("train.strategy=fsdp shards over the processes of a torchrun job; one process trains the "
                        "whole model")
        if self.tc.strategy == "fsdp" and self.dist.enabled:
            self._replicated = fsdp.shard(model, self.device, self.amp_dtype)
            self._fsdp = model
        elif self.dist.enabled:
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

    # ------------------------------------------------------------------ one optimizer step
    def forward_backward(self, micro: list[dict]) -> dict:
        """Forward and backward over one step's micro-batches: ``.grad`` holds the (scaled, under fp16) gradient
        of the global batch, averaged over the ranks (sharded under FSDP). Returns the outputs to log."""
        micro = [to_device(b, self.device) for b in micro]
        logged = accumulate_gradients(self.model, self.task, micro, self.mode, self._no_sync, self._autocast,
                                      lambda loss: self.scaler.scale(loss).backward())
        fsdp.average_replicated_grads(self._replicated)
        return logged

    def train_step(self, micro: list[dict]) -> dict:
        logged = self.forward_backward(micro)
        self.scaler.unscale_(self.optimizer)
        if self.tc.grad_clip:
            clip = fsdp.clip_grad_norm if self._fsdp is not None else torch.nn.utils.clip_grad_norm_
            logged["grad_norm"] = clip(self._params, self.tc.grad_clip)
        logged["lr"] = torch.tensor(self.tc.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch))  # train.lr's
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)    # fp16: skipped when a gradient overflowed (the same on every rank)
        self.scaler.update()
        self.state.skipped_steps += int(self.scaler.get_scale() < scale)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._bad = self._bad | ~torch.isfinite(logged["loss"].detach())
        return {k: v.detach().float() for k, v in logged.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    def _log_memos(self) -> None:
        for m in (m for m in memos(self.model) if m.hits or m.misses):
            log.info("locked-feature memo %s: %d rows read from %s, %d hits, %d misses", m.name, m.loaded,
                     m.path.name if m.path else "no file", m.hits, m.misses)

    def save(self):
        """Collective: a checkpoint of the current step (rank 0 returns its folder), and rank 0's persisted
        locked-feature memos (``model.*.memo_dir``) when they gained rows."""
        folder = self.checkpointer.save(self.state, self.scheduler)
        if self.dist.is_main:
            for path in save_memos(self.model):
                log.info("saved the locked-feature memo %s", path)
        return folder

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """Collective: validation loss and eval hooks on the current weights, inside ``fit()`` (logged to the
        metrics) or outside it (returned and logged)."""
        metrics = self.evaluator.run(self.state.step)
        if metrics:
            if self.metrics is not None:
                self.metrics.write(self.state.step, metrics, epoch=self.state.epoch)
            msg = f"eval @ step {self.state.step}: " + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            (self.progress.write if self.progress is not None else log.info)(msg)
        self.last_eval = metrics
        return metrics

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train to ``total_steps``; returns the final metrics. Raises NonFiniteLoss on NaN."""
        tc, st = self.tc, self.state
        if self.dist.is_main:
            if tc.overwrite:
                clear_run(self.out, self.run.remote)
            save_config(self.cfg, self.out / "config.yaml")
        resumed = self.checkpointer.restore(st)
        if resumed:
            self.scheduler = build_scheduler(self.optimizer, tc, self.total_steps, start_step=st.step)
            log.info("resumed from %s at step %d (epoch %d) of %d, lr %.3g", self.checkpointer.last, st.step,
                     st.epoch, self.total_steps, self.optimizer.param_groups[0]["lr"])
        self.metrics = MetricsWriter(self.out, self.dist.is_main, tc.tensorboard and "tensorboard" in tc.report_to,
                                     start_step=st.step if resumed else -1,
                                     wandb=self.cfg if "wandb" in tc.report_to else None)
        self.progress = Progress(self.total_steps, st.step, self.dist.is_main and tc.progress)
        batch = self.train_data.dataset.batch_size
        self.meter = StepMeter(batch * self.dist.world_size * self.accum)
        log.info("training %d steps (%d per epoch), global batch %d (%d ranks x %d x accum %d), %s, device %s",
                 self.total_steps, self.steps_per_epoch, self.meter.samples_per_step, self.dist.world_size, batch,
                 self.accum, self.amp_dtype or "fp32", self.device)
        try:
            with self.cadence.listen():
                if self.evaluator.due_at_start(resumed):
                    self.evaluate()
                self.task.train()
                stopped = self._loop()
                self.cadence.agree(st.step, st.epoch, self._bad)      # the NaN check, due or not
                if self.checkpointer.saved_step != st.step:
                    self.save()
                self._log_memos()
                if stopped:
                    return self._stopped()
            final = self.evaluate() if self.evaluator.due_at_end else {}
            return {"step": st.step, "epoch": st.epoch, **final}
        finally:
            self.progress.close()
            self.metrics.close()
            self.metrics = self.progress = None         # evaluate() after fit() returns and logs its metrics

    def _loop(self) -> bool:
        """Train until ``total_steps``; returns True when stopped early by a signal."""
        st = self.state
        while st.step < self.total_steps:
            self.train_data.set_epoch(st.epoch)
            batches = iter(self.train_data)
            while st.step < self.total_steps and (got := self._next_step(batches)):
                micro, data_time = got
                self.meter.add({**self.train_step(micro), "data_time": data_time})
                st.step += 1
                st.samples_seen += self.meter.samples_per_step
                due = self.cadence.at(st.step, st.epoch, self._bad)    # log, eval, checkpoint, NaN check, stop
                if due.stop:
                    return True
                self._log(due.log)
                if due.eval:
                    self.evaluate()
                if due.checkpoint:
                    self.save()
            if self.train_data.batches >= self.train_data.batches_per_epoch:
                st.epoch += 1
        return False

    def _next_step(self, batches) -> tuple[list[dict], torch.Tensor] | None:
        """The next step's ``accum`` micro-batches and the seconds spent waiting for them; None at the end of the
        epoch (every rank has the same count)."""
        t0 = time.perf_counter()
        micro = list(itertools.islice(batches, self.accum))
        return (micro, torch.tensor(time.perf_counter() - t0)) if len(micro) == self.accum else None

    def _stopped(self) -> dict:
        signum = self.cadence.stop_signal or signal.SIGTERM     # None on a rank that only heard of it from another
        name = signal.Signals(signum).name
        msg = (f"stopped by signal {name} at step {self.state.step} after saving {self.checkpointer.last}; "
               f"continue with --resume latest")
        self.progress.write(msg)
        return {"step": self.state.step, "epoch": self.state.epoch, "stopped": msg, "signal": int(signum)}

    def _log(self, due: bool) -> None:
        """A metrics row and log line when ``due`` (the means since the last one, over every rank); otherwise a
        tick of the progress bar."""
        if not due:
            return self.progress.update(1)
        sums, n, samples_per_s = self.meter.take()
        keys = sorted(sums)
        vec = torch.stack([sums[k].to(self.device) / max(n, 1) for k in keys]) if keys else None
        if vec is not None:
            D.all_reduce(vec, "mean")
        metrics = {f"train/{k}": v for k, v in zip(keys, vec.tolist())} if vec is not None else {}
        lr = metrics.get("train/lr", self.optimizer.param_groups[0]["lr"])
        metrics.update({"train/samples_per_s": samples_per_s, "train/samples_seen": self.state.samples_seen})
        if self.scaler.is_enabled():       # fp16: steps skipped for overflowing gradients (so far) and the scale
            metrics.update({"train/skipped_steps": self.state.skipped_steps,
                            "train/loss_scale": self.scaler.get_scale()})
        if getattr(self.train_data, "corrupt_total", 0):
            metrics["data/corrupt_samples_epoch"] = self.train_data.corrupt_total
        self.metrics.write(self.state.step, metrics, epoch=self.state.epoch)
        loss = metrics.get("train/loss", float("nan"))
        self.progress.update(1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.0f}")
        if self.progress.lines and self.dist.is_main:
            log.info("step %d/%d loss %.4f lr %.2e %.0f samples/s", self.state.step, self.total_steps, loss, lr,
                     samples_per_s)
