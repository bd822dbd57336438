"""The general model's report: per-source counts, the leave-one-source-out table and chart, captions per source."""
from __future__ import annotations

import html
from pathlib import Path

from .general_eval import ARM_HEADS, ARM_TITLES, ARMS


def _f(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def format_counts(splits: dict) -> str:
    lines = ["samples per source (after cross-source dedup; skipped inputs by reason)"]
    for split, m in splits.items():
        for name, c in (m.get("sources") or {}).items():
            skipped = ", ".join(f"{k} {v}" for k, v in c["skipped"].items()) or "-"
            lines.append(f"  {split:<8} {name:<16} {c['written']:>6}   skipped: {skipped}")
    return "\n".join(lines)


def format_captions(caps: dict) -> str:
    lines = [f"{'captions on':<16} {'CIDEr-D':>8} {'constant':>8}  best constant caption", "-" * 60]
    for name, c in caps.items():
        base = c.get("constant_baseline") or {}
        seen = "" if not c.get("trained_on") else "  (held-out split of a training source)"
        lines.append(f"{name:<16} {_f(c.get('CIDEr-D')):>8} {_f(base.get('CIDEr-D')):>8}  "
                     f"{base.get('caption', '')!r}{seen}")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_f(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(path: Path | None, out: Path) -> str:
    return f'<img src="{html.escape(str(Path(path).relative_to(out)))}">' if path else "<p>(no chart)</p>"


def _wise_note(ctx) -> str:
    """The A/Bs that need no training (score.yaml): what the extra rows and columns are."""
    sc = getattr(ctx, "score_settings", None)
    if sc is None:
        return ""
    ens = "; ".join(f"{html.escape(e.label_space)}: " + ", ".join(f"<code>{html.escape(t)}</code>" for t in e.templates)
                    for e in sc.prompt_ensembles) or "none"
    alpha = sc.wise_ft.alpha
    wise = (f"alpha {alpha} between each tuned CLIP ({', '.join(sc.wise_ft.arms)}) and the weights its run started "
            f"from (pretrained towers, new projections)") if alpha is not None else "off"
    return (f"<p>A/Bs without training (score.yaml). <b>Prompt ensemble</b> rows: each class's text embedding "
            f"averaged over {ens} (the plain rows use general.yaml's single template). <b>WiSE-FT</b> columns: "
            f"{html.escape(wise)}.</p>")


def _ab_section(ab: dict | None, chart: Path | None, out: Path) -> list[str]:
    """The training A/Bs (``general_ab``), once an ``--ab`` run wrote them."""
    if not ab:
        return ["<h2>Training A/Bs</h2><p>Not run: <code>make general-ab</code> (<code>mmfm demo --job general "
                "--ab</code>) trains the arms of ab.yaml (class-balanced sampling, augmentation) beside a baseline "
                "of the same length.</p>"]
    names = list(ab.get("arms") or {})
    arms = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(str(a.get('title', '')))} "
                   f"<code>{html.escape(' '.join(a.get('set') or []))}</code></li>" for n, a in ab["arms"].items())
    rows = [[r["source"] + ("" if r["trained_on"] else " (never trained on)"), r["metric"],
             *[r.get(n) for n in names]] for r in ab.get("rows") or []]
    return [f"<h2>Training A/Bs</h2><p>Each arm trains the every-source CLIP for {ab.get('steps')} steps from the "
            f"same towers and seed with one change (ab.yaml); <i>baseline</i> has none. Scored like the "
            f"leave-one-out arms (training sources: their held-out split).</p><ul>{arms}</ul>",
            _table(["source", "metric", *names], rows), _img(chart, out)]


def render(ctx, *, counts: dict, rows: list[dict], captions: dict, chart: Path | None, curves: Path | None,
           ab: dict | None = None, ab_chart: Path | None = None) -> str:
    s = ctx.settings
    count_rows = [[split, name, c["written"], ", ".join(f"{k} {v}" for k, v in c["skipped"].items()) or "-"]
                  for split, m in counts.items() for name, c in (m.get("sources") or {}).items()]
    loso = [[r["source"], r["metric"], *[r.get(a) for a in ARMS], r["baseline"]] for r in rows]
    cap_rows = [[n, c.get("CIDEr-D"), (c.get("constant_baseline") or {}).get("CIDEr-D"),
                 (c.get("constant_baseline") or {}).get("caption", ""), "yes" if c.get("trained_on") else "no",
                 "; ".join(e["caption"] for e in c.get("examples", []))] for n, c in captions.items()]
    sources = [[x.name, x.recipe, "yes" if x.train else "evaluation only", x.label_space or "-",
                "yes" if x.loso else "-"] for x in s.sources]
    parts = [
        "<h1>mmfm general model</h1>",
        f"<p>Output: {html.escape(str(ctx.out))} ({ctx.variant}). Try it: <code>mmfm caption --model "
        f"{html.escape(str(ctx.out / 'caption'))} my_pictures/ --out alt.jsonl --html alt.html</code>.</p>",
        "<h2>Sources</h2>", _table(["source", "recipe", "trained on", "label space", "left out once"], sources),
        "<h2>Samples per source</h2>", _table(["split", "source", "written", "skipped"], count_rows),
        "<h2>Leave-one-source-out</h2>",
        "<p>Each source scored by the CLIP " + ", ".join(f"<b>{ARM_HEADS[a]}</b>: {ARM_TITLES[a]}" for a in ARMS)
        + ". The source is never in the <i>without</i> model's training data; evaluation-only sources are in no "
          "model's. Majority: always answering the set's most frequent class.</p>",
        _wise_note(ctx), _table(["source", "metric", *[ARM_HEADS[a] for a in ARMS], "majority"], loso),
        _img(chart, ctx.out),
        *_ab_section(ab, ab_chart, ctx.out),
        "<h2>Captions per source</h2>",
        _table(["source", "CIDEr-D", "constant CIDEr-D", "best constant caption", "source trained on",
                "examples"], cap_rows),
        "<h2>Training curves</h2>", _img(curves, ctx.out),
        f"<p>Configs: {html.escape(str(ctx.config_dir))}; reproduce: <code>mmfm demo --job general --out "
        f"{html.escape(str(ctx.out))}{' --quick' if ctx.quick else ''}</code></p>",
    ]
    style = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>mmfm general</title>{style}</head><body>" \
           + "\n".join(parts) + "</body></html>"
