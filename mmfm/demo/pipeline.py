"""The demo stages on real data (Noto emoji), each a thin call into the library.

1. shards   -- ``mmfm shards build --recipe noto_emoji`` with a held-out split by base name
2. clip     -- ``mmfm train configs/experiments/demo/clip.yaml`` (ImageNet EfficientNet-Lite0 + MiniLM, LiT)
3. zeroshot -- held-out images exported as a folder tree by group, then ``mmfm zeroshot``'s library call
   transfer -- zero-shot over all 9 groups on held-out Noto, Twemoji (another artist) and real photos
   scratch  -- today's from-scratch recipe (``clip_scratch.yaml``) at the same budget, scored the same way
4. caption  -- ``mmfm train .../caption.yaml`` on the names, then ``mmfm eval caption`` on the held-out split
5. bias     -- ``mmfm eval bias``: zero-shot and caption quality per skin tone, matched by base name
6. vqa      -- questions drawn from the metadata -> VQA shards -> ``mmfm train .../vqa.yaml`` -> ``mmfm eval vqa``
7. report   -- ``OUT/report.html`` and the metrics table in the terminal
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mmfm.config import ConfigError, atomic_write_text
from mmfm.config.resources import resource_dir

from . import data as D
from . import transfer as T
from .child import train_in_child
from .settings import DemoSettings
from .stages import Stage



@dataclass
class DemoContext:
    out: Path
    quick: bool = False
    progress: bool = True
    config_dir: Path = field(default_factory=lambda: resource_dir("configs", "experiments", "demo"))
    results: dict = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return "quick" if self.quick else "full"

    def config(self, name: str) -> Path:
        path = self.config_dir / (f"quick_{name}.yaml" if self.quick else f"{name}.yaml")
        if not path.is_file():
            raise ConfigError(f"demo config not found: {path}")
        return path

    @cached_property
    def settings(self) -> DemoSettings:
        """``demo.yaml`` (typed, read once): shard size, held-out fraction, emoji limit, prompts, report grid."""
        from mmfm.config import load_config
        return load_config(self.config("demo"), DemoSettings)

    @property
    def shards(self) -> Path:
        return self.out / "shards"


def _configs_digest(*paths: Path) -> dict:
    """The configs as they resolve (``_base_`` files followed): editing a base config makes the stages that use
    it stale, editing only a comment does not."""
    from mmfm.config import read_yaml
    return {p.name: read_yaml(p) for p in paths}


# ----------------------------------------------------------------------------- 1. shards
def stage_shards(ctx: DemoContext) -> dict:
    from mmfm.data.shards import read_manifest

    s = ctx.settings.shards
    summary = D.build_emoji_shards(ctx.shards, size=s.image_size, holdout=s.holdout, limit=s.limit,
                                   subsample=s.subsample, shard_size=s.shard_size, workers=s.workers,
                                   progress=ctx.progress)
    heldout = D.load_split(ctx.shards / "heldout")
    classes = read_manifest(ctx.shards / "train")["classes"]
    images, names = D.write_zeroshot_folder(heldout, classes, ctx.shards / "heldout_by_group")
    summary["classes"] = classes
    summary["zeroshot_folder"] = str(images)
    train = D.load_split(ctx.shards / "train")
    train_images = D.export_images(train, ctx.shards / "train_images", by_group=False)
    g = ctx.settings.group_captions
    if g.template:
        summary["group_captions"] = D.build_caption_shards(train, train_images, g.template,
                                                           ctx.shards / "train_groups", size=s.image_size,
                                                           shard_size=s.shard_size, workers=s.workers,
                                                           progress=ctx.progress)
    return summary


# ----------------------------------------------------------------------------- training, through the library
def _train(ctx: DemoContext, config: Path, out_dir: Path, values: dict, memo: bool = False,
           isolate: bool = False, overrides: list[str] | None = None) -> dict:
    """Train the experiment ``config`` with ``values`` (dotted keys -> Python values) set, in this process,
    resuming from the run's last checkpoint if there is one (``mmfm.train.train_experiment``). ``memo``: towers
    that cache their locked outputs keep them in the job's ``settings.memo_dir`` (``model.*.memo_dir``: read when
    made by the same locked weights), for the CLIPs, whose pretrained towers are shared by runs and re-runs.
    ``overrides``: ``--set`` style ``KEY=VALUE`` strings, applied before ``values``."""
    from mmfm.config import load_experiment
    from mmfm.train.builder import train_experiment

    values = {**values, "train.output_dir": str(out_dir)}
    if (out_dir / "checkpoints" / "latest").exists():
        values.update({"train.resume": "latest", "train.init_from": None})
    if not ctx.progress:
        values["train.progress"] = False
    cfg = load_experiment(config, overrides=overrides, values=values)
    folder = getattr(ctx.settings, "memo_dir", "") if memo else ""
    for tower in (cfg.model.vision, cfg.model.text):
        if folder and tower.cache_locked_features and not tower.memo_dir:
            tower.memo_dir = str(ctx.out / folder)   # one folder per job: a file per locked part + its weights
    result = train_in_child(cfg, out_dir) if isolate else train_experiment(cfg)
    if "stopped" in result:
        raise RuntimeError(f"training {config.name} stopped: {result['stopped']}")
    from .report import read_metrics
    rows = read_metrics(out_dir / "metrics.jsonl")
    last = next((r for r in reversed(rows) if "train/loss" in r), {})
    return {"steps": last.get("step"), "final_train_loss": last.get("train/loss"),
            "samples_per_s": last.get("train/samples_per_s"), "run": str(out_dir)}


def _clip_data(ctx: DemoContext) -> dict:
    """The CLIP runs' data: Noto training emoji only (name captions + group captions), held-out for validation."""
    g = ctx.settings.group_captions
    sources = [{"path": str(ctx.shards / "train"), "weight": 1.0 - g.weight}]
    if g.template:
        sources.append({"path": str(ctx.shards / "train_groups"), "weight": g.weight})
    else:
        sources[0]["weight"] = 1.0
    return {"data.train": sources, "data.val": [{"path": str(ctx.shards / "heldout")}]}


