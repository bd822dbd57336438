"""The demo's "mitigation" section: the CLIP as trained beside each skin-tone mitigation, on the same held-out emoji,
with the extra wall time each one costs (docs/bias.md, "The demo's mitigation section").

* text projection   -- the "... skin tone" prompt directions projected out of the text embeddings (Chuang et al.)
* image projection  -- the tone directions of the image space, estimated from the TRAINING split's tone variants
  (:mod:`mmfm.eval.bias.image_debias`), projected out of the image embeddings
* image + text directions, both sides -- the image directions and the prompts' text directions together, one
  projection applied to the image and the text embeddings alike (:func:`mmfm.eval.bias.image_debias.image_debias`
  with ``prompts``)
* captions without skin tone -- the captioner with ``generate.alt_text.person_attributes`` leaving skin tone out
  (``bias.caption_person_attributes``): a caption omits the tone instead of misreading it
* data balance / + fairness term -- a short continued fine-tune of the demo CLIP (``bias.finetune_steps``) with
  ``data.balance: {key: skin_tone, mode: sample}``, without and with ``task.contrastive.fairness_weight``

Every setting is scored twice: the bias report (top-1 among the matched names, per tone, gap with its bootstrap
interval) and the demo's held-out zero-shot top-1 over the CLDR groups (the figure the issue's accuracy target is
set against), so a method that buys a smaller gap with accuracy shows its price."""
from __future__ import annotations

import copy
import time
from typing import Callable

__all__ = ["mitigation"]


def _heldout_top1(ctx, model, templates) -> float:
    from mmfm.eval.zeroshot.classify import zeroshot_classify

    root = ctx.shards / "heldout_by_group"
    res = zeroshot_classify(model, str(root / "images"), classnames_file=str(root / "classnames.txt"),
                            templates=list(templates), batch_size=128, workers=0, use_cache=False, progress=False)
    return float(res.metrics["top1"])


def _memo_images(model):
    """``model.encode_image`` remembers its output per input batch (by the batch's bytes): the projection settings
    all read the same CLIP's image embeddings, so the held-out images go through the tower once, not per setting."""
    import hashlib

    import torch.nn.functional as F

    raw, memo = model.encode_image, {}

    def encode_image(image, normalize: bool = False):
        key = hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        if key not in memo:
            memo[key] = raw(image, normalize=False).detach()
        return F.normalize(memo[key], dim=-1) if normalize else memo[key]

    model.encode_image = encode_image
    return model


def _projections(ctx, s) -> tuple[object, dict, dict, dict]:
    """The CLIP as trained (its image embeddings remembered), the projection settings ``{name: model}``, their
    ``{name: extra seconds}`` and notes (the image directions)."""
    import torch

    from mmfm.eval.bias.image_debias import image_directions
    from mmfm.models.checkpoint import load
    from mmfm.models.debias import (attach_debias, attach_image_debias, embed_prompts, orthogonal_projection,
                                    save_debias)

    models, secs, notes = {}, {}, {}
    t0 = time.perf_counter()
    base = _memo_images(load(ctx.out / "clip"))
    clip = copy.copy(base)                  # a shallow copy: same weights and memo, its own encode_text
    Pt = orthogonal_projection(embed_prompts(clip, s.debias_prompts))
    save_debias(ctx.out / "bias" / "debias.safetensors", Pt, s.debias_prompts)
    models["text debiased (projection)"] = attach_debias(clip, Pt, s.debias_prompts)
    secs["text debiased (projection)"] = time.perf_counter() - t0
    if s.image_debias_k:
        t1 = time.perf_counter()
        dirs, info = image_directions(base, str(ctx.shards / "train"), s.attribute, k=s.image_debias_k)
        notes["image directions"] = info
        img = f"image projection (k={info['k']}, training-split tone directions)"
        models[img] = attach_image_debias(copy.copy(base), orthogonal_projection(dirs), info)
        both = f"image + text directions, both sides (k={info['k']})"
        Pu = orthogonal_projection(torch.cat([dirs.double(), embed_prompts(base, s.debias_prompts).double()]))
        models[both] = attach_debias(attach_image_debias(copy.copy(base), Pu, info), Pu, s.debias_prompts)
        secs[img] = secs[both] = time.perf_counter() - t1
    return base, models, secs, notes


