"""Bias report on real emoji shards (Noto Color Emoji rendered by the shard builder): skin-tone groups, matched
by base emoji, zero-shot accuracy and caption quality per group with the best-worst gap; the numbers are
re-derived from the written predictions, and the zero-shot predictions agree with mmfm's own classifier."""
import json
import math
from pathlib import Path

import pytest
import torch

from mmfm.config import ConfigError
from mmfm.eval.bias.audit import SKIN_TONE_ORDER, bias_report
from mmfm.eval.bias.output import bias_table_html, write_bias_report
from mmfm.models import build_model, save_pretrained

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
BASES = ("waving hand", "thumbs up", "clapping hands", "folded hands")
pytestmark = pytest.mark.skipif(not (EMOJI_TEST.is_file() and FONT.is_file()),
                                reason="needs Debian's unicode-data and fonts-noto-color-emoji (make test installs them)")


@pytest.fixture(scope="module")
def emoji_shards(tmp_path_factory):
    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options

    d = tmp_path_factory.mktemp("emoji")
    lines = ["# group: People & Body", "# subgroup: hand"]
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if "fully-qualified" in line and any(f" {b}" in line.split("#", 1)[1] for b in BASES):
            name = line.split("#", 1)[1].split(" ", 3)[-1]
            if name.split(":")[0] in BASES:
                lines.append(line)
    lines += ["# group: Animals & Nature", "# subgroup: animal-mammal",
              "1F436                                                  ; fully-qualified     # 🐶 E0.6 dog face"]
    src = d / "emoji-test.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    opts = resolve_options("noto_emoji", ["workers=0", "image.size=32", "holdout=0", "dedup=false"],
                           {"source": {"path": str(src)}})
    build(opts, d / "shards", progress=False)
    return d / "shards"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, d / "clip")
    save_pretrained(build_model("tiny_captioner"), None, d / "captioner")
    return d


def test_skin_tone_report_per_group_with_gap(emoji_shards, models, tmp_path):
    report = bias_report([str(models / "clip"), str(models / "captioner")], str(emoji_shards), "skin_tone",
                         progress=False)
    meta = report.meta
    assert meta["groups"] == SKIN_TONE_ORDER and meta["match_by"] == "base_name"
    assert meta["n_per_group"] == {g: 4 for g in SKIN_TONE_ORDER}              # 4 emoji x (default + 5 tones)
    assert meta["found"]["none"] == 5                                          # the dog is there, unmatched
    zs, cap = report.metrics["zeroshot"], report.metrics["caption"]
    assert zs["label_field"] == "base_name" and zs["n_classes"] == 4
    paths = write_bias_report(report, tmp_path / "out")
    rows = [json.loads(x) for x in paths["predictions"].read_text().splitlines()]
    assert len(rows) == 24
    for g in SKIN_TONE_ORDER:                                                   # re-derive from predictions
        mine = [r for r in rows if r["group"] == g]
        assert zs["per_group"][g]["top1"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
        assert cap["per_group"][g]["CIDEr-D"] == pytest.approx(sum(r["CIDEr-D"] for r in mine) / len(mine))
        lo, hi = zs["per_group"][g]["ci95"]
        assert 0 <= lo <= zs["per_group"][g]["top1"] <= hi <= 1
        assert all(not any(t in r["label"] for t in ("skin tone", "light", "dark")) for r in mine)
    accs = {g: v["top1"] for g, v in zs["per_group"].items()}
    assert zs["gap"]["gap"] == pytest.approx(max(accs.values()) - min(accs.values()))
    assert zs["gap"]["best"] in accs and zs["gap"]["worst"] in accs
    paired = zs["gap"]["paired"]
    assert paired["pairs"] == 4 and 0 < paired["p_value"] <= 1
    from mmfm.eval.bias.metrics import mcnemar_exact
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64) and mcnemar_exact(3, 3) == 1.0
    body = json.loads(paths["json"].read_text())
    assert body["caption"]["decoding"]["max_new_tokens"] > 0 and "backend" in body
    assert "best - worst" in paths["table"].read_text() and paths["plot"].stat().st_size > 1000
    assert "<table" in bias_table_html(report)


def test_zero_shot_predictions_agree_with_mmfm_classify(emoji_shards, models):
    import mmfm
    from mmfm.eval.bias.audit import read_samples, select_groups, zero_shot_samples
    from mmfm.data.decode import decode_image

    samples, _ = read_samples(str(emoji_shards), "skin_tone")
    kept, _ = select_groups(samples, "skin_tone")
    clip = mmfm.load(models / "clip")
    labels = [s["meta"]["base_name"] for s in kept]
    preds = zero_shot_samples(clip, kept, labels, ["{}"])
    classes = sorted(set(labels))
    ref = [r["label"] for r in clip.classify([decode_image(s["image"]) for s in kept], classes, templates="{}")]
    assert preds == ref


def test_bad_attribute_and_groups_are_named(emoji_shards, models):
    clip = str(models / "clip")
    with pytest.raises(ConfigError, match="no sample .* has it .*skin_tone"):
        bias_report([clip], str(emoji_shards), "gender", progress=False)
    with pytest.raises(ConfigError, match=r"--groups: \['purple'\]"):
        bias_report([clip], str(emoji_shards), "skin_tone", groups=["none", "purple"], progress=False)
    with pytest.raises(ConfigError, match="not a shard folder"):
        bias_report([clip], str(emoji_shards / "nope"), "skin_tone", progress=False)


def test_eval_bias_command_writes_the_report(emoji_shards, models, tmp_path, capsys):
    from mmfm.commands.eval import main as eval_main
    out = tmp_path / "bias"
    assert eval_main(["bias", "--model", str(models / "clip"), str(emoji_shards), "--attribute", "skin_tone",
                      "--groups", "none,light,dark", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best - worst" in printed and "zero-shot top-1 %" in printed and "CIDEr-D" not in printed
    body = json.loads((out / "bias.json").read_text())
    assert body["groups"] == ["none", "light", "dark"] and "caption" not in body
    assert body["n_per_group"] == {"none": 4, "light": 4, "dark": 4}


def test_report_adds_worst_group_bootstrap_gap_and_equalized_odds(emoji_shards, models):
    from mmfm.eval.bias.fairness import equalized_odds
    report = bias_report([str(models / "clip"), str(models / "captioner")], str(emoji_shards), "skin_tone",
                         progress=False)
    zs, cap = report.metrics["zeroshot"], report.metrics["caption"]
    accs = {g: v["top1"] for g, v in zs["per_group"].items()}
    assert zs["worst_group"]["value"] == min(accs.values())
    assert zs["gap_bootstrap"]["gap"] == pytest.approx(zs["gap"]["gap"]) and zs["gap_bootstrap"]["matched"]
    lo, hi = zs["gap_bootstrap"]["ci"]
    assert 0 <= lo <= hi <= 1
    rows = report.predictions
    assert zs["equalized_odds"]["equalized_odds_gap"] == pytest.approx(equalized_odds(
        [r["label"] for r in rows], [r["pred"] for r in rows], [r["group"] for r in rows])["equalized_odds_gap"])
    assert zs["overall"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    mention = cap["attribute_mention"]                      # re-derived from the captions in the predictions
    assert mention["wrong"] == sum(r["wrong"] for r in mention["per_group"].values()) and 0 <= mention["rate"] <= 1


def test_eval_bias_side_by_side_with_a_debiased_setting(emoji_shards, models, tmp_path, capsys):
    from mmfm.commands.eval import main as eval_main
    prompts = tmp_path / "tones.txt"
    prompts.write_text("light skin tone\ndark skin tone\nmedium skin tone\n")
    out = tmp_path / "cmp"
    assert eval_main(["bias", "--model", str(models / "clip"), str(emoji_shards), "--attribute", "skin_tone",
                      "--debias", str(prompts), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best-worst gap [95% bootstrap]" in printed and "+ debias(" in printed
    body = json.loads((out / "bias_compare.json").read_text())
    settings = body["metrics"]["settings"]
    assert len(settings) == 2 and all("zeroshot" in v for v in settings.values())
    plain, debiased = settings.values()
    assert plain["zeroshot"]["per_group"].keys() == debiased["zeroshot"]["per_group"].keys()
    assert body["setting_names"][1] == f"{models / 'clip'} + debias({prompts})"


def test_class_prompts_as_retrieval_queries_give_maxskew_and_ndkl(emoji_shards, models):
    from mmfm.eval.bias.audit import read_samples, sample_labels, select_groups, zero_shot_scores
    from mmfm.eval.bias.fairness import retrieval_skew
    import mmfm
    report = bias_report([str(models / "clip")], str(emoji_shards), "skin_tone", progress=False)
    skew = report.metrics["zeroshot"]["retrieval_skew"]
    samples, _ = read_samples(str(emoji_shards), "skin_tone")
    kept, _ = select_groups(samples, "skin_tone")
    labels, _ = sample_labels(kept, "auto", str(emoji_shards))
    classes, scores = zero_shot_scores(mmfm.load(models / "clip"), kept, labels, ["{}"])
    assert skew == retrieval_skew(scores.T, [s["group"] for s in kept], k=10)
    assert skew["queries"] == 4 and skew["desired"] == {g: 1 / 6 for g in SKIN_TONE_ORDER}
    assert 0 <= skew["MaxSkew"] <= math.log(6) and skew["NDKL"] >= 0     # top 10 of 24: at most ln(1 / (1/6))


def test_image_directions_from_matched_emoji(emoji_shards, models):
    """The image projection's directions come from the emoji seen in several tones (the dog, seen once, is left
    out); once attached, the tones of one emoji are closer together than before, and the bias report runs on it."""
    import torch.nn.functional as F

    from mmfm.eval.bias.audit import _decode_batch, read_samples
    from mmfm.eval.bias.image_debias import image_debias, image_directions
    from mmfm.models.checkpoint import load

    clip = load(models / "clip")
    dirs, info = image_directions(clip, str(emoji_shards), "skin_tone", k=3)
    assert info["items"] == len(BASES) and info["images"] == 6 * len(BASES) and dirs.shape[0] == 3
    assert 0 < sum(info["variance_share"]) <= 1 + 1e-6
    samples = [s for s in read_samples(str(emoji_shards), "skin_tone")[0] if s["meta"]["base_name"] == "thumbs up"]
    x = _decode_batch(clip, samples)

    def spread(model):
        with torch.inference_mode():
            z = F.normalize(model.encode_image(x), dim=-1)
        return float((z - z.mean(0)).norm(dim=-1).mean())

    before = spread(clip)
    debiased = image_debias(load(models / "clip"), str(emoji_shards), "skin_tone", k=3)
    assert debiased.image_debias["k"] == 3 and spread(debiased) < before
    rep = bias_report([debiased], str(emoji_shards), "skin_tone", progress=False)
    assert set(rep.metrics["zeroshot"]["per_group"]) == set(SKIN_TONE_ORDER)
    both = image_debias(load(models / "clip"), str(emoji_shards), "skin_tone", k=2,
                        prompts=["light skin tone", "dark skin tone"])
    P = both.image_debias["P"]                 # one projection on both sides: 2 image + 2 text directions gone
    assert torch.allclose(P, both.debias["P"]) and abs(float(torch.trace(P)) - (P.shape[0] - 4)) < 1e-3
    with pytest.raises(ConfigError, match="no_such_field"):
        image_directions(clip, str(emoji_shards), "skin_tone", match_by="no_such_field")
