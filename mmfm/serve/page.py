"""The service's try-it page (``GET /``): pick an image, get its alt text and zero-shot labels.

Plain HTML + fetch, no external assets (the server may have no internet). ``/?demo=1`` draws a test
picture on a canvas and runs both requests by itself (used by the headless-browser test); the page sets
``data-state`` on <body> to ``ready``, ``busy``, ``done`` or ``error``.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmfm alt-text service</title>
<style>
  body { font: 16px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }
  h1 { font-size: 1.4rem; } fieldset { border: 1px solid #ccc; border-radius: 6px; margin: 1rem 0; }
  label { display: block; margin: .4rem 0 .1rem; font-weight: 600; }
  input[type=text], input[type=number] { width: 100%; box-sizing: border-box; padding: .35rem; }
  .row { display: flex; gap: 1rem; } .row > div { flex: 1; }
  button { margin: .6rem .6rem 0 0; padding: .5rem 1rem; font-size: 1rem; }
  #preview { max-width: 14rem; max-height: 14rem; display: block; margin: .6rem 0; border: 1px solid #ddd; }
  #result { background: #f5f7fa; border-radius: 6px; padding: .8rem 1rem; min-height: 2rem; }
  table { border-collapse: collapse; } td { padding: .1rem .8rem .1rem 0; }
  .error { color: #a40000; } small { color: #555; }
</style>
</head>
<body data-state="ready">
<h1>mmfm alt-text service</h1>
<p>Upload an image to get alt text (<code>POST /caption</code>) or zero-shot labels (<code>POST /classify</code>).
<small>API: <a href="/docs">/docs</a> &middot; <a href="/health">/health</a></small></p>
<form id="form" onsubmit="return false">
  <label for="image">Image</label>
  <input id="image" name="image" type="file" accept="image/*">
  <img id="preview" alt="" hidden>
  <fieldset><legend>Alt text</legend>
    <div class="row">
      <div><label for="num_beams">Beams</label><input id="num_beams" type="number" min="1" max="8" value="__NUM_BEAMS__"></div>
      <div><label for="max_new_tokens">Max tokens</label><input id="max_new_tokens" type="number" min="1" max="128" value="__MAX_NEW_TOKENS__"></div>
    </div>
    <button id="caption-btn" type="button">Describe image</button>
  </fieldset>
  <fieldset><legend>Zero-shot labels</legend>
    <label for="labels">Candidate labels (comma-separated)</label>
    <input id="labels" type="text" value="a red circle, a blue square, a green triangle">
    <button id="classify-btn" type="button">Classify image</button>
  </fieldset>
</form>
<h2>Result</h2>
<div id="result" role="status" aria-live="polite"><p id="caption"></p><table id="scores"></table><p id="status"></p></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let blob = null;
function setState(s, msg) {
  document.body.dataset.state = s;
  $("status").textContent = msg || "";
  $("status").className = s === "error" ? "error" : "";
}
function showImage(b) {
  blob = b;
  $("preview").src = URL.createObjectURL(b);
  $("preview").hidden = false;
}
$("image").addEventListener("change", (e) => { if (e.target.files[0]) showImage(e.target.files[0]); });
async function post(path, extra) {
  if (!blob) { setState("error", "Choose an image first."); throw new Error("no image"); }
  const fd = new FormData();
  fd.append("image", blob, blob.name || "image.png");
  for (const [k, v] of Object.entries(extra)) fd.append(k, v);
  const r = await fetch(path, { method: "POST", body: fd });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}
async function describe() {
  setState("busy", "Describing...");
  const res = await post("/caption", { num_beams: $("num_beams").value, max_new_tokens: $("max_new_tokens").value });
  $("caption").textContent = res.alt_text;
  $("preview").alt = res.alt_text;
  return res;
}
async function classify() {
  setState("busy", "Classifying...");
  const res = await post("/classify", { labels: $("labels").value });
  const t = $("scores");
  t.textContent = "";
  for (const s of res.scores) {
    const tr = t.insertRow();
    tr.insertCell().textContent = s.label;
    tr.insertCell().textContent = (100 * s.score).toFixed(1) + "%";
  }
  return res;
}
function guard(fn) {
  return async () => {
    try { const r = await fn(); setState("done", "Done in " + r.latency_ms + " ms."); }
    catch (e) { setState("error", e.message); }
  };
}
$("caption-btn").addEventListener("click", guard(describe));
$("classify-btn").addEventListener("click", guard(classify));
function demoImage() {
  const c = document.createElement("canvas");
  c.width = 96; c.height = 96;
  const g = c.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, 96, 96);
  g.fillStyle = "#d22"; g.beginPath(); g.arc(48, 48, 30, 0, 2 * Math.PI); g.fill();
  return new Promise((ok) => c.toBlob((b) => { b.name = "demo.png"; ok(b); }, "image/png"));
}
if (new URLSearchParams(location.search).has("demo")) {
  (async () => {
    try {
      const models = (await (await fetch("/health")).json()).models;
      showImage(await demoImage());
      const done = [];
      if (models.captioner) done.push(await describe().then(() => "caption", (e) => "caption: " + e.message));
      if (models.clip) done.push(await classify().then(() => "classify", (e) => "classify: " + e.message));
      const bad = done.filter((d) => d.includes(":"));
      if (bad.length) setState("error", bad.join("; ")); else setState("done", "demo: " + done.join(" + ") + " ok");
    } catch (e) { setState("error", e.message); }
  })();
}
</script>
</body>
</html>
"""


def render_page(generate=None) -> str:
    """The page with the captioner's stored decoding settings (beams, max new tokens) as the form's defaults."""
    beams, max_new = (generate.num_beams, generate.max_new_tokens) if generate is not None else (1, 20)
    return PAGE.replace("__NUM_BEAMS__", str(int(beams))).replace("__MAX_NEW_TOKENS__", str(int(max_new)))
