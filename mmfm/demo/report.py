"""The demo report: training curves, the metrics table with baselines, and one HTML page.

``runs/demo/report.html`` is self-contained (PNG plots and thumbnails are inlined as data URIs), so it can
be mailed or opened from any folder. The terminal gets the same metrics table as plain text.
"""
from __future__ import annotations

import html
import io
import json
from collections import Counter
from pathlib import Path

from mmfm.config import atomic_write, atomic_write_text
from mmfm.eval.html import page, png_data_uri, table


# ----------------------------------------------------------------------------- baselines
def constant_caption_baseline(references: dict[str, list[str]], candidates: list[str], *,
                              max_candidates: int = 60) -> dict:
    """The best single caption given to every image, among the most frequent training captions and their
    most frequent words and word pairs (a strong constant baseline: it knows the training distribution)."""
    from mmfm.eval.captioning.caption_metrics import score_captions

    cands = _constant_candidates(candidates, max_candidates)
    best: dict = {}
    for cand in cands:
        scores = score_captions({k: cand for k in references}, references)
        if not best or scores["CIDEr-D"] > best["CIDEr-D"]:
            best = {"caption": cand, "CIDEr-D": scores["CIDEr-D"], "BLEU-4": scores["BLEU-4"]}
    best["candidates"] = len(cands)
    best["most_frequent"] = cands[0] if cands else ""
    return best


