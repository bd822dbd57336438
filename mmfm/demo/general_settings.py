"""Typed schema of ``configs/experiments/general/general.yaml``: the general model's sources, splits, label spaces
and leave-one-source-out arms (training lives in clip.yaml and caption.yaml next to it, on the demo's)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mmfm.config import ConfigError, ranged


@dataclass
class SourceSpec:
    """One recipe of the mix. ``set``: ``--set`` style overrides; a value starting ``@recipe/`` is a path inside the
    recipe's folder (its fixture). ``train: false``: evaluation only (never trained on, by any model)."""
    name: str = ""
    recipe: str = ""
    set: list[str] = field(default_factory=list)
    train: bool = True
    label_space: str = ""          # zero-shot over this label space ("" = retrieval and captions only)
    loso: bool = False             # train a CLIP without this source and score it here

    def validate(self) -> None:
        if not self.name or not self.recipe:
            raise ConfigError(f"sources: each source needs a name and a recipe, got {self.name!r}/{self.recipe!r}")
        if self.loso and not self.train:
            raise ConfigError(f"sources.{self.name}: loso needs train: true (it is left out of a training mix)")


@dataclass
class LabelSpace:
    name: str = ""
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["a {}"])


@dataclass
class GeneralShardSettings:
    image_size: int = ranged(128, ge=1)
    holdout: float = ranged(0.2, gt=0, lt=1)   # by each source's split key (emoji: base name; flags: code)
    shard_size: int = ranged(256, ge=1)
    workers: int = ranged(2, ge=0)
    clip_all_captions: bool = True             # CLIP sees one sample per caption (names, tags, descriptions)
    label_captions: float = ranged(0.3, ge=0, lt=1)   # share of CLIP samples pairing a training image with its
                                               # label space's first template and its source label ("a Flags
                                               # emoji"), as the demo's group captions; 0: names etc. only


@dataclass
class LosoSettings:
    steps: int | None = ranged(None, ge=1)     # CLIP steps of each leave-one-out arm (None: clip.yaml's)
    demo_run: str = "runs/demo/clip"           # the Noto-only demo CLIP, scored beside ("" or missing: left out)


@dataclass
class GeneralSettings:
    sources: list[SourceSpec] = field(default_factory=list)
    label_spaces: list[LabelSpace] = field(default_factory=list)
    shards: GeneralShardSettings = field(default_factory=GeneralShardSettings)
    loso: LosoSettings = field(default_factory=LosoSettings)
    caption_max_samples: int | None = ranged(None, ge=1)   # per evaluation set
    memo_dir: str = "memo"         # under the output folder: the locked towers' outputs (model.*.memo_dir), shared
                                   # by the CLIP and every leave-one-out arm (same pretrained towers); "" off

    def validate(self) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"sources: names must be unique, got {names}")
        spaces = {s.name for s in self.label_spaces}
        for s in self.sources:
            if s.label_space and s.label_space not in spaces:
                raise ConfigError(f"sources.{s.name}.label_space: {s.label_space!r} is not in label_spaces "
                                  f"({', '.join(sorted(spaces))})")
        if not any(s.train for s in self.sources):
            raise ConfigError("sources: no source to train on (every one has train: false)")

    def space(self, name: str) -> LabelSpace | None:
        return next((s for s in self.label_spaces if s.name == name), None)


# ----------------------------------------------------------------------------- score.yaml: the score stage's A/Bs
@dataclass
class PromptEnsemble:
    """Several templates for one label space: each class's text embedding is the mean over its templates."""
    label_space: str = ""
    templates: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.label_space or not self.templates:
            raise ConfigError(f"prompt_ensembles: each entry needs a label_space and templates, got "
                              f"{self.label_space!r}/{self.templates!r}")
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ConfigError(f"prompt_ensembles.{self.label_space}.templates: each needs a '{{}}' for the class "
                              f"name, got {bad}")


@dataclass
class WiseFTSettings:
    alpha: float | None = ranged(0.5, ge=0, le=1)   # None: no WiSE-FT arms
    arms: list[str] = field(default_factory=lambda: ["all", "without"])   # the tuned CLIPs interpolated

    def validate(self) -> None:
        bad = sorted(set(self.arms) - {"all", "without"})
        if bad:
            raise ConfigError(f"wise_ft.arms: {bad} not in [all, without] (the general job's own CLIPs)")


@dataclass
class ScoreSettings:
    """``score.yaml``: read by the score stage only, so editing it re-scores a finished run (score + report)
    without touching shards or training."""
    prompt_ensembles: list[PromptEnsemble] = field(default_factory=list)
    wise_ft: WiseFTSettings = field(default_factory=WiseFTSettings)

    def ensemble(self, label_space: str) -> list[str] | None:
        return next((list(e.templates) for e in self.prompt_ensembles if e.label_space == label_space), None)


# ----------------------------------------------------------------------------- ab.yaml: the training A/Bs (--ab)
@dataclass
class AbArm:
    """One training A/B arm: the every-source CLIP (clip.yaml) with ``set`` (``--set`` style overrides) applied."""
    name: str = ""
    title: str = ""
    set: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"arms: each arm needs a name of letters, digits and _, got {self.name!r}")
        bad = [o for o in self.set if "=" not in o]
        if bad:
            raise ConfigError(f"arms.{self.name}.set: each override is KEY=VALUE, got {bad}")


@dataclass
class AbSettings:
    """``ab.yaml``: read by the ``ab`` stage only (``mmfm demo --job general --ab``, ``make general-ab``). Every arm
    trains the every-source CLIP for ``steps`` steps from the same pretrained towers and seed, one change each, and
    is scored on every source like the leave-one-out arms; the ``baseline`` arm (no change) is the A side."""
    steps: int | None = ranged(None, ge=1)     # None: loso.steps of general.yaml (else clip.yaml's)
    arms: list[AbArm] = field(default_factory=list)

    def validate(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"arms: names must be unique, got {names}")