def stage_clip(ctx: DemoContext) -> dict:
    return _train(ctx, ctx.config("clip"), ctx.out / "clip", _clip_data(ctx), memo=True)


# ----------------------------------------------------------------------------- transfer + from scratch
def stage_transfer(ctx: DemoContext) -> dict:
    """The pretrained CLIP, zero-shot over all 9 groups on held-out Noto, Twemoji and real photos."""
    return {"sets": T.score_sets(ctx, ctx.out / "clip"), "run": str(ctx.out / "clip")}


def stage_scratch(ctx: DemoContext) -> dict:
    """Today's recipe (``clip_scratch.yaml``: a timm tower from random weights + locked MiniLM) on the same data
    for the pretrained CLIP's number of steps, scored on the same three sets: from scratch vs pretrained towers
    at an equal training budget."""
    from mmfm.config import read_yaml

    s = ctx.settings.scratch
    if not s.train:
        return {"skipped": "not trained in this run (demo.yaml scratch.train: false)", "reference": s.reference}
    steps = s.steps or read_yaml(ctx.out / "clip" / "config.yaml")["train"]["max_steps"]
    summary = _train(ctx, ctx.config("clip_scratch"), ctx.out / "scratch",
                     {**_clip_data(ctx), "train.max_steps": steps})
    summary["sets"] = T.score_sets(ctx, ctx.out / "scratch")
    return summary


# ----------------------------------------------------------------------------- 3. zero-shot
def stage_zeroshot(ctx: DemoContext) -> dict:
    import numpy as np

    from mmfm.eval.zeroshot.classify import zeroshot_classify
    from mmfm.eval.zeroshot.report import write_report
    from mmfm.models.checkpoint import load as load_model

    s = ctx.settings.zeroshot
    root = ctx.shards / "heldout_by_group"
    model = load_model(str(ctx.out / "clip"))
    res = zeroshot_classify(model, str(root / "images"), classnames_file=str(root / "classnames.txt"),
                            templates=list(s.templates), batch_size=128, workers=0, use_cache=False,
                            progress=ctx.progress)
    files = write_report(res, ctx.out / "zeroshot", thumbnails=False)  # confusion axes carry the group names
    support = res.confusion.sum(axis=1)
    present = int((support > 0).sum())
    majority = int(np.argmax(support))
    return {"top1": res.metrics["top1"], "top5": res.metrics.get("top5"),
            "mean_per_class_recall": res.metrics["mean_per_class_recall"],
            "chance_top1": 1.0 / present, "chance_recall": 1.0 / present,
            "majority_class": res.classnames[majority], "majority_top1": float(support[majority] / support.sum()),
            "images": int(support.sum()), "classes": res.classnames,
            "per_class": [{"class": r["classname"], "n": r["n"], "recall": r["recall"]} for r in res.per_class],
            "confusion_png": str(files.get("confusion", "")), "predictions": str(files["predictions"])}


