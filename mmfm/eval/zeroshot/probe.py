"""Linear probe and few-shot probes on frozen image features, as CLIP_benchmark's ``linear_probe`` does them.

The protocol (LAION-AI/CLIP_benchmark ``clip_benchmark/metrics/linear_probe.py``): L2-normalised image
embeddings of a train split and a test split; for a k-shot probe, a seeded permutation of the train rows and
the first k of every class (an error when a class has fewer); one ``nn.Linear`` trained with cross-entropy by
AdamW (lr 0.1, weight decay 0, 10 epochs, batch 64 - CLIP_benchmark's defaults) under a cosine schedule without
warm-up; then top-1, top-5 and mean per-class recall on the whole test split. Everything here runs on the CPU
in float32 and is deterministic for a seed.
"""
from __future__ import annotations

import math

import numpy as np

from mmfm.config import ConfigError

__all__ = ["folder_features", "fewshot_indices", "train_probe", "linear_probe"]


def folder_features(model, spec, *, share=(0, 1), batch_size: int = 64, workers: int = 0, progress: bool = False):
    """Normalised image embeddings of the images ``share=(rank, world)`` owns in an image-folder ``spec``:
    ``(features (N, D) float32 CPU, targets (N,), positions (N,) in spec order)``; undecodable images are left
    out."""
    import torch
    from dataclasses import replace

    from .classify import encode_batches, folder_loader
    rank, world = share
    mine = list(range(rank, len(spec.paths), world))
    if not mine:
        return torch.zeros(0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    part = replace(spec, paths=[spec.paths[i] for i in mine], targets=[spec.targets[i] for i in mine], skipped=[])
    loader, finish = folder_loader(model, part, batch_size=batch_size, workers=workers, world=world)
    feats, indices, _ = encode_batches(model, loader, finish, progress=progress, total=len(loader),
                                       root=spec.root, require=False)
    if feats is None:
        return torch.zeros(0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.asarray([mine[i] for i in indices], dtype=np.int64)
    return feats.float(), np.asarray([spec.targets[mine[i]] for i in indices], dtype=np.int64), pos


def fewshot_indices(targets: np.ndarray, k: int | None, seed: int = 0, classnames=None) -> np.ndarray:
    """Rows of a k-shot train set: a seeded permutation, the first ``k`` of every class (all rows when ``k`` is
    None). A class with fewer than ``k`` rows is an error naming it, as CLIP_benchmark refuses such a run."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(targets), generator=gen).numpy()
    if k is None:
        return perm
    counts: dict[int, int] = {}
    rows = []
    for p in perm:
        c = int(targets[p])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            rows.append(p)
    short = {c: n for c, n in counts.items() if n < k}
    if short:
        c, n = next(iter(short.items()))
        name = classnames[c] if classnames else c
        raise ConfigError(f"{k}-shot probe: class {name!r} has only {n} training image(s)")
    return np.asarray(rows, dtype=np.int64)


def train_probe(x, y, n_classes: int, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 64,
                weight_decay: float = 0.0, seed: int = 0):
    """A linear classifier ``nn.Linear(D, n_classes)`` on features ``x`` (N, D) and labels ``y`` (N,)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    probe = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():                       # seeded init (nn.Linear's own rule, from our generator)
        bound = 1 / math.sqrt(x.shape[1])
        probe.weight.uniform_(-bound, bound, generator=gen)
        probe.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(x) / batch_size)
    steps, step = epochs * per_epoch, 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for s in range(0, len(x), batch_size):
                for g in opt.param_groups:         # cosine, no warm-up (CLIP_benchmark's cosine_lr)
                    g["lr"] = 0.5 * (1 + math.cos(math.pi * step / steps)) * lr
                rows = order[s:s + batch_size]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(probe(x[rows]), y[rows]).backward()
                opt.step()
                step += 1
    return probe.eval()


def linear_probe(train_x, train_y, test_x, test_y, n_classes: int, *, k: int | None = None, seed: int = 0,
                 lr: float = 0.1, epochs: int = 10, batch_size: int = 64, classnames=None) -> dict:
    """Train on (the k-shot subset of) the train features, score the test features. Returns
    ``{"top1", "top5" (None under 5 classes), "mean_per_class_recall", "macro_f1", "pred" (N,), "k", ...}``."""
    import torch

    from .metrics import classification_metrics
    if len(train_x) == 0 or len(test_x) == 0:
        raise ConfigError("linear probe: no decodable train or test image")
    rows = fewshot_indices(np.asarray(train_y), k, seed, classnames)
    probe = train_probe(np.asarray(train_x)[rows], np.asarray(train_y)[rows], n_classes, lr=lr, epochs=epochs,
                        batch_size=batch_size, seed=seed)
    with torch.no_grad():
        logits = probe(torch.as_tensor(np.asarray(test_x), dtype=torch.float32))
    m = classification_metrics(logits, np.asarray(test_y), n_classes)
    return {**m, "pred": logits.argmax(1).numpy(), "k": k, "train_rows": len(rows), "test_rows": len(test_x),
            "lr": lr, "epochs": epochs, "batch_size": batch_size, "seed": seed}
