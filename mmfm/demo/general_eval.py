"""Leave-one-source-out evaluation of the general model.

For each source S marked ``loso``, a CLIP trained on every training source but S is scored on S; beside it the
CLIP trained on everything and the Noto-only demo CLIP (when its run folder exists). Every model is scored the
same way on a source's evaluation set (``by_source/eval/S``: its held-out split, or all of an evaluation-only
source):

* zero-shot top-1 and mean per-class recall over the source's label space (all its classes, present or not),
  with the majority-class baseline, for sources that have one (emoji groups, Fashion-MNIST's classes);
* image->text and text->image R@1/R@5 over the set's own captions (``mmfm.eval.retrieval``; every caption of
  an image counts).

Two A/Bs need no training (``score.yaml``, read by the score stage only): a **prompt ensemble** per label space
(zero-shot again with each class's text embedding averaged over several templates: the ``(prompt ensemble)`` rows),
and **WiSE-FT** (``mmfm.models.wiseft``): a tuned CLIP's weights interpolated with those its run started from, scored
like any arm (the ``all WiSE`` and ``without WiSE`` columns).

Captions (the captioner trained on everything, CIDEr-D against each image's human text, beside the best constant
caption) are scored per source in ``caption_scores``.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import data as D
from .general_settings import GeneralSettings, ScoreSettings

ARMS = ("all", "without", "demo", "all_wise", "without_wise")
ARM_TITLES = {"all": "trained on every source", "without": "trained without this source",
              "demo": "demo (Noto only)", "all_wise": "WiSE-FT of the every-source CLIP with its starting weights",
              "without_wise": "WiSE-FT of the without-this-source CLIP with its starting weights"}
ARM_HEADS = {"all": "all", "without": "without", "demo": "demo", "all_wise": "all WiSE",
             "without_wise": "w/o WiSE"}


def _count(folder: Path) -> int:
    path = folder / "manifest.json"
    return int(json.loads(path.read_text(encoding="utf-8"))["total_samples"]) if path.is_file() else 0


def score_clip(model, settings: GeneralSettings, shards: Path, source: str, *, progress: bool,
               score: ScoreSettings | None = None) -> dict:
    """One CLIP on one source: retrieval, and zero-shot where the source has a label space (again with the
    space's prompt ensemble where ``score`` has one). The evaluation images are encoded once: retrieval, the
    single template and the ensemble all read the same embeddings (``zeroshot_from_embeddings``)."""
    spec = next(s for s in settings.sources if s.name == source)
    folder = shards / "by_source" / "eval" / source
    if not _count(folder):
        return {"skipped": f"{source}: no evaluation images"}
    was_training = model.training
    model.eval()
    try:
        return _score_eval_set(model, folder, settings.space(spec.label_space) if spec.label_space else None,
                               shards / "by_source" / "zeroshot" / source / "images", score, progress)
    finally:
        model.train(was_training)


def _score_eval_set(model, folder: Path, space, labels: Path, score: ScoreSettings | None, progress: bool) -> dict:
    from mmfm.eval.retrieval import embed_share, merge_shares, recall_at_k

    share = embed_share(model, str(folder), batch_size=64, workers=0, progress=progress)
    img, txt, owner, _ = merge_shares([share], str(folder))
    out: dict = {"images": _count(folder), "retrieval": recall_at_k(img, txt, owner, (1, 5))}
    if space is not None:
        names = [n for _, n in sorted(zip(share["pos"].tolist(), share["name"]))]   # merge_shares' row order
        rows, targets = labelled_rows(names, labels, list(space.classes))
        if not rows:
            out["zeroshot"] = {"skipped": f"{labels}: no labelled image among the embeddings"}
            return out
        feats = img[rows]
        out["zeroshot"] = zeroshot_from_embeddings(model, feats, targets, list(space.classes), list(space.templates))
        ensemble = score.ensemble(space.name) if score is not None else None
        if ensemble:
            out["zeroshot_ensemble"] = {**zeroshot_from_embeddings(model, feats, targets, list(space.classes),
                                                                   ensemble), "templates": ensemble}
    return out


def labelled_rows(names: list[str], label_folder: Path, classes: list[str]):
    """-> ``(rows, targets)``: the embedding rows (named ``url:KEY`` in ``names``) of the images in ``label_folder``
    (``<slug(label)>/KEY.ext``, ``general_data.write_label_folder``) and each one's class index."""
    import numpy as np

    index = {D.slug(c): i for i, c in enumerate(classes)}
    label = {p.stem: index[p.parent.name] for p in label_folder.glob("*/*") if p.parent.name in index}
    pairs = [(i, label[key]) for i, key in enumerate(n.rsplit(":", 1)[-1] for n in names) if key in label]
    return [i for i, _ in pairs], np.asarray([t for _, t in pairs], dtype=np.int64)


def zeroshot_from_embeddings(model, image_emb, targets, classes: list[str], templates: list[str]) -> dict:
    """Zero-shot over every class of ``classes`` from image embeddings and their class indices: the figures
    ``transfer.score_set`` gives, without decoding and encoding the images again."""
    import numpy as np

    from mmfm.eval.zeroshot.classifier import build_classifier
    from mmfm.eval.zeroshot.metrics import classification_metrics

    from .transfer import set_summary

    logits = image_emb @ build_classifier(model, list(classes), list(templates)).float()
    return set_summary(classification_metrics(logits, targets, len(classes)),
                       np.bincount(targets, minlength=len(classes)), classes)


def arm_runs(out: Path, settings: GeneralSettings, source: str) -> dict[str, Path]:
    """The CLIP run folders scored on ``source``: everything, without it (a loso source), the demo's."""
    runs = {"all": out / "clip"}
    spec = next(s for s in settings.sources if s.name == source)
    if spec.loso:
        runs["without"] = out / "loso" / f"without_{source}"
    demo = Path(settings.loso.demo_run).expanduser() if settings.loso.demo_run else None
    if demo is not None and (demo / "config.yaml").is_file():
        runs["demo"] = demo
    return runs


def score_all(out: Path, settings: GeneralSettings, shards: Path, *, progress: bool,
              score: ScoreSettings | None = None) -> dict[str, dict]:
    """-> {source: {arm: scores}}; each model is loaded once, and its WiSE-FT weights (``score.wise_ft``) are set
    in place after its own arms are scored."""
    from mmfm.models.checkpoint import load

    from .general_wiseft import StartingWeights

    score = score or ScoreSettings()
    wise = score.wise_ft if score.wise_ft.alpha is not None else None
    plan: dict[Path, list[tuple[str, str]]] = {}
    for spec in settings.sources:
        for arm, run in arm_runs(out, settings, spec.name).items():
            plan.setdefault(run, []).append((spec.name, arm))
    table: dict[str, dict] = {s.name: {} for s in settings.sources}
    starts = StartingWeights()
    for run, jobs in plan.items():
        model = load(str(run), expect="clip")
        for source, arm in jobs:
            table[source][arm] = {**score_clip(model, settings, shards, source, progress=progress, score=score),
                                  "run": str(run)}
        wise_jobs = [(s, a) for s, a in jobs if wise is not None and a in wise.arms]
        if wise_jobs:
            meta = starts.interpolate(model, run, wise.alpha)
            for source, arm in wise_jobs:
                table[source][f"{arm}_wise"] = {**score_clip(model, settings, shards, source, progress=progress,
                                                             score=score), "run": str(run), "wise_ft": meta}
        del model
    return table


def caption_scores(run: Path, settings: GeneralSettings, shards: Path, *, progress: bool) -> dict[str, dict]:
    """The captioner on every source's evaluation set: CIDEr-D etc. beside the best constant caption (chosen
    among the training captions of every training source)."""
    from mmfm.eval.captioning.caption import evaluate_captions
    from mmfm.generate import stored_generate
    from mmfm.models.checkpoint import load

    from .report import constant_caption_baseline

    model = load(str(run), expect="captioner")
    gen = stored_generate(model)
    train_caps = [s["txt"] for spec in settings.sources if spec.train
                  for s in D.iter_samples(shards / "by_source" / "train" / spec.name)]
    out = {}
    for spec in settings.sources:
        folder = shards / "by_source" / "eval" / spec.name
        if not _count(folder):
            continue
        res = evaluate_captions(model, str(folder), gen, split="eval", max_samples=settings.caption_max_samples,
                                progress=progress)
        refs = {p["key"]: p["references"] for p in res.predictions}
        out[spec.name] = {**{k: res.metrics[k] for k in ("CIDEr-D", "BLEU-4", "ROUGE-L")},
                          "constant_baseline": constant_caption_baseline(refs, train_caps),
                          "images": len(refs), "trained_on": spec.train,
                          "examples": [{"caption": p["caption"], "references": p["references"][:2]}
                                       for p in res.predictions[:3]]}
    return out


# ----------------------------------------------------------------------------- table + chart
def loso_rows(table: dict[str, dict]) -> list[dict]:
    """One row per (source, metric): the arms side by side (None where an arm was not run)."""
    rows = []
    for source, arms in table.items():
        metrics = [("zero-shot top-1", ("zeroshot", "top1")),
                   ("zero-shot mean recall", ("zeroshot", "mean_per_class_recall")),
                   ("zero-shot top-1 (prompt ensemble)", ("zeroshot_ensemble", "top1")),
                   ("zero-shot mean recall (prompt ensemble)", ("zeroshot_ensemble", "mean_per_class_recall")),
                   ("image->text R@1", ("retrieval", "image_to_text_R@1")),
                   ("text->image R@1", ("retrieval", "text_to_image_R@1"))]
        for title, (part, key) in metrics:
            values = {arm: ((arms.get(arm) or {}).get(part) or {}).get(key) for arm in ARMS}
            if all(v is None for v in values.values()):
                continue
            base = ((arms.get("all") or {}).get(part) or {}).get("majority_top1") if key == "top1" else None
            rows.append({"source": source, "metric": title, **values, "baseline": base})
    return rows


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_loso(rows: list[dict]) -> str:
    head = f"{'source':<16} {'metric':<39} " + " ".join(f"{ARM_HEADS[a]:>8}" for a in ARMS) + f" {'majority':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['source']:<16} {r['metric']:<39} " + " ".join(f"{_fmt(r.get(a)):>8}" for a in ARMS)
                     + f" {_fmt(r['baseline']):>8}")
    return "\n".join(lines)


