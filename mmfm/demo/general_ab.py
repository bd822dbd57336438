"""The general job's training A/Bs (``ab.yaml``; ``mmfm demo --job general --ab``, ``make general-ab``).

Each arm trains the every-source CLIP (``clip.yaml`` on every training source, label captions included) for
``ab.steps`` steps with one change -- class-balanced sampling (``data.balance`` on the source label), image
augmentation, ... -- and the ``baseline`` arm trains it unchanged for as many steps, so each change is read against
a run of the same length, towers and seed. Every arm is scored on every source as the leave-one-out arms are
(``general_eval.score_clip``: zero-shot over the source's label space, retrieval): for the training sources that is
their held-out split, for Twemoji and the photos a source no arm ever trained on.

An arm with a ``summary.json`` is done (an interrupted stage resumes at the next arm; an arm interrupted mid-run
resumes from its last checkpoint). Results: ``OUT/ab.json``, a table in ``metrics.txt`` and the report, ``ab.png``.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmfm.config import atomic_write_text

# (row title, (part, key)) of each arm's scores on one source
METRICS = (("zero-shot top-1", ("zeroshot", "top1")),
           ("zero-shot mean recall", ("zeroshot", "mean_per_class_recall")),
           ("image->text R@1", ("retrieval", "image_to_text_R@1")))


def run_arms(ctx, train, values_for) -> dict:
    """Train every arm of ``ctx.ab_settings`` (``train(config, run, values, overrides)``; ``values_for()``: the
    every-source CLIP's data values), score each on every source; -> ``{"arms", "table", "rows"}``."""
    from mmfm.models.checkpoint import load

    from . import general_eval as E

    ab, settings = ctx.ab_settings, ctx.settings
    steps = ab.steps or settings.loso.steps
    arms, runs = {}, {}
    for arm in ab.arms:
        run = ctx.out / "ab" / arm.name
        done = run / "summary.json"
        if done.is_file():
            arms[arm.name] = json.loads(done.read_text(encoding="utf-8"))
        else:
            values = values_for()
            if steps:
                values["train.max_steps"] = steps
            arms[arm.name] = {**train(ctx.config("clip"), run, values, list(arm.set)), "title": arm.title,
                              "set": list(arm.set)}
            atomic_write_text(done, json.dumps(arms[arm.name], indent=1, default=str))
        runs[arm.name] = run
    table: dict[str, dict] = {}
    for name, run in runs.items():
        model = load(str(run), expect="clip")
        for spec in settings.sources:
            scores = E.score_clip(model, settings, ctx.shards, spec.name, progress=ctx.progress)
            if "skipped" not in scores:
                table.setdefault(spec.name, {})[name] = {**scores, "trained_on": spec.train}
        del model
    names = [a.name for a in ab.arms]
    rows = ab_rows(table, names)
    atomic_write_text(ctx.out / "ab.json", json.dumps({"arms": arms, "steps": steps, "table": table, "rows": rows},
                                                       indent=1, default=str))
    return {"arms": arms, "steps": steps, "rows": rows}


def ab_rows(table: dict[str, dict], names: list[str]) -> list[dict]:
    """One row per (source, metric): every arm's figure, and whether any arm trained on the source."""
    rows = []
    for source, arms in table.items():
        for title, (part, key) in METRICS:
            values = {n: ((arms.get(n) or {}).get(part) or {}).get(key) for n in names}
            if all(v is None for v in values.values()):
                continue
            trained = any((arms.get(n) or {}).get("trained_on") for n in names)
            rows.append({"source": source, "metric": title, "trained_on": trained, **values})
    return rows


def read(out: Path) -> dict | None:
    """``OUT/ab.json`` of an earlier ``--ab`` run (the report shows it whether or not this run has --ab)."""
    path = out / "ab.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def arm_names(ab: dict) -> list[str]:
    return list(ab.get("arms") or {})


def format_ab(ab: dict) -> str:
    names = arm_names(ab)
    head = f"{'training A/B (' + str(ab.get('steps')) + ' steps)':<28} {'metric':<22} " + \
        " ".join(f"{n[:14]:>14}" for n in names)
    lines = [head, "-" * len(head)]
    for r in ab.get("rows") or []:
        src = r["source"] + ("" if r["trained_on"] else " (never trained)")
        lines.append(f"{src:<28} {r['metric']:<22} " + " ".join(f"{_fmt(r.get(n)):>14}" for n in names))
    return "\n".join(lines)


def plot_ab(ab: dict, path: Path) -> Path | None:
    """Grouped bars: per source, zero-shot top-1 (else image->text R@1) of each arm (* never trained on)."""
    from .general_eval import headline_rows, plot_bars

    head = headline_rows(ab.get("rows") or [])
    return plot_bars(head, {n: n for n in arm_names(ab)}, f"training A/Bs, {ab.get('steps')} steps each "
                     "(* never trained on)", path, marks={s: " *" for s, r in head.items() if not r["trained_on"]})
