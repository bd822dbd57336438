"""Eval runners: degenerate-output detection, JSONL data reading, provenance in the result JSON, bad images."""
import json

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.caption_eval import (degenerate_report, evaluate_captions, evaluate_vqa_model, read_vqa_data,
                                    write_eval)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_degenerate_report_flags_loops_empties_and_collapse():
    caps = {"a": "a dog on the grass", "b": "", "c": "a man a man a man riding", "d": "the the the the",
            "e": "a dog on the grass", "f": "a cat sits on a red mat near a red mat near a red mat"}
    r = degenerate_report(caps)
    assert r["empty"] == 1 and r["examples"]["empty"] == ["b"]
    assert r["repetition_loops"] == 3 and {k for k, _ in r["examples"]["repetition_loops"]} == {"c", "d", "f"}
    assert r["distinct_captions"] == 5 and not r["collapsed"] and not r["one_caption_for_every_image"]
    same = degenerate_report({str(i): "a photo of a thing" for i in range(6)})
    assert same["one_caption_for_every_image"] and same["collapsed"] and same["most_common"]["frac"] == 1.0
    ok = degenerate_report({"x": "two dogs play with a ball", "y": "a red bus on a street"})
    assert ok["repetition_loops"] == 0 and ok["empty"] == 0


@pytest.fixture(scope="module")
def model():
    from mmfm.models.factory import build_model
    torch.manual_seed(0)
    m = build_model({"name": "tiny_captioner"}).eval()
    m.checkpoint_path = "in-memory"
    return m


def test_caption_eval_records_provenance_and_bad_images(model, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    rows = [{"image": "a.png", "captions": ["a red box", "red"]}, {"image": "b.png", "captions": ["a blue box"]},
            {"image": "bad.png", "captions": ["broken"]}]
    data = tmp_path / "val.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    from mmfm.config.caption import GenerateConfig
    res = evaluate_captions(model, str(data), GenerateConfig(max_new_tokens=4, min_new_tokens=4), progress=False)
    assert res["samples"] == 2 and res["failed"] == 1 and res["failures"][0]["image"].endswith("bad.png")
    assert res["split"] == "val" and res["decoding"]["max_new_tokens"] == 4 and "pycocoevalcap" in res["backend"]
    assert set(res["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    assert res["predictions"][0]["references"] == ["a red box", "red"]
    paths = write_eval(res, tmp_path / "out")
    summary = json.loads(paths["metrics"].read_text())
    assert "predictions" not in summary and summary["checkpoint"] == "in-memory"
    assert len(paths["predictions"].read_text().splitlines()) == 2


def test_vqa_data_and_rank_eval(model, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "what color?", "answers": [{"answer": "red"}] * 10,
             "answer_type": "other", "question_id": 7},
            {"image": "a.png", "question": "is it red?", "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no",
             "question_id": 8}]
    data = tmp_path / "vqa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    items = read_vqa_data(str(data))
    assert [i["key"] for i in items] == ["7", "8"] and items[0]["answers"] == ["red"] * 10
    res = evaluate_vqa_model(model, str(data), mode="rank", candidates=["red", "yes", "no"], progress=False)
    assert res["samples"] == 2 and res["mode"] == "rank" and res["candidates"] == 3
    assert set(res["metrics"]["per_answer_type"]) == {"other", "yes/no"}
    assert all(p["answer"] in ("red", "yes", "no") for p in res["predictions"])
    with pytest.raises(ConfigError, match="answer list"):
        evaluate_vqa_model(model, str(data), mode="rank", progress=False)
    data.write_text(json.dumps({**rows[0], "answers": []}))
    with pytest.raises(ConfigError, match="no answers"):
        read_vqa_data(str(data))