def _constant_candidates(captions: list[str], limit: int) -> list[str]:
    counts = Counter(captions)
    words: Counter = Counter()
    pairs: Counter = Counter()
    for c in captions:
        toks = c.replace(":", " ").replace(",", " ").split()
        words.update(toks)
        pairs.update(" ".join(p) for p in zip(toks, toks[1:]))
    out: list[str] = []
    for source in (counts, pairs, words):
        for text, _ in source.most_common(limit // 3 or 1):
            if text not in out:
                out.append(text)
    return out


# ----------------------------------------------------------------------------- plots
def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def plot_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """One panel per training run: train loss (and validation loss where logged) against step."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = {name: read_metrics(Path(run) / "metrics.jsonl") for name, run in runs.items()}
    series = {k: v for k, v in series.items() if any("train/loss" in r for r in v)}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], series.items()):
        tr = [(r["step"], r["train/loss"]) for r in rows if isinstance(r.get("train/loss"), (int, float))]
        ax.plot(*zip(*tr), label="train loss", color="tab:blue")
        val = [(r["step"], r["val/loss"]) for r in rows if isinstance(r.get("val/loss"), (int, float))]
        if val:
            ax.plot(*zip(*val), "o-", label="held-out loss", color="tab:orange")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------- table
def group_count(zs: dict) -> int | None:
    """How many groups the held-out images were classified into: the groups that have images (the chance
    baseline is 1/this), never a fixed number (a --quick run or a smaller recipe has fewer); None if unknown."""
    return sum(1 for r in zs.get("per_class") or [] if r.get("n")) or None


def metrics_rows(results: dict) -> list[dict]:
    """[{"metric", "value", "baseline", "baseline_name"}] from the stage summaries (missing stages skipped)."""
    rows = []
    zs = results.get("zeroshot") or {}
    if zs:
        chance = zs.get("chance_top1")
        n = group_count(zs)
        label = "zero-shot top-1" + (f" ({n} group{'s' if n != 1 else ''})" if n else "")
        rows.append({"metric": label, "value": zs.get("top1"),
                     "baseline": chance,
                     "baseline_name": "chance (uniform guess)"})
        rows.append({"metric": "zero-shot mean per-class recall", "value": zs.get("mean_per_class_recall"),
                     "baseline": zs.get("chance_recall"), "baseline_name": "chance"})
        rows.append({"metric": "zero-shot top-1, majority-class guess", "value": zs.get("majority_top1"),
                     "baseline": None, "baseline_name": f"always '{zs.get('majority_class', '?')}'"})
    cap = results.get("caption") or {}
    if cap:
        base = cap.get("constant_baseline") or {}
        rows.append({"metric": "caption CIDEr-D", "value": cap.get("CIDEr-D"), "baseline": base.get("CIDEr-D"),
                     "baseline_name": f"best constant caption '{base.get('caption', '')}'"})
        rows.append({"metric": "caption BLEU-4", "value": cap.get("BLEU-4"), "baseline": base.get("BLEU-4"),
                     "baseline_name": "same constant caption"})
    vqa = results.get("vqa") or {}
    if vqa:
        rows.append({"metric": "VQA accuracy (%)", "value": vqa.get("overall"), "baseline": vqa.get("majority_baseline"),
                     "baseline_name": "most frequent training answer per question"})
        for kind, acc in sorted((vqa.get("per_question_type") or {}).items()):
            rows.append({"metric": f"  VQA '{kind}' questions (%)", "value": acc,
                         "baseline": (vqa.get("majority_by_type") or {}).get(kind), "baseline_name": ""})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    w = max([len("metric")] + [len(r["metric"]) for r in rows])
    lines = [f"{'metric'.ljust(w)}  {'mmfm':>8}  {'baseline':>8}  baseline is", "-" * (w + 40)]
    for r in rows:
        lines.append(f"{r['metric'].ljust(w)}  {_fmt(r['value']):>8}  {_fmt(r['baseline']):>8}  {r['baseline_name']}")
    return "\n".join(lines)


def format_bias(b: dict) -> str:
    """The bias stage's summary for the terminal and metrics.txt: a heading, the table, the paired test."""
    if not b:
        return ""
    if b.get("skipped"):
        return b["skipped"]
    lines = [f"{b['attribute']} bias on held-out emoji ({b['n_samples']} images: {b.get('matched_values')} emoji "
             f"in each of {len(b['groups'])} groups)", b["table"]]
    paired = (b.get("zeroshot_gap") or {}).get("paired")
    if paired:
        lines.append(f"zero-shot best vs worst on the same {paired['pairs']} emoji: exact McNemar p = "
                     f"{paired['p_value']:.3g}")
    if b.get("mitigation"):
        lines += ["mitigation (before / after, same emoji):", b["mitigation"]["table"],
                  *[f"not run: {x}" for x in b["mitigation"]["not_run"]]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML
_CSS = ".card img{width:64px;height:64px}"


def _table_html(rows: list[dict]) -> str:
    return table(["metric (held-out emoji)", "mmfm", "baseline", "baseline is"],
                 [[r["metric"], f"<b>{_fmt(r['value'])}</b>", _fmt(r["baseline"]), r["baseline_name"]] for r in rows],
                 raw_columns=(1,), num_columns=(1, 2))


def _card(item: dict) -> str:
    zs_ok = item.get("zeroshot") == item.get("group")
    cls = "ok" if zs_ok else "bad"
    vqa = "".join(f"<div class=muted>{html.escape(q)} <b>{html.escape(a)}</b></div>"
                  for q, a in item.get("answers", []))
    return (f"<div class=card><img src='{item['thumb']}' alt='{html.escape(item['name'])}'>"
            f"<div>true: <b>{html.escape(item['name'])}</b></div>"
            f"<div>caption: <i>{html.escape(item.get('caption', '-'))}</i></div>"
            f"<div class={cls}>zero-shot: {html.escape(item.get('zeroshot', '-'))}</div>"
            f"<div class=muted>group: {html.escape(item.get('group', '-'))}</div>{vqa}</div>")


def _bias_html(bias: dict) -> list[str]:
    """The skin-tone section: the table from ``mmfm eval bias`` and its bar chart, or why it is missing."""
    if not bias:
        return []
    title = f"<h2>Bias: {html.escape(str(bias.get('attribute', 'skin_tone')))} (held-out emoji)</h2>"
    if bias.get("skipped"):
        return [title, f"<p class=muted>{html.escape(bias['skipped'])}</p>"]
    parts = [title, "<p>The same held-out emoji in each group (matched by base name), so a gap between groups "
                    "cannot come from different content. Zero-shot picks the emoji's name among all matched names; "
                    "captions are scored against the full CLDR name, tone included.</p>", bias["html"]]
    paired = (bias.get("zeroshot_gap") or {}).get("paired")
    if paired:
        parts.append(f"<p>Zero-shot, best vs worst group on the same {paired['pairs']} emoji: "
                     f"{paired['best_only_correct']} right only in the best group, {paired['worst_only_correct']} "
                     f"only in the worst; exact McNemar p = {paired['p_value']:.3g} (the pair is picked after "
                     f"looking, so p is optimistic).</p>")
    png = Path(bias.get("png") or "")
    if png.is_file():
        parts.append(f"<img class=plot style='max-width:820px' src='{png_data_uri(png.read_bytes())}'>")
    mit = bias.get("mitigation")
    if mit:
        parts += ["<h2>Mitigation</h2>", "<p>The gap and the overall score before and after each method, on the same "
                  "held-out emoji, with 95% bootstrap intervals of the gap (docs/bias.md).</p>", mit["html"]]
        parts += [f"<p class=muted>Not run here: {html.escape(x)}</p>" for x in mit["not_run"]]
    return parts


def render_html(*, rows: list[dict], curves: Path | None, confusion: Path | None, items: list[dict],
                info: dict, groups: int | None = None, bias: dict | None = None, comparison: list[str] = ()) -> str:
    parts = ["<h1>mmfm demo: CLIP, zero-shot, captions and VQA on held-out emoji</h1>",
             f"<p>{html.escape(info.get('summary', ''))}</p>", *comparison, "<h2>Metrics</h2>", _table_html(rows)]
    if curves is not None and Path(curves).is_file():
        parts += ["<h2>Training curves</h2>", f"<img class=plot src='{png_data_uri(Path(curves).read_bytes())}'>"]
    if confusion is not None and Path(confusion).is_file():
        where = f"held-out emoji, {groups} groups" if groups else "held-out emoji"
        parts += [f"<h2>Zero-shot confusion matrix ({where})</h2>",
                  f"<img class=plot style='max-width:640px' src='{png_data_uri(Path(confusion).read_bytes())}'>"]
    parts += _bias_html(bias or {})
    parts += [f"<h2>Held-out emoji ({len(items)} shown): true name, generated caption, zero-shot group</h2>",
              "<div class=grid>" + "".join(_card(i) for i in items) + "</div>"]
    details = [[k, f"<code>{html.escape(str(v))}</code>"] for k, v in info.get("details", {}).items()]
    if details:
        parts += ["<h2>How this was made</h2>", table(["", ""], details, raw_columns=(1,))]
    return page("mmfm demo report", parts, _CSS)


def write_report(out: Path, **kwargs) -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, render_html(**kwargs))
    return path


# ----------------------------------------------------------------------------- from scratch vs pretrained
ARMS = {"scratch": "from scratch (random image tower)", "transfer": "pretrained towers (ImageNet + MiniLM)"}
SET_NAMES = {"noto": "held-out Noto emoji", "twemoji": "Twemoji (other artist)", "photos": "real photos"}
SCORES = (("top1", "top-1"), ("mean_per_class_recall", "mean per-class recall"), ("macro_f1", "macro-F1"))


def comparison_rows(results: dict) -> list[dict]:
    """One row per (model, evaluation set): top-1, mean per-class recall, macro-F1, majority-class top-1."""
    rows = []
    for arm, label in ARMS.items():
        for name, r in ((results.get(arm) or {}).get("sets") or {}).items():
            rows.append({"model": label, "set": SET_NAMES.get(name, name), "images": r.get("images"),
                         **{k: r.get(k) for k, _ in SCORES}, "majority": r.get("majority_top1"),
                         "majority_class": r.get("majority_class")})
    return rows


def format_comparison(rows: list[dict]) -> str:
    if not rows:
        return ""
    w = max(len(r["model"]) for r in rows)
    s = max(len(r["set"]) for r in rows)
    head = f"{'model'.ljust(w)}  {'evaluated on'.ljust(s)}  {'images':>6}  {'top-1':>6}  {'recall':>6}  {'mF1':>6}  majority"
    lines = ["zero-shot over 9 CLDR groups, same training budget", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model'].ljust(w)}  {r['set'].ljust(s)}  {r['images'] or 0:>6}  {_fmt(r['top1']):>6}  "
                     f"{_fmt(r['mean_per_class_recall']):>6}  {_fmt(r['macro_f1']):>6}  {_fmt(r['majority'])}")
    return "\n".join(lines)


def plot_comparison(rows: list[dict], path: Path) -> Path | None:
    """Grouped bars per evaluation set (one bar per model) for each score; the majority-class top-1 is a
    dashed line over its set in the top-1 panel."""
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(dict.fromkeys(r["set"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["set"]): r for r in rows}
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4.4 * len(SCORES), 3.4), squeeze=False)
    width = 0.8 / len(models)
    x = np.arange(len(sets))
    for ax, (key, title) in zip(axes[0], SCORES):
        for i, m in enumerate(models):
            vals = [by.get((m, s), {}).get(key) or 0.0 for s in sets]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m)
        if key == "top1":
            for j, s in enumerate(sets):
                maj = next((by[(m, s)]["majority"] for m in models if (m, s) in by), None)
                if maj is not None:
                    ax.hlines(maj, j - 0.45, j + 0.45, colors="k", linestyles="dashed",
                              label="majority class" if j == 0 else None)
        ax.set_xticks(x, [s.replace(" (", "\n(") for s in sets], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def target_rows(results: dict) -> list[dict]:
    """Issue 14's targets, each with its measured value and its baseline."""
    sets = (results.get("transfer") or {}).get("sets") or {}
    noto, tw = sets.get("noto") or {}, sets.get("twemoji") or {}
    cap, vqa = results.get("caption") or {}, results.get("vqa") or {}
    out = [("held-out Noto top-1", 0.85, noto.get("top1"), noto.get("majority_top1"), "majority class"),
           ("held-out Noto mean per-class recall", 0.80, noto.get("mean_per_class_recall"),
            1 / 9 if noto else None, "chance (9 groups)"),
           ("Twemoji top-1 (never trained on)", 0.70, tw.get("top1"), tw.get("majority_top1"), "majority class"),
           ("caption CIDEr-D", 1.6, cap.get("CIDEr-D"), (cap.get("constant_baseline") or {}).get("CIDEr-D"),
            "best constant caption"),
           ("VQA accuracy (%)", 88.0, vqa.get("overall"), vqa.get("majority_baseline"), "majority answer per kind")]
    return [{"metric": m, "target": t, "value": v, "baseline": b, "baseline_name": bn,
             "met": None if v is None else v >= t} for m, t, v, b, bn in out]


def format_targets(rows: list[dict]) -> str:
    lines = ["targets (issue 14)"]
    for r in rows:
        verdict = "-" if r["met"] is None else ("met" if r["met"] else "NOT met")
        lines.append(f"  {r['metric']:<38} >= {_fmt(r['target']):>6}: {_fmt(r['value']):>6} ({verdict}); "
                     f"baseline {_fmt(r['baseline'])} ({r['baseline_name']})")
    return "\n".join(lines)


_BEFORE = ("There is no meaningful zero-shot 'before' for the pretrained towers: the ImageNet image tower and the "
           "MiniLM text tower were trained apart and share no embedding space until the new projections are "
           "trained, so at step 0 the zero-shot answer is chance. The comparison that shows what continued "
           "pre-training on emoji buys is therefore against the same recipe from random weights (the 'from "
           "scratch' rows, the same data and steps). For the image tower itself, 'before' is LiT (the ImageNet tower "
           "unchanged) and 'after' is the demo's tower with its last blocks trained on emoji (docs/demo.md "
           "measures both).")


def comparison_html(rows: list[dict], chart: Path | None, targets: list[dict],
                    scratch: dict | None = None) -> list[str]:
    if not rows and not targets:
        return []
    parts = ["<h2>From scratch vs pretrained towers (same training budget, trained on Noto emoji only)</h2>",
             f"<p>{html.escape(_BEFORE)}</p>"]
    if (scratch or {}).get("skipped"):
        parts.append(f"<p><b>From scratch: {html.escape(scratch['skipped'])}.</b> Measured separately: "
                     f"{html.escape(scratch.get('reference') or '-')}</p>")
    if rows:
        parts.append(table(["model", "evaluated on", "images", "top-1", "mean per-class recall", "macro-F1",
                            "majority-class top-1"],
                           [[r["model"], r["set"], str(r["images"]), f"<b>{_fmt(r['top1'])}</b>",
                             _fmt(r["mean_per_class_recall"]), _fmt(r["macro_f1"]),
                             f"{_fmt(r['majority'])} ({r['majority_class']})"] for r in rows],
                           raw_columns=(3,), num_columns=(2, 3, 4, 5)))
    if chart is not None and Path(chart).is_file():
        parts.append(f"<img class=plot style='max-width:1000px' src='{png_data_uri(Path(chart).read_bytes())}'>")
    if targets:
        parts += ["<h3>Targets</h3>", table(["metric", "target", "measured", "baseline", "baseline is", ""],
                                            [[r["metric"], _fmt(r["target"]), f"<b>{_fmt(r['value'])}</b>",
                                              _fmt(r["baseline"]), r["baseline_name"],
                                              "-" if r["met"] is None else ("met" if r["met"] else "not met")]
                                             for r in targets], raw_columns=(2,), num_columns=(1, 2, 3))]
    return parts


def photos_html(items: list[dict]) -> list[str]:
    """Real photos (never trained on): the hand-named label and group, and each CLIP's zero-shot group."""
    if not items:
        return []
    cards = []
    for it in items:
        ok = "ok" if it["pretrained"] == it["group"] else "bad"
        cards.append(f"<div class=card><img src='{it['thumb']}' alt='{html.escape(it['label'])}'>"
                     f"<div><b>{html.escape(it['label'])}</b> ({html.escape(it['group'])})</div>"
                     f"<div class={ok}>pretrained: {html.escape(it['pretrained'])}</div>"
                     f"<div class=muted>from scratch: {html.escape(it['scratch'])}</div></div>")
    return ["<h3>Real photos (scikit-image's bundled data, hand-named; never trained on)</h3>",
            "<div class=grid>" + "".join(cards) + "</div>"]