# ----------------------------------------------------------------------------- 4. caption
def _tokenizer_dir(ctx: DemoContext) -> Path:
    """The captioner's small vocabulary, fitted to the training names and the VQA questions/answers."""
    folder = ctx.shards / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        names, answers = [], []
        for s in D.iter_samples(ctx.shards / "train"):         # one pass over the split
            names.append(s["txt"])
            answers += [qa["answer"] for qa in D.qa_pairs(s["meta"])]
        D.train_caption_tokenizer(names + list(D.QUESTIONS.values()) + answers, folder)
    return folder


def _decoder_values(ctx: DemoContext) -> dict:
    out = {"model.clip_checkpoint": str(ctx.out / "clip")}
    if ctx.settings.caption.small_vocab:
        out["model.decoder.tokenizer"] = str(_tokenizer_dir(ctx))
    return out


def stage_caption(ctx: DemoContext) -> dict:
    from mmfm.eval.captioning.caption import evaluate_captions
    from mmfm.eval.result import write_eval
    from mmfm.generate import stored_generate
    from mmfm.models.checkpoint import load

    from .report import constant_caption_baseline

    values = {"data.train": [{"path": str(ctx.shards / "train")}], **_decoder_values(ctx)}
    summary = _train(ctx, ctx.config("caption"), ctx.out / "caption", values)
    model = load(str(ctx.out / "caption"), expect="captioner")
    gen = stored_generate(model)
    res = evaluate_captions(model, str(ctx.shards / "heldout"), gen, split="heldout", progress=ctx.progress)
    write_eval(res, ctx.out / "caption" / "eval")
    refs = {p["key"]: p["references"] for p in res.predictions}
    train_caps = [s["txt"] for s in D.iter_samples(ctx.shards / "train")]
    base = constant_caption_baseline(refs, train_caps)
    summary.update({k: res.metrics[k] for k in ("CIDEr-D", "BLEU-4", "BLEU-1", "ROUGE-L")})
    summary["constant_baseline"] = base
    summary["degenerate"] = {k: res.meta["degenerate"][k] for k in ("distinct_frac", "empty", "repetition_loops",
                                                                    "collapsed")}
    summary["captions"] = {p["key"]: p["caption"] for p in res.predictions}
    summary["decoding"] = res.meta.get("decoding")
    return summary


# ----------------------------------------------------------------------------- 5. VQA
def _vqa_split(ctx: DemoContext, split: str) -> tuple[Path, list[dict]]:
    samples = D.load_split(ctx.shards / split)
    paths = D.export_images(samples, ctx.shards / f"{split}_images", by_group=False)
    questions = ctx.out / "vqa_data" / f"{split}.json"
    records = D.write_vqa_json(samples, paths, questions)
    shards = ctx.out / "vqa_data" / f"shards_{split}"
    s = ctx.settings.shards
    D.build_vqa_shards(questions, shards, size=s.image_size, workers=s.workers, progress=ctx.progress)
    return shards, records


