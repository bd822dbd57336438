"""The zero-shot report (``mmfm zeroshot --report``): predictions file (JSONL/CSV), metrics JSON, per-class
table (CSV + HTML), confusion-matrix PNG, and an HTML page of misclassified images with embedded thumbnails.

Every file is written to a temp name and renamed, so an interrupted run leaves no half-written file.
"""
from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from mmfm.config import ConfigError, atomic_write

from ..html import page, table, thumbnail_data_uri
from ..result import write_json

MAX_THUMBS = 400


def write_predictions(result, path: str | os.PathLike) -> Path:
    """One row per image: path, (label, correct,) pred, score, top-k labels and scores."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.predictions)
    elif ext == ".csv":
        text = _predictions_csv(result)
    else:
        raise ConfigError(f"--out {p}: use a .jsonl or .csv file name")
    return atomic_write(p, text)


def _predictions_csv(result) -> str:
    buf = io.StringIO()
    labelled = bool(result.predictions) and "label" in result.predictions[0]
    cols = ["path"] + (["label", "correct"] if labelled else []) + ["pred", "score", "topk_labels", "topk_scores"]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in result.predictions:
        row = [r["path"]] + ([r["label"], int(r["correct"])] if labelled else []) + [r["pred"], r["score"]]
        row += ["|".join(t[0] for t in r["topk"]), "|".join(f"{t[1]:.6f}" for t in r["topk"])]
        w.writerow(row)
    return buf.getvalue()


def write_report(result, out_dir: str | os.PathLike, *, thumbnails: bool = True,
                 max_thumbs: int = MAX_THUMBS) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": write_json(out / "metrics.json", result.summary()),
             "predictions": write_predictions(result, out / "predictions.jsonl"),
             "skipped": atomic_write(out / "skipped.txt",
                                     "".join(f"{s['path']}\t{s['reason']}\n" for s in result.skipped))}
    if result.confusion is not None:
        files["per_class"] = atomic_write(out / "per_class.csv", _per_class_csv(result.per_class))
        # the picture is for people: label it with the class names the prompts used, not the folder names
        files["confusion"] = plot_confusion(result.confusion, list(result.classnames or result.classes),
                                            out / "confusion.png")
        files["confusion_csv"] = atomic_write(out / "confusion.csv", _confusion_csv(result.confusion, result.classes))
    files["html"] = atomic_write(out / "index.html", render_html(result, thumbnails=thumbnails,
                                                                 max_thumbs=max_thumbs))
    result.paths.update(files)
    return files


def _per_class_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["class", "classname", "n", "correct", "recall", "precision"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\pred"] + classes)
    for cls, row in zip(classes, cm):
        w.writerow([cls] + [int(v) for v in row])
    return buf.getvalue()


def format_table(rows: list[dict]) -> str:
    """Plain-text per-class table for the terminal."""
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"{'class'.ljust(width)}  {'n':>6}  {'recall':>7}  {'precision':>9}"]
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        prec = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        lines.append(f"{r['class'].ljust(width)}  {r['n']:>6}  {rec:>7}  {prec:>9}")
    return "\n".join(lines)


def axis_label(name: str, width: int = 18, lines: int = 2) -> str:
    """A class name as a tick label: wrapped at word boundaries into at most ``lines`` lines of ``width``
    characters, with an ellipsis only when it still does not fit ('Smileys & Emotion' stays whole)."""
    import textwrap
    name = " ".join(str(name).replace("_", " ").split())
    wrapped = textwrap.wrap(name, width=width, break_long_words=True) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "\u2026"
    return "\n".join(wrapped)


def confusion_figure(cm: np.ndarray, classes: list[str]):
    """The matplotlib figure behind :func:`plot_confusion` (callers close it)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix is {cm.shape[0]}x{cm.shape[1]} but {n} class labels were given")
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    labels = [axis_label(c) for c in classes]
    longest = max((len(line) for lab in labels for line in lab.split("\n")), default=1)
    fontsize = 9 if n <= 12 else 8 if n <= 30 else 6
    margin = 0.25 + longest * fontsize / 72 * 0.6          # inches the tick labels need
    side = min(max(5.0, 0.45 * n), 24)
    fig, ax = plt.subplots(figsize=(side + margin + 1.6, side + margin + 0.8))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 60:
        ax.set_xticks(range(n), labels=labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), labels=labels, fontsize=fontsize)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8 if n <= 12 else 7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"zero-shot confusion matrix: {n} classes, top-1 {acc:.3f}, n={int(cm.sum())}")
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (recall per true class) as a PNG; counts in cells when small.

    ``classes`` are the labels shown on both axes (the human-readable class names); long names are wrapped."""
    import matplotlib.pyplot as plt
    fig = confusion_figure(cm, classes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


# a card is 170px wide: a long file name (one unbroken word) wraps inside it instead of running over the next
_CSS = """.grid{display:flex;flex-wrap:wrap}.card{width:170px;min-width:0;overflow-wrap:anywhere;word-break:break-word}
.card code{white-space:normal;overflow-wrap:anywhere;word-break:break-all}
.card img{max-width:160px;max-height:160px;display:block;margin:auto}"""


def render_html(result, *, thumbnails: bool = True, max_thumbs: int = MAX_THUMBS) -> str:
    m = result.summary()
    e = html.escape
    parts = ["<h1>Zero-shot report</h1>",
             f"<p>model <code>{e(str(m.get('model')))}</code> &middot; folder <code>{e(result.root)}</code> &middot; "
             f"templates <code>{e(str(m.get('templates')))}</code> ({m.get('n_templates')}) &middot; "
             f"{m.get('n_samples')} images, {len(result.skipped)} skipped</p>"]
    if result.confusion is not None:
        t5 = "-" if m.get("top5") is None else f"{m['top5']:.4f}"
        parts.append(f"<h2>top-1 {m['top1']:.4f} &middot; top-5 {t5} &middot; mean per-class recall "
                     f"{m['mean_per_class_recall']:.4f}</h2><img src='confusion.png' style='max-width:720px'>")
        parts.append(_table_html(result.per_class))
        wrong = [r for r in result.predictions if not r["correct"]]
        parts.append(f"<h2>Misclassified ({len(wrong)})</h2>")
        parts.append(_cards_html(result, wrong, thumbnails, max_thumbs))
    else:
        parts.append(f"<h2>Predictions ({len(result.predictions)})</h2>")
        parts.append(_cards_html(result, result.predictions, thumbnails, max_thumbs))
    if result.skipped:
        parts.append(f"<h2>Skipped files ({len(result.skipped)})</h2><table><tr><th>file</th><th>reason</th></tr>")
        parts += [f"<tr><td><code>{e(s['path'])}</code></td><td>{e(s['reason'])}</td></tr>" for s in result.skipped]
        parts.append("</table>")
    return page("mmfm zero-shot report", parts, _CSS)


def _table_html(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return "<h2>Per class</h2>" + table(["class", "prompt name", "n", "recall", "precision"],
                                        [[r["class"], r["classname"], r["n"], fmt(r["recall"]), fmt(r["precision"])]
                                         for r in rows], num_columns=(2, 3, 4))


def _cards_html(result, rows: list[dict], thumbnails: bool, max_thumbs: int) -> str:
    e = html.escape
    cards = []
    for r in rows[:max_thumbs]:
        uri = thumbnail_data_uri(os.path.join(result.root, r["path"])) if thumbnails else None
        img = f"<img src='{uri}' alt='{e(r['path'])}'>" if uri else ""
        truth = f"<div class='good'>true: {e(r['label'])}</div>" if "label" in r else ""
        top = "<br>".join(f"{e(lbl)} {p:.3f}" for lbl, p in r["topk"][:3])
        cards.append(f"<div class='card'>{img}<code>{e(r['path'])}</code>{truth}"
                     f"<div class='{'bad' if 'label' in r else ''}'>pred: {e(r['pred'])}</div><div>{top}</div></div>")
    more = f"<p>showing {max_thumbs} of {len(rows)}</p>" if len(rows) > max_thumbs else ""
    return f"<div class='grid'>{''.join(cards)}</div>{more}"
