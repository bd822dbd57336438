"""Rendering a bias report (the ``EvalResult`` of :func:`mmfm.eval.bias.audit.bias_report`): the table as text and
HTML, the bar chart with 95% intervals, and the files ``bias.json``, ``bias.md``, ``bias.png`` and
``predictions.jsonl`` (each written atomically)."""
from __future__ import annotations

import io
import os
from pathlib import Path

from mmfm.config import atomic_write

from ..result import EvalResult, write_json, write_jsonl
from .metrics import CAPTION_METRICS

__all__ = ["format_table", "bias_table_html", "write_bias_report"]


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def table_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    report = result.summary()
    head = ["group", "n"]
    zs, cap = report.get("zeroshot"), report.get("caption")
    if zs:
        head += ["zero-shot top-1 %", "95% CI"]
    if cap:
        head += list(CAPTION_METRICS)
    rows = []
    for g in report["groups"]:
        row = [g, str(report["n_per_group"][g])]
        if zs:
            pg = zs["per_group"][g]
            row += [_fmt(pg["top1"], True), f"{100 * pg['ci95'][0]:.1f}-{100 * pg['ci95'][1]:.1f}"]
        if cap:
            row += [_fmt(cap["per_group"][g][m]) for m in CAPTION_METRICS]
        rows.append(row)
    gap = ["best - worst", ""]
    if zs:
        gz = zs["gap"]
        gap += [f"{100 * gz['gap']:.1f} ({gz['best']} vs {gz['worst']})", ""]
    if cap:
        gap += [f"{cap['gap'][m]['gap']:.3f} ({cap['gap'][m]['best']} vs {cap['gap'][m]['worst']})"
                for m in CAPTION_METRICS]
    rows.append(gap)
    return head, rows


def format_table(result: EvalResult) -> str:
    head, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def bias_table_html(result: EvalResult) -> str:
    """The table as an HTML fragment (for the demo report)."""
    import html

    from ..html import table
    report = result.summary()
    head, rows = table_rows(result)
    note = (f"Attribute <code>{html.escape(report['attribute'])}</code>, {report['n_samples']} images"
            + (f", matched by <code>{html.escape(report['match_by'])}</code> ({report.get('matched_values')} "
               f"items in every group)" if report.get("match_by") else "") + ".")
    return table(head, rows, cls="bias") + f"<p>{note}</p>"


def _plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("zeroshot", "caption") if p in report]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.6), squeeze=False)
    groups = report["groups"]
    for ax, part in zip(axes[0], parts):
        pg = report[part]["per_group"]
        if part == "zeroshot":
            vals = [100 * (pg[g]["top1"] or 0) for g in groups]
            err = [[v - 100 * pg[g]["ci95"][0] for v, g in zip(vals, groups)],
                   [100 * pg[g]["ci95"][1] - v for v, g in zip(vals, groups)]]
            ax.bar(groups, vals, yerr=err, capsize=3, color="#4477aa")
            ax.set_ylabel("zero-shot top-1 (%)")
        else:
            ax.bar(groups, [pg[g]["CIDEr-D"] or 0 for g in groups], color="#cc6677")
            ax.set_ylabel("CIDEr-D")
        what = "zero-shot top-1 (95% interval)" if part == "zeroshot" else "caption CIDEr-D"
        sizes = sorted({pg[g]["n"] for g in groups})
        per = f"{sizes[0]} images per group" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]} images per group"
        ax.set_title(f"{what} by {report['attribute']}\n{per}", fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_bias_report(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out / "bias.json", result.summary()),
             "table": atomic_write(out / "bias.md", format_table(result) + "\n"),
             "predictions": write_jsonl(out / "predictions.jsonl", result.predictions)}
    _plot(result.summary(), out / "bias.png")
    paths["plot"] = out / "bias.png"
    result.paths.update(paths)
    return paths