def stage_vqa(ctx: DemoContext) -> dict:
    from collections import Counter, defaultdict

    from mmfm.eval.captioning.vqa import evaluate_vqa_model
    from mmfm.eval.result import write_eval
    from mmfm.generate import stored_generate
    from mmfm.models.checkpoint import load
    from mmfm.models.layout import read_config

    train_shards, train_records = _vqa_split(ctx, "train")
    held_shards, held_records = _vqa_split(ctx, "heldout")
    values = {"data.train": [{"path": str(train_shards)}], "train.init_from": str(ctx.out / "caption"),
              **_decoder_values(ctx)}
    summary = _train(ctx, ctx.config("vqa"), ctx.out / "vqa", values)
    model = load(str(ctx.out / "vqa"), expect="captioner")
    gen = stored_generate(model)
    vqa_cfg = read_config(str(ctx.out / "vqa")).task.vqa   # what the run trained with
    res = evaluate_vqa_model(model, str(held_shards), gen, vqa_cfg, split="heldout", progress=ctx.progress)
    write_eval(res, ctx.out / "vqa" / "eval")
    kind_of = {r["question_id"]: r["kind"] for r in held_records}
    by_kind: dict[str, list[float]] = defaultdict(list)
    for p in res.predictions:
        by_kind[kind_of.get(str(p["question_id"]), "?")].append(p["accuracy"])
    # majority baseline: each question kind answered with its most frequent training answer
    top = {}
    for kind in {r["kind"] for r in train_records}:
        top[kind] = Counter(r["answers"][0] for r in train_records if r["kind"] == kind).most_common(1)[0][0]
    base_by_kind: dict[str, list[float]] = defaultdict(list)
    for r in held_records:
        base_by_kind[r["kind"]].append(100.0 if top.get(r["kind"]) == r["answers"][0] else 0.0)
    base_all = [a for v in base_by_kind.values() for a in v]
    summary.update({
        "overall": res.metrics["overall"],
        "per_question_type": {k: 100.0 * sum(v) / len(v) for k, v in by_kind.items()},
        "majority_baseline": sum(base_all) / max(len(base_all), 1),
        "majority_by_type": {k: sum(v) / len(v) for k, v in base_by_kind.items()},
        "majority_answers": top, "questions": res.meta["samples"],
        "answers": {str(p["question_id"]): p["answer"] for p in res.predictions},
    })
    return summary


# ----------------------------------------------------------------------------- 6. bias
def stage_bias(ctx: DemoContext) -> dict:
    """``mmfm eval bias`` on the held-out emoji: zero-shot top-1 (CLIP) and caption quality (captioner) per skin
    tone, matched by base name so every tone holds the same emoji."""
    from mmfm.eval.bias.audit import bias_report
    from mmfm.eval.bias.output import bias_table_html, format_table, write_bias_report

    s = ctx.settings.bias
    try:
        rep = bias_report([str(ctx.out / "clip"), str(ctx.out / "caption")], str(ctx.shards / "heldout"),
                          s.attribute, templates=list(s.templates), progress=ctx.progress)
    except ConfigError as e:           # e.g. a tiny custom split with no emoji in every tone: say so in the report
        return {"skipped": f"bias table not made: {e}"}
    paths = write_bias_report(rep, ctx.out / "bias")
    zs, cap = rep.metrics.get("zeroshot") or {}, rep.metrics.get("caption") or {}
    return {"attribute": rep.meta["attribute"], "groups": rep.meta["groups"], "n_samples": rep.meta["n_samples"],
            "matched_values": rep.meta.get("matched_values"), "table": format_table(rep), "html": bias_table_html(rep),
            "zeroshot_gap": zs.get("gap"), "caption_gap": (cap.get("gap") or {}).get("CIDEr-D"),
            "png": str(paths["plot"]), "json": str(paths["json"]),
            "mitigation": _mitigation_or_why(ctx, rep) if s.mitigate else None}


def _mitigation_or_why(ctx: DemoContext, rep) -> dict:
    try:
        return _mitigation(ctx, rep)
    except ConfigError as e:            # say so in the report rather than lose the bias table
        return {"table": f"mitigation not run: {e}", "html": f"<p class=muted>mitigation not run: {e}</p>",
                "not_run": []}


def _mitigation(ctx: DemoContext, rep) -> dict:
    """Before/after for every mitigation (:mod:`mmfm.demo.mitigation`); the fine-tunes train through ``_train``."""
    from .mitigation import mitigation
    return mitigation(ctx, rep, _train, _clip_data(ctx))


