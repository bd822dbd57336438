"""``mmfm zeroshot`` end to end on an mmfm checkpoint: a real process writing predictions and a report,
with corrupt and non-image files skipped and counted; bad inputs give errors naming the thing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmfm.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from mmfm.config import load_experiment
    from mmfm.models import build_model, save_pretrained
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    cfg = load_experiment(data={"model": {"name": "tiny"}})
    save_pretrained(build_model(cfg.model), cfg, d / "clip")
    cap = load_experiment(data={"model": {"name": "tiny_captioner"}})
    save_pretrained(build_model(cap.model), cap, d / "captioner")
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog", "red_fox"):
        (root / c).mkdir()
        for i in range(3):
            Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(root / c / f"{i}.jpg")
    (root / "dog" / "truncated.jpg").write_bytes((root / "dog" / "0.jpg").read_bytes()[:200])
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_cli_writes_predictions_report_and_counts_skipped(ckpts, folder, tmp_path):
    rep, preds = tmp_path / "rep", tmp_path / "preds.csv"
    out = subprocess.run([sys.executable, "-m", "mmfm", "zeroshot", "--model", str(ckpts / "clip"), str(folder),
                          "--templates", "simple", "--report", str(rep), "--out", str(preds), "--workers", "1",
                          "--batch-size", "4", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "zero-shot" in out.stderr                                   # the tqdm bar
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["n_samples"] == 9 and summary["n_skipped"] == 2
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["backend"].startswith("mmfm") and metrics["folder"] == str(folder)
    assert metrics["n_classes"] == 3 and metrics["templates"] == "simple"
    assert 0 <= metrics["top1"] <= 1 and metrics["top5"] is None
    skipped = (rep / "skipped.txt").read_text()
    assert "dog/truncated.jpg\t" in skipped and "cat/notes.txt\tnot an image" in skipped
    page = (rep / "index.html").read_text()
    assert "Skipped files (2)" in page and "confusion.png" in page
    assert (rep / "confusion.png").stat().st_size > 1000
    rows = preds.read_text().splitlines()
    assert len(rows) == 10 and rows[0].startswith("path,label,correct,pred,score,topk_labels")
    n_wrong = sum(1 for r in rows[1:] if r.split(",")[2] == "0")
    assert f"Misclassified ({n_wrong})" in page and page.count("data:image/jpeg;base64,") == n_wrong
    per_class = (rep / "per_class.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in per_class[1:]] == ["cat", "dog", "red_fox"]


def test_cli_flat_folder_with_labels(ckpts, folder, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(folder.glob("*/[01].jpg")):
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    rc = cli(["zeroshot", "--model", str(ckpts / "clip"), str(flat), "--labels", "cat,dog,red_fox",
              "--templates", "simple", "--workers", "0", "--out", str(tmp_path / "p.jsonl"), "--no-cache", "--quiet"])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("label" not in r and r["pred"] in ("cat", "dog", "red_fox") for r in rows)
    assert "top1" not in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("case", ["missing_folder", "classnames_mismatch", "not_clip", "no_checkpoint",
                                  "single_class", "empty_class"])
def test_cli_bad_inputs_name_the_thing(ckpts, folder, tmp_path, capsys, case):
    model, target, extra = str(ckpts / "clip"), str(folder), []
    if case == "missing_folder":
        target, expect = str(tmp_path / "nope"), "image folder not found: .*nope"
    elif case == "classnames_mismatch":
        (tmp_path / "names.txt").write_text("a\nb\n")
        extra, expect = ["--classnames", str(tmp_path / "names.txt")], "names.txt has 2 names but the folder has 3"
    elif case == "not_clip":
        model, expect = str(ckpts / "captioner"), "captioner.* is not a CLIP model"
    elif case == "no_checkpoint":
        model, expect = str(tmp_path), "not an mmfm checkpoint"
    elif case == "single_class":
        (tmp_path / "one" / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cat" / "a.png")
        target, expect = str(tmp_path / "one"), "single class folder \\('cat'\\)"
    else:
        (tmp_path / "two" / "cat").mkdir(parents=True)
        (tmp_path / "two" / "dog").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "two" / "cat" / "a.png")
        target, expect = str(tmp_path / "two"), "class folder 'dog' .* holds no images"
    rc = cli(["zeroshot", "--model", model, target, "--workers", "0", "--quiet", "--no-cache"] + extra)
    assert rc == 2
    import re
    assert re.search(expect, capsys.readouterr().err), case
