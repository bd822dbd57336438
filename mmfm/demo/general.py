"""The general model (``make general``, ``mmfm demo --job general``): the demo's stages and machinery
(``StageRunner``, ``DemoContext``, in-process training that resumes from checkpoints) with another settings
object, ``configs/experiments/general/general.yaml``, and data from every openly licensed source.

1. shards  -- every source's recipe in one mix build (dedup across sources, per-source counts), then per source:
   training images, one-sample-per-caption CLIP folders, evaluation sets, zero-shot label folders
2. clip    -- the demo's CLIP recipe (ImageNet EfficientNet-Lite0 + locked MiniLM) on every training source
3. loso    -- for each ``loso`` source S, the same CLIP trained without S (``loso.steps`` steps); every arm reads
   the locked towers' outputs the CLIP saved (``OUT/memo``, ``settings.memo_dir``) instead of recomputing them
4. score   -- every CLIP on every source (zero-shot, retrieval): the leave-one-source-out table, with the A/Bs of
   ``score.yaml`` that need no training (prompt ensembles, WiSE-FT); ``--redo score`` re-scores a finished run
5. caption -- a captioner on every training source's captions, scored on every source's evaluation set
   (ab)    -- with ``--ab`` only (``make general-ab``, outside the job's budget): the training A/Bs of ``ab.yaml``,
   each the every-source CLIP with one change, scored like the leave-one-out arms (``general_ab``)
6. report  -- ``OUT/report.html``, ``OUT/metrics.txt``, ``OUT/loso.json``, the chart ``OUT/loso.png`` (and the
   A/B table and ``OUT/ab.png`` once an ``--ab`` run wrote ``OUT/ab.json``)

Every stage is skipped on a re-run once done; an interrupted one resumes (the builder from its last complete shard,
training from its last checkpoint, ``loso`` from its last finished arm). Re-running score (``--redo score``, or an
edited ``score.yaml``) re-runs the report but not the captioner, which never reads the scores.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mmfm.config import atomic_write_text
from mmfm.config.resources import resource_dir

from . import general_data as G
from . import general_eval as E
from .general_settings import AbSettings, GeneralSettings, ScoreSettings
from .pipeline import DemoContext, _configs_digest, _train
from .stages import Stage


@dataclass
class GeneralContext(DemoContext):
    config_dir: Path = field(default_factory=lambda: resource_dir("configs", "experiments", "general"))

    @cached_property
    def settings(self) -> GeneralSettings:     # type: ignore[override]
        from mmfm.config import load_config
        return load_config(self.config("general"), GeneralSettings)

    @cached_property
    def score_settings(self) -> ScoreSettings:
        from mmfm.config import load_config
        return load_config(self.config("score"), ScoreSettings)

    @cached_property
    def ab_settings(self) -> AbSettings:
        from mmfm.config import load_config
        return load_config(self.config("ab"), AbSettings)


# ----------------------------------------------------------------------------- stages
def stage_shards(ctx: GeneralContext) -> dict:
    manifests = G.build_all(ctx.settings, ctx.shards, progress=ctx.progress)
    per_source = G.split_by_source(ctx.settings, ctx.shards)
    return {"splits": {k: {"samples": m["total_samples"], "failures": m["failures"], "sources": m["sources"]}
                       for k, m in manifests.items()},
            "by_source": per_source, "classes": manifests["train"]["classes"]}


def _clip_values(ctx: GeneralContext, without: str | None = None) -> dict:
    val = [{"path": str(ctx.shards / "by_source" / "eval" / s.name)} for s in ctx.settings.sources
           if s.train and s.name != without and ctx.results["shards"]["by_source"][s.name]["eval"]]
    return {"data.train": G.train_sources(ctx.settings, ctx.shards, "clip", without), "data.val": val[:1]}


def stage_clip(ctx: GeneralContext) -> dict:
    return _train(ctx, ctx.config("clip"), ctx.out / "clip", _clip_values(ctx), memo=True, isolate=True)


def stage_loso(ctx: GeneralContext) -> dict:
    """One CLIP per left-out source; an arm with a ``summary.json`` is done (resume between arms)."""
    arms = {}
    for spec in ctx.settings.sources:
        if not spec.loso:
            continue
        run = ctx.out / "loso" / f"without_{spec.name}"
        done = run / "summary.json"
        if done.is_file():
            arms[spec.name] = json.loads(done.read_text(encoding="utf-8"))
            continue
        values = _clip_values(ctx, without=spec.name)
        if ctx.settings.loso.steps:
            values["train.max_steps"] = ctx.settings.loso.steps
        arms[spec.name] = _train(ctx, ctx.config("clip"), run, values, memo=True, isolate=True)   # locked outputs
        atomic_write_text(done, json.dumps(arms[spec.name], indent=1, default=str))
    return {"arms": arms}


def stage_score(ctx: GeneralContext) -> dict:
    table = E.score_all(ctx.out, ctx.settings, ctx.shards, progress=ctx.progress, score=ctx.score_settings)
    rows = E.loso_rows(table)
    atomic_write_text(ctx.out / "loso.json", json.dumps({"table": table, "rows": rows}, indent=1, default=str))
    return {"table": table, "rows": rows}


def stage_caption(ctx: GeneralContext) -> dict:
    values = {"data.train": G.train_sources(ctx.settings, ctx.shards, "train"),
              "model.clip_checkpoint": str(ctx.out / "clip")}
    summary = _train(ctx, ctx.config("caption"), ctx.out / "caption", values, isolate=True)   # peak: one run's
    summary["sources"] = E.caption_scores(ctx.out / "caption", ctx.settings, ctx.shards, progress=ctx.progress)
    return summary


def stage_ab(ctx: GeneralContext) -> dict:
    from . import general_ab as AB

    def train(config: Path, run: Path, values: dict, overrides: list[str]) -> dict:
        return _train(ctx, config, run, values, memo=True, isolate=True, overrides=overrides)

    return AB.run_arms(ctx, train, lambda: _clip_values(ctx))


# ----------------------------------------------------------------------------- report
def stage_report(ctx: GeneralContext) -> dict:
    from . import general_ab as AB
    from . import general_report as GR
    from . import report as R

    rows = (ctx.results.get("score") or {}).get("rows") or []
    chart = E.plot_loso(rows, ctx.out / "loso.png")
    curves = R.plot_curves({"CLIP (every source)": ctx.out / "clip", "captioner": ctx.out / "caption"},
                           ctx.out / "training_curves.png")
    caps = (ctx.results.get("caption") or {}).get("sources") or {}
    counts = (ctx.results.get("shards") or {}).get("splits") or {}
    ab = AB.read(ctx.out)
    ab_chart = AB.plot_ab(ab, ctx.out / "ab.png") if ab else None
    table = "\n\n".join([GR.format_counts(counts), E.format_loso(rows), GR.format_captions(caps)]
                         + ([AB.format_ab(ab)] if ab else []))
    html = GR.render(ctx, counts=counts, rows=rows, captions=caps, chart=chart, curves=curves, ab=ab,
                     ab_chart=ab_chart)
    atomic_write_text(ctx.out / "report.html", html)
    atomic_write_text(ctx.out / "metrics.txt", table + "\n")
    return {"report": str(ctx.out / "report.html"), "table": table}


def _fp(ctx: GeneralContext, *names: str) -> dict:
    files = [ctx.config("general")] + [ctx.config(n) for n in names]
    return {"variant": ctx.variant, "configs": _configs_digest(*files)}


def build_stages(ab: bool = False) -> list[Stage]:
    """The job's stages; ``ab``: with the training A/Bs (``--ab``) before the report."""
    stages = [
        Stage("shards", "Build every source into one deduplicated mix, then per-source folders", stage_shards,
              lambda c: _fp(c), ("shards",)),
        Stage("clip", "Continue pre-training CLIP (ImageNet + MiniLM towers) on every training source", stage_clip,
              lambda c: _fp(c, "clip"), ("clip",)),
        Stage("loso", "Leave-one-source-out: a CLIP trained without each marked source", stage_loso,
              lambda c: _fp(c, "clip"), ("loso",)),
        Stage("score", "Score every CLIP on every source: zero-shot (+ prompt ensembles), retrieval, WiSE-FT",
              stage_score, lambda c: _fp(c, "clip", "score"), ("loso.json",)),
        Stage("caption", "Train a captioner on every source's captions, score it per source", stage_caption,
              lambda c: _fp(c, "clip", "caption"), ("caption",), needs=("shards", "clip")),
    ]
    if ab:
        stages.append(Stage("ab", "Training A/Bs (ab.yaml): the every-source CLIP with one change per arm", stage_ab,
                            lambda c: _fp(c, "clip", "ab"), ("ab", "ab.json"), needs=("shards",)))
    return stages + [Stage("report", "Write the report", stage_report, lambda c: {"always": os.urandom(8).hex()})]