# ----------------------------------------------------------------------------- 7. report
def stage_report(ctx: DemoContext) -> dict:
    from . import report as R

    results = ctx.results
    rows = R.metrics_rows(results)
    curves = R.plot_curves({"CLIP (pretrained towers)": ctx.out / "clip", "CLIP from scratch": ctx.out / "scratch",
                            "captioner": ctx.out / "caption", "VQA": ctx.out / "vqa"}, ctx.out / "training_curves.png")
    items = _grid_items(ctx, ctx.settings.report.grid)
    zs = results.get("zeroshot", {})
    info = {"summary": _summary_line(ctx), "details": _details(ctx)}
    conf = Path(zs["confusion_png"]) if zs.get("confusion_png") else None
    bias = results.get("bias") or {}
    compare, targets = R.comparison_rows(results), R.target_rows(results)
    chart = R.plot_comparison(compare, ctx.out / "scratch_vs_pretrained.png")
    scratch = results.get("scratch") or {}
    comparison = R.comparison_html(compare, chart, targets, scratch) + R.photos_html(_photo_items(ctx))
    path = R.write_report(ctx.out, rows=rows, curves=curves, confusion=conf, items=items, info=info,
                          groups=R.group_count(zs), bias=bias, comparison=comparison)
    table = R.format_table(rows)
    if compare:
        table = R.format_comparison(compare) + "\n\n" + table
    if scratch.get("skipped"):
        table = f"from scratch: {scratch['skipped']}; measured separately: {scratch.get('reference')}\n\n" + table
    table += "\n\n" + R.format_targets(targets)
    if bias:
        table += "\n\n" + R.format_bias(bias)
    atomic_write_text(ctx.out / "metrics.txt", table + "\n")
    atomic_write_text(ctx.out / "metrics.json", json.dumps(rows, indent=1))
    atomic_write_text(ctx.out / "comparison.json", json.dumps({"rows": compare, "targets": targets}, indent=1))
    return {"report": str(path), "table": table}


