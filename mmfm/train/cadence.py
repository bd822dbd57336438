"""What is due after an optimizer step, decided in one place: logging, evaluation, a checkpoint, the NaN check and
stopping (``Cadence.at(step) -> Due``).

* log: every ``train.log_every`` steps and at the last step;
* eval: when the evaluator says (``Evaluator.due``), never at the last step (the end of the run evaluates once);
* checkpoint: when the checkpointer says (``Checkpointer.due`` by steps, ``Checkpointer.late`` by rank 0's clock),
  never at the last step (the end of the run saves);
* NaN check: whenever one of those runs, and every step on the CPU (on CUDA, reading the loss flag waits for the
  GPU, so it is read every ``log_every`` steps); a NaN/inf loss on any rank raises ``NonFiniteLoss`` before
  anything is saved, so ``latest`` stays the last good checkpoint;
* stop: SIGTERM (preemption, scancel, torchrun shutting down) or SIGINT (Ctrl-C) reached any rank while
  ``listen()`` is active: the trainer checkpoints and stops, within one step.

One small host-side all-reduce per step (``distributed.any_flags``) agrees the flags, so every rank does the same
thing at the same step.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass

from . import distributed as D

log = logging.getLogger("mmfm.train")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; training stopped without writing a checkpoint."""


@dataclass(frozen=True)
class Due:
    log: bool = False
    eval: bool = False
    checkpoint: bool = False
    stop: bool = False


class Cadence:
    def __init__(self, tc, total_steps: int, device_type: str, checkpointer, evaluator):
        self.total, self.log_every = total_steps, tc.log_every
        self.nan_every = 1 if device_type == "cpu" else max(tc.log_every, 1)   # reading the NaN flag syncs CUDA
        self.checkpointer, self.evaluator = checkpointer, evaluator
        self.stop_signal: int | None = None

    def at(self, step: int, epoch: int, bad) -> Due:
        """Collective: what is due after optimizer step ``step``. ``bad``: the trainer's 0-dim bool tensor, set
        once a loss was not finite (read only when the NaN check is due)."""
        last = step >= self.total
        log_due = (bool(self.log_every) and step % self.log_every == 0) or last
        ckpt = not last and self.checkpointer.due(step)
        nan = step % self.nan_every == 0 or log_due or ckpt
        stop, late = self.agree(step, epoch, bad if nan else None, late=not last and self.checkpointer.late())
        if late and not nan and not stop:
            stop = self.agree(step, epoch, bad)[0]      # a checkpoint by the clock: never save NaN weights
        return Due(log=log_due, eval=not last and self.evaluator.due(step), checkpoint=ckpt or late, stop=stop)

    def agree(self, step: int, epoch: int, bad=None, late: bool = False) -> tuple[bool, bool]:
        """One all-reduce of host flags (gloo, never waits for the GPU but to read ``bad``): raises NonFiniteLoss
        when ``bad`` is set on any rank; returns (stop, late) as set on any rank."""
        nan, stop, late = D.any_flags([bad is not None and bool(bad.item()), self.stop_signal is not None, late])
        if nan:
            last = self.checkpointer.last
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            msg = (f"loss is NaN/inf at step {step} (epoch {epoch}); stopping without saving. "
                   f"{where}. Resume with --resume latest and a lower train.lr, or check the data.")
            log.error(msg)
            raise NonFiniteLoss(msg)
        return stop, late

    @contextlib.contextmanager
    def listen(self):
        """SIGTERM and SIGINT set ``stop_signal`` while the block runs (outside the main thread, where no handler
        can be installed, nothing changes)."""
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum
