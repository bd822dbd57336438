"""Typed schema of ``configs/experiments/demo/demo.yaml`` (the demo's own knobs; training lives in the
experiment configs next to it: clip.yaml, caption.yaml, vqa.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mmfm.config import ranged


@dataclass
class ShardSettings:
    image_size: int = ranged(64, ge=1)   # rendered glyph fitted into this square (noto_emoji recipe: border mode)
    holdout: float = ranged(0.2, gt=0, lt=1)   # fraction of base names held out (never seen in training)
    limit: int | None = ranged(None, ge=0)   # only the first N emoji
    subsample: int = ranged(1, ge=1)     # keep every N-th emoji (with all its skin tones; quick runs)
    shard_size: int = ranged(64, ge=1)   # small shards: the loader shuffles shard order every epoch, so batches
                                         # mix all groups although the recipe writes emoji in file (group) order
    workers: int = ranged(2, ge=0)


@dataclass
class GroupCaptionSettings:
    """A second CLIP training source: each training image paired with a caption made from its metadata.
    Mixed into the name captions with ``weight`` (share of samples), it aligns images with group concepts."""
    template: str | None = "a {group} emoji"   # None: train on the CLDR names only
    weight: float = ranged(0.3, gt=0, lt=1)


@dataclass
class ZeroShotSettings:
    templates: list[str] = field(default_factory=lambda: ["a {} emoji"])
    mitigate: bool = True         # the "mitigation" section: the CLIP again with its text embeddings debiased
    debias_prompts: list[str] = field(default_factory=lambda: [f"{t} skin tone" for t in (
        "light", "medium-light", "medium", "medium-dark", "dark")])   # the directions projected out (docs/bias.md)


@dataclass
class CaptionSettings:
    small_vocab: bool = True             # fit a 2k byte-level BPE to the training names (else caption.yaml's tokenizer)


@dataclass
class BiasSettings:
    """The skin-tone bias table (``mmfm eval bias``): the CLIP and the captioner on the held-out emoji, per group
    of ``attribute``, matched by base name so every group holds the same emoji in its own tone."""
    attribute: str = "skin_tone"
    templates: list[str] = field(default_factory=lambda: ["a {} emoji"])
    mitigate: bool = True         # the "mitigation" section: the CLIP again with its text embeddings debiased
    debias_prompts: list[str] = field(default_factory=lambda: [f"{t} skin tone" for t in (
        "light", "medium-light", "medium", "medium-dark", "dark")])   # the directions projected out (docs/bias.md)
    image_debias_k: int = ranged(3, ge=0)   # tone directions of the image space, from the TRAINING split's tone
                                            # variants (3 carry 75% of their variance), projected out; 0: off
    finetune_steps: int = ranged(0, ge=0)   # > 0: continued fine-tunes of the CLIP with data.balance (+ fairness);
                                            # 0 in the demo: they do not fit its 12 minutes (docs/demo.md)
    finetune_balance_only: bool = True      # also the balanced fine-tune without the fairness term
    fairness_weight: float = ranged(0.5, ge=0)
    finetune_lr: float = ranged(5e-4, gt=0)
    caption_person_attributes: list[str] | None = field(default_factory=lambda: ["gender", "age"])
    # the captions' row: the captioner with generate.alt_text.person_attributes set to this list (skin tone left
    # out: the captions omit a tone instead of misreading it); None: no caption row


@dataclass
class ScratchSettings:
    """The from-scratch comparison arm (stage ``scratch``: ``clip_scratch.yaml`` on the same data, scored the same
    way). ``train: false`` skips its training where it does not fit the run's time budget; the report then shows
    ``reference`` (the from-scratch figures measured separately) in its place and says so."""
    train: bool = True
    steps: int | None = ranged(None, ge=1)    # None: the pretrained CLIP's steps (clip.yaml)
    reference: str = ""


@dataclass
class ReportSettings:
    grid: int = ranged(48, ge=0)                      # held-out emoji shown on the page


@dataclass
class DemoSettings:
    shards: ShardSettings = field(default_factory=ShardSettings)
    group_captions: GroupCaptionSettings = field(default_factory=GroupCaptionSettings)
    zeroshot: ZeroShotSettings = field(default_factory=ZeroShotSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    bias: BiasSettings = field(default_factory=BiasSettings)
    scratch: ScratchSettings = field(default_factory=ScratchSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    memo_dir: str = "memo"          # under the output folder: the CLIP's locked towers' cached outputs,
                                    # persisted (model.*.memo_dir) for a resumed or re-run CLIP; "" turns it off
