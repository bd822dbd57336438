"""What a reader hands the build: the items in input order, their count when cheap to know, and class names.

Readers (``readers.py``, ``emoji.py``) return a ``Source``; the build plan numbers its items and routes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Source:
    items: Iterator[dict]
    total: int | None = None                 # the item count, when cheap to know (progress bar, retry)
    classes: list[str] = field(default_factory=list)
    shuffle_seed: int | None = None          # set when the input order was shuffled
    stage: Any = None                        # a temporary folder kept while the items are read (remote input)

    def __post_init__(self) -> None:
        self.classes = list(self.classes or [])
