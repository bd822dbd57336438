"""Schema of the ``eval:`` section: evaluations run by the trainer's hook every N steps."""
from __future__ import annotations

from dataclasses import dataclass

from .core import ranged


@dataclass
class EvalConfig:
    every_steps: int | None = ranged(None, ge=1)   # None: only at the end of training
    at_start: bool = False                # evaluate before step 1 (continued pre-training)
    val_loss: bool = True                 # loss on data.val
    zeroshot_folder: str | None = None    # image folder (one subfolder per class)
    zeroshot_templates: str = "simple"    # simple | openai | openai-simple | a file
    zeroshot_classnames: str | None = None  # classnames file for zeroshot_folder (default: tidied folder names)
    retrieval_data: str | None = None     # shard folder / .tar / CSV / JSONL with captions
    linear_probe_train: str | None = None   # image folder: train a linear probe on frozen image features (CLIP)
    linear_probe_test: str | None = None    # image folder with the same classes to score it (default: zeroshot_folder)
    perplexity_data: str | None = None      # held-out captions (shards / CSV / JSONL): perplexity per token (captioner)
    max_samples: int | None = ranged(None, ge=1)   # cap images per evaluation (an even subsample)
    batch_size: int = ranged(64, ge=1)             # eval batch size for zero-shot / retrieval
    workers: int = ranged(0, ge=0)                 # DataLoader workers for zero-shot / retrieval
