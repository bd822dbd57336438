"""Zero-shot metrics and report files (built from hand-made results; no model needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.zeroshot.classify import ZeroShotResult
from mmfm.eval.zeroshot.metrics import classification_metrics, confusion_matrix, per_class_table
from mmfm.eval.zeroshot.report import write_predictions, write_report


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
    metrics = {"top1": 0.5, "top5": None, "mean_per_class_recall": 0.5}
    meta = {"n_samples": 2, "model": "m", "templates": "simple", "n_templates": 1}
    return ZeroShotResult(metrics=metrics, meta=meta, predictions=preds, classes=["cat", "dog"],
                          classnames=["cat", "dog"], targets=np.array([0, 1]), preds=np.array([0, 0]), per_class=table,
                          confusion=cm, skipped=[{"path": "junk.txt", "reason": "not an image file (extension)"}],
                          root=str(root))


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


def test_a_long_file_name_wraps_inside_its_card(tmp_path):
    import re
    res = _result(tmp_path)
    long = "x" * 120 + ".jpg"
    (tmp_path / "imgs" / "b.jpg").rename(tmp_path / "imgs" / long)
    res.predictions[1]["path"] = long
    write_report(res, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"<code>{long}</code>" in page
    css = {sel.strip(): body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", page.split("</style>")[0])}
    assert "overflow-wrap:anywhere" in css[".card"] and "word-break:break-word" in css[".card"]
    assert "word-break:break-all" in css[".card code"] and "white-space:normal" in css[".card code"]


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


EMOJI_GROUPS = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                "Activities", "Objects", "Symbols", "Flags"]


def test_axis_label_keeps_names_whole_and_wraps_long_ones():
    from mmfm.eval.zeroshot.report import axis_label
    assert axis_label("Smileys & Emotion") == "Smileys & Emotion"       # 17 characters: never cut
    assert axis_label("animals_nature") == "animals nature"
    long = axis_label("a very long class name that goes on and on and on")
    assert len(long.split("\n")) == 2 and long.endswith("\u2026") and all(len(x) <= 18 for x in long.split("\n"))


@pytest.mark.parametrize("classes", [EMOJI_GROUPS, EMOJI_GROUPS[:4], [f"class number {i}" for i in range(40)]])
def test_confusion_tick_labels_are_readable(classes):
    """The group names on both axes are the full names, lie inside the saved picture, and do not overlap."""
    import matplotlib.pyplot as plt

    from mmfm.eval.zeroshot.report import confusion_figure
    n = len(classes)
    cm = np.arange(n * n).reshape(n, n) % 7
    fig = confusion_figure(cm, classes)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        full = fig.bbox.transformed(fig.dpi_scale_trans.inverted())   # the figure itself, in inches
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert [t.get_text() for t in ticks] == classes
            boxes = [t.get_window_extent(renderer) for t in ticks]
            for t, b in zip(ticks, boxes):
                b_in = b.transformed(fig.dpi_scale_trans.inverted())
                assert full.x0 - 1e-6 <= b_in.x0 and b_in.x1 <= full.x1 + 1e-6, t.get_text()
                assert full.y0 - 1e-6 <= b_in.y0 and b_in.y1 <= full.y1 + 1e-6, t.get_text()
            for a, b in zip(boxes, boxes[1:]):
                inter_w = min(a.x1, b.x1) - max(a.x0, b.x0)
                inter_h = min(a.y1, b.y1) - max(a.y0, b.y0)
                assert inter_w <= 0 or inter_h <= 0, (a, b)        # neighbouring labels do not overlap
        assert f"{n} classes" in ax.get_title()
    finally:
        plt.close(fig)


def test_confusion_rejects_mismatched_labels():
    from mmfm.eval.zeroshot.report import confusion_figure
    with pytest.raises(ValueError, match="3x3 but 2 class labels"):
        confusion_figure(np.zeros((3, 3), dtype=int), ["a", "b"])


def test_report_confusion_uses_classnames_not_folder_names(tmp_path):
    res = _result(tmp_path)
    res.classes, res.classnames = ["food_drink", "smileys_emotion"], ["Food & Drink", "Smileys & Emotion"]
    files = write_report(res, tmp_path / "rep")
    assert files["confusion"].stat().st_size > 1000
    assert (tmp_path / "rep" / "confusion.csv").read_text().splitlines()[0] == "true\\pred,food_drink,smileys_emotion"


def test_macro_f1_equals_scikit_learn_with_an_absent_but_predicted_class():
    """Issue 14: the demo reports macro-F1 beside top-1 and mean per-class recall. Class 3 has no images but is
    predicted once (F1 0, counted, as sklearn does); class 4 is neither (left out)."""
    from sklearn.metrics import f1_score

    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 3, 2, 2, 0])
    logits = np.eye(5)[preds]
    m = classification_metrics(logits, targets, 5)
    assert m["macro_f1"] == pytest.approx(f1_score(targets, preds, average="macro"))
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
