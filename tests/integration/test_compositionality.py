"""SugarCrepe and ARO from fixtures in their released formats; the score is whether the image prefers the true
caption, checked against the similarities computed by hand with open_clip, and the aggregation against numbers
worked out by hand."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.benchmarks.compositionality import (Suite, CaptionTest, evaluate_compositionality, is_right, pre_caption,
                                                  read_suite, shuffle_trigrams, shuffle_within_trigrams, summarize)
from mmfm.eval.result import EvalResult

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def oc(tiny_oc):
    return tiny_oc


def _img(path, seed, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _hand(oc, image, options, box=None):
    img = Image.open(image).convert("RGB")
    if box:
        img = img.crop((box[0], box[1], box[0] + box[2], box[1] + box[3]))
    with torch.no_grad():
        i = oc["model"].encode_image(oc["preprocess"](img)[None], normalize=True)[0]
        t = oc["model"].encode_text(oc["tokenizer"](options), normalize=True)
    return (t @ i).numpy()


def test_aggregation_by_hand():
    assert is_right([0.1, 0.3], 1, False) and not is_right([0.3, 0.3], 1, False)     # a tie is wrong in VG/SugarCrepe
    assert is_right([0.3, 0.3, 0.1], 0, True) and not is_right([0.3, 0.4, 0.1], 0, True)
    tests = [CaptionTest("x", ["a", "b"], 1, False, group=g) for g in ["on"] * 3 + ["under"]]
    m = summarize(Suite("vg_relation", tests), [True, True, False, False])
    # micro: 2/4; macro: mean(on 2/3, under 0/1) = 1/3
    assert m["accuracy"] == 0.5 and m["macro_accuracy"] == pytest.approx(1 / 3)
    assert m["per_group"]["on"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    m = summarize(Suite("vg_attribution", tests), [True, True, False, False])
    assert m["macro_accuracy"] is None                                 # no attribute pair has 25 tests


def test_pre_caption_and_permutations_keep_the_words():
    assert pre_caption("A Dog; on (the) beach!  ") == "a dog on the beach"
    rng = random.Random(0)
    cap = "a dog runs on the sandy beach at dawn"
    for fn in (shuffle_within_trigrams, shuffle_trigrams):
        assert sorted(fn(cap, rng).split()) == sorted(cap.split())


def test_sugarcrepe_real_format(oc, tmp_path):
    images = tmp_path / "val2017"
    data = tmp_path / "sugar-crepe" / "data"
    data.mkdir(parents=True)
    cats = {"add_att": [("000000085329.jpg", "a dog on a sofa", "a black dog on a red sofa"),
                        ("000000562121.jpg", "two zebras fighting", "two striped zebras fighting")],
            "swap_obj": [("000000166391.jpg", "a cat under a table", "a table under a cat"),
                         ("000000085329.jpg", "a man riding a horse", "a horse riding a man"),
                         ("000000562121.jpg", "a bowl of soup", "a soup of bowl")]}
    for c, rows in cats.items():
        (data / f"{c}.json").write_text(json.dumps({str(i * 2): {"filename": f, "caption": p, "negative_caption": n}
                                                    for i, (f, p, n) in enumerate(rows)}, indent=4))
    for s, f in enumerate(["000000085329.jpg", "000000562121.jpg", "000000166391.jpg"]):
        _img(images / f, s)
    res = evaluate_compositionality(oc["spec"], read_suite("sugarcrepe", str(data), str(images)), batch_size=2,
                                    progress=False)
    assert isinstance(res, EvalResult) and set(res.metrics) == {"accuracy", "per_category"}
    m = res.summary()
    want = {c: [bool(_hand(oc, images / f, [p, n])[0] > _hand(oc, images / f, [p, n])[1]) for f, p, n in rows]
            for c, rows in cats.items()}
    assert m["per_category"] == {c: pytest.approx(np.mean(v)) for c, v in want.items()}
    assert m["accuracy"] == pytest.approx(np.mean(want["add_att"] + want["swap_obj"])) and m["n_tests"] == 5
    assert m["categories"] == ["add_att", "swap_obj"]


def test_vg_relation_crops_to_the_box(oc, tmp_path):
    root = tmp_path / "aro"
    _img(root / "images" / "2376.jpg", 1, (60, 50))
    _img(root / "images" / "2377.jpg", 2, (60, 50))
    items = [{"image_id": "2376", "relation_name": "on", "bbox_x": 5, "bbox_y": 4, "bbox_w": 40, "bbox_h": 30,
              "true_caption": "the cup is on the table", "false_caption": "the table is on the cup",
              "image_path": "2376.jpg"},
             {"image_id": "2377", "relation_name": "holding", "bbox_x": 0, "bbox_y": 10, "bbox_w": 50, "bbox_h": 35,
              "true_caption": "the man is holding the dog", "false_caption": "the dog is holding the man",
              "image_path": "2377.jpg"},
             {"image_id": "2376", "relation_name": "on", "bbox_x": 20, "bbox_y": 0, "bbox_w": 30, "bbox_h": 45,
              "true_caption": "the lamp is on the desk", "false_caption": "the desk is on the lamp",
              "image_path": "2376.jpg"}]
    (root / "visual_genome_relation.json").write_text(json.dumps(items))
    m = evaluate_compositionality(oc["spec"], read_suite("vg_relation", str(root)), progress=False).summary()
    box = lambda it: (it["bbox_x"], it["bbox_y"], it["bbox_w"], it["bbox_h"])     # noqa: E731
    right = []
    for it in items:
        s = _hand(oc, root / "images" / it["image_path"], [it["false_caption"], it["true_caption"]], box(it))
        right.append(int(np.argmax(s)) == 1)                      # the original: argmax over [false, true]
    assert m["accuracy"] == pytest.approx(np.mean(right))
    on = [r for r, it in zip(right, items) if it["relation_name"] == "on"]
    assert m["macro_accuracy"] == pytest.approx((np.mean(on) + right[1]) / 2)


def test_coco_order_karpathy_json(oc, tmp_path):
    root = tmp_path / "coco"
    _img(root / "val2014" / "COCO_val2014_000000391895.jpg", 3)
    ann = [{"image": "val2014/COCO_val2014_000000391895.jpg", "image_id": "391895",
            "caption": ["A man with a red helmet on a small moped on a dirt road.",
                        "Man riding a motor bike on a dirt road on the countryside."]}]
    (root / "coco_karpathy_test.json").write_text(json.dumps(ann))
    suite = read_suite("coco_order", str(root))
    assert len(suite.tests) == 2 and all(len(t.options) == 4 and t.answer == 0 for t in suite.tests)
    assert suite.tests[0].options[0] == "a man with a red helmet on a small moped on a dirt road"
    m = evaluate_compositionality(oc["spec"], suite, progress=False).summary()
    right = [int(np.argmax(_hand(oc, t.image, t.options))) == 0 for t in suite.tests]
    assert m["accuracy"] == pytest.approx(np.mean(right))
    assert m["perturbations"] == ["shuffle_within_trigrams", "shuffle_trigrams", "shuffle_all_words"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="visual_genome_attribution.json is missing"):
        read_suite("vg_attribution", str(tmp_path))
    with pytest.raises(ConfigError, match="none of SugarCrepe's files"):
        read_suite("sugarcrepe", str(tmp_path), str(tmp_path))


def test_cli_compositionality(oc, tmp_path, capsys):
    from mmfm.cli import main
    root = tmp_path / "aro"
    _img(root / "images" / "1.jpg", 5, (50, 50))
    items = [{"image_path": "1.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 50, "bbox_h": 50, "attributes": ["red", "big"],
              "true_caption": "the red car and the big tree", "false_caption": "the big car and the red tree"}]
    (root / "visual_genome_attribution.json").write_text(json.dumps(items))
    out = tmp_path / "m.json"
    assert main(["eval", "compositionality", str(root), "--suite", "vg_attribution", "--model", oc["spec"],
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    s = _hand(oc, root / "images" / "1.jpg", [items[0]["false_caption"], items[0]["true_caption"]])
    assert m["accuracy"] == float(s[1] > s[0]) and m["n_tests"] == 1
    assert "vg_attribution: accuracy" in capsys.readouterr().out
