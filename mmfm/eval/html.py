"""The one small HTML helper for mmfm's pages (zero-shot report, alt-text page, bias table, demo report):
a page skeleton with shared CSS, escaped tables, and thumbnails as ``data:`` URIs, so a report is one file."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Iterable, Sequence

__all__ = ["esc", "page", "table", "thumbnail_data_uri", "png_data_uri", "alt_text_page"]

BASE_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px}
.ok,.good{color:#18794e}.bad,.err{color:#c0392b}.muted{color:#777}img.plot{max-width:100%}
code{background:#f3f3f3;font-size:12px}"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, parts: Iterable[str], css: str = "") -> str:
    """A whole HTML document: ``title`` (escaped), ``parts`` (HTML fragments, joined by newlines)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{BASE_CSS}{css}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def table(head: Sequence[str], rows: Iterable[Sequence], *, raw_columns: Sequence[int] = (),
          num_columns: Sequence[int] = (), cls: str = "") -> str:
    """An HTML table; every cell is escaped except the columns in ``raw_columns`` (already HTML)."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            text = str(c) if i in raw_columns else esc("-" if c is None else c)
            cells.append(f"<td class=num>{text}</td>" if i in num_columns else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_data_uri(src, size: int = 160, fmt: str = "JPEG") -> str | None:
    """A ``data:`` URI of a thumbnail of ``src`` (a path or image bytes), or None when it cannot be decoded.
    JPEG for photos; PNG keeps flat-colour art (emoji, icons) crisp."""
    from mmfm.data.decode import decode_image
    try:
        img = decode_image(src, max_pixels=64_000_000)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    except Exception:  # noqa: BLE001 - a file that cannot be thumbnailed is shown by name only
        return None
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_ALT_CSS = """.card{display:flex;gap:1em;align-items:center;background:#fff;margin:.5em 0;padding:.6em}
.card img{max-width:200px;max-height:200px}.noimg{width:200px;height:80px;background:#eee;display:flex;
align-items:center;justify-content:center;color:#888}.alt{font-size:1.15em;margin:.2em 0}
.raw,.name{color:#777;margin:.2em 0;font-size:.85em}body{background:#fafafa}"""


def alt_text_page(rows: list[dict], title: str, settings: dict) -> str:
    """Captions beside thumbnails: rows ``{image, alt_text, caption, error}`` from ``mmfm.generate.caption_images``."""
    cards = []
    for r in rows:
        uri = thumbnail_data_uri(r["image"], 200) if not r["error"] else None
        img = f'<img src="{uri}" alt="{esc(r["alt_text"] or "")}">' if uri else '<div class="noimg">no preview</div>'
        trust = [f'confidence {r["confidence"]:.2f}'] if r.get("confidence") is not None else []
        trust += [f'<strong class="err">degenerate: {esc(r["degenerate"])}</strong>'] if r.get("degenerate") else []
        trust = f'<p class="raw">{" &middot; ".join(trust)}</p>' if trust else ""
        body = (f'<p class="alt">{esc(r["alt_text"])}</p><p class="raw">raw: {esc(r["caption"])}</p>{trust}'
                if not r["error"] else f'<p class="err">failed: {esc(r["error"])}</p>')
        cards.append(f'<div class="card">{img}<div><p class="name">{esc(os.path.basename(r["image"]))}</p>'
                     f'{body}</div></div>')
    ok = sum(1 for r in rows if not r["error"])
    head = [f"<h1>{esc(title)}</h1>", f"<p>{ok} of {len(rows)} images captioned. Decoding: "
            f"<code>{esc(json.dumps(settings))}</code></p>"]
    return page(title, head + cards, _ALT_CSS)
