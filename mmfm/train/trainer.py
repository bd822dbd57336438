"""One training loop for every task (contrastive, caption, VQA): ``Trainer(cfg, task, train_data).fit()``.

* DDP or FSDP2 (``train.strategy``, :mod:`.fsdp`) under torchrun (gloo on CPU, nccl on CUDA); AdamW (no decay
  on norms/biases/logit scale); linear warmup + cosine; gradient accumulation (``task.accumulation_mode``:
  ``features`` keeps the full batch's negatives, ``plain`` sums micro-batch losses); gradient clipping; bf16
  autocast on CUDA, or fp16 with a GradScaler (skipped steps counted); optional ``torch.compile``.
* tqdm bar on rank 0; metrics to ``OUT/metrics.jsonl``, TensorBoard ``OUT/tb`` and wandb; validation loss and
  eval hooks every ``eval.every_steps`` (and at the end; at the start too for ``init_from``).
* Checkpoints every N steps / minutes, atomic, last K kept; ``train.resume`` continues exactly (weights,
  optimizer state, RNG and data position; the lr schedule is rebuilt from the current config at the restored
  step); ``train.init_from`` loads weights only. A new run refuses a folder that holds checkpoints unless
  ``train.overwrite``. SIGTERM / SIGINT (Ctrl-C): checkpoint at the end of the current step, then stop.
* A non-finite loss stops the run (``NonFiniteLoss``) and leaves the last good checkpoint as ``latest``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError, read_yaml, save_config, to_dict
from mmfm.data import fs

from . import distributed as D
from . import fsdp
from .accumulate import TaskForward, accumulate_gradients, accumulation_mode, batch_len, to_device
from .checkpoint import (RunFolder, check_run_folder, clear_run, find_resume, load_trainer_state, new_checkpoint_dir,
                         rng_state,
                         save_checkpoint, set_rng_state)
from .logging import MetricsWriter, Progress
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("mmfm.train")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; training stopped without writing a checkpoint."""


def check_output_dir(path: str | os.PathLike) -> None:
    """Create ``path`` and prove it is writable, before any training work (an fsspec URL: write a probe)."""
    run = RunFolder(str(path), stage=False)
    if run.remote:
        return run.check_writable()
    path = run.local
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir: cannot write to {path}: {e.strerror or e}") from None


