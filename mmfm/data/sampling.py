"""An even subsample: ``n`` of ``total`` items spread over the whole (sorted) list, so a dataset sorted by class or
source keeps its mix. Evaluation's ``max_samples`` caps (zero-shot folders, ``mmfm eval compare``) use it."""
from __future__ import annotations

from typing import Sequence, TypeVar

__all__ = ["even_indices", "even_subsample"]

T = TypeVar("T")


def even_indices(total: int, n: int | None) -> list[int]:
    """Indices ``floor(i * total / n)`` for ``i < n`` (exact integer arithmetic); all of ``range(total)`` when ``n``
    is None, 0 or at least ``total``."""
    if not n or total <= n:
        return list(range(total))
    return [i * total // n for i in range(n)]


def even_subsample(items: Sequence[T], n: int | None) -> list[T]:
    """``n`` items of ``items`` at :func:`even_indices` (all of them when ``n`` is None or larger)."""
    return [items[i] for i in even_indices(len(items), n)]