def _finetunes(ctx, s, train: Callable, clip_data: dict) -> tuple[dict, dict]:
    """``{name: run folder}``, ``{name: seconds}``: the short balanced (+ fairness) continued fine-tunes."""
    runs, secs = {}, {}
    arms = {"data balance (fine-tune)": 0.0, "data balance + fairness term (fine-tune)": s.fairness_weight}
    for name, weight in arms.items():
        if weight == 0.0 and not s.finetune_balance_only:
            continue
        out = ctx.out / "bias" / ("ft_balance" if weight == 0.0 else "ft_fairness")
        t0 = time.perf_counter()
        values = {**clip_data, "data.val": [], "train.init_from": str(ctx.out / "clip"),
                  "train.max_steps": s.finetune_steps,
                  "train.warmup_steps": 0, "train.lr": s.finetune_lr, "train.ckpt_every_steps": s.finetune_steps,
                  "data.balance": {"key": s.attribute, "mode": "sample"},
                  "task.contrastive.fairness_weight": weight}
        train(ctx, ctx.config("clip"), out, values)
        runs[name], secs[name] = out, time.perf_counter() - t0
    return runs, secs


def mitigation(ctx, rep, train: Callable, clip_data: dict) -> dict:
    """Before/after rows for every method (module docstring); ``rep`` is the as-trained bias report."""
    from mmfm.eval.bias.audit import bias_report
    from mmfm.eval.bias.compare import combine, comparison_rows
    from mmfm.eval.html import table
    from mmfm.models.checkpoint import load

    s = ctx.settings.bias
    base, models, secs, notes = _projections(ctx, s)
    if s.finetune_steps:
        runs, ft_secs = _finetunes(ctx, s, train, clip_data)
        models.update({n: load(p) for n, p in runs.items()})
        secs.update(ft_secs)
    reports, top1 = {"as trained": rep}, {"as trained": _heldout_top1(ctx, copy.copy(base), s.templates)}
    for name, m in models.items():
        t0 = time.perf_counter()
        reports[name] = bias_report([m], str(ctx.shards / "heldout"), s.attribute, templates=list(s.templates),
                                    progress=ctx.progress)
        top1[name] = _heldout_top1(ctx, m, s.templates)
        secs[name] = secs.get(name, 0.0) + time.perf_counter() - t0
    if s.caption_person_attributes is not None:
        name = f"captions without skin tone (person_attributes: {s.caption_person_attributes})"
        t0 = time.perf_counter()
        reports[name] = bias_report([str(ctx.out / "caption")], str(ctx.shards / "heldout"), s.attribute,
                                    progress=ctx.progress, person_attributes=list(s.caption_person_attributes))
        secs[name] = time.perf_counter() - t0
    res = combine(reports)
    head, rows = comparison_rows(res)
    head = head + ["held-out top-1 (CLDR groups)", "captions worst/best, naming a tone it lacks", "extra wall s"]
    caps = {n: r.metrics["caption"] for n, r in reports.items() if "caption" in r.metrics}
    rows = [r + ([f"{100 * top1[r[0]]:.1f}", "-"] if r[1].startswith("zero") else ["-", _caption_cell(caps[r[0]])])
            + [f"{secs.get(r[0], 0.0):.0f}" if r[0] in secs or r[1].startswith("zero") else "-"] for r in rows]
    not_run = [] if s.finetune_steps else [
        "data.balance and task.contrastive.fairness_weight: two short fine-tunes that the demo's 12-minute budget "
        "does not hold; 'bias: {finetune_steps: 30}' in demo.yaml adds them (docs/demo.md has their figures)"]
    return {"table": _format(head, rows), "html": table(head, rows, cls="bias"), "head": head, "rows": rows,
            "heldout_top1": top1, "seconds": {k: round(v, 1) for k, v in secs.items()}, "notes": notes,
            "not_run": not_run}


def _caption_cell(part: dict) -> str:
    """``worst/best CIDEr-D, share of captions naming a tone the image lacks`` (``0.32, 30.0%``)."""
    per = [v["CIDEr-D"] for v in part["per_group"].values()]
    ratio = min(per) / max(per) if max(per) > 0 else float("nan")
    wrong = (part.get("attribute_mention") or {}).get("rate")
    return f"{ratio:.2f}, " + ("-" if wrong is None else f"{100 * wrong:.1f}%")


def _format(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])

