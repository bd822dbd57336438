"""Zero-shot, retrieval, linear-probe and perplexity evaluation inside training.

``build_eval_hooks(cfg)`` returns the hooks the trainer calls every ``cfg.eval.every_steps`` steps:
``hook(task, step) -> {"zeroshot/top1": ..., "retrieval/text_to_image_R@1": ..., "probe/top1": ...,
"perplexity/ppl": ...}`` (the same metrics as ``mmfm eval compare``). The folder / data
are checked when the hooks are built, so a wrong path fails before training starts, not at step N.

Hooks run on every rank (see docs/architecture.md section 7) and share the work: rank ``r`` of ``W`` builds the
text classifier for classes ``r, r + W, ...`` and encodes images ``r, r + W, ...``; the pieces are gathered and
the counts summed, so every rank returns the dict one process would, and no rank idles at a collective for
the length of the whole evaluation (``train.dist_timeout_minutes``). The text classifier is recomputed on
each call, since the weights change.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from mmfm.config import ConfigError
from mmfm.data.ranks import all_gather_object as _gather, rank_world as _world


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
        from .zeroshot.folder import scan_folder
        from .zeroshot.templates import load_templates
        self.spec = scan_folder(folder, classnames_file=classnames, max_samples=max_samples)
        if not self.spec.labelled:
            raise ConfigError(f"eval.zeroshot_folder: {folder} has no class subfolders, so it cannot be scored")
        self.templates = load_templates(templates)[1]
        self.batch_size, self.workers = batch_size, workers

    def __call__(self, task, step: int) -> dict:
        from .zeroshot.classify import share_counts
        from .zeroshot.metrics import counts_metrics
        rank, world = _world()
        model = _clip_model(task)
        with _eval_mode(model):
            weights = self._classifier(model, rank, world)
            counts = share_counts(model, self.spec, weights, share=(rank, world), batch_size=self.batch_size,
                                  workers=self.workers)
        parts = _gather(counts)
        total = {k: sum(p[k] for p in parts) for k in counts}
        if int(total["confusion"].sum()) == 0:
            raise ConfigError(f"eval.zeroshot_folder: no image in {self.spec.root} could be decoded "
                              f"({total['n_failed']} failed)")
        m = counts_metrics(total)
        out = {"zeroshot/top1": m["top1"], "zeroshot/mean_per_class_recall": m["mean_per_class_recall"],
               "zeroshot/macro_f1": m["macro_f1"]}
        if m.get("top5") is not None:
            out["zeroshot/top5"] = m["top5"]
        return out

    def _classifier(self, model, rank: int, world: int):
        """The (D, C) zero-shot weights, each rank embedding the prompts of every ``world``-th class."""
        import torch

        from .zeroshot.classifier import build_classifier
        names = self.spec.classnames
        mine = list(range(rank, len(names), world))
        part = build_classifier(model, [names[i] for i in mine], self.templates) if mine else None
        pieces = [(cols, w) for cols, w in _gather((mine, part)) if cols]
        weights = torch.empty(pieces[0][1].shape[0], len(names))
        for cols, w in pieces:
            weights[:, cols] = w
        return weights


class RetrievalHook:
    def __init__(self, data: str, max_samples: int | None = None, batch_size: int = 64, workers: int = 0):
        from .retrieval import retrieval_source
        if not (Path(data).exists() or "{" in data):
            raise ConfigError(f"eval.retrieval_data: not found: {data}")
        self.data = retrieval_source(data)          # the training preflight: missing / truncated shards now
        self.max_samples, self.batch_size, self.workers = max_samples, batch_size, workers

    def __call__(self, task, step: int) -> dict:
        from .retrieval import embed_share, merge_shares, recall_at_k
        rank, world = _world()
        model = _clip_model(task)
        with _eval_mode(model):
            share = embed_share(model, self.data, share=(rank, world), batch_size=self.batch_size,
                                workers=self.workers, max_samples=self.max_samples, progress=False)
        img, txt, owner, _ = merge_shares(_gather(share), getattr(self.data, "source", self.data))
        return {f"retrieval/{k}": v for k, v in recall_at_k(img, txt, owner).items()}


class LinearProbeHook:
    """A linear probe on frozen image features (``mmfm.eval.zeroshot.probe``): every rank embeds its share of the train
    and test images, the features are gathered in folder order and every rank fits the same seeded probe."""

    def __init__(self, train: str, test: str, max_samples: int | None = None, batch_size: int = 64,
                 workers: int = 0):
        from .zeroshot.folder import scan_folder
        self.train, self.test = (scan_folder(f, max_samples=max_samples) for f in (train, test))
        for key, spec in (("eval.linear_probe_train", self.train), ("eval.linear_probe_test", self.test)):
            if not spec.labelled:
                raise ConfigError(f"{key}: {spec.root} has no class subfolders, so it cannot be scored")
        if list(self.train.classes) != list(self.test.classes):
            raise ConfigError(f"eval.linear_probe_train {train} has classes {self.train.classes}, but "
                              f"{test} has {self.test.classes}")
        self.batch_size, self.workers = batch_size, workers

    def _features(self, model, spec, share):
        import numpy as np
        import torch

        from .zeroshot.probe import folder_features
        parts = _gather(folder_features(model, spec, share=share, batch_size=self.batch_size,
                                        workers=self.workers))
        parts = [p for p in parts if len(p[2])]
        if not parts:
            raise ConfigError(f"linear probe: no image in {spec.root} could be decoded")
        pos = np.concatenate([p[2] for p in parts])
        order = np.argsort(pos, kind="stable")
        return torch.cat([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order]

    def __call__(self, task, step: int) -> dict:
        from .zeroshot.probe import linear_probe
        share = _world()
        model = _clip_model(task)
        with _eval_mode(model):
            tx, ty = self._features(model, self.train, share)
            ex, ey = self._features(model, self.test, share)
        m = linear_probe(tx, ty, ex, ey, len(self.test.classes))
        return {"probe/top1": m["top1"], "probe/mean_per_class_recall": m["mean_per_class_recall"]}


class PerplexityHook:
    """Perplexity per token of a captioner on held-out captions; rank r scores items r, r + W, ... and the
    summed NLL and token counts are gathered, so every rank returns the one-process figure."""

    def __init__(self, data: str, max_samples: int | None = None, batch_size: int = 64):
        from .captioning.data import read_caption_data
        self.items = read_caption_data(data, max_samples)
        self.batch_size = batch_size

    def __call__(self, task, step: int) -> dict:
        from .captioning.perplexity import caption_nll, perplexity
        rank, world = _world()
        model = _clip_model(task)
        mine = self.items[rank::world]
        part = caption_nll(model, mine, batch_size=self.batch_size) if mine else {"nll": [], "tokens": []}
        parts = _gather((sum(part["nll"]), sum(part["tokens"])))
        return {"perplexity/ppl": perplexity([p[0] for p in parts], [p[1] for p in parts])}


def build_eval_hooks(cfg) -> list:
    """Hooks for ``cfg.eval.zeroshot_folder``, ``retrieval_data``, ``linear_probe_train`` (CLIP models) and
    ``perplexity_data`` (captioners)."""
    e = cfg.eval
    kind = getattr(getattr(cfg, "model", None), "kind", "clip")
    clip_keys = [k for k in ("zeroshot_folder", "retrieval_data", "linear_probe_train") if getattr(e, k)]
    if clip_keys and kind != "clip":
        raise ConfigError(f"eval.{clip_keys[0]}: zero-shot/retrieval/probe evaluation needs a CLIP model, but "
                          f"model.kind is {kind!r}")
    if e.perplexity_data and kind != "captioner":
        raise ConfigError(f"eval.perplexity_data: perplexity needs a captioner, but model.kind is {kind!r}")
    hooks: list = []
    if e.zeroshot_folder:
        hooks.append(ZeroShotHook(e.zeroshot_folder, e.zeroshot_templates, e.zeroshot_classnames, e.max_samples,
                                  e.batch_size, e.workers))
    if e.retrieval_data:
        hooks.append(RetrievalHook(e.retrieval_data, e.max_samples, e.batch_size, e.workers))
    if e.linear_probe_train:
        test = e.linear_probe_test or e.zeroshot_folder
        if not test:
            raise ConfigError("eval.linear_probe_train: also set eval.linear_probe_test (or eval.zeroshot_folder), "
                              "the folder the probe is scored on")
        hooks.append(LinearProbeHook(e.linear_probe_train, test, e.max_samples, e.batch_size, e.workers))
    if e.perplexity_data:
        hooks.append(PerplexityHook(e.perplexity_data, e.max_samples, e.batch_size))
    return hooks