def _grid_items(ctx: DemoContext, n: int) -> list[dict]:
    """Held-out emoji spread over the groups: thumbnail, true name, caption, zero-shot label, VQA answers."""
    import random

    from mmfm.eval.html import thumbnail_data_uri

    zs_pred = {}
    pred_file = ctx.out / "zeroshot" / "predictions.jsonl"
    if pred_file.is_file():
        names = (ctx.shards / "heldout_by_group" / "classnames.txt").read_text(encoding="utf-8").split("\n")
        by_slug = {D.slug(x): x for x in names if x}
        for line in pred_file.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            zs_pred[Path(r["path"]).stem] = by_slug.get(r["pred"], r["pred"])
    captions = (ctx.results.get("caption") or {}).get("captions", {})
    answers = (ctx.results.get("vqa") or {}).get("answers", {})
    samples = D.load_split(ctx.shards / "heldout")
    random.Random(0).shuffle(samples)
    samples.sort(key=lambda s: s["meta"].get("group", ""))
    step = max(1, len(samples) // max(n, 1))
    items = []
    for s in samples[::step][:n]:
        qa = [(D.QUESTIONS[k], answers[f"{s['key']}_{k}"]) for k in D.QUESTIONS if f"{s['key']}_{k}" in answers]
        items.append({"thumb": thumbnail_data_uri(s["image"], 64, fmt="PNG"), "name": s["txt"], "group": s["meta"].get("group", ""),
                      "caption": captions.get(s["key"], "-"), "zeroshot": zs_pred.get(s["key"], "-"), "answers": qa})
    return items


def _photo_items(ctx: DemoContext) -> list[dict]:
    """The real photos with their hand-named label and group and each CLIP's zero-shot group."""
    from mmfm.eval.html import thumbnail_data_uri

    from .photos import read_photo_list

    preds = {arm: ((ctx.results.get(arm) or {}).get("sets") or {}).get("photos", {}).get("predictions", {})
             for arm in ("transfer", "scratch")}
    items = []
    for p in read_photo_list():
        rel = f"{D.slug(p['group'])}/{p['name']}.png"
        path = ctx.out / "photos" / "images" / rel
        if path.is_file():
            items.append({"thumb": thumbnail_data_uri(path.read_bytes(), 96, fmt="JPEG"), "label": p["label"],
                          "group": p["group"], "pretrained": preds["transfer"].get(rel, "-"),
                          "scratch": preds["scratch"].get(rel, "-")})
    return items


def _summary_line(ctx: DemoContext) -> str:
    sh = ctx.results.get("shards", {})
    tr, ho = (sh.get("train") or {}).get("samples"), (sh.get("heldout") or {}).get("samples")
    return (f"{tr} training emoji and {ho} held-out emoji (split by base name: no skin-tone variant of a held-out "
            f"emoji was seen in training). Every number below is measured on the held-out emoji.")


def _run_line(run: Path, r: dict) -> str:
    """'resnet10t @ 48 px, 120 steps x 256, lr 0.002, 116 samples/s, final train loss 2.61' from the saved config."""
    from mmfm.config import read_yaml
    try:
        cfg = read_yaml(run / "config.yaml")
    except Exception:  # noqa: BLE001 - the report still renders without it
        return str(run)
    m, t, d = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
    what = m.get("vision", {}).get("timm_model", "")
    if m.get("decoder"):
        dec = m["decoder"]
        what = f"{dec.get('arch')} decoder {dec.get('config_overrides', {})} on the CLIP's {what}"
    else:
        what = f"{what} @ {m.get('vision', {}).get('image_size')} px + {m.get('text', {}).get('hf_path', '')} " \
               f"(locked: {m.get('text', {}).get('lock')})"
    loss = r.get("final_train_loss")
    return (f"{what}; {t.get('max_steps')} steps x {d.get('batch_size')}, lr {t.get('lr')}; "
            f"{(r.get('samples_per_s') or 0):.0f} samples/s; final train loss {loss:.3f}" if loss is not None else what)


def _details(ctx: DemoContext) -> dict:
    st = ctx.settings
    g = st.group_captions
    out = {"output folder": str(ctx.out), "variant": ctx.variant,
           "held-out split": f"{st.shards.holdout:.0%} of base names (skin-tone variants stay together), "
                             f"never seen in any training stage"}
    if g.template:
        out["CLIP training captions"] = (f"the CLDR name ({1 - g.weight:.0%} of samples) or "
                                         f"'{g.template}' ({g.weight:.0%}), for training images only")
    out["zero-shot prompts"] = ", ".join(st.zeroshot.templates)
    out["evaluation only (never trained on)"] = ("Twemoji (data_recipes/twemoji, npm emoji-datasource-twitter, "
                                                 "CC-BY 4.0) and scikit-image's photos (data_recipes/skimage_photos)")
    for name in ("clip", "scratch", "caption", "vqa"):
        run = ctx.out / name
        r = ctx.results.get(name) or {}
        if r:
            out[f"{name} run"] = _run_line(run, r)
    out["configs"] = str(ctx.config_dir)
    out["reproduce"] = "mmfm demo --out " + str(ctx.out) + (" --quick" if ctx.quick else "")
    return out


# ----------------------------------------------------------------------------- the stage list
def _fp(ctx: DemoContext, *names: str) -> dict:
    files = [ctx.config("demo")] + [ctx.config(n) for n in names]
    return {"variant": ctx.variant, "configs": _configs_digest(*files)}


def build_stages() -> list[Stage]:
    return [
        Stage("shards", "Build emoji shards (noto_emoji recipe, held-out split by base name)", stage_shards,
              lambda c: _fp(c), ("shards",)),
        Stage("clip", "Continued pre-training of CLIP on Noto emoji: ImageNet EfficientNet-Lite0 + locked MiniLM",
              stage_clip,
              lambda c: _fp(c, "clip"), ("clip",)),
        Stage("zeroshot", "Zero-shot classify the held-out emoji into their CLDR groups", stage_zeroshot,
              lambda c: _fp(c, "clip"), ("zeroshot",)),
        Stage("transfer", "Zero-shot on held-out Noto, Twemoji (another artist) and real photos, all 9 groups",
              stage_transfer, lambda c: _fp(c, "clip"), ("transfer", "twemoji", "photos")),
        Stage("scratch", "From scratch at the same budget: today's recipe (random timm tower), scored the same way",
              stage_scratch, lambda c: _fp(c, "clip", "clip_scratch"), ("scratch",)),
        Stage("caption", "Fine-tune a captioner on emoji names, caption the held-out emoji", stage_caption,
              lambda c: _fp(c, "clip", "caption"), ("caption",)),
        Stage("bias", "Skin-tone bias table: zero-shot and captions per tone on the same held-out emoji",
              stage_bias, lambda c: _fp(c, "clip", "caption"), ("bias",)),
        Stage("vqa", "Train VQA on questions from the metadata, answer them for held-out emoji", stage_vqa,
              lambda c: _fp(c, "clip", "caption", "vqa"), ("vqa", "vqa_data")),
        Stage("report", "Write the report", stage_report, lambda c: {"always": os.urandom(8).hex()}),
    ]
