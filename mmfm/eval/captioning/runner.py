"""What the caption and VQA runners share: batching, the provenance every result records (version, checkpoint,
data, split, decoding settings) and the limit on images that fail to decode.

Images that fail to decode are left out of the score, counted beside it (``skipped``) and listed (``failures``);
above ``max_skipped`` (default 1%) of the samples the run fails with :class:`TooManySkipped`, so that a partial
evaluation cannot pass for a full one.
"""
from __future__ import annotations

from pathlib import Path

from mmfm.config import ConfigError

from ..result import EvalResult

__all__ = ["MAX_SKIPPED", "TooManySkipped", "check_max_skipped", "account_skipped", "batches", "provenance"]

MAX_SKIPPED = 0.01      # default: at most 1% of the samples may be left out of a score


class TooManySkipped(RuntimeError):
    """More samples failed to decode than ``max_skipped`` allows. ``result`` holds the partial evaluation."""

    def __init__(self, message: str, result: EvalResult):
        super().__init__(message)
        self.result = result


def check_max_skipped(max_skipped: float) -> float:
    if not 0.0 <= float(max_skipped) <= 1.0:
        raise ConfigError(f"max_skipped: must be a share in [0, 1], got {max_skipped}")
    return float(max_skipped)


def account_skipped(result: EvalResult, total: int, max_skipped: float, data: str, noun: str) -> EvalResult:
    """Put ``skipped`` beside the score; raise :class:`TooManySkipped` when its share is above the limit."""
    failures = result.meta["failures"]
    n = len(failures)
    result.meta["skipped"] = {"count": n, "of": total, "frac": n / total, "max_frac": max_skipped}
    if n / total > max_skipped:
        examples = "; ".join(f"{f['image']}: {f['error']}" for f in failures[:3])
        raise TooManySkipped(f"{data}: {n} of {total} {noun} ({n / total:.1%}) failed to decode and were left out "
                             f"of the score, more than the allowed {max_skipped:.1%} (max_skipped / --max-skipped); "
                             f"e.g. {examples}", result)
    return result


def batches(items: list[dict], size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def provenance(model, data: str, split: str | None, gen, extra: dict) -> dict:
    from mmfm.generate import settings_dict
    from mmfm.version import __version__
    return {"mmfm_version": __version__, "checkpoint": getattr(model, "checkpoint_path", None), "data": str(data),
            "split": split or Path(str(data).rstrip("/")).stem, "decoding": settings_dict(gen, model), **extra}
