"""Evaluation, by task:

* ``zeroshot/``: zero-shot classification of image folders (``classify``), its text classifier and templates,
  metrics, linear and k-shot probes, the WiSE-FT sweep and the zero-shot report;
* ``captioning/``: the caption and VQA runners, their data, metrics (BLEU/ROUGE-L/CIDEr-D with the PTB tokenizer,
  VQAv2 accuracy) and perplexity;
* ``retrieval``: image <-> text recall@k;
* ``compare/``: ``mmfm eval compare`` (several models with paired bootstrap intervals, or size/latency of
  variants) and its report;
* ``bias/``: per-group audit of a sensitive attribute, its group metrics and output;
* beside them: ``records`` (the one sample reader and "is this shards" rule), ``embedding`` (CLIP encoding),
  ``result`` (``EvalResult``, what every runner returns), ``hooks`` (evaluation inside training), ``html``.

Public entry points (imported lazily, so ``import mmfm.eval`` stays light):

* ``zeroshot_classify(model, folder, ...) -> ZeroShotResult`` and ``build_classifier(model, classnames, templates)``
* ``retrieval_evaluate(model, data, ...) -> EvalResult`` and ``recall_at_k(image_emb, text_emb, text_owner)``
* ``scan_folder(root, labels=None, classnames_file=None) -> FolderSpec``; ``load_templates(name_or_file)``
* ``write_report(result, out_dir)``, ``write_predictions(result, path)``
* ``build_eval_hooks(cfg) -> list[hook(task, step) -> dict]``
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "zeroshot_classify": "zeroshot.classify", "ZeroShotResult": "zeroshot.classify",
    "build_classifier": "zeroshot.classifier", "classification_metrics": "zeroshot.metrics",
    "retrieval_evaluate": "retrieval", "recall_at_k": "retrieval",
    "scan_folder": "zeroshot.folder", "FolderSpec": "zeroshot.folder",
    "load_templates": "zeroshot.templates",
    "write_report": "zeroshot.report", "write_predictions": "zeroshot.report",
    "build_eval_hooks": "hooks",
    "EvalResult": "result",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
