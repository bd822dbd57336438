"""What ``mmfm eval compare`` prints and writes. Several models (:mod:`mmfm.eval.compare.suite`):
``compare.json`` (everything), ``compare.csv`` (one row per model, data set and metric) and ``compare.html`` (the
table and a chart: one panel per data set and metric, each model's value, with the paired bootstrap 95% interval of
the difference to the first model), each written atomically. Both modes print an aligned text table
(``format_suite``; ``format_comparison`` for size/latency, :mod:`mmfm.eval.compare.variants`)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from mmfm.config import atomic_write

from ..html import esc, page, png_data_uri, table
from ..result import EvalResult, write_json

__all__ = ["write_compare", "format_suite", "format_comparison", "compare_csv", "compare_html"]

CSV_FIELDS = ("data", "metric", "model", "value", "n", "delta", "ci95_low", "ci95_high", "improved")


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _verdict(r: dict) -> str:
    if r["delta"] is None:
        return "reference"
    return {True: "better", False: "worse", None: "no clear change"}[r["improved"]]


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def aligned(head: list[str], rows: list[list[str]]) -> str:
    """A text table: columns padded to their widest cell, a rule under the header."""
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def compare_csv(result: EvalResult) -> str:
    res = result.summary()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in res["rows"]:
        lo, hi = r["ci95"] or (None, None)
        w.writerow([r["data"], r["metric"], r["model"], r["value"], r["n"], r["delta"], lo, hi,
                    "" if r["delta"] is None else r["improved"]])
    return buf.getvalue()


def format_suite(result: EvalResult) -> str:
    """The comparison as aligned text: one line per data set, metric and model."""
    res = result.summary()
    head = ["data", "metric", "model", "value", "delta vs first", "95% CI", "verdict"]
    rows = [[r["data"], r["metric"], _short(r["model"]), _fmt(r["value"]),
             "-" if r["delta"] is None else f"{r['delta']:+.4f}",
             "-" if r["ci95"] is None else f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]", _verdict(r)]
            for r in res["rows"]]
    return aligned(head, rows)


def format_comparison(result: EvalResult) -> str:
    """The size/latency comparison as aligned text: one line per model."""
    res = result.summary()
    head = ["model", "size MB", "x size", "ms/image", "speedup", res["metric"], "drop"]
    rows = []
    for r in res["rows"]:
        rows.append([r["model"] if len(r["model"]) < 48 else "..." + r["model"][-45:],
                     f"{r['size_bytes'] / 2 ** 20:.2f}", f"{r['size_ratio']:.2f}",
                     f"{r['latency']['ms_per_image']:.2f}", f"{r['speedup']:.2f}x",
                     f"{r['metric']['value']:.4f}", "-" if r["role"] == "original" else f"{r['metric_drop']:+.4f}"])
    return aligned(head, rows)


def chart_panels(res: dict) -> list[tuple[str, str, list[dict]]]:
    """``(data, metric, rows)`` per panel of the chart: one panel per data set and metric, so each metric has
    its own y-axis (a perplexity of 2,952 beside a BLEU-4 of 0.04 would flatten it on a shared one)."""
    panels: dict = {}
    for r in res["rows"]:
        panels.setdefault((r["data"], r["metric"]), []).append(r)
    return [(d, m, rows) for (d, m), rows in panels.items()]


def chart_figure(res: dict):
    """The matplotlib figure: a panel per (data set, metric), a bar per model, error bars = the 95% interval of
    the difference to the first model."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    panels = chart_panels(res)
    models = res["models"]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(3.0, 0.6 * len(models) + 1.6) * cols, 2.8 * nrows),
                             squeeze=False)
    for ax, (data, metric, rows) in zip(axes.flat, panels):
        by = {r["model"]: r for r in rows}
        vals = [by[m]["value"] if m in by else float("nan") for m in models]
        errs = [[], []]
        for m in models:
            r = by.get(m)
            d, (lo, hi) = (0.0, (0.0, 0.0)) if r is None or r["ci95"] is None else (r["delta"], r["ci95"])
            errs[0].append(max(0.0, d - lo))
            errs[1].append(max(0.0, hi - d))
        ax.bar(range(len(models)), vals, 0.7, yerr=errs, capsize=3, color=[f"C{i}" for i in range(len(models))])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([_short(m, 20) for m in models], rotation=20, ha="right", fontsize=7)
        ax.set_title(f"{data}: {metric}", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("value per model (error bar: 95% CI of the difference to the first)", fontsize=9)
    fig.tight_layout()
    return fig


def _chart(res: dict) -> bytes:
    """The PNG of ``chart_figure``."""
    import matplotlib.pyplot as plt
    fig = chart_figure(res)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def compare_html(result: EvalResult) -> str:
    res = result.summary()
    head = ["data", "metric", "model", "value", "n", "delta vs first", "95% CI", "verdict"]
    body = [[r["data"], r["metric"], r["model"], _fmt(r["value"]), r["n"],
             "-" if r["delta"] is None else f"{r['delta']:+.4f}",
             "-" if r["ci95"] is None else f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]",
             f"<span class={ {'better': 'good', 'worse': 'bad'}.get(_verdict(r), 'muted') }>{esc(_verdict(r))}</span>"]
            for r in res["rows"]]
    boot = res["bootstrap"]
    parts = [f"<h1>{esc('Model comparison')}</h1>",
             f"<p>Reference: <code>{esc(res['reference'])}</code>. Deltas are paired over the samples both models "
             f"scored; 95% intervals from {boot['n_boot']} bootstrap draws (seed {boot['seed']}). "
             f"{esc(res['backend'])}.</p>",
             table(head, body, raw_columns=(7,), num_columns=(3, 4, 5)),
             f"<img class=plot alt='metric values per model' src='{png_data_uri(_chart(res))}'>"]
    if res["notes"]:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in res["notes"]) + "</ul>")
    return page("mmfm eval compare", parts)


def write_compare(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out / "compare.json", result.summary()),
             "csv": atomic_write(out / "compare.csv", compare_csv(result)),
             "html": atomic_write(out / "compare.html", compare_html(result))}
    result.paths.update(paths)
    return paths
