"""Training in a fresh process, for jobs that train several models one after another."""
from __future__ import annotations

import multiprocessing as mp
import queue as q
from pathlib import Path

__all__ = ["train_in_child"]


def _child(cfg, results) -> None:
    from mmfm.train.builder import train_experiment
    result = train_experiment(cfg)
    results.put({k: v for k, v in result.items() if isinstance(v, (str, int, float, bool, type(None)))})


def train_in_child(cfg, out_dir: Path) -> dict:
    """``train_experiment(cfg)`` in a spawned process: a job that trains several models in turn (the general job's
    leave-one-source-out arms) keeps its peak memory at one run's, not at what the runs before left in its heap.
    A child that dies without a result is named with its exit code; the wait checks on the child every 5 s."""
    spawn = mp.get_context("spawn")
    results = spawn.Queue()
    child = spawn.Process(target=_child, args=(cfg, results), name=f"train {Path(out_dir).name}")
    child.start()
    try:
        while True:
            try:
                result = results.get(timeout=5)
                break
            except q.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"training {out_dir} ended without a result (exit code {child.exitcode})")
        child.join(timeout=300)
        return result
    finally:
        if child.is_alive():      # interrupted, or stuck after its result: no run left going behind the job
            child.terminate()
            child.join(timeout=30)
