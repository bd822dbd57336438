"""``mmfm shards audit SHARDS --attribute KEY``: where a skew comes from, in the training data.

One streaming pass over the samples (a shard folder, a brace pattern, a .tar or any fsspec / http URL of those;
memory grows with the number of groups, classes and distinct caption words, never with the number of samples):

* the attribute of a sample is its json field KEY, or, with ``words`` (``{group: [phrase, ...]}``), the groups
  whose phrases its caption contains (whole words, case-insensitive; several matches -> ``mixed``). A sample
  without it is counted in the group ``(missing)``, never dropped.
* the distribution of groups with a Wilson 95% interval of each share; a group under ``min_group`` samples is
  flagged ``small`` (its interval is too wide to compare it with the others).
* co-occurrence with the classes (``cls`` named through the manifest, or a json field ``by``) and with caption
  words, and the most skewed associations: ``lift = P(group | item) / P(group)`` for items seen at least
  ``min_count`` times, ranked by ``|ln lift|`` (a lift of 3: the item comes with that group three times as often
  as the group's overall share predicts).

``audit_shards(...) -> dict`` computes; ``format_audit`` (table), ``write_audit`` (JSON + HTML with an embedded
matplotlib chart) render.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from mmfm.config import atomic_write

from .manifest import ShardError

__all__ = ["MISSING", "wilson", "phrase_patterns", "audit_shards", "sample_group", "sample_meta", "format_audit", "write_audit"]

MISSING = "(missing)"
_WORD = re.compile(r"[a-z][a-z'-]+")
_STOP = frozenset("a an the of and or in on at to with for by from is are this that it its his her their".split())


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval for k successes of n (the one implementation: mmfm.eval.bias.metrics uses it too)."""
    if n == 0:
        return [0.0, 0.0]
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 6), round(min(1.0, c + h), 6)]


def sample_meta(sample: dict) -> dict:
    """The sample's json as a dict ({} when absent or not an object)."""
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _caption(sample: dict, meta: dict) -> str:
    txt = sample.get("txt")
    if txt is not None:
        return txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)
    caps = meta.get("captions")
    return " ".join(caps) if isinstance(caps, list) else str(meta.get("caption", ""))


def phrase_patterns(words: dict[str, list[str]]) -> dict:
    """``{group: regex}`` matching any of the group's phrases as whole words (a hyphen joins words, so "light"
    does not match inside "medium-light"), case-insensitive; shared with the caption checks of mmfm.eval.bias."""
    return {g: re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in ws) + r")(?![\w-])", re.I)
            for g, ws in words.items()}


def sample_group(meta: dict, caption: str, attribute: str, rule: dict | None = None) -> str:
    """The sample's group: the json field, or the word rule over the caption; ``(missing)`` when neither."""
    if rule is not None:
        hits = [g for g, p in rule.items() if p.search(caption)]
        return hits[0] if len(hits) == 1 else ("mixed" if hits else MISSING)
    v = meta.get(attribute)
    return MISSING if v is None or v == "" else str(v)


def _source_urls(source: str) -> tuple[list[str], list | None]:
    """The shard URLs of ``source`` and the manifest's class names, when it has a manifest."""
    from mmfm.data.sources import resolve_source

    from .manifest import read_manifest
    src = resolve_source(str(source))
    classes = None
    if src.keys is not None:                 # a manifest was read: its class names
        try:
            classes = read_manifest(source).get("classes")
        except (ShardError, OSError, ValueError):
            classes = None
    return [s.url for s in src.shards], classes


def audit_shards(source: str, attribute: str, *, words: dict[str, list[str]] | None = None, by: str = "cls",
                 min_count: int = 5, min_group: int = 30, top: int = 10, max_samples: int | None = None) -> dict:
    """Stream ``source`` once and report the attribute's distribution and skewed associations (module doc)."""
    from mmfm.data.sources import read_samples
    urls, classes = _source_urls(source)
    rule = phrase_patterns(words) if words else None
    groups: Counter = Counter()
    co = {"class": defaultdict(Counter), "word": defaultdict(Counter)}   # item -> group -> count
    n = 0
    for s in read_samples(urls):
        meta = sample_meta(s)
        cap = _caption(s, meta)
        g = sample_group(meta, cap, attribute, rule)
        groups[g] += 1
        item = _class_of(s, meta, by, classes)
        if item is not None:
            co["class"][item][g] += 1
        for w in set(_WORD.findall(cap.lower())) - _STOP:
            co["word"][w][g] += 1
        n += 1
        if max_samples and n >= max_samples:
            break
    if n == 0:
        raise ShardError(f"{source}: no samples to audit")
    dist = {g: {"n": c, "share": c / n, "ci95": wilson(c, n), "small": c < min_group}
            for g, c in sorted(groups.items(), key=lambda x: (-x[1], x[0]))}
    return {"source": str(source), "attribute": attribute, "rule": "words" if words else "json field",
            "words": words, "n_samples": n, "groups": dist, "by": by, "min_count": min_count,
            "min_group": min_group,
            "classes": {k: dict(v) for k, v in sorted(co["class"].items())},
            "skewed": {kind: _skewed(co[kind], groups, n, min_count, top) for kind in ("class", "word")}}