def headline_rows(rows: list[dict]) -> dict[str, dict]:
    """Per source, the row of its headline metric: zero-shot top-1, else image->text R@1."""
    head: dict[str, dict] = {}
    for r in rows:
        if r["metric"] == "zero-shot top-1" or (r["metric"] == "image->text R@1" and r["source"] not in head):
            head[r["source"]] = r
    return head


def plot_bars(head: dict[str, dict], series: dict[str, str], title: str, path: Path,
              marks: dict[str, str] | None = None) -> Path | None:
    """Grouped bars, one group per source of ``head`` (``headline_rows``), one bar per ``series`` key (its legend
    label the value); ``marks``: a suffix for some sources' tick labels."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not head or not series:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(head)), 3.8))
    width = 0.8 / len(series)
    for j, (key, label) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(head))]
        ax.bar(xs, [r.get(key) or 0 for r in head.values()], width, label=label)
    ax.set_xticks(range(len(head)))
    ax.set_xticklabels([f"{s}{(marks or {}).get(s, '')}\n({r['metric']})" for s, r in head.items()], fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loso(rows: list[dict], path: Path) -> Path | None:
    """Grouped bars: per source, the headline metric (zero-shot top-1, else image->text R@1) of each arm."""
    head = headline_rows(rows)
    arms = {a: ARM_TITLES[a] for a in ARMS if any(r.get(a) is not None for r in head.values())}
    return plot_bars(head, arms, "leave-one-source-out: each source scored by models with and without it", path)
