"""``mmfm eval wise-ft``: zero-shot accuracy of a run's WiSE-FT weights over a sweep of alpha, in one process.

The run and its initial weights (``train.init_from``) load once (``mmfm.models.wiseft.WiseFT``); the image folder is
scanned once; each alpha sets the weights in place and classifies the folder (no classifier cache: the text
weights change with alpha).
"""
from __future__ import annotations

import os

from ..result import EvalResult

__all__ = ["wise_ft_sweep", "format_sweep", "parse_alphas"]


def parse_alphas(text: str) -> list[float]:
    """``"0,0.25,0.5"`` -> [0.0, 0.25, 0.5]; every value in [0, 1]."""
    from mmfm.config import ConfigError

    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError:
        raise ConfigError(f"--alphas: expected comma-separated numbers in [0, 1], got {text!r}") from None
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ConfigError(f"--alphas: expected comma-separated numbers in [0, 1], got {text!r}")
    return alphas


def wise_ft_sweep(run: str | os.PathLike, folder: str | os.PathLike, alphas: list[float], *,
                  templates: str | list[str] = "openai", init_from: str | None = None, device: str | None = None,
                  batch_size: int = 64, max_samples: int | None = None, progress: bool = False) -> EvalResult:
    """Zero-shot top-1 / top-5 / mean per-class recall of ``run`` at each WiSE-FT ``alpha`` on an image folder
    (class subfolders). ``metrics``: ``{"results": [...], "best": {...}}``; ``meta``: run, init_from, data,
    n_images, templates."""
    from mmfm.models.device import resolve_device
    from mmfm.models.wiseft import WiseFT

    from .classify import zeroshot_classify
    from .folder import scan_folder

    spec = scan_folder(folder, max_samples=max_samples)
    if not spec.labelled:
        from mmfm.config import ConfigError
        raise ConfigError(f"{folder}: the WiSE-FT sweep scores accuracy, so it needs class subfolders")
    w = WiseFT(run, resolve_device(device), init_from)
    results = []
    for alpha in alphas:
        res = zeroshot_classify(w.at(alpha), spec, templates=templates, batch_size=batch_size, workers=0,
                                use_cache=False, progress=progress)
        m = res.metrics
        results.append({"alpha": float(alpha), "top1": m["top1"], "top5": m.get("top5"),
                        "mean_per_class_recall": m.get("mean_per_class_recall"), "n": res.meta.get("n_samples")})
    best = max(results, key=lambda r: r["top1"])
    templates = templates if isinstance(templates, str) else list(templates)
    return EvalResult(metrics={"results": results, "best": best},
                      meta={"run": str(run), "init_from": w.init_from, "data": str(folder),
                            "n_images": len(spec.paths), "templates": templates})


def format_sweep(result: EvalResult) -> str:
    res = result.summary()
    lines = [f"WiSE-FT of {res['run']} with {res['init_from']} on {res['data']} ({res['n_images']} images)",
             f"{'alpha':>6}  {'top1':>7}  {'top5':>7}  {'mean recall':>11}"]
    for r in res["results"]:
        top5 = "-" if r["top5"] is None else f"{r['top5']:.4f}"
        lines.append(f"{r['alpha']:>6.2f}  {r['top1']:>7.4f}  {top5:>7}  {r['mean_per_class_recall']:>11.4f}")
    lines.append(f"best: alpha {res['best']['alpha']:.2f} (top1 {res['best']['top1']:.4f})")
    return "\n".join(lines)
