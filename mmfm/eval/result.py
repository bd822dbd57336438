"""What every evaluation runner returns, and the files it is written to.

``EvalResult`` holds the scores (``metrics``), how they were made (``meta``: the task, backend, model, data,
split, sample counts, decoding settings, timing, ...), the per-sample rows (``predictions``) and the files written
(``paths``). ``summary()`` is the JSON record a runner's summary file holds: every score and every piece of
``meta``, never the per-sample rows. Results whose record keeps the scores under one ``"metrics"`` key (caption,
VQA) set ``nested``; the others put them beside the meta.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmfm.config import atomic_write

__all__ = ["EvalResult", "backend", "write_json", "write_jsonl", "write_eval"]


@dataclass(kw_only=True)
class EvalResult:
    metrics: dict                                         # the scores
    meta: dict                                            # how they were made
    predictions: list = field(default_factory=list)       # one row per sample (never in the summary)
    nested: bool = False                                  # summary: {"task", "metrics": {...}, ...} or flat
    paths: dict = field(default_factory=dict)             # name -> file written

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    def summary(self) -> dict:
        """The JSON record: the meta with the scores beside it (flat) or under ``"metrics"`` right after the
        task (nested)."""
        if not self.nested:
            return {**self.metrics, **self.meta}
        out = {k: v for k, v in self.meta.items() if k == "task"}
        out["metrics"] = self.metrics
        out.update((k, v) for k, v in self.meta.items() if k != "task")
        return out


def backend() -> str:
    """``mmfm VERSION (torch VERSION)``: what computed a result."""
    import torch

    from mmfm.version import __version__
    return f"mmfm {__version__} (torch {torch.__version__})"


def write_json(path, obj) -> Path:
    """``obj`` as indented UTF-8 JSON, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path, rows) -> Path:
    """One JSON object per line, written atomically."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_eval(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``OUT/metrics.json`` (the summary) and ``OUT/predictions.jsonl``, written atomically; recorded in
    ``result.paths``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": write_json(out / "metrics.json", result.summary()),
             "predictions": write_jsonl(out / "predictions.jsonl", result.predictions)}
    result.paths.update(paths)
    return paths