class Trainer:
    def __init__(self, cfg, task: nn.Module, train_data, val_data=None, hooks=()):
        self.cfg, self.tc = cfg, cfg.train
        check_output_dir(self.tc.output_dir)
        check_run_folder(self.tc.output_dir, self.tc)
        self.run = RunFolder(self.tc.output_dir)         # an fsspec URL: a local staging folder, uploaded
        self.out = self.run.local
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
        self._ddp = self._fsdp = None
        self._replicated: list = []          # FSDP: 0-dim parameters kept whole on every rank
        self.model = self._wrap()            # before the optimizer: FSDP replaces the parameters by their shards
        self.optimizer = build_optimizer(self.task, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total_steps)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]   # for clipping, once
        scaler = fsdp.GradScaler if self._fsdp is not None else torch.amp.GradScaler
        self.scaler = scaler(self.device.type, init_scale=self.tc.grad_scaler_init,
                             enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.samples_seen, self.skipped_steps = 0, 0, 0, 0
        self.last_ckpt: Path | None = None
        self._saved_step = -1
        self.init_source: dict | None = None          # where the starting weights came from (meta.json)
        self._stop_signal = None
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.metrics: MetricsWriter | None = None      # opened by fit() once the start step is known

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

    # ------------------------------------------------------------------ state
    def _restore(self) -> bool:
        """Resume (full state) or init_from (weights only). True when evaluation should run at the start."""
        from mmfm.models.checkpoint import init_weights_from, load_weights

        if self.tc.resume:
            error = None
            try:
                self.run.pull(self.tc.resume)
                ckpt = find_resume(self.tc.resume, self.out)
                if ckpt is None:
                    log.info("train.resume=latest: no checkpoint in %s yet, starting from scratch",
                             self.out / "checkpoints")
                else:
                    self._resume(ckpt, load_weights)
            except Exception as e:  # noqa: BLE001 - reported to the other ranks first, then raised
                error = e
            self._agree_on_step(error)
            if self.last_ckpt is not None:
                return False
        if self.tc.init_from:
            self.init_source = init_weights_from(self.task.model, self.tc.init_from)
            log.info("initialised weights from %s (optimizer, schedule and data start fresh)", self.tc.init_from)
            return True
        return bool(self.cfg.eval.at_start)

    def _resume(self, ckpt: Path, load_weights) -> None:
        from mmfm.models.checkpoint import is_sharded_dir, read_meta

        self.init_source = read_meta(ckpt).get("init_from")
        state = load_trainer_state(ckpt)
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise ConfigError(f"{ckpt}: written by {state.get('world_size')} processes, this run has "
                              f"{self.dist.world_size}; exact resume needs the same number")
        sharded = is_sharded_dir(ckpt) and "optimizer" not in state
        if sharded != (self._fsdp is not None):
            raise ConfigError(f"{ckpt}: written with train.strategy={'fsdp' if sharded else 'ddp'}, this run has "
                              f"train.strategy={self.tc.strategy} (with {self.dist.world_size} process(es)); exact "
                              f"resume needs the same (train.init_from loads the weights alone)")
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self._log_changes(ckpt)
        # The optimizer's moments come from the checkpoint; its hyper-parameters (lr, betas, eps, weight decay)
        # and the schedule (base lr, warmup, total steps) from this run's config, at the restored step.
        current = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if sharded:
            fsdp.load_sharded(ckpt, self._fsdp, self.task.model, self.optimizer)
        else:
            load_weights(self.task.model, ckpt, strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        for group, hyper in zip(self.optimizer.param_groups, current):
            group.update(hyper)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total_steps, start_step=self.step)
        self.samples_seen = int(state.get("samples_seen", 0))
        set_rng_state(state["rng"][self.dist.rank])
        self.train_data.load_state_dict(state["data"][self.dist.rank])
        self.epoch = int(state["data"][self.dist.rank]["epoch"])
        self.last_ckpt = ckpt
        self._saved_step = self.step
        log.info("resumed from %s at step %d (epoch %d) of %d, lr %.3g", ckpt, self.step, self.epoch,
                 self.total_steps, self.optimizer.param_groups[0]["lr"])

    def _log_changes(self, ckpt: Path) -> None:
        """Log each config value that differs from the checkpoint's (old -> new): they apply from here on."""
        try:
            old = _flatten(read_yaml(ckpt / "config.yaml"))
        except ConfigError as e:
            log.warning("cannot compare with the checkpoint's config: %s", e)
            return
        new = _flatten(to_dict(self.cfg))
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                   if k not in ("train.resume", "train.overwrite") and old.get(k) != new.get(k)]
        if changed:
            log.info("resuming with a changed config (applies from step %d on): %s", self.step + 1,
                     "; ".join(changed))

    def _agree_on_step(self, error: BaseException | None) -> None:
        """Collective (one all-reduce): every rank must have restored the same step. A rank that cannot read
        the checkpoint (a node-local output_dir) would otherwise train from scratch beside the others."""
        t = torch.tensor([self.step, -self.step, int(error is not None)], dtype=torch.int64, device=self.device)
        D.all_reduce(t, "max")
        if error is not None:
            raise error
        if t[2] > 0:
            raise ConfigError("train.resume: another process failed to restore the checkpoint (its error is in "
                              "its log); every process must read the same checkpoint")
        low, high = int(-t[1]), int(t[0])
        if low != high:
            mine = f"step {self.step} from {self.last_ckpt}" if self.last_ckpt else \
                f"no checkpoint (none found in {self.out / 'checkpoints'})"
            raise ConfigError(f"train.resume: the processes restored different steps ({low} to {high}); rank "
                              f"{self.dist.rank} restored {mine}. Checkpoints must be on storage that every node "
                              f"reads (a shared train.output_dir), not on node-local disks")

    def save(self) -> Path | None:
        """Collective: every rank contributes RNG + data position; rank 0 writes."""
        rngs = D.all_gather_object(rng_state())
        datas = D.all_gather_object(self.train_data.state_dict())
        path = tmp = None
        if self._fsdp is not None:          # every rank writes its shards into the folder rank 0 makes
            tmp = D.all_gather_object(new_checkpoint_dir(self.out / "checkpoints", self.step)
                                      if self.dist.is_main else None)[0]
            fsdp.save_sharded(tmp, self._fsdp, self.task.model, self.optimizer)
        if self.dist.is_main:
            state = {"step": self.step, "epoch": self.epoch, "samples_seen": self.samples_seen,
                     "world_size": self.dist.world_size, "strategy": "fsdp" if tmp else "ddp",
                     "scheduler": self.scheduler.state_dict(), "rng": rngs, "data": datas,
                     "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}
            if tmp is None:
                state["optimizer"] = self.optimizer.state_dict()
            meta = {"step": self.step, "epoch": self.epoch, "samples_seen": self.samples_seen,
                    "task": self.cfg.task.name, "init_from": self.init_source, "sharded": tmp is not None}
            path = save_checkpoint(self.out / "checkpoints", self.step, self.task.model, self.cfg, state, meta,
                                   self.tc.keep_last, tmp=tmp)
            self.run.push(path, self.tc.keep_last)
            log.info("saved checkpoint %s", fs.join(self.run.remote, "checkpoints", path.name) if self.run.remote
                     else path)
        D.barrier()
        self.last_ckpt = path or self.out / "checkpoints" / "latest"
        self._saved_step = self.step
        self._last_save_time = time.monotonic()
        return path

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
        self.skipped_steps += int(self.scaler.get_scale() < scale)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._bad = self._bad | ~torch.isfinite(logged["loss"].detach())
        return {k: v.detach().float() for k, v in logged.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        self.task.eval()
        try:
            if self._fsdp is None:
                metrics = self._evaluate()
            else:                           # whole weights on every rank while the ranks evaluate unevenly
                with fsdp.full_weights(self._fsdp):
                    metrics = self._fsdp(None, run=self._evaluate)
        finally:
            self.task.train()
        if metrics:
            self.metrics.write(self.step, metrics, epoch=self.epoch)
            self.progress.write(f"eval @ step {self.step}: " +
                                ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in metrics.items()))
        self.last_eval = metrics
        return metrics

    def _evaluate(self) -> dict:
        metrics: dict = {}
        if self.val_data is not None and self.cfg.eval.val_loss:
            metrics.update(self._val_loss())
        for hook in self.hooks:
            metrics.update(hook(self.task, self.step) or {})
        return metrics

    def _val_loss(self) -> dict:
        """Mean loss per validation sample. Each rank scores its share once (batch counts and sizes differ
        across ranks, so no collective runs per batch); the sums and counts are reduced afterwards."""
        self.val_data.set_epoch(0)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for batch in self.val_data:
            n = batch_len(batch)
            with self._autocast():
                out = self.task(to_device(batch, self.device))
            total[0] += out["loss"].detach().double() * n
            total[1] += n
        D.all_reduce(total, "sum")
        if total[1] == 0:
            return {}
        return {"val/loss": (total[0] / total[1]).item(), "val/samples": int(total[1].item())}

    # ------------------------------------------------------------------ the loop
    def _check(self, nan: bool = True) -> tuple[bool, bool]:
        """Collective, host-side only (one small gloo all-reduce): raise NonFiniteLoss if any rank saw a NaN/inf
        loss (read only when ``nan``: on CUDA that waits for the GPU); returns (stop, checkpoint_late): a stop
        signal reached any rank, rank 0's clock says ``ckpt_every_minutes`` have passed."""
        late = bool(self.tc.ckpt_every_minutes) and self.dist.is_main and \
            time.monotonic() - self._last_save_time >= 60 * self.tc.ckpt_every_minutes
        bad, stop, late = D.any_flags([nan and bool(self._bad.item()), self._stop_signal is not None, late])
        if bad:
            where = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written"
            msg = (f"loss is NaN/inf at step {self.step} (epoch {self.epoch}); stopping without saving. "
                   f"{where}. Resume with --resume latest and a lower train.lr, or check the data.")
            log.error(msg)
            raise NonFiniteLoss(msg)
        return stop, late

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM (preemption, scancel, torchrun shutting down) and SIGINT (Ctrl-C) -> checkpoint at the end of
        the current step, then stop."""
        import threading
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    def fit(self) -> dict:
        """Train to ``total_steps``; returns the final metrics. Raises NonFiniteLoss on NaN."""
        tc = self.tc
        if self.dist.is_main:
            if tc.overwrite:
                clear_run(self.out, self.run.remote)
            save_config(self.cfg, self.out / "config.yaml")
        eval_at_start = self._restore()
        self.metrics = MetricsWriter(self.out, self.dist.is_main, tc.tensorboard and "tensorboard" in tc.report_to,
                                     start_step=self.step if self.last_ckpt else -1,
                                     wandb=self.cfg if "wandb" in tc.report_to else None)
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
                    return self._stopped()
            if self.hooks or (self.val_data is not None and self.cfg.eval.val_loss):
                final = self.evaluate()
            return {"step": self.step, "epoch": self.epoch, **final}
        finally:
            self.progress.close()
            self.metrics.close()

    def _stopped(self) -> dict:
        signum = self._stop_signal or signal.SIGTERM         # None on a rank that only heard of it from another
        name = signal.Signals(signum).name
        msg = (f"stopped by signal {name} at step {self.step} after saving {self.last_ckpt}; "
               f"continue with --resume latest")
        self.progress.write(msg)
        return {"step": self.step, "epoch": self.epoch, "stopped": msg, "signal": int(signum)}

    def _loop(self, global_batch: int) -> bool:
        """Train until ``total_steps``; returns True when stopped early by a signal."""
        tc = self.tc
        nan_every = 1 if self.device.type == "cpu" else max(tc.log_every, 1)   # reading the NaN flag syncs CUDA
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
                ckpt_due = self._due(tc.ckpt_every_steps) and self.step < self.total_steps
                nan = self.step % nan_every == 0 or log_due or ckpt_due
                stop, late = self._check(nan)           # every step: a signal is acted on within one step
                if stop:
                    return True
                if log_due:
                    t_now = time.perf_counter()
                    self._log(sums, steps_log, global_batch * steps_log / max(t_now - t_log, 1e-9))
                    sums, t_log, steps_log = {}, t_now, 0
                else:
                    self.progress.update(1)
                if self._due(self.cfg.eval.every_steps) and self.step < self.total_steps:
                    self.evaluate()
                if (ckpt_due or late) and self.step < self.total_steps:
                    if not nan and self._check()[0]:   # never save NaN weights
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
        if self.scaler.is_enabled():       # fp16: steps skipped for overflowing gradients (so far) and the scale
            metrics.update({"train/skipped_steps": self.skipped_steps, "train/loss_scale": self.scaler.get_scale()})
        if getattr(self.train_data, "corrupt_total", 0):
            metrics["data/corrupt_samples_epoch"] = self.train_data.corrupt_total
        self.metrics.write(self.step, metrics, epoch=self.epoch)
        loss = metrics.get("train/loss", float("nan"))
        self.progress.update(1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.0f}")
        if self.progress.lines and self.dist.is_main:
            log.info("step %d/%d loss %.4f lr %.2e %.0f samples/s", self.step, self.total_steps, loss, lr,
                     samples_per_s)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
