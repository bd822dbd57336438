"""Schema of the ``eval:`` section: evaluations run by the trainer's hook every N steps."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    every_steps: int | None = None        # None: only at the end of training
    at_start: bool = False                # evaluate before step 1 (continued pre-training)
    val_loss: bool = True                 # loss on data.val
    zeroshot_folder: str | None = None    # image folder (one subfolder per class)
    zeroshot_templates: str = "simple"
    retrieval_data: str | None = None
    max_samples: int | None = None
