"""DataLoader worker set-up shared by training and evaluation loaders."""
from __future__ import annotations

import functools
import os
from typing import get_args

from mmfm.config.data import WorkerPriority

PRIORITIES = get_args(WorkerPriority)


def resolve_priority(priority: str, device_type: str, world: int = 1) -> str:
    """``auto`` -> ``idle`` when one process computes on the CPU, else ``normal``.

    With several ranks on one machine a starved worker would hold up every rank's collectives (a 2-rank gloo
    test timed out waiting for a send), and on CUDA the cores are free anyway, so both keep ``normal``."""
    if priority not in PRIORITIES:
        raise ValueError(f"data.worker_priority: {priority!r} is not one of {', '.join(PRIORITIES)}")
    if priority != "auto":
        return priority
    return "idle" if device_type == "cpu" and world == 1 else "normal"


def _lower(priority: str, worker_id: int) -> None:
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:          # a container that forbids it: the nearest thing is nice 19
            pass
    os.nice(19)                  # capped at 19 by the kernel


def lower_priority(priority: str):
    """A ``worker_init_fn`` that lowers a loader worker's CPU priority (None for ``normal``/``auto``).

    On a CPU-bound trainer the compute threads use every core; a loader worker at the same priority preempts
    one of them in the middle of a multi-threaded matmul, and the other threads wait for it at the next
    barrier. ``low`` is nice 19. ``idle`` is Linux's SCHED_IDLE (nice 19 elsewhere): the worker never preempts
    a compute thread and runs when the trainer blocks waiting for a batch, when every core is the loader's.
    On 2 cores (bench/train.py, 2 workers, medians of 2 alternating runs) end-to-end samples/s went 137.8 at
    nice 19 -> 147.6 idle (and 152 -> 164 from nice 0 to nice 19 before); zero-shot 11.4 -> 12.2 images/s."""
    if priority not in ("low", "idle"):
        return None
    return functools.partial(_lower, priority)
