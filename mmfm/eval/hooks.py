"""Zero-shot and retrieval evaluation inside training.

``build_eval_hooks(cfg)`` returns the hooks the trainer calls every ``cfg.eval.every_steps`` steps:
``hook(task, step) -> {"zeroshot/top1": ..., "retrieval/text_to_image_R@1": ...}``. The folder / data
are checked when the hooks are built, so a wrong path fails before training starts, not at step N.

Hooks run on every rank (see docs/architecture.md section 7); the work is done on rank 0 only and the
other ranks return ``{}`` at once (rank 0's dict is the one logged). The text classifier is recomputed
on each call, since the weights change.
"""
from __future__ import annotations

from pathlib import Path

from mmfm.config import ConfigError


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _clip_model(task):
    """The CLIP model inside a (possibly DDP- or compile-wrapped) task, with its tokenizer."""
    task = getattr(task, "module", task)
    task = getattr(task, "_orig_mod", task)
    model = getattr(task, "model", task)
    model = getattr(model, "_orig_mod", model)
    if getattr(model, "tokenizer", None) is None and getattr(task, "tokenizer", None) is not None:
        model.tokenizer = task.tokenizer
    return model


class ZeroShotHook:
    def __init__(self, folder: str, templates: str = "simple", classnames: str | None = None,
                 max_samples: int | None = None, batch_size: int = 64, workers: int = 0):
        from .folder import scan_folder
        from .templates import load_templates
        self.spec = scan_folder(folder, classnames_file=classnames, max_samples=max_samples)
        if not self.spec.labelled:
            raise ConfigError(f"eval.zeroshot_folder: {folder} has no class subfolders, so it cannot be scored")
        self.templates = load_templates(templates)[1]
        self.batch_size, self.workers = batch_size, workers

    def __call__(self, task, step: int) -> dict:
        if _rank() != 0:
            return {}
        from .zeroshot import zeroshot_classify
        res = zeroshot_classify(_clip_model(task), self.spec, templates=self.templates, batch_size=self.batch_size,
                                workers=self.workers, use_cache=False, progress=False)
        m = res.metrics
        out = {"zeroshot/top1": m["top1"], "zeroshot/mean_per_class_recall": m["mean_per_class_recall"]}
        if m.get("top5") is not None:
            out["zeroshot/top5"] = m["top5"]
        return out


class RetrievalHook:
    def __init__(self, data: str, max_samples: int | None = None, batch_size: int = 64, workers: int = 0):
        from .retrieval import is_shard_source, read_table, shard_urls
        if not (Path(data).exists() or "{" in data):
            raise ConfigError(f"eval.retrieval_data: not found: {data}")
        if is_shard_source(data):
            shard_urls(data)                       # validates the folder / manifest now
            self.data = data
        else:
            self.data = read_table(data)
        self.max_samples, self.batch_size, self.workers = max_samples, batch_size, workers

    def __call__(self, task, step: int) -> dict:
        if _rank() != 0:
            return {}
        from .retrieval import embed_pairs, recall_at_k
        model = _clip_model(task)
        was_training = model.training
        model.eval()
        try:
            img, txt, owner, _ = embed_pairs(model, self.data, batch_size=self.batch_size, workers=self.workers,
                                             max_samples=self.max_samples, progress=False)
        finally:
            model.train(was_training)
        return {f"retrieval/{k}": v for k, v in recall_at_k(img, txt, owner).items()}


def build_eval_hooks(cfg) -> list:
    """Hooks for ``cfg.eval.zeroshot_folder`` and ``cfg.eval.retrieval_data`` (CLIP models only)."""
    e = cfg.eval
    if not (e.zeroshot_folder or e.retrieval_data):
        return []
    kind = getattr(getattr(cfg, "model", None), "kind", "clip")
    if kind != "clip":
        key = "eval.zeroshot_folder" if e.zeroshot_folder else "eval.retrieval_data"
        raise ConfigError(f"{key}: zero-shot/retrieval evaluation needs a CLIP model, but model.kind is {kind!r}")
    hooks: list = []
    if e.zeroshot_folder:
        hooks.append(ZeroShotHook(e.zeroshot_folder, e.zeroshot_templates, e.zeroshot_classnames, e.max_samples,
                                  e.batch_size, e.workers))
    if e.retrieval_data:
        hooks.append(RetrievalHook(e.retrieval_data, e.max_samples, e.batch_size, e.workers))
    return hooks
