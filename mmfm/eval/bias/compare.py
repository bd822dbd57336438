"""Before and after, side by side: one bias report per model or setting (e.g. a checkpoint, the same checkpoint
with a debiasing projection, a fairness-regularised fine-tune), then one row per setting with the overall score,
the worst group, the best-worst gap with its bootstrap interval and (zero-shot) the equalised-odds gap, so a
mitigation that buys fairness with accuracy shows its price.

``bias_settings(models, debias)`` names the settings (each CLIP model once as is and once per ``debias`` spec);
``bias_compare(settings, data, attribute, **kw)`` runs them; ``format_comparison`` prints the table."""
from __future__ import annotations

from ..result import EvalResult
from .audit import bias_report

__all__ = ["bias_settings", "bias_compare", "combine", "comparison_html", "comparison_rows", "format_comparison"]


def bias_settings(models: list, debias: list[str] | None = None) -> list[tuple[str, object]]:
    """``[(name, model)]``: each model as given; each CLIP model again with every ``debias`` spec attached."""
    from mmfm.models.checkpoint import load as load_model
    from mmfm.models.debias import debias_from_spec

    from ..embedding import model_kind
    out: list[tuple[str, object]] = []
    for m in models:
        out.append((str(m), m))
        if not debias:
            continue
        loaded = load_model(str(m)) if not hasattr(m, "parameters") else m
        if model_kind(loaded) != "clip":
            continue
        for spec in debias:
            out.append((f"{m} + debias({spec})", debias_from_spec(load_model(str(m)), spec)))
    return out


def bias_compare(settings: list[tuple[str, object]], data: str, attribute: str, **kw) -> EvalResult:
    """One :func:`bias_report` per setting; ``metrics``: ``{"settings": {name: report metrics}}``."""
    return combine({name: bias_report([m], data, attribute, **kw) for name, m in settings})


def combine(reports: dict[str, EvalResult]) -> EvalResult:
    """Bias reports of several settings on the same data as one side-by-side result."""
    first = next(iter(reports.values()))
    meta = {**first.meta, "task": "bias_compare", "setting_names": list(reports),
            "seconds": round(sum(r.meta["seconds"] for r in reports.values()), 2)}
    return EvalResult(metrics={"settings": {n: r.metrics for n, r in reports.items()}}, meta=meta,
                      predictions=[{"setting": n, **p} for n, r in reports.items() for p in r.predictions],
                      nested=True)


def comparison_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "part", "overall", "worst group", "best-worst gap [95% bootstrap]", "EO gap", "MaxSkew@k",
            "NDKL"]
    rows = []
    for name, parts in result.metrics["settings"].items():
        for part, v in parts.items():
            bs = v["gap_bootstrap"]
            if part == "zeroshot":
                rows.append([name, "zero-shot top-1 %", f"{100 * v['overall']:.1f}",
                             f"{v['worst_group']['group']} {100 * v['worst_group']['value']:.1f}",
                             f"{100 * bs['gap']:.1f} [{100 * bs['ci'][0]:.1f}, {100 * bs['ci'][1]:.1f}]",
                             f"{100 * v['equalized_odds']['equalized_odds_gap']:.1f}",
                             f"{v['retrieval_skew']['MaxSkew']:.3f}", f"{v['retrieval_skew']['NDKL']:.3f}"])
            else:
                g = v["gap"]["CIDEr-D"]
                rows.append([name, "caption CIDEr-D", f"{v['overall']['CIDEr-D']:.3f}",
                             f"{g['worst']} {g['worst_value']:.3f}",
                             f"{bs['gap']:.3f} [{bs['ci'][0]:.3f}, {bs['ci'][1]:.3f}]", "-", "-", "-"])
    return head, rows


def format_comparison(result: EvalResult) -> str:
    head, rows = comparison_rows(result)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def comparison_html(result: EvalResult) -> str:
    from ..html import table
    head, rows = comparison_rows(result)
    return table(head, rows, cls="bias")