def _class_of(sample: dict, meta: dict, by: str, classes: list | None):
    if by != "cls":
        v = meta.get(by)
        return None if v is None else str(v)
    c = sample.get("cls")
    if c is None:
        return None
    c = c.decode() if isinstance(c, bytes) else str(c)
    return classes[int(c)] if classes and c.strip().isdigit() and int(c) < len(classes) else c.strip()


def _skewed(table: dict, groups: Counter, n: int, min_count: int, top: int) -> list[dict]:
    out = []
    for item, per in table.items():
        m = sum(per.values())
        if m < min_count:
            continue
        for g, total in groups.items():
            k = per.get(g, 0)
            lift = (k / m) / (total / n)
            out.append({"item": item, "group": g, "count": k, "item_count": m, "p_group_given_item": k / m,
                        "ci95": wilson(k, m), "p_group": total / n, "lift": lift,
                        "log_lift": math.log((k + 0.5) / (m + 1) / (total / n))})   # smoothed: finite at 0
    out.sort(key=lambda r: (-abs(r["log_lift"]), str(r["item"]), r["group"]))
    return out[:top]


# ----------------------------------------------------------------------------- rendering
def format_audit(report: dict) -> str:
    lines = [f"{report['n_samples']} samples, attribute '{report['attribute']}' ({report['rule']})",
             f"{'group':<20} {'n':>8} {'share %':>8}  95% CI"]
    for g, v in report["groups"].items():
        flag = "  small: interval too wide to compare" if v["small"] else ""
        lines.append(f"{g:<20} {v['n']:>8} {100 * v['share']:>8.1f}  {100 * v['ci95'][0]:.1f}-"
                     f"{100 * v['ci95'][1]:.1f}{flag}")
    for kind in ("class", "word"):
        rows = report["skewed"][kind]
        if rows:
            lines.append(f"most skewed {kind} associations (lift = P(group|{kind}) / P(group)):")
            lines += [f"  {r['item']!s:<24} {r['group']:<16} lift {r['lift']:.2f}  ({r['count']}/{r['item_count']})"
                      for r in rows]
    return "\n".join(lines)


def _chart_png(report: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(report["groups"])
    vals = [100 * report["groups"][g]["share"] for g in groups]
    err = [[v - 100 * report["groups"][g]["ci95"][0] for v, g in zip(vals, groups)],
           [100 * report["groups"][g]["ci95"][1] - v for v, g in zip(vals, groups)]]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(groups, vals, yerr=err, capsize=3,
           color=["#cc6677" if report["groups"][g]["small"] else "#4477aa" for g in groups])
    ax.set_ylabel("share of samples (%)")
    ax.set_title(f"{report['attribute']}: {report['n_samples']} samples (red: small group)", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _html(report: dict) -> str:
    e = html.escape
    png = base64.b64encode(_chart_png(report)).decode()
    rows = "".join(f"<tr><td>{e(g)}</td><td>{v['n']}</td><td>{100 * v['share']:.1f}</td><td>{100 * v['ci95'][0]:.1f}"
                   f"&ndash;{100 * v['ci95'][1]:.1f}</td><td>{'small' if v['small'] else ''}</td></tr>"
                   for g, v in report["groups"].items())
    skew = "".join(f"<h3>Most skewed {kind} associations</h3><table><tr><th>{kind}</th><th>group</th><th>lift</th>"
                   f"<th>count</th></tr>" + "".join(
                       f"<tr><td>{e(str(r['item']))}</td><td>{e(r['group'])}</td><td>{r['lift']:.2f}</td>"
                       f"<td>{r['count']}/{r['item_count']}</td></tr>" for r in report["skewed"][kind]) + "</table>"
                   for kind in ("class", "word") if report["skewed"][kind])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>audit {e(report['attribute'])}</title></head>"
            f"<body><h1>Attribute <code>{e(report['attribute'])}</code> in {e(report['source'])}</h1>"
            f"<p>{report['n_samples']} samples; groups under {report['min_group']} samples are flagged small.</p>"
            f"<img alt='group shares' src='data:image/png;base64,{png}'>"
            f"<table><tr><th>group</th><th>n</th><th>share %</th><th>95% CI</th><th></th></tr>{rows}</table>"
            f"{skew}</body></html>\n")


def write_audit(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    return {"json": atomic_write(out / "audit.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"),
            "html": atomic_write(out / "audit.html", _html(report))}
