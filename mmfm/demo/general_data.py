"""The general model's data: every source in one mix build (``mmfm.data.shards.mix``: dedup across sources,
per-source counts), then re-written per source so each model can train on any subset of sources and be scored on
each source by itself:

* ``by_source/train/S``  -- S's training split, one sample per image (the captioner draws from ``captions``);
* ``by_source/clip/S``   -- the same images, one sample per caption (names, tags, descriptions: richer text for
  the CLIP); the same as ``train/S`` where ``clip_all_captions`` is off;
* ``by_source/eval/S``   -- S's held-out split; for an evaluation-only source, all of it (no model trains on it);
* ``by_source/zeroshot/S/images/<label>/KEY.jpg`` -- the evaluation images by label, for sources with a label space.

Re-writing copies the built bytes (no decoding), so the per-source folders hold exactly the deduplicated samples.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mmfm.config.resources import resource_dir

from . import data as D
from .general_settings import GeneralSettings, SourceSpec


def part_overrides(spec: SourceSpec) -> list[str]:
    """``@recipe/...`` in a value -> the path inside the recipe's folder (its fixture)."""
    out = []
    for item in spec.set:
        key, _, value = item.partition("=")
        if value.startswith("@recipe/"):
            value = str(resource_dir("data_recipes", spec.recipe) / value[len("@recipe/"):])
        out.append(f"{key}={value}")
    return out


def build_all(settings: GeneralSettings, out: Path, *, progress: bool) -> dict[str, dict]:
    """Every source, one build: ``out/train`` and ``out/heldout`` with ``manifest["sources"]``."""
    from mmfm.data.shards.mix import MixPart, build_mix
    from mmfm.data.shards.options import BuildOptions

    s = settings.shards
    parts = [MixPart(p.name, p.recipe, part_overrides(p)) for p in settings.sources]
    opts = BuildOptions(name="general", shard_size=s.shard_size, workers=s.workers, holdout=s.holdout)
    opts.image.size, opts.image.resize_mode = s.image_size, "border"
    done = {split: out / split / "manifest.json" for split in ("train", "heldout")}
    if all(p.is_file() for p in done.values()):       # built before an interruption: the stage is stale-cleared
        import json                                    # by the runner when its settings change, so reuse it
        manifests = {k: json.loads(p.read_text(encoding="utf-8")) for k, p in done.items()}
        if all("sources" in m for m in manifests.values()):
            return manifests
    resume = (out / "build_args.json").is_file()
    if (out / "by_source").is_dir():                   # per-source folders of an unfinished mix: written again
        import shutil
        shutil.rmtree(out / "by_source")
    return build_mix(parts, opts, out, resume=resume, progress=progress)


def _by_collection(folder: Path, name: str) -> Iterator[dict]:
    for s in D.iter_samples(folder):
        if s["meta"].get("collection") == name:
            yield s


def _shard_sample(s: dict, key: str, caption: str | None = None) -> dict:
    out = {"__key__": key, s["ext"]: s["image"], "txt": caption or s["txt"], "json": s["meta"]}
    if s["cls"] is not None:
        out["cls"] = s["cls"]
    return out


def _write(folder: Path, samples: Iterator[dict], shard_size: int) -> int:
    from mmfm.data.shards import write_shards

    if (folder / "manifest.json").is_file():
        import json
        return int(json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["total_samples"])
    if folder.is_dir():                      # an interrupted write: start it again
        import shutil
        shutil.rmtree(folder)
    return int(write_shards(samples, folder, shard_size=shard_size)["total_samples"])


def _per_caption(samples: Iterator[dict]) -> Iterator[dict]:
    for s in samples:
        caps = [c for c in s["meta"].get("captions") or [s["txt"]] if c.strip()]
        for j, cap in enumerate(caps):
            yield _shard_sample(s, f"{s['key']}c{j}", cap)


def _label_captions(samples: Iterator[dict], template: str, classes: list[str]) -> Iterator[dict]:
    """Each training image with a label of the space, captioned by the space's first template with that label."""
    for s in samples:
        label = s["meta"].get("label")
        if label in classes:
            yield _shard_sample(s, f"{s['key']}l", template.format(label))


def split_by_source(settings: GeneralSettings, shards: Path) -> dict[str, dict]:
    """``shards/by_source/{train,clip,eval}/S`` from the mix; -> per source its sample counts and folders."""
    root, size = shards / "by_source", settings.shards.shard_size
    out = {}
    for spec in settings.sources:
        info: dict = {}
        if spec.train:
            info["train"] = _write(root / "train" / spec.name, (
                _shard_sample(s, s["key"]) for s in _by_collection(shards / "train", spec.name)), size)
            clip_src = _by_collection(shards / "train", spec.name)
            info["clip"] = _write(root / "clip" / spec.name, _per_caption(clip_src) if settings.shards.clip_all_captions
                                  else (_shard_sample(s, s["key"]) for s in clip_src), size)
            if spec.label_space and settings.shards.label_captions:
                space = settings.space(spec.label_space)
                info["labels"] = _write(root / "labels" / spec.name, _label_captions(
                    _by_collection(shards / "train", spec.name), space.templates[0], space.classes), size)
            splits = ["heldout"]
        else:
            splits = ["train", "heldout"]
        info["eval"] = _write(root / "eval" / spec.name, (
            _shard_sample(s, s["key"]) for sp in splits for s in _by_collection(shards / sp, spec.name)), size)
        if spec.label_space and info["eval"]:
            classes = settings.space(spec.label_space).classes
            info["zeroshot"] = str(write_label_folder(root / "eval" / spec.name, root / "zeroshot" / spec.name,
                                                      classes))
        out[spec.name] = info
    return out


def write_label_folder(folder: Path, root: Path, classes: list[str]) -> Path:
    """``root/images/<slug(label)>/KEY.ext``: the images of a shard folder by their source label; images without
    a label in ``classes`` (OpenMoji's extras) stay out of zero-shot (they still count in retrieval and captions)."""
    from mmfm.config import atomic_write

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for s in D.iter_samples(folder):
        label = s["meta"].get("label")
        if label not in classes:
            continue
        path = images / D.slug(label) / f"{s['key']}.{s['ext']}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, s["image"])
    return images


def train_sources(settings: GeneralSettings, shards: Path, kind: str, without: str | None = None) -> list[dict]:
    """``data.train`` for a run on every training source but ``without``, each weighted by its sample count."""
    import json

    def weighted(sub: str, share: float) -> list[dict]:
        out = []
        for spec in settings.sources:
            folder = shards / "by_source" / sub / spec.name
            if not spec.train or spec.name == without or not (folder / "manifest.json").is_file():
                continue
            n = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["total_samples"]
            if n:
                out.append({"path": str(folder), "weight": float(n)})
        total = sum(s["weight"] for s in out) or 1.0
        return [{**s, "weight": share * s["weight"] / total} for s in out]

    share = settings.shards.label_captions if kind == "clip" else 0.0
    labels = weighted("labels", share) if share else []
    return weighted(kind, 1.0 - share if labels else 1.0) + labels
