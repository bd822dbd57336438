"""Evaluation: zero-shot classification, retrieval R@k, reports and trainer hooks.

Public entry points (imported lazily, so ``import mmfm.eval`` stays light):

* ``zeroshot_classify(model, folder, ...) -> ZeroShotResult`` and ``build_classifier(model, classnames, templates)``
* ``retrieval_evaluate(model, data, ...) -> dict`` and ``recall_at_k(image_emb, text_emb, text_owner)``
* ``scan_folder(root, labels=None, classnames_file=None) -> FolderSpec``; ``load_templates(name_or_file)``
* ``write_report(result, out_dir)``, ``write_predictions(result, path)``
* ``build_eval_hooks(cfg) -> list[hook(task, step) -> dict]``
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "zeroshot_classify": "zeroshot", "build_classifier": "zeroshot", "ZeroShotResult": "zeroshot",
    "classification_metrics": "zeroshot",
    "retrieval_evaluate": "retrieval", "recall_at_k": "retrieval",
    "scan_folder": "folder", "FolderSpec": "folder",
    "load_templates": "templates",
    "write_report": "report", "write_predictions": "report",
    "build_eval_hooks": "hooks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
