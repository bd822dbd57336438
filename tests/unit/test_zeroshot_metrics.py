"""Zero-shot metrics and report files (built from hand-made results; no model needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.report import write_predictions, write_report
from mmfm.eval.zeroshot import ZeroShotResult, classification_metrics, confusion_matrix, per_class_table


def test_metrics_match_hand_computed_values():
    logits = torch.tensor([[.9, .1, 0, 0, 0, 0], [.2, .8, 0, 0, 0, 0], [.6, .1, .3, 0, 0, 0],
                           [0, 0, .1, .2, .3, .4], [.5, .4, .3, .2, .1, 0]])
    targets = np.array([0, 1, 2, 2, 5])
    m = classification_metrics(logits, targets, 6)
    assert m["top1"] == pytest.approx(2 / 5)
    assert m["top5"] == pytest.approx(4 / 5)                       # last sample's class is 6th
    # recalls: class0 1/1, class1 1/1, class2 0/2, class5 0/1 -> mean over present classes
    assert m["mean_per_class_recall"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert classification_metrics(logits[:, :3], np.array([0, 1, 2, 2, 0]), 3)["top5"] is None


def test_confusion_and_per_class_table():
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    rows = per_class_table(cm, ["a", "b", "c"], ["A", "B", "C"])
    assert rows[0]["recall"] == 0.5 and rows[1]["precision"] == pytest.approx(2 / 3)
    assert rows[2]["recall"] is None


def _result(tmp_path, labelled=True):
    root = tmp_path / "imgs"
    root.mkdir()
    for name, color in (("a.jpg", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (40, 30), color).save(root / name)
    preds = [{"path": "a.jpg", "pred": "cat", "score": 0.7, "topk": [["cat", 0.7], ["dog", 0.3]]},
             {"path": "b.jpg", "pred": "cat", "score": 0.6, "topk": [["cat", 0.6], ["dog", 0.4]]}]
    cm = None
    if labelled:
        preds[0].update(label="cat", correct=True)
        preds[1].update(label="dog", correct=False)
        cm = np.array([[1, 0], [1, 0]])
    table = per_class_table(cm, ["cat", "dog"], ["cat", "dog"]) if labelled else []
    metrics = {"top1": 0.5, "top5": None, "mean_per_class_recall": 0.5, "n_samples": 2, "model": "m",
               "templates": "simple", "n_templates": 1}
    return ZeroShotResult(metrics, preds, ["cat", "dog"], ["cat", "dog"], np.array([0, 1]), np.array([0, 0]),
                          table, cm, [{"path": "junk.txt", "reason": "not an image file (extension)"}], str(root))


def test_report_files(tmp_path):
    res = _result(tmp_path)
    files = write_report(res, tmp_path / "rep")
    assert {"metrics", "predictions", "per_class", "confusion", "html", "skipped"} <= set(files)
    assert (tmp_path / "rep" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Misclassified (1)" in page and "b.jpg" in page and "data:image/jpeg;base64," in page
    assert page.count("data:image/jpeg;base64,") == 1             # only the wrong one gets a card
    assert "junk.txt" in page and "Skipped files (1)" in page
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["top1"] == 0.5
    assert (tmp_path / "rep" / "per_class.csv").read_text().splitlines()[0] == "class,classname,n,correct,recall,precision"
    assert not list((tmp_path / "rep").glob(".*tmp*"))           # no temp files left behind


def test_prediction_files_jsonl_csv_and_bad_extension(tmp_path):
    res = _result(tmp_path)
    write_predictions(res, tmp_path / "p.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows[1]["label"] == "dog" and rows[1]["topk"][0] == ["cat", 0.6]
    write_predictions(res, tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,label,correct,pred,score,topk_labels,topk_scores"
    assert lines[2].startswith("b.jpg,dog,0,cat,0.6,cat|dog,")
    with pytest.raises(ConfigError, match="use a .jsonl or .csv"):
        write_predictions(res, tmp_path / "p.txt")


def test_unlabelled_report_shows_predictions(tmp_path):
    res = _result(tmp_path, labelled=False)
    write_report(res, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Predictions (2)" in page and not (tmp_path / "rep" / "confusion.png").exists()
    assert (tmp_path / "rep" / "predictions.jsonl").read_text().count("\n") == 2
