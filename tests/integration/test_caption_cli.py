"""End to end on real shards: `mmfm shards build` -> `mmfm train` (the shared Trainer) -> `mmfm eval`,
`mmfm caption`, `mmfm vqa` on the checkpoint. The tiny captioner must memorise the fixture captions/answers
through the Trainer and then reproduce them exactly with greedy decoding."""
import json
import os
import subprocess
import sys

import pytest

from mmfm.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _train(tmp, recipe, config, steps):
    shards, run = str(tmp / "shards"), str(tmp / "run")
    assert cli(["shards", "build", "--recipe", os.path.join(ROOT, "data_recipes", recipe, "recipe.yaml"),
                "--out", shards]) == 0
    assert cli(["train", os.path.join(ROOT, "configs", "experiments", config), "--set",
                f"data.train=[{{path: {shards}}}]", "--output-dir", run, "--max-steps", str(steps),
                "--no-progress"]) == 0
    return shards, run


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cap"), "coco_captions", "caption/tiny_fixture.yaml", 90)


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("vqa"), "vqa", "vqa/tiny_fixture.yaml", 90)


def test_trained_captioner_reproduces_captions_and_metrics_record_provenance(caption_run, tmp_path):
    shards, run = caption_run
    assert cli(["eval", "caption", "--model", run, shards, "--out", str(tmp_path), "--split", "fixture",
                "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["caption"] for p in preds] == ["a red circle.", "a blue square.", "a green triangle."]
    assert m["split"] == "fixture" and m["samples"] == 3 and "pycocoevalcap" in m["backend"]
    assert m["decoding"]["num_beams"] == 1 and m["decoding"]["max_new_tokens"] == 12   # stored with the run
    assert m["metrics"]["ROUGE-L"] == pytest.approx(1.0) and m["metrics"]["CIDEr-D"] > 3
    assert m["degenerate"]["distinct_captions"] == 3 and not m["degenerate"]["collapsed"]
    # decoding flags override the stored settings and are recorded
    out2 = tmp_path / "beam"
    assert cli(["eval", "caption", "--model", run, shards, "--out", str(out2), "--preset", "beam", "--quiet"]) == 0
    assert json.loads((out2 / "metrics.json").read_text())["decoding"]["num_beams"] == 4


def test_caption_cli_writes_alt_text_html_and_reports_bad_images(caption_run, tmp_path, capsys):
    _, run = caption_run
    images = os.path.join(ROOT, "data_recipes", "coco_captions", "fixture", "images")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out, page = tmp_path / "alt.jsonl", tmp_path / "alt.html"
    assert cli(["caption", "--model", run, images, str(broken), "--out", str(out), "--html", str(page),
                "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["alt_text"] for r in rows[:3]] == ["A red circle.", "A blue square.", "A green triangle."]
    assert rows[3]["image"] == str(broken) and rows[3]["alt_text"] is None and "cannot identify" in rows[3]["error"]
    html = page.read_text()
    assert html.count("data:image/jpeg;base64") == 3 and "A green triangle." in html and "failed:" in html
    assert "broken.jpg" in capsys.readouterr().err


def test_vqa_eval_batch_and_rank_modes(vqa_run, tmp_path, caplog):
    shards, run = vqa_run
    assert cli(["eval", "vqa", "--model", run, shards, "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["metrics"]["overall"] == pytest.approx(100.0)
    assert set(m["metrics"]["per_answer_type"]) == {"other", "yes/no"} and "VQAv2" in m["backend"]
    img = os.path.join(ROOT, "data_recipes", "vqa", "fixture", "images", "0.jpg")
    batch = tmp_path / "q.jsonl"
    batch.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "image": img, "question": "what color is the circle?"},
        {"id": "b", "image": img, "question": ""},
        {"id": "c", "image": img, "question": "what color is the circle? " * 30},
        {"id": "d", "image": str(tmp_path / "missing.jpg"), "question": "what?"}]) + "\n")
    out = tmp_path / "a.jsonl"
    assert cli(["vqa", "--model", run, "--batch", str(batch), "--out", str(out), "--quiet"]) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["a"]["answer"] == "red" and rows["b"]["answer"] is not None and rows["c"]["answer"] is not None
    assert rows["d"]["answer"] is None and "No such file" in rows["d"]["error"]
    assert "empty question" in caplog.text and "truncated" in caplog.text
    assert cli(["vqa", "--model", run, "--batch", str(batch), "--out", str(out), "--answers", "blue,red,no",
                "--quiet"]) == 0
    ranked = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert [x["answer"] for x in ranked["a"]["ranking"]][0] == "red"


def test_vqa_single_question_in_a_real_process(vqa_run):
    _, run = vqa_run
    img = os.path.join(ROOT, "data_recipes", "vqa", "fixture", "images", "1.jpg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "mmfm", "vqa", "--model", run, "--image", img, "--question",
                        "what shape is this?"], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "square"
